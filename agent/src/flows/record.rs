//! The flow record Ward hands to operators (`ward observe`, the API, exports): the kernel's
//! [`FlowEvent`] decoded once (`FlowEvent::from_bytes` in `ward-common`) and enriched from
//! the last compiled state ([`View`]). Field names follow Hubble's flow JSON wherever the
//! meaning is the same, so consumers of Hubble's output port easily.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ward_common::maps::{FlowEvent, PolicyKey, PolicyValue};
use ward_common::{Direction, Reason};
use ward_policy::cluster::{Cluster, PodKey, PolicyRef};
use ward_policy::compile::RuleInfo;
use ward_policy::explain::miss::{Matched, MissIndex, miss_text};

/// A point in time, nanoseconds since the Unix epoch; RFC 3339 (UTC) in JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowTime(pub i128);

impl FlowTime {
    pub fn now() -> FlowTime {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => FlowTime(d.as_nanos() as i128),
            Err(_) => FlowTime(0),
        }
    }

    fn timestamp(self) -> Timestamp {
        Timestamp::from_nanosecond(self.0).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

impl fmt::Display for FlowTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.timestamp())
    }
}

impl std::str::FromStr for FlowTime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t: Timestamp = s.parse().map_err(|e| format!("not an RFC 3339 time: {s:?}: {e}"))?;
        Ok(FlowTime(t.as_nanosecond()))
    }
}

impl Serialize for FlowTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FlowTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hubble's verdicts: FORWARDED, DROPPED, AUDIT (passed, but audited policies would have
/// denied it: `Reason::Audit`), ERROR for a record whose codes this agent does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FlowVerdict {
    Forwarded,
    Dropped,
    Audit,
    Error,
}

impl FlowVerdict {
    pub const ALL: [FlowVerdict; 4] =
        [FlowVerdict::Forwarded, FlowVerdict::Dropped, FlowVerdict::Audit, FlowVerdict::Error];
    pub const fn as_str(self) -> &'static str {
        match self {
            FlowVerdict::Forwarded => "FORWARDED",
            FlowVerdict::Dropped => "DROPPED",
            FlowVerdict::Audit => "AUDIT",
            FlowVerdict::Error => "ERROR",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TrafficDirection {
    Ingress,
    Egress,
    #[serde(rename = "TRAFFIC_DIRECTION_UNKNOWN")]
    Unknown,
}

impl TrafficDirection {
    pub const fn as_str(self) -> &'static str {
        match self {
            TrafficDirection::Ingress => "INGRESS",
            TrafficDirection::Egress => "EGRESS",
            TrafficDirection::Unknown => "TRAFFIC_DIRECTION_UNKNOWN",
        }
    }
}

/// Why the record was made, as Hubble's `trace_reason`: the first packet of a flow, a packet
/// of a tracked flow, or a reply of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TraceReason {
    New,
    Established,
    Reply,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    pub source: IpAddr,
    pub destination: IpAddr,
    #[serde(rename = "ipVersion")]
    pub ip_version: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub source_port: u16,
    pub destination_port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpFlags {
    #[serde(rename = "SYN", default, skip_serializing_if = "is_false")]
    pub syn: bool,
    #[serde(rename = "ACK", default, skip_serializing_if = "is_false")]
    pub ack: bool,
    #[serde(rename = "FIN", default, skip_serializing_if = "is_false")]
    pub fin: bool,
    #[serde(rename = "RST", default, skip_serializing_if = "is_false")]
    pub rst: bool,
    #[serde(rename = "PSH", default, skip_serializing_if = "is_false")]
    pub psh: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tcp {
    pub source_port: u16,
    pub destination_port: u16,
    pub flags: TcpFlags,
}

/// Hubble's `ICMPv4`/`ICMPv6`: the message's type and code, as the kernel read them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    #[serde(rename = "type", default)]
    pub icmp_type: u8,
    #[serde(default)]
    pub code: u8,
}

/// Hubble's `l4` one-of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum L4 {
    #[serde(rename = "TCP")]
    Tcp(Tcp),
    #[serde(rename = "UDP")]
    Udp(Ports),
    #[serde(rename = "SCTP")]
    Sctp(Ports),
    #[serde(rename = "ICMPv4")]
    Icmpv4(Icmp),
    #[serde(rename = "ICMPv6")]
    Icmpv6(Icmp),
    /// Any other IP protocol, by number.
    #[serde(rename = "other")]
    Other { protocol: u8 },
}

