//! Which flows a query wants: the one filter the agent applies to its history and live
//! stream and `ward observe --input-file` applies to an exported file. Semantics follow
//! `hubble observe`: filters of different kinds must all match (AND), repeats of one kind
//! are alternatives (OR), and `--not` turns the filter after it into an exclusion.
//!
//! `--type` takes hubble's event types, as they fall out of Ward's records (every record is
//! taken at the pod's host-side interface, by the TC program there):
//! * `drop`: a packet the datapath dropped (verdict DROPPED, any reason); Ward adds
//!   `drop:REASON` for one reason (`drop:policy_denied`, `drop:spoofed_source`, ...).
//! * `trace`: a packet the datapath passed (FORWARDED, or AUDIT: passed although an audited
//!   policy would deny it). `trace:to-endpoint` is one on its way into the pod (INGRESS),
//!   `trace:from-endpoint` one leaving it (EGRESS), as hubble names those observation points.
//! * `policy-verdict`: the first packet of a flow whose verdict the policy lookup took: a
//!   rule allowed it (`policy_allow`), default deny dropped it (`policy_denied`, or
//!   `identity_unknown` when the peer is a pod this node does not know yet), a learned
//!   DNS address had expired (`fqdn_expired`), or an audited policy would have denied it
//!   (AUDIT). Not a pod no policy isolates, not traffic from the node, not tracked flows.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::record::{Endpoint, Flow, FlowVerdict, TraceReason, TrafficDirection};

/// Which end of a flow a filter looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Either,
    Source,
    Destination,
}

/// One condition on a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cond {
    Pod {
        side: Side,
        namespace: String,
        name: String,
    },
    Namespace {
        side: Side,
        namespace: String,
    },
    /// `key=value`, or `key` alone: the label is present with any value.
    Label {
        side: Side,
        key: String,
        value: Option<String>,
    },
    Ip {
        side: Side,
        ip: IpAddr,
    },
    /// Either port.
    Port {
        port: u16,
    },
    /// `tcp`, `udp`, `sctp`, `icmpv4`, `icmpv6`, or `icmp` for both ICMPs.
    Protocol {
        protocol: String,
    },
    Verdict {
        verdict: FlowVerdict,
    },
    TrafficDirection {
        direction: TrafficDirection,
    },
    /// A policy named anywhere in the record's attribution; `namespace` `None`: any namespace.
    Policy {
        namespace: Option<String>,
        name: String,
    },
    /// An event type, as `--type` names it (see the module's documentation).
    Type {
        event: EventType,
    },
}

/// `--type` values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventType {
    /// Dropped; `reason` (snake_case, as the record's `reason`) narrows it to one reason.
    Drop {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Passed; `direction` narrows it to one observation point.
    Trace {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direction: Option<TrafficDirection>,
    },
    PolicyVerdict,
}

/// Reasons whose record is a verdict of the policy lookup (`--type policy-verdict`).
const POLICY_VERDICT_REASONS: [&str; 4] = ["policy_allow", "policy_denied", "fqdn_expired", "identity_unknown"];

impl EventType {
    /// Reads `TYPE[:SUBTYPE]`.
    fn parse(value: &str) -> Result<EventType, &'static str> {
        let v = value.to_ascii_lowercase();
        let (ty, sub) = match v.split_once(':') {
            Some((t, s)) => (t, Some(s)),
            None => (v.as_str(), None),
        };
        Ok(match (ty, sub) {
            ("drop", None) => EventType::Drop { reason: None },
            ("drop", Some(r)) => {
                let known = ward_common::Reason::ALL
                    .iter()
                    .any(|x| x.verdict() == ward_common::Verdict::Drop && x.as_str() == r);
                if !known {
                    return Err(
                        "expected drop:REASON with a drop reason (drop:policy_denied, drop:spoofed_source, ...)",
                    );
                }
                EventType::Drop { reason: Some(r.to_owned()) }
            }
            ("trace", None) => EventType::Trace { direction: None },
            ("trace", Some("to-endpoint")) => EventType::Trace { direction: Some(TrafficDirection::Ingress) },
            ("trace", Some("from-endpoint")) => EventType::Trace { direction: Some(TrafficDirection::Egress) },
            ("trace", Some(_)) => return Err("expected trace, trace:to-endpoint or trace:from-endpoint"),
            ("policy-verdict", None) => EventType::PolicyVerdict,
            _ => return Err("expected drop[:REASON], trace[:to-endpoint|:from-endpoint] or policy-verdict"),
        })
    }

    fn matches(&self, f: &Flow) -> bool {
        match self {
            EventType::Drop { reason } => {
                f.verdict == FlowVerdict::Dropped && reason.as_ref().is_none_or(|r| f.reason == *r)
            }
            EventType::Trace { direction } => {
                matches!(f.verdict, FlowVerdict::Forwarded | FlowVerdict::Audit)
                    && direction.is_none_or(|d| f.traffic_direction == d)
            }
            EventType::PolicyVerdict => {
                f.trace_reason == TraceReason::New
                    && (f.verdict == FlowVerdict::Audit || POLICY_VERDICT_REASONS.contains(&f.reason.as_str()))
            }
        }
    }
}

/// A filter as written, with `--not` applied to it or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    #[serde(flatten)]
    pub cond: Cond,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub negated: bool,
}

/// Terms in the order given; empty: every flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terms: Vec<Term>,
}

/// A filter flag that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("--{flag}: {why} (got {value:?})")]
    BadValue { flag: String, value: String, why: &'static str },
    #[error("--{0}: not a filter")]
    UnknownFlag(String),
}