impl L4 {
    /// (protocol name, source port, destination port); ports are 0 where there are none.
    pub fn parts(&self) -> (&'static str, u16, u16) {
        match self {
            L4::Tcp(t) => ("TCP", t.source_port, t.destination_port),
            L4::Udp(p) => ("UDP", p.source_port, p.destination_port),
            L4::Sctp(p) => ("SCTP", p.source_port, p.destination_port),
            L4::Icmpv4(_) => ("ICMPv4", 0, 0),
            L4::Icmpv6(_) => ("ICMPv6", 0, 0),
            L4::Other { .. } => ("other", 0, 0),
        }
    }
}

/// One end of a flow. Pods have namespace, name and labels (`key=value`); other addresses
/// only their identity number (`ID_WORLD`, `ID_HOST`, a CIDR identity).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub identity: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl Endpoint {
    pub fn is_pod(&self) -> bool {
        !self.pod_name.is_empty()
    }
}

/// A policy that decided a flow (Hubble's `Policy`), with the rule index within the
/// direction's rule list when one rule allowed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAttribution {
    pub namespace: String,
    pub name: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_index: Option<usize>,
}

impl PolicyAttribution {
    fn of(p: &PolicyRef, rule_index: Option<usize>) -> Self {
        PolicyAttribution {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            kind: p.kind.as_str().to_owned(),
            rule_index,
        }
    }
}

impl fmt::Display for PolicyAttribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if self.kind != "NetworkPolicy" {
            write!(f, " ({})", self.kind)?;
        }
        if let Some(i) = self.rule_index {
            write!(f, " rule {i}")?;
        }
        Ok(())
    }
}

/// The closest miss of a default-deny drop: the rule of an isolating policy that matched
/// the peer but not the port (`matched: PEER`), or the port but not the peer (`PORT`), with
/// what that rule allows (for PEER, this peer's ports; for PORT, every port it opens).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissAttribution {
    #[serde(flatten)]
    pub policy: PolicyAttribution,
    pub matched: Matched,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allows: Vec<String>,
}

impl MissAttribution {
    /// The sentence `ward observe` shows, for a flow of `proto`/`port` (port 0: none).
    pub fn text(&self, flow: &str) -> String {
        miss_text(&self.policy.to_string(), self.matched, &self.allows, flow)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub index: u32,
}

/// One flow record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub time: FlowTime,
    pub uuid: String,
    pub verdict: FlowVerdict,
    /// For drops: the reason, upper-case (`POLICY_DENIED`, `SPOOFED_SOURCE`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<String>,
    /// Ward's reason code name for every verdict (`policy_allow`, `not_isolated`, ...).
    pub reason: String,
    #[serde(rename = "IP")]
    pub ip: Ip,
    pub l4: L4,
    pub source: Endpoint,
    pub destination: Endpoint,
    pub traffic_direction: TrafficDirection,
    pub is_reply: bool,
    pub trace_reason: TraceReason,
    pub node_name: String,
    pub interface: Interface,
    /// The kernel's id of the allowing rule, when a rule allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_allowed_by: Vec<PolicyAttribution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allowed_by: Vec<PolicyAttribution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_denied_by: Vec<PolicyAttribution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_denied_by: Vec<PolicyAttribution>,
    /// For a default-deny drop, the rule that came closest to allowing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_closest_miss: Option<MissAttribution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_closest_miss: Option<MissAttribution>,
}

impl Flow {
    /// Every policy named in the record, allowing or denying.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyAttribution> {
        self.ingress_allowed_by
            .iter()
            .chain(&self.egress_allowed_by)
            .chain(&self.ingress_denied_by)
            .chain(&self.egress_denied_by)
    }
}