impl Cond {
    /// Reads one filter flag (without its `--`) and its value.
    pub fn from_flag(flag: &str, value: &str) -> Result<Cond, FilterError> {
        let bad = |why| FilterError::BadValue { flag: flag.to_owned(), value: value.to_owned(), why };
        let side = if flag.starts_with("from-") {
            Side::Source
        } else if flag.starts_with("to-") {
            Side::Destination
        } else {
            Side::Either
        };
        let base = flag.trim_start_matches("from-").trim_start_matches("to-");
        Ok(match base {
            "pod" => {
                // As hubble: a pod without a namespace is in `default`.
                let (namespace, name) = value.split_once('/').unwrap_or(("default", value));
                if namespace.is_empty() || name.is_empty() || name.contains('/') {
                    return Err(bad("expected namespace/pod"));
                }
                Cond::Pod { side, namespace: namespace.to_owned(), name: name.to_owned() }
            }
            "namespace" if !value.is_empty() => Cond::Namespace { side, namespace: value.to_owned() },
            "namespace" => return Err(bad("expected a namespace")),
            "label" => match value.split_once('=') {
                Some(("", _)) => return Err(bad("expected key=value or key")),
                Some((k, v)) => Cond::Label { side, key: k.to_owned(), value: Some(v.to_owned()) },
                None if value.is_empty() => return Err(bad("expected key=value or key")),
                None => Cond::Label { side, key: value.to_owned(), value: None },
            },
            "ip" => Cond::Ip {
                side,
                ip: value.parse::<IpAddr>().map_err(|_| bad("expected an IP address"))?.to_canonical(),
            },
            "port" if side == Side::Either => {
                Cond::Port { port: value.parse().map_err(|_| bad("expected a port number 0-65535"))? }
            }
            "protocol" if side == Side::Either => {
                let p = value.to_ascii_lowercase();
                if !["tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6"].contains(&p.as_str()) {
                    return Err(bad("expected tcp, udp, sctp, icmp, icmpv4 or icmpv6"));
                }
                Cond::Protocol { protocol: p }
            }
            "verdict" if side == Side::Either => Cond::Verdict {
                verdict: FlowVerdict::ALL
                    .into_iter()
                    .find(|v| v.as_str().eq_ignore_ascii_case(value))
                    .ok_or_else(|| bad("expected FORWARDED, DROPPED, AUDIT or ERROR"))?,
            },
            "traffic-direction" if side == Side::Either => Cond::TrafficDirection {
                direction: match value.to_ascii_lowercase().as_str() {
                    "ingress" => TrafficDirection::Ingress,
                    "egress" => TrafficDirection::Egress,
                    _ => return Err(bad("expected ingress or egress")),
                },
            },
            "policy" if side == Side::Either => match value.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    Cond::Policy { namespace: Some(ns.to_owned()), name: name.to_owned() }
                }
                None if !value.is_empty() => Cond::Policy { namespace: None, name: value.to_owned() },
                _ => return Err(bad("expected namespace/name or name")),
            },
            "type" if side == Side::Either => Cond::Type { event: EventType::parse(value).map_err(bad)? },
            _ => return Err(FilterError::UnknownFlag(flag.to_owned())),
        })
    }

    /// Terms of one kind (and side) are alternatives of each other.
    fn kind(&self) -> (&'static str, Side) {
        match self {
            Cond::Pod { side, .. } => ("pod", *side),
            Cond::Namespace { side, .. } => ("namespace", *side),
            Cond::Label { side, .. } => ("label", *side),
            Cond::Ip { side, .. } => ("ip", *side),
            Cond::Port { .. } => ("port", Side::Either),
            Cond::Protocol { .. } => ("protocol", Side::Either),
            Cond::Verdict { .. } => ("verdict", Side::Either),
            Cond::TrafficDirection { .. } => ("traffic-direction", Side::Either),
            Cond::Policy { .. } => ("policy", Side::Either),
            Cond::Type { .. } => ("type", Side::Either),
        }
    }

    pub fn matches(&self, f: &Flow) -> bool {
        let ends = |side: Side, pred: &dyn Fn(&Endpoint, IpAddr) -> bool| match side {
            Side::Source => pred(&f.source, f.ip.source),
            Side::Destination => pred(&f.destination, f.ip.destination),
            Side::Either => pred(&f.source, f.ip.source) || pred(&f.destination, f.ip.destination),
        };
        match self {
            Cond::Pod { side, namespace, name } => {
                ends(*side, &|e, _| e.is_pod() && e.namespace == *namespace && e.pod_name == *name)
            }
            Cond::Namespace { side, namespace } => ends(*side, &|e, _| e.namespace == *namespace),
            Cond::Label { side, key, value } => ends(*side, &|e, _| {
                e.labels.iter().any(|l| match (l.split_once('='), value) {
                    (Some((k, v)), Some(want)) => k == key && v == want,
                    (Some((k, _)), None) => k == key,
                    (None, _) => false,
                })
            }),
            Cond::Ip { side, ip } => ends(*side, &|_, addr| addr == *ip),
            Cond::Port { port } => {
                let (_, s, d) = f.l4.parts();
                let has_ports = !matches!(f.l4.parts().0, "ICMPv4" | "ICMPv6" | "other");
                has_ports && (s == *port || d == *port)
            }
            Cond::Protocol { protocol } => {
                let name = f.l4.parts().0.to_ascii_lowercase();
                name == *protocol || (protocol == "icmp" && name.starts_with("icmp"))
            }
            Cond::Verdict { verdict } => f.verdict == *verdict,
            Cond::TrafficDirection { direction } => f.traffic_direction == *direction,
            Cond::Policy { namespace, name } => {
                f.policies().any(|p| p.name == *name && namespace.as_ref().is_none_or(|ns| p.namespace == *ns))
            }
            Cond::Type { event } => event.matches(f),
        }
    }
}

impl Filter {
    pub fn push(&mut self, cond: Cond, negated: bool) {
        self.terms.push(Term { cond, negated });
    }