/// A pod as the flow task names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub key: PodKey,
    pub labels: Vec<String>,
}

/// What the flow task needs from a compile, published by the owner task after each pass
/// (the task never waits on the owner: it reads the last one published).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub node_name: String,
    /// What each rule id stands for (the compile's `rules`).
    pub rules: BTreeMap<u32, RuleInfo>,
    /// Local endpoints by endpoint id.
    pub endpoints: BTreeMap<u32, Arc<PodFacts>>,
    /// Every pod address the cluster knows (local pods with their CNI addresses).
    pub addresses: HashMap<IpAddr, Arc<PodFacts>>,
    /// Local pods: the policies that isolate each, per direction (ingress, egress).
    pub isolated_by: BTreeMap<PodKey, (Vec<PolicyRef>, Vec<PolicyRef>)>,
    /// The compile's policy entries per subject, for the closest miss of a default deny.
    pub misses: MissIndex,
    /// Local pods: the audited policies that would isolate each, per direction (what an
    /// AUDIT record names as its would-be deniers).
    pub audited_by: BTreeMap<PodKey, (Vec<PolicyRef>, Vec<PolicyRef>)>,
}

/// A local endpoint as the registry knows it.
pub struct LocalPod<'a> {
    pub ep_id: u32,
    pub key: PodKey,
    pub ips: &'a [IpAddr],
}

impl View {
    pub fn build<'a>(
        node_name: &str,
        cluster: &Cluster,
        rules: &BTreeMap<u32, RuleInfo>,
        local: impl IntoIterator<Item = LocalPod<'a>>,
    ) -> View {
        let mut view = View { node_name: node_name.to_owned(), rules: rules.clone(), ..View::default() };
        let facts = |key: &PodKey| {
            let labels = cluster
                .pods
                .get(key)
                .map(|p| p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            Arc::new(PodFacts { key: key.clone(), labels })
        };
        for (key, info) in &cluster.pods {
            let f = facts(key);
            for ip in &info.ips {
                view.addresses.insert(*ip, f.clone());
            }
        }
        for l in local {
            let f = facts(&l.key);
            for ip in l.ips {
                view.addresses.insert(ip.to_canonical(), f.clone());
            }
            view.endpoints.insert(l.ep_id, f);
            let by = |policies: Vec<(&PolicyRef, &ward_policy::validate::Policy)>| {
                let mut by = (Vec::new(), Vec::new());
                for (pref, policy) in policies {
                    if policy.ingress.is_some() {
                        by.0.push(pref.clone());
                    }
                    if policy.egress.is_some() {
                        by.1.push(pref.clone());
                    }
                }
                by
            };
            let audited = by(cluster.audited_policies_selecting(&l.key));
            if !audited.0.is_empty() || !audited.1.is_empty() {
                view.audited_by.insert(l.key.clone(), audited);
            }
            let isolated = by(cluster.policies_selecting(&l.key));
            view.isolated_by.insert(l.key, isolated);
        }
        view
    }

    fn endpoint(&self, ip: IpAddr, identity: u32, local: Option<&Arc<PodFacts>>) -> Endpoint {
        let pod = self.addresses.get(&ip).or(local);
        match pod {
            Some(p) => Endpoint {
                identity,
                namespace: p.key.namespace.clone(),
                pod_name: p.key.name.clone(),
                labels: p.labels.clone(),
            },
            None => Endpoint { identity, ..Endpoint::default() },
        }
    }

    /// The record of one kernel event, named from this view.
    pub fn enrich(&self, ev: &FlowEvent, time: FlowTime, uuid: String) -> Flow {
        let reason = ev.reason();
        let dir = ev.dir();
        let verdict = match (reason, dir) {
            (Ok(Reason::Audit), Ok(_)) => FlowVerdict::Audit,
            (Ok(r), Ok(_)) if r.verdict() == ward_common::Verdict::Allow => FlowVerdict::Forwarded,
            (Ok(_), Ok(_)) => FlowVerdict::Dropped,
            _ => FlowVerdict::Error,
        };
        let (src, dst) = (ev.src(), ev.dst());
        let local = self.endpoints.get(&ev.ep_id);
        // The subject is the local pod: the destination on ingress, the source on egress.
        let (source, destination) = match dir {
            Ok(Direction::Ingress) => {
                (self.endpoint(src, ev.peer_identity, None), self.endpoint(dst, ev.subject_identity, local))
            }
            Ok(Direction::Egress) => {
                (self.endpoint(src, ev.subject_identity, local), self.endpoint(dst, ev.peer_identity, None))
            }
            Err(_) => (self.endpoint(src, 0, None), self.endpoint(dst, 0, None)),
        };
        let l4 = match ev.proto {
            6 => L4::Tcp(Tcp {
                source_port: ev.sport(),
                destination_port: ev.dport(),
                flags: TcpFlags {
                    fin: ev.tcp_flags & 0x01 != 0,
                    syn: ev.tcp_flags & 0x02 != 0,
                    rst: ev.tcp_flags & 0x04 != 0,
                    psh: ev.tcp_flags & 0x08 != 0,
                    ack: ev.tcp_flags & 0x10 != 0,
                },
            }),
            17 => L4::Udp(Ports { source_port: ev.sport(), destination_port: ev.dport() }),
            132 => L4::Sctp(Ports { source_port: ev.sport(), destination_port: ev.dport() }),
            1 => L4::Icmpv4(Icmp { icmp_type: ev.icmp_type, code: ev.icmp_code }),
            58 => L4::Icmpv6(Icmp { icmp_type: ev.icmp_type, code: ev.icmp_code }),
            other => L4::Other { protocol: other },
        };
        let mut flow = Flow {
            time,
            uuid,
            verdict,
            drop_reason_desc: None,
            reason: match reason {
                Ok(r) => r.as_str().to_owned(),
                Err(code) => format!("unknown_{code}"),
            },
            ip: Ip {
                source: src,
                destination: dst,
                ip_version: if src.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned(),
            },
            l4,
            source,
            destination,
            traffic_direction: match dir {
                Ok(Direction::Ingress) => TrafficDirection::Ingress,
                Ok(Direction::Egress) => TrafficDirection::Egress,
                Err(_) => TrafficDirection::Unknown,
            },
            is_reply: reason == Ok(Reason::Reply),
            trace_reason: match reason {
                Ok(Reason::Reply) => TraceReason::Reply,
                Ok(Reason::Established | Reason::PolicyRevoked) => TraceReason::Established,
                _ => TraceReason::New,
            },
            node_name: self.node_name.clone(),
            interface: Interface { index: ev.ifindex },
            rule_id: None,
            ingress_allowed_by: Vec::new(),
            egress_allowed_by: Vec::new(),
            ingress_denied_by: Vec::new(),
            egress_denied_by: Vec::new(),
            ingress_closest_miss: None,
            egress_closest_miss: None,
        };
        let (Ok(reason), Ok(dir)) = (reason, dir) else { return flow };
        if verdict == FlowVerdict::Dropped {
            flow.drop_reason_desc = Some(reason.as_str().to_ascii_uppercase());
        }
        match reason {
            Reason::PolicyAllow => {
                flow.rule_id = Some(ev.rule_id);
                // A rule id unknown to this view (a compile newer than the last published
                // one): the id stays in `rule_id`, with no name to give.
                if let Some(info) = self.rules.get(&ev.rule_id) {
                    let by = PolicyAttribution::of(&info.policy, Some(info.index));
                    match dir {
                        Direction::Ingress => flow.ingress_allowed_by.push(by),
                        Direction::Egress => flow.egress_allowed_by.push(by),
                    }
                }
            }
            // Default deny (of a known peer or one not known yet), or a tracked flow whose
            // allowing rule is gone: the policies that isolate the pod in this direction are
            // what denies it.
            Reason::PolicyDenied | Reason::IdentityUnknown | Reason::PolicyRevoked => {
                if let Some((ingress, egress)) = local.and_then(|p| self.isolated_by.get(&p.key)) {
                    let (list, out) = match dir {
                        Direction::Ingress => (ingress, &mut flow.ingress_denied_by),
                        Direction::Egress => (egress, &mut flow.egress_denied_by),
                    };
                    out.extend(list.iter().map(|p| PolicyAttribution::of(p, None)));
                }
                if reason != Reason::PolicyRevoked {
                    let miss = self.closest_miss(ev, dir);
                    match dir {
                        Direction::Ingress => flow.ingress_closest_miss = miss,
                        Direction::Egress => flow.egress_closest_miss = miss,
                    }
                }
            }
            // Passed; the audited policies isolating the pod here are what would deny it.
            Reason::Audit => {
                if let Some((ingress, egress)) = local.and_then(|p| self.audited_by.get(&p.key)) {
                    let (list, out) = match dir {
                        Direction::Ingress => (ingress, &mut flow.ingress_denied_by),
                        Direction::Egress => (egress, &mut flow.egress_denied_by),
                    };
                    out.extend(list.iter().map(|p| PolicyAttribution::of(p, None)));
                }
            }
            _ => {}
        }
        flow
    }
}