    /// Every kind must match one of its terms; no negated term may match.
    pub fn matches(&self, f: &Flow) -> bool {
        let mut kinds: BTreeMap<(&'static str, Side), bool> = BTreeMap::new();
        for t in &self.terms {
            let m = t.cond.matches(f);
            if t.negated {
                if m {
                    return false;
                }
            } else {
                *kinds.entry(t.cond.kind()).or_insert(false) |= m;
            }
        }
        kinds.values().all(|m| *m)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flows::record::*;

    /// A TCP flow from `from` (`ns/pod`, or an address) to `to` on `port`.
    pub(crate) fn flow(from: &str, to: &str, port: u16, verdict: FlowVerdict, dir: TrafficDirection) -> Flow {
        let end = |s: &str, n: u8| match s.split_once('/') {
            Some((ns, pod)) => (
                Endpoint {
                    identity: 256 + u32::from(n),
                    namespace: ns.into(),
                    pod_name: pod.into(),
                    labels: vec![format!("app={pod}")],
                },
                IpAddr::from([10, 1, 0, n]),
            ),
            None => (Endpoint { identity: 2, ..Endpoint::default() }, s.parse().expect("test address")),
        };
        let (source, sip) = end(from, 1);
        let (destination, dip) = end(to, 2);
        Flow {
            time: FlowTime(1_700_000_000_000_000_000),
            uuid: "u".into(),
            verdict,
            drop_reason_desc: None,
            reason: "policy_allow".into(),
            ip: Ip { source: sip, destination: dip, ip_version: "IPv4".into() },
            l4: L4::Tcp(Tcp { source_port: 40000, destination_port: port, flags: TcpFlags::default() }),
            source,
            destination,
            traffic_direction: dir,
            is_reply: false,
            trace_reason: TraceReason::New,
            node_name: "n1".into(),
            interface: Interface { index: 5 },
            rule_id: None,
            ingress_allowed_by: vec![],
            egress_allowed_by: vec![],
            ingress_denied_by: vec![],
            egress_denied_by: vec![],
            ingress_closest_miss: None,
            egress_closest_miss: None,
        }
    }

    /// `ns/name` of `kind`, with its rule index if given.
    pub(crate) fn attribution(ns: &str, name: &str, kind: &str, rule_index: Option<usize>) -> PolicyAttribution {
        PolicyAttribution { namespace: ns.into(), name: name.into(), kind: kind.into(), rule_index }
    }

    fn filter(args: &[(&str, &str, bool)]) -> Filter {
        let mut f = Filter::default();
        for (flag, value, not) in args {
            f.push(Cond::from_flag(flag, value).expect("valid test filter"), *not);
        }
        f
    }

    #[test]
    fn kinds_and_together_repeats_or_and_not_excludes() {
        use FlowVerdict::*;
        use TrafficDirection::*;
        let a = flow("shop/api", "shop/db", 5432, Forwarded, Ingress);
        let b = flow("shop/web", "shop/db", 5432, Dropped, Ingress);
        let c = flow("shop/api", "shop/cache", 6379, Forwarded, Egress);
        let d = flow("other/x", "192.0.2.9", 443, Dropped, Egress);
        let all = [&a, &b, &c, &d];
        let pick = |f: &Filter| -> Vec<u16> {
            all.iter()
                .filter(|x| f.matches(x))
                .map(|x| x.l4.parts().2 + u16::from(x.source.pod_name == "web"))
                .collect()
        };
        assert_eq!(pick(&Filter::default()), [5432, 5433, 6379, 443], "no filter: everything");
        // Same kind: OR.
        assert_eq!(pick(&filter(&[("to-pod", "shop/db", false), ("to-pod", "shop/cache", false)])), [5432, 5433, 6379]);
        // Different kinds: AND.
        assert_eq!(pick(&filter(&[("to-pod", "shop/db", false), ("verdict", "dropped", false)])), [5433]);
        assert_eq!(pick(&filter(&[("from-pod", "shop/api", false), ("port", "6379", false)])), [6379]);
        // --not excludes, alone and with others.
        assert_eq!(pick(&filter(&[("verdict", "DROPPED", true)])), [5432, 6379]);
        assert_eq!(pick(&filter(&[("namespace", "shop", false), ("pod", "shop/web", true)])), [5432, 6379]);
        // Sides: --pod matches either end, --from-pod only the source.
        assert_eq!(pick(&filter(&[("pod", "shop/db", false)])), [5432, 5433]);
        assert_eq!(pick(&filter(&[("from-pod", "shop/db", false)])), Vec::<u16>::new());
        assert_eq!(pick(&filter(&[("to-label", "app=cache", false)])), [6379]);
        assert_eq!(pick(&filter(&[("label", "app", false), ("traffic-direction", "egress", false)])), [6379, 443]);
        assert_eq!(pick(&filter(&[("ip", "192.0.2.9", false)])), [443]);
        assert_eq!(pick(&filter(&[("protocol", "udp", false)])), Vec::<u16>::new());
        assert_eq!(pick(&filter(&[("protocol", "TCP", false), ("port", "443", true)])), [5432, 5433, 6379]);
    }

    #[test]
    fn policy_filter_matches_allowing_and_denying_attribution() {
        let mut allowed = flow("shop/api", "shop/db", 5432, FlowVerdict::Forwarded, TrafficDirection::Ingress);
        allowed.ingress_allowed_by.push(attribution("shop", "db-from-api", "NetworkPolicy", Some(0)));
        let mut denied = flow("shop/web", "shop/db", 5432, FlowVerdict::Dropped, TrafficDirection::Egress);
        denied.egress_denied_by.push(attribution("shop", "lockdown", "NetworkPolicy", None));
        let by = |v: &str| filter(&[("policy", v, false)]);
        assert!(by("shop/db-from-api").matches(&allowed) && !by("shop/db-from-api").matches(&denied));
        assert!(by("lockdown").matches(&denied) && !by("lockdown").matches(&allowed));
        assert!(!by("other/lockdown").matches(&denied), "the namespace must match when given");
    }

    #[test]
    fn bad_filter_values_name_the_flag_and_the_value() {
        let e = Cond::from_flag("port", "http").expect_err("not a number");
        assert_eq!(e.to_string(), "--port: expected a port number 0-65535 (got \"http\")");
        assert!(matches!(Cond::from_flag("verdict", "ALLOWED"), Err(FilterError::BadValue { .. })));
        assert!(matches!(Cond::from_flag("ip", "10.0.0"), Err(FilterError::BadValue { .. })));
        assert!(matches!(Cond::from_flag("pod", "a/b/c"), Err(FilterError::BadValue { .. })));
        assert_eq!(Cond::from_flag("from-port", "1"), Err(FilterError::UnknownFlag("from-port".into())));
        // A pod without a namespace is in `default`, as hubble reads it.
        assert_eq!(
            Cond::from_flag("pod", "web"),
            Ok(Cond::Pod { side: Side::Either, namespace: "default".into(), name: "web".into() })
        );
    }

    #[test]
    fn type_filters_select_drops_traces_by_observation_point_and_policy_verdicts() {
        use FlowVerdict::*;
        use TrafficDirection::*;
        let mut denied = flow("shop/web", "shop/db", 5432, Dropped, Ingress);
        denied.reason = "policy_denied".into();
        let mut spoofed = flow("shop/web", "192.0.2.1", 80, Dropped, Egress);
        spoofed.reason = "spoofed_source".into();
        let allowed_new = flow("shop/api", "shop/db", 5432, Forwarded, Ingress);
        let mut reply = flow("shop/db", "shop/api", 40000, Forwarded, Egress);
        (reply.reason, reply.trace_reason, reply.is_reply) = ("reply".into(), TraceReason::Reply, true);
        let mut open = flow("shop/api", "shop/cache", 6379, Forwarded, Egress);
        open.reason = "not_isolated".into();
        let mut audited = flow("shop/web", "shop/cache", 6379, Audit, Ingress);
        audited.reason = "policy_denied".into();
        let mut unknown = flow("shop/web", "shop/cache", 1, Error, Ingress);
        unknown.reason = "unknown_127".into();
        let all = [&denied, &spoofed, &allowed_new, &reply, &open, &audited, &unknown];
        let names = ["denied", "spoofed", "allowed_new", "reply", "open", "audited", "unknown"];
        let pick = |args: &[(&str, &str, bool)]| -> Vec<&str> {
            let f = filter(args);
            all.iter().zip(names).filter(|(x, _)| f.matches(x)).map(|(_, n)| n).collect()
        };
        assert_eq!(pick(&[("type", "drop", false)]), ["denied", "spoofed"]);
        assert_eq!(pick(&[("type", "drop:policy_denied", false)]), ["denied"]);
        assert_eq!(pick(&[("type", "trace", false)]), ["allowed_new", "reply", "open", "audited"]);
        assert_eq!(pick(&[("type", "trace:to-endpoint", false)]), ["allowed_new", "audited"]);
        assert_eq!(pick(&[("type", "trace:from-endpoint", false)]), ["reply", "open"]);
        assert_eq!(pick(&[("type", "policy-verdict", false)]), ["denied", "allowed_new", "audited"]);
        // Repeats are alternatives, --not excludes, other kinds AND.
        assert_eq!(
            pick(&[("type", "drop", false), ("type", "policy-verdict", false)]),
            ["denied", "spoofed", "allowed_new", "audited"]
        );
        assert_eq!(pick(&[("type", "trace", true), ("to-pod", "shop/cache", false)]), ["unknown"]);
        assert_eq!(pick(&[("type", "Policy-Verdict", false), ("verdict", "FORWARDED", false)]), ["allowed_new"]);
        for bad in ["l7", "drop:policy_allow", "drop:nonsense", "trace:to-stack", "policy-verdict:x", ""] {
            assert!(matches!(Cond::from_flag("type", bad), Err(FilterError::BadValue { .. })), "{bad:?}");
        }
        assert_eq!(Cond::from_flag("from-type", "drop"), Err(FilterError::UnknownFlag("from-type".into())));
    }

    /// A peer not known yet is its own drop reason, and still a verdict of the policy lookup.
    #[test]
    fn identity_unknown_drops_have_their_own_type_and_are_policy_verdicts() {
        let mut race = flow("10.244.2.9", "shop/db", 5432, FlowVerdict::Dropped, TrafficDirection::Ingress);
        race.reason = "identity_unknown".into();
        let mut denied = flow("shop/web", "shop/db", 5432, FlowVerdict::Dropped, TrafficDirection::Ingress);
        denied.reason = "policy_denied".into();
        let matches = |ty: &str, f: &Flow| filter(&[("type", ty, false)]).matches(f);
        assert!(matches("drop:identity_unknown", &race) && !matches("drop:identity_unknown", &denied));
        assert!(!matches("drop:policy_denied", &race));
        assert!(matches("policy-verdict", &race) && matches("drop", &race));
    }

    #[test]
    fn a_filter_travels_as_json_unchanged() {
        let f = filter(&[
            ("from-pod", "shop/api", false),
            ("verdict", "DROPPED", true),
            ("policy", "shop/p", false),
            ("type", "drop:policy_denied", false),
            ("type", "trace:from-endpoint", true),
            ("type", "policy-verdict", false),
        ]);
        let json = serde_json::to_string(&f).expect("encode");
        assert_eq!(serde_json::from_str::<Filter>(&json).expect("decode"), f);
    }
}