impl View {
    /// The view with the closest-miss index of `policy`: the `WARD_POLICY` entries of the
    /// compile whose `rules` it was built with (without it, drops name no closest miss).
    pub fn with_misses(mut self, policy: &BTreeMap<PolicyKey, PolicyValue>) -> View {
        self.misses = MissIndex::build(policy);
        self
    }

    /// The closest miss of a default-deny drop, from the entries of the compile this view
    /// was published with: the identities and port the kernel looked up, as the event
    /// carries them.
    fn closest_miss(&self, ev: &FlowEvent, dir: Direction) -> Option<MissAttribution> {
        let port = ward_common::lookup::Flow::of_packet(dir, &ev.saddr, &ev.daddr, ev.proto, ev.dport(), false).port;
        let peers = [ev.peer_identity, ev.peer_cidr_identity];
        let m = self.misses.closest_miss(&self.rules, ev.subject_identity, dir, peers, ev.proto, port)?;
        Some(MissAttribution {
            policy: PolicyAttribution::of(&m.rule.policy, Some(m.rule.index)),
            matched: m.matched,
            allows: m.allows.iter().map(ToString::to_string).collect(),
        })
    }
}

/// Flow ids: unique within one agent run (a random prefix per run, then a counter), in the
/// UUID text form consumers expect.
pub struct UuidSource {
    prefix: u64,
    next: u64,
}

impl Default for UuidSource {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS's randomness: different for every run.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(FlowTime::now().0 as u128);
        UuidSource { prefix: h.finish(), next: 0 }
    }
}

impl UuidSource {
    pub fn next_uuid(&mut self) -> String {
        let n = self.next;
        self.next += 1;
        let p = self.prefix;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (p >> 32) as u32,
            (p >> 16) as u16,
            p & 0xfff,
            (n >> 48) & 0xfff,
            n & 0xffff_ffff_ffff
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use ward_common::addr::addr16;
    use ward_policy::identity::Identities;
    use ward_policy::model::{Object, parse_documents};

    const CLUSTER: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
status: {podIP: 10.1.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 5432}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-no-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
";

    fn view() -> View {
        view_and_compile().0
    }

    fn view_and_compile() -> (View, ward_policy::Compiled) {
        let objects: Vec<Object> = parse_documents(CLUSTER, "t").into_iter().flatten().collect();
        let (cluster, errors) = Cluster::from_objects(&objects, "t");
        assert!(errors.is_empty(), "{errors:?}");
        let db = PodKey::new("shop", "db");
        let compiled = ward_policy::compile::compile(&cluster, &BTreeSet::from([db.clone()]), &mut Identities::new());
        let ips = ["10.1.0.2".parse().expect("ip")];
        let v = View::build("n1", &cluster, &compiled.rules, [LocalPod { ep_id: 3, key: db, ips: &ips }])
            .with_misses(&compiled.policy);
        (v, compiled)
    }

    fn event(src: &str, dst: &str, dir: Direction, reason: Reason, rule_id: u32) -> FlowEvent {
        FlowEvent {
            ts_ns: 0,
            saddr: addr16(src.parse().expect("ip")),
            daddr: addr16(dst.parse().expect("ip")),
            sport_be: 40000u16.to_be_bytes(),
            dport_be: 5432u16.to_be_bytes(),
            proto: 6,
            dir: dir as u8,
            verdict: reason.verdict() as u8,
            reason: reason as u8,
            ifindex: 9,
            ep_id: 3,
            subject_identity: 300,
            peer_identity: 301,
            peer_cidr_identity: 2,
            rule_id,
            tcp_flags: 0x02,
            icmp_type: 0,
            icmp_code: 0,
            _pad: [0; 5],
        }
    }

    fn names(list: &[PolicyAttribution]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_allow_names_its_policy_and_rule_and_a_default_deny_the_isolating_policies() {
        let v = view();
        let rule_id = *v.rules.iter().find(|(_, r)| r.policy.name == "db-from-api").expect("the rule's id").0;
        let ok = v.enrich(
            &event("10.1.0.1", "10.1.0.2", Direction::Ingress, Reason::PolicyAllow, rule_id),
            FlowTime(1),
            "u".into(),
        );
        assert_eq!(
            (ok.verdict, ok.traffic_direction, ok.trace_reason),
            (FlowVerdict::Forwarded, TrafficDirection::Ingress, TraceReason::New)
        );
        assert_eq!(
            (ok.source.namespace.as_str(), ok.source.pod_name.as_str(), ok.source.identity),
            ("shop", "api", 301)
        );
        assert_eq!((ok.destination.pod_name.as_str(), ok.destination.identity), ("db", 300));
        assert_eq!(ok.destination.labels, ["app=db"]);
        assert_eq!(names(&ok.ingress_allowed_by), ["shop/db-from-api rule 0"]);
        assert!(ok.ingress_denied_by.is_empty() && ok.egress_allowed_by.is_empty() && ok.drop_reason_desc.is_none());
        assert_eq!(ok.rule_id, Some(rule_id));
        assert!(
            ok.l4
                == L4::Tcp(Tcp {
                    source_port: 40000,
                    destination_port: 5432,
                    flags: TcpFlags { syn: true, ..TcpFlags::default() }
                })
        );

        // From outside the cluster: a default-deny drop names the ingress isolator only.
        let no = v.enrich(
            &event("192.0.2.1", "10.1.0.2", Direction::Ingress, Reason::PolicyDenied, 0),
            FlowTime(2),
            "v".into(),
        );
        assert_eq!(no.verdict, FlowVerdict::Dropped);
        assert_eq!(no.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
        assert!(!no.source.is_pod() && no.ip.source.to_string() == "192.0.2.1");
        assert_eq!(names(&no.ingress_denied_by), ["shop/db-from-api"]);
        assert!(no.ingress_allowed_by.is_empty() && no.egress_allowed_by.is_empty() && no.rule_id.is_none());
        let json = serde_json::to_value(&no).expect("encode");
        assert!(json.get("ingress_allowed_by").is_none() && json.get("egress_allowed_by").is_none(), "{json}");

        // From a pod this node does not know yet: its own reason, the same isolator.
        let race = v.enrich(
            &event("10.1.0.9", "10.1.0.2", Direction::Ingress, Reason::IdentityUnknown, 0),
            FlowTime(2),
            "r".into(),
        );
        assert_eq!((race.verdict, race.reason.as_str()), (FlowVerdict::Dropped, "identity_unknown"));
        assert_eq!(race.drop_reason_desc.as_deref(), Some("IDENTITY_UNKNOWN"));
        assert_eq!(names(&race.ingress_denied_by), ["shop/db-from-api"]);

        // Egress from db: the egress isolator, with db as the source.
        let out = v.enrich(
            &event("10.1.0.2", "10.1.0.1", Direction::Egress, Reason::PolicyDenied, 0),
            FlowTime(3),
            "w".into(),
        );
        assert_eq!((out.source.pod_name.as_str(), out.destination.pod_name.as_str()), ("db", "api"));
        assert_eq!(names(&out.egress_denied_by), ["shop/db-no-egress"]);
        assert!(out.ingress_denied_by.is_empty());

        // Codes this agent does not know: an ERROR record, never a guessed verdict.
        let mut odd = event("10.1.0.1", "10.1.0.2", Direction::Ingress, Reason::PolicyAllow, rule_id);
        odd.reason = 127;
        let odd = v.enrich(&odd, FlowTime(4), "x".into());
        assert_eq!((odd.verdict, odd.reason.as_str()), (FlowVerdict::Error, "unknown_127"));
        assert!(odd.ingress_allowed_by.is_empty());
    }

    #[test]
    fn a_default_deny_names_its_closest_miss_from_the_compiled_entries() {
        let (v, compiled) = view_and_compile();
        let id = |name: &str| *compiled.pod_identity.get(&PodKey::new("shop", name)).expect("an identity");
        let at_db = |src: &str, peer_identity: u32, port: u16| {
            let mut ev = event(src, "10.1.0.2", Direction::Ingress, Reason::PolicyDenied, 0);
            (ev.subject_identity, ev.peer_identity, ev.peer_cidr_identity) =
                (id("db"), peer_identity, ward_common::identity::ID_WORLD);
            ev.dport_be = port.to_be_bytes();
            v.enrich(&ev, FlowTime(1), "u".into())
        };
        // From outside, on the right port: the rule opens 5432 to api only.
        let outside = at_db("192.0.2.1", ward_common::identity::ID_WORLD, 5432);
        let miss = outside.ingress_closest_miss.as_ref().expect("a closest miss");
        assert_eq!((miss.policy.to_string(), miss.matched), ("shop/db-from-api rule 0".into(), Matched::Port));
        assert_eq!(miss.text("port 5432/TCP"), "shop/db-from-api rule 0 allows port 5432/TCP but not this peer");
        assert!(outside.egress_closest_miss.is_none());
        // From api, on the wrong port: the rule admits api on 5432 only.
        let wrong_port = at_db("10.1.0.1", id("api"), 80);
        let miss = wrong_port.ingress_closest_miss.as_ref().expect("a closest miss");
        assert_eq!((miss.matched, miss.allows.as_slice()), (Matched::Peer, &["5432/TCP".to_owned()][..]));
        let json = serde_json::to_value(&wrong_port).expect("encode");
        assert_eq!(
            json["ingress_closest_miss"],
            serde_json::json!({"namespace": "shop", "name": "db-from-api", "kind": "NetworkPolicy", "rule_index": 0,
                "matched": "PEER", "allows": ["5432/TCP"]})
        );
        assert_eq!(serde_json::from_value::<Flow>(json).expect("decode"), wrong_port);
        // Egress of db: isolated by a policy with no rules, nothing comes close.
        let mut ev = event("10.1.0.2", "10.1.0.1", Direction::Egress, Reason::PolicyDenied, 0);
        (ev.subject_identity, ev.peer_identity) = (id("db"), id("api"));
        let out = v.enrich(&ev, FlowTime(1), "u".into());
        assert_eq!(names(&out.egress_denied_by), ["shop/db-no-egress"]);
        assert!(out.egress_closest_miss.is_none() && out.ingress_closest_miss.is_none());
        // An allow has no miss, even with the same ends.
        let rule_id = *v.rules.keys().next().expect("a rule");
        let mut ok = event("10.1.0.1", "10.1.0.2", Direction::Ingress, Reason::PolicyAllow, rule_id);
        (ok.subject_identity, ok.peer_identity) = (id("db"), id("api"));
        assert!(v.enrich(&ok, FlowTime(1), "u".into()).ingress_closest_miss.is_none());
    }

    #[test]
    fn an_audit_record_names_the_audited_policies_that_would_deny_and_no_enforced_one() {
        let audited = format!(
            "{CLUSTER}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-audit-egress
  namespace: shop
  annotations: {{policy.ward.dev/mode: audit}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  policyTypes: [Ingress, Egress]
"
        )
        .replace(
            "metadata: {name: db-no-egress, namespace: shop}",
            "metadata: {name: db-no-egress, namespace: shop, annotations: {policy.ward.dev/mode: audit}}",
        );
        let objects: Vec<Object> = parse_documents(&audited, "t").into_iter().flatten().collect();
        let (cluster, errors) = Cluster::from_objects(&objects, "t");
        assert!(errors.is_empty(), "{errors:?}");
        let db = PodKey::new("shop", "db");
        let compiled = ward_policy::compile::compile(&cluster, &BTreeSet::from([db.clone()]), &mut Identities::new());
        let ips = ["10.1.0.2".parse().expect("ip")];
        let v = View::build("n1", &cluster, &compiled.rules, [LocalPod { ep_id: 3, key: db, ips: &ips }]);

        let out =
            v.enrich(&event("10.1.0.2", "10.1.0.1", Direction::Egress, Reason::Audit, 0), FlowTime(1), "a".into());
        assert_eq!(out.verdict, FlowVerdict::Audit);
        assert_eq!(out.reason, "audit");
        assert!(out.drop_reason_desc.is_none(), "it passed");
        assert_eq!(names(&out.egress_denied_by), ["shop/db-audit-egress", "shop/db-no-egress"]);
        assert!(out.ingress_denied_by.is_empty() && out.egress_allowed_by.is_empty());
        let json = serde_json::to_value(&out).expect("encode");
        assert_eq!(json["verdict"], "AUDIT");

        // Ingress stays enforced by db-from-api: its drops name it, not the audited policy.
        let no = v.enrich(
            &event("192.0.2.1", "10.1.0.2", Direction::Ingress, Reason::PolicyDenied, 0),
            FlowTime(2),
            "b".into(),
        );
        assert_eq!(no.verdict, FlowVerdict::Dropped);
        assert_eq!(names(&no.ingress_denied_by), ["shop/db-from-api"]);
    }

    #[test]
    fn a_record_survives_its_json_and_uses_hubbles_field_names() {
        let v = view();
        let f = v.enrich(
            &event("10.1.0.1", "10.1.0.2", Direction::Ingress, Reason::PolicyDenied, 0),
            FlowTime(1_700_000_000_123_456_789),
            "u".into(),
        );
        let json = serde_json::to_value(&f).expect("encode");
        assert_eq!(json["time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(json["verdict"], "DROPPED");
        assert_eq!(json["traffic_direction"], "INGRESS");
        assert_eq!(json["IP"]["ipVersion"], "IPv4");
        assert_eq!(json["l4"]["TCP"]["destination_port"], 5432);
        assert_eq!(json["l4"]["TCP"]["flags"]["SYN"], true);
        assert_eq!(json["destination"]["pod_name"], "db");
        assert_eq!(json["trace_reason"], "NEW");
        assert_eq!(serde_json::from_value::<Flow>(json).expect("decode"), f);
    }

    #[test]
    fn icmp_records_carry_type_and_code_as_hubble_names_them() {
        let v = view();
        let mut ev = event("10.1.0.1", "10.1.0.2", Direction::Ingress, Reason::PolicyDenied, 0);
        (ev.proto, ev.icmp_type, ev.icmp_code, ev.sport_be, ev.dport_be) = (1, 3, 13, [0; 2], [0; 2]);
        let json = serde_json::to_value(v.enrich(&ev, FlowTime(0), "u".into())).expect("encode");
        assert_eq!(json["l4"], serde_json::json!({"ICMPv4": {"type": 3, "code": 13}}));
        ev.proto = 58;
        (ev.icmp_type, ev.icmp_code) = (128, 0);
        let json = serde_json::to_value(v.enrich(&ev, FlowTime(0), "u".into())).expect("encode");
        assert_eq!(json["l4"], serde_json::json!({"ICMPv6": {"type": 128, "code": 0}}));
    }

    #[test]
    fn flow_ids_differ() {
        let mut u = UuidSource::default();
        let (a, b) = (u.next_uuid(), u.next_uuid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }
}
