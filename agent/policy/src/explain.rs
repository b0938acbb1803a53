//! `ward policy explain`: why a connection is allowed or denied, side by side.
//!
//! For a pod this node polices (its identity is in `Compiled::isolation`), the verdict comes
//! from the kernel's own lookup order (`decide_new_flow`) run on the compiled maps, and the
//! deciding rule id is named through `Compiled::rules`. For any other pod it comes from the
//! reference evaluator. Either way the policies that select the pod come from the cluster,
//! and a disagreement between the datapath and the reference is shown, not hidden.
//!
//! A default-deny side of a local pod also names its closest miss ([`miss`]: the rule that
//! matched the peer but not the port, or the port but not the peer, read from the compiled
//! map, as flow records name it), and the explanation lists warnings about the policies
//! that select either end ([`warnings`]: ipBlocks that cover pod or node addresses, rules
//! another rule shadows).

pub mod miss;
pub mod warnings;

use std::fmt;
use std::net::IpAddr;

use ward_common::http::parse::{Driven, Parser, drive};
use ward_common::http::rules::match_request;
use ward_common::{Direction, Reason};

use crate::cluster::{Cluster, PodKey, PolicyRef};
use crate::compile::{Compiled, RuleInfo};
use crate::reference::{self, Peer};
use crate::tables::CompiledTables;
use crate::validate::Protocol;
use miss::{ClosestMiss, MissIndex};
use warnings::Warning;

/// The explanation of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub from: Peer,
    pub to: Peer,
    pub protocol: Protocol,
    pub port: u16,
    /// Egress at the source.
    pub egress: SideExplanation,
    /// Ingress at the destination.
    pub ingress: SideExplanation,
    /// What the HTTP rules at the destination say, when a port there has them for this peer.
    pub http: Option<HttpExplanation>,
    /// Mistakes in the policies that select either end (see [`warnings`]).
    pub warnings: Vec<Warning>,
}

/// The HTTP part of an explanation: which rules apply and, for a given request, the
/// datapath's own decision (the kernel's parser, normaliser and matcher, run here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExplanation {
    /// The rules that admit requests (`METHOD path`, `*` for any method, a trailing `*` for
    /// a prefix), each with the policy rule it comes from.
    pub rules: Vec<String>,
    /// A plain (L4) allow for the same peer and port makes the HTTP rules moot.
    pub moot_by: Option<String>,
    /// The request asked about and its verdict.
    pub request: Option<RequestVerdict>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVerdict {
    pub method: String,
    pub target: String,
    /// The path as the datapath compares it, when it could normalise it.
    pub normalized: Option<String>,
    pub allowed: bool,
    /// The rule that admits it, or why it is refused.
    pub why: String,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.egress.allowed && self.ingress.allowed
    }
}

/// One side's verdict and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideExplanation {
    pub direction: Direction,
    /// The pod whose policy applies; `None` when this end is not a pod.
    pub subject: Option<PodKey>,
    /// Policies selecting the subject for this direction.
    pub selected_by: Vec<PolicyRef>,
    pub isolated: bool,
    pub allowed: bool,
    pub why: Why,
    /// The datapath's verdict differs from the reference evaluator's: a compiler bug or
    /// stale maps. Shown in the text.
    pub reference_disagrees: bool,
    /// For a default deny of a local pod: the rule that came closest to allowing.
    pub closest_miss: Option<ClosestMiss>,
}

/// How a side's verdict was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// This end is not a pod: nothing to police on this side.
    NotAPod,
    /// Ingress from the node, always allowed.
    FromHost,
    NotIsolated,
    /// The rule that allows (for a local pod, the one the datapath hit).
    AllowedBy {
        rule_id: Option<u32>,
        rule: RuleInfo,
    },
    /// Isolated, and only rules with HTTP rules admit the connection: its requests are
    /// judged one by one (see [`Explanation::http`]).
    HttpRules {
        rule: RuleInfo,
    },
    /// Isolated and no rule allows.
    DefaultDeny,
    /// Isolated and no rule allows a peer whose address lies in a cluster pod range without
    /// a known pod (`Reason::IdentityUnknown`): a pod not known to this node yet.
    IdentityUnknown,
    /// Not isolated by enforced policies; audited policies would deny it (`Reason::Audit`).
    Audited,
    /// Egress to a Service address: decided on the backend kube-proxy translates it to, not
    /// here (`ward_common::service`): explain the backend pod instead.
    ServiceBackend,
}

/// Explains a connection from `from` to `to` on `proto`/`port`.
pub fn explain(
    cluster: &Cluster,
    compiled: &Compiled,
    from: Peer,
    to: Peer,
    proto: Protocol,
    port: u16,
) -> Explanation {
    let misses = MissIndex::build(&compiled.policy);
    let egress = explain_side(cluster, compiled, &misses, Direction::Egress, &from, &to, proto, port);
    let ingress = explain_side(cluster, compiled, &misses, Direction::Ingress, &from, &to, proto, port);
    let ends: Vec<PodKey> = [&from, &to]
        .into_iter()
        .filter_map(|p| match p {
            Peer::Pod(k) => Some(k.clone()),
            Peer::Host | Peer::External(_) => None,
        })
        .collect();
    let warnings = warnings::for_pods(cluster, &ends);
    Explanation { from, to, protocol: proto, port, egress, ingress, http: None, warnings }
}

/// [`explain`], and what the HTTP rules at the destination do with `METHOD target` (the
/// request target as a client would send it, query and encoding included).
pub fn explain_request(
    cluster: &Cluster,
    compiled: &Compiled,
    from: Peer,
    to: Peer,
    port: u16,
    request: Option<(&str, &str)>,
) -> Explanation {
    let mut e = explain(cluster, compiled, from, to, Protocol::Tcp, port);
    let reference = reference::side(cluster, Direction::Ingress, &e.from, &e.to, Protocol::Tcp, port);
    let sets = http_sets(cluster, compiled, &e.from, &e.to, port);
    if reference.http_by.is_empty() && sets.is_none() {
        return e;
    }
    let mut http = HttpExplanation { rules: vec![], moot_by: None, request: None };
    for (policy, index, port_index) in &reference.http_by {
        let Some(p) = cluster.policies.get(policy) else { continue };
        let spec = p
            .ingress
            .as_ref()
            .and_then(|r| r.get(*index))
            .and_then(|r| r.ports.as_ref())
            .and_then(|ps| ps.get(*port_index));
        for r in spec.and_then(|s| s.http.as_ref()).into_iter().flatten() {
            http.rules.push(format!("{r} ({policy} ingress rule {index})"));
        }
    }
    if e.ingress.allowed && sets.is_none() {
        http.moot_by = Some(e.ingress.to_string());
    }
    if let Some((method, target)) = request {
        let verdict = judge_request(compiled, sets.as_ref(), method, target);
        if sets.is_some() {
            // Only HTTP rules admit the connection: the request decides the ingress side.
            e.ingress.allowed = verdict.allowed;
        }
        http.request = Some(verdict);
    }
    e.http = Some(http);
    e
}

/// The HTTP sets the datapath would judge this connection's requests with (`None` when the
/// connection is not HTTP-policed there).
fn http_sets(cluster: &Cluster, compiled: &Compiled, from: &Peer, to: &Peer, port: u16) -> Option<[u32; 3]> {
    let Peer::Pod(key) = to else { return None };
    let subject_addrs = reference::addresses(cluster, to);
    let peer_addr = pick_address(&reference::addresses(cluster, from), subject_addrs.first())?;
    let d = CompiledTables(compiled).decide_for(
        key,
        Direction::Ingress,
        peer_addr,
        Protocol::Tcp,
        port,
        *from == Peer::Host,
    )?;
    d.http_only().then_some(d.http)
}

/// The datapath's decision for one request: the shared parser and matcher over the bytes a
/// client would send.
fn judge_request(compiled: &Compiled, sets: Option<&[u32; 3]>, method: &str, target: &str) -> RequestVerdict {
    let bytes = format!("{method} {target} HTTP/1.1\r\nHost: explain\r\n\r\n");
    let mut parser = Parser::NEW;
    let mut rule = None;
    let mut normalized = None;
    let verdict = drive(
        &mut parser,
        bytes.as_bytes(),
        |p| {
            normalized = Some(String::from_utf8_lossy(p.path()).into_owned());
            rule = sets.into_iter().flatten().filter(|s| **s != 0).find_map(|s| {
                let set = compiled.http_sets.get(s)?;
                match_request(set, &p.method, p.method_len, &p.path.out, p.path.len as usize).copied()
            });
            rule.is_some()
        },
        |_| {},
    );
    let mut out = RequestVerdict {
        method: method.to_owned(),
        target: target.to_owned(),
        normalized,
        allowed: matches!(verdict, Driven::Passed),
        why: String::new(),
    };
    out.why = match (verdict, rule, sets) {
        (_, _, None) => "no HTTP rules apply to this connection".into(),
        (Driven::Denied { error: Some(e), .. }, _, _) => format!("refused before matching: {}", e.as_str()),
        (Driven::Denied { error: None, .. }, _, _) => "no HTTP rule matches".into(),
        (Driven::Passed, Some(r), _) => match compiled.rules.get(&r.rule_id) {
            Some(info) => format!(
                "allowed by {} ingress rule {} port {} http[{}]",
                info.policy, info.index, r.port_index, r.http_index
            ),
            None => format!("allowed by rule id {}", r.rule_id),
        },
        (Driven::Passed, None, _) => "allowed".into(),
    };
    if sets.is_none() {
        out.allowed = true;
    }
    out
}

#[expect(clippy::too_many_arguments, reason = "one side of one connection, all of it needed")]
fn explain_side(
    cluster: &Cluster,
    compiled: &Compiled,
    misses: &MissIndex,
    dir: Direction,
    from: &Peer,
    to: &Peer,
    proto: Protocol,
    port: u16,
) -> SideExplanation {
    let reference = reference::side(cluster, dir, from, to, proto, port);
    // `None` when the subject is not local or an end has no address to look up.
    let datapath = datapath(cluster, compiled, dir, from, to, proto, port);
    let mut out = SideExplanation {
        direction: dir,
        subject: reference.subject.clone(),
        selected_by: reference.selected_by.clone(),
        isolated: reference.isolated(),
        allowed: reference.allowed,
        why: Why::NotAPod,
        reference_disagrees: false,
        closest_miss: None,
    };
    if out.subject.is_none() {
        return out;
    }
    let first_rule = || {
        reference.allowed_by.first().map(|(policy, index)| RuleInfo {
            policy: policy.clone(),
            direction: dir,
            index: *index,
        })
    };
    if let Some(d) = &datapath
        && matches!(d.reason, Reason::PolicyDenied | Reason::IdentityUnknown)
        && let Some(subject) = out.subject.as_ref().and_then(|k| compiled.pod_identity.get(k))
    {
        let peers = [d.peer.identity, d.peer.cidr_identity];
        out.closest_miss = misses.closest_miss(&compiled.rules, *subject, dir, peers, proto.number(), port);
    }
    let datapath = datapath.map(|d| (d.reason, d.rule_id, d.http_only()));
    out.why = match datapath {
        Some((_, rule_id, true)) => {
            out.allowed = false;
            match compiled.rules.get(&rule_id) {
                Some(rule) => Why::HttpRules { rule: rule.clone() },
                None => Why::DefaultDeny,
            }
        }
        Some((reason, rule_id, false)) => {
            out.allowed = reason.verdict() == ward_common::Verdict::Allow;
            match reason {
                Reason::FromHost => Why::FromHost,
                Reason::NotIsolated => Why::NotIsolated,
                Reason::Audit => Why::Audited,
                Reason::ServicePending => Why::ServiceBackend,
                Reason::IdentityUnknown => Why::IdentityUnknown,
                Reason::PolicyAllow => match compiled.rules.get(&rule_id) {
                    Some(rule) => Why::AllowedBy { rule_id: Some(rule_id), rule: rule.clone() },
                    // A rule id the compiled state does not know: say what the policy says.
                    None => match first_rule() {
                        Some(rule) => Why::AllowedBy { rule_id: Some(rule_id), rule },
                        None => Why::DefaultDeny,
                    },
                },
                _ => Why::DefaultDeny,
            }
        }
        None if reference.from_host => Why::FromHost,
        None if !reference.isolated() => Why::NotIsolated,
        None => match first_rule() {
            Some(rule) => Why::AllowedBy { rule_id: None, rule },
            None => Why::DefaultDeny,
        },
    };
    // The datapath's answer is the verdict, but a mismatch with the spec must show.
    out.reference_disagrees = out.allowed != reference.allowed;
    out
}

/// Runs the kernel's decision for a local subject.
fn datapath(
    cluster: &Cluster,
    compiled: &Compiled,
    dir: Direction,
    from: &Peer,
    to: &Peer,
    proto: Protocol,
    port: u16,
) -> Option<ward_common::lookup::Decision> {
    let (subject, peer) = match dir {
        Direction::Egress => (from, to),
        Direction::Ingress => (to, from),
    };
    let Peer::Pod(key) = subject else { return None };
    let subject_addrs = reference::addresses(cluster, subject);
    let peer_addr = pick_address(&reference::addresses(cluster, peer), subject_addrs.first())?;
    CompiledTables(compiled).decide_for(key, dir, peer_addr, proto, port, *peer == Peer::Host)
}

/// The peer address a packet would carry: one of the subject's family if there is one.
fn pick_address(addrs: &[IpAddr], subject: Option<&IpAddr>) -> Option<IpAddr> {
    let same = |a: &&IpAddr| subject.is_none_or(|s| s.is_ipv4() == a.is_ipv4());
    addrs.iter().find(same).or(addrs.first()).copied()
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed() { "ALLOWED" } else { "DENIED" };
        writeln!(f, "{} {} -> {} port {}: {verdict}", self.protocol, self.from, self.to, self.port)?;
        writeln!(f, "  egress at {}: {}", self.from, self.egress)?;
        write!(f, "  ingress at {}: {}", self.to, self.ingress)?;
        for side in [&self.egress, &self.ingress] {
            if let Some(m) = &side.closest_miss {
                write!(
                    f,
                    "\n  closest miss ({}): {}",
                    side.direction.as_str(),
                    m.text(self.protocol.number(), self.port)
                )?;
            }
        }
        if let Some(h) = &self.http {
            write!(
                f,
                "\n  http rules at {}: {}",
                self.to,
                if h.rules.is_empty() { "none".into() } else { h.rules.join(", ") }
            )?;
            if let Some(by) = &h.moot_by {
                write!(f, "\n  WARNING: these HTTP rules are moot for this peer and port, every request passes: {by}")?;
            }
            if let Some(r) = &h.request {
                let verdict = if r.allowed { "ALLOWED" } else { "DENIED" };
                write!(f, "\n  request {} {}: {verdict}", r.method, r.target)?;
                if let Some(n) = &r.normalized {
                    write!(f, " (path as matched: {n})")?;
                }
                write!(f, ": {}", r.why)?;
            }
        }
        for w in &self.warnings {
            write!(f, "\n  WARNING: {w}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SideExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.direction.as_str();
        let selected = || self.selected_by.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
        let verdict = if self.allowed { "allowed" } else { "denied" };
        match &self.why {
            Why::NotAPod => write!(f, "allowed: not a pod, no {dir} policy applies"),
            Why::FromHost => write!(f, "allowed: from the node (traffic from the host to a pod is always allowed)"),
            Why::NotIsolated => write!(f, "{verdict}: not isolated for {dir} (no policy selects it for {dir})"),
            Why::AllowedBy { rule_id, rule } => {
                write!(f, "{verdict}: allowed by {} {} rule {}", rule.policy, rule.direction.as_str(), rule.index)?;
                if let Some(id) = rule_id {
                    write!(f, " (rule id {id})")?;
                }
                write!(f, "; selected by {}", selected())
            }
            Why::HttpRules { rule } => write!(
                f,
                "{verdict} for every request: only HTTP rules admit it ({} {} rule {}), each request is judged; selected by {}",
                rule.policy,
                rule.direction.as_str(),
                rule.index,
                selected()
            ),
            Why::DefaultDeny => write!(f, "{verdict}: default deny: selected by {}, no rule allows", selected()),
            Why::IdentityUnknown => write!(
                f,
                "{verdict}: default deny (identity_unknown): selected by {}, no rule allows; the peer's address is \
                 in a cluster pod range but no known pod holds it (a pod this node does not know yet: no pod \
                 selector can match it until its Pod object arrives)",
                selected()
            ),
            Why::Audited => write!(
                f,
                "{verdict}: not isolated for {dir} by enforced policies; AUDIT: audited policies would deny it"
            ),
            Why::ServiceBackend => write!(
                f,
                "decided on the backend: a Service address, translated by kube-proxy; explain the backend pod"
            ),
        }?;
        if self.reference_disagrees {
            let spec = if self.allowed { "deny" } else { "allow" };
            write!(f, " [WARNING: the policy spec says {spec}; the loaded maps disagree]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::compile::compile;
    use crate::identity::Identities;
    use crate::testkit::{apply, compile_all, lab, pod};

    const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: c}}}]
    - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
      ports: [{port: 80}]
"#;

    fn setup() -> (Cluster, Compiled) {
        let mut c = lab();
        apply(&mut c, POLICIES);
        let compiled = compile_all(&c, &mut Identities::new());
        (c, compiled)
    }

    /// Egress of an isolated pod to a Service address is not decided on the address: explain
    /// says so and points at the backend.
    #[test]
    fn a_service_address_is_explained_as_decided_on_its_backend() {
        let mut c = lab();
        c.service_cidrs = vec!["10.96.0.0/16".parse().expect("range")];
        apply(&mut c, POLICIES);
        apply(
            &mut c,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: y}\n\
             spec: {podSelector: {}, policyTypes: [Egress]}\n",
        );
        let compiled = compile_all(&c, &mut Identities::new());
        let svc = Peer::External("10.96.0.10".parse().expect("ip"));
        let e = explain(&c, &compiled, Peer::Pod(pod("y/a")), svc, Protocol::Tcp, 80);
        assert_eq!(e.egress.why, Why::ServiceBackend);
        assert!(e.egress.to_string().contains("decided on the backend"), "{}", e.egress);
    }

    /// An address in a pod range that no known pod holds is explained as the identity race;
    /// a known pod or an address outside the ranges denied alike stays a plain default deny.
    #[test]
    fn an_unknown_address_in_a_pod_range_is_explained_as_identity_unknown() {
        let mut c = lab();
        c.pod_cidrs = vec!["10.0.3.0/24".parse().expect("range")];
        apply(&mut c, POLICIES);
        let compiled = compile_all(&c, &mut Identities::new());
        let new_pod = Peer::External("10.0.3.99".parse().expect("ip"));
        let e = explain(&c, &compiled, new_pod, Peer::Pod(pod("x/b")), Protocol::Tcp, 80);
        assert!(!e.allowed() && !e.ingress.reference_disagrees, "{e}");
        assert_eq!(e.ingress.why, Why::IdentityUnknown);
        assert!(e.ingress.to_string().contains("identity_unknown"), "{}", e.ingress);
        for from in [Peer::Pod(pod("z/a")), Peer::External("192.0.2.1".parse().expect("ip"))] {
            let e = explain(&c, &compiled, from, Peer::Pod(pod("x/b")), Protocol::Tcp, 81);
            assert_eq!(e.ingress.why, Why::DefaultDeny, "{e}");
        }
    }

    #[test]
    fn names_the_allowing_rule_and_the_default_deny() {
        let (c, compiled) = setup();
        let e = explain(&c, &compiled, Peer::Pod(pod("y/a")), Peer::Pod(pod("x/b")), Protocol::Tcp, 80);
        assert!(e.allowed());
        assert_eq!(e.egress.why, Why::NotIsolated);
        match &e.ingress.why {
            Why::AllowedBy { rule_id: Some(id), rule } => {
                assert_eq!(
                    (rule.policy.to_string(), rule.direction, rule.index),
                    ("x/web".into(), Direction::Ingress, 1)
                );
                assert_eq!(compiled.rules.get(id), Some(rule));
            }
            other => panic!("expected a rule, got {other:?}"),
        }
        let text = e.to_string();
        assert!(text.starts_with("TCP y/a -> x/b port 80: ALLOWED"), "{text}");
        assert!(text.contains("egress at y/a: allowed: not isolated for egress"), "{text}");
        assert!(text.contains("ingress at x/b: allowed: allowed by x/web ingress rule 1 (rule id"), "{text}");
        assert!(text.contains("selected by x/deny-all, x/web"), "{text}");

        let e = explain(&c, &compiled, Peer::Pod(pod("y/a")), Peer::Pod(pod("x/b")), Protocol::Tcp, 81);
        assert!(!e.allowed());
        assert_eq!(e.ingress.why, Why::DefaultDeny);
        assert_eq!(e.ingress.to_string(), "denied: default deny: selected by x/deny-all, x/web, no rule allows");
        assert!(!e.ingress.reference_disagrees);
        // The closest miss: web's rule 1 admits namespace y, on port 80 only.
        let miss = e.ingress.closest_miss.as_ref().expect("a closest miss");
        assert_eq!(
            (miss.rule.policy.to_string(), miss.rule.index, miss.matched),
            ("x/web".into(), 1, miss::Matched::Peer)
        );
        assert!(
            e.to_string().contains(
                "\n  closest miss (ingress): x/web ingress rule 1 allows this peer but not port 81/TCP (only 80/TCP)"
            ),
            "{e}"
        );
        // x/a is neither c nor in y: both rules admit port 80, to others; the first is named.
        let e = explain(&c, &compiled, Peer::Pod(pod("x/a")), Peer::Pod(pod("x/b")), Protocol::Tcp, 80);
        let miss = e.ingress.closest_miss.as_ref().expect("a closest miss");
        assert_eq!((miss.rule.index, miss.matched), (0, miss::Matched::Port), "{e}");
        assert!(e.to_string().contains("x/web ingress rule 0 allows port 80/TCP but not this peer"), "{e}");

        let e = explain(&c, &compiled, Peer::Pod(pod("x/a")), Peer::Pod(pod("y/a")), Protocol::Udp, 53);
        assert!(!e.allowed());
        assert_eq!(e.egress.to_string(), "denied: default deny: selected by x/deny-all, no rule allows");
        assert_eq!(e.egress.closest_miss, None, "deny-all has no rule to come close");
        assert_eq!(e.ingress.why, Why::NotIsolated);
    }

    #[test]
    fn node_and_external_ends() {
        let (c, compiled) = setup();
        let e = explain(&c, &compiled, Peer::Host, Peer::Pod(pod("x/a")), Protocol::Tcp, 80);
        assert!(e.allowed());
        assert_eq!((e.egress.why.clone(), e.ingress.why.clone()), (Why::NotAPod, Why::FromHost));
        assert!(e.to_string().contains("ingress at x/a: allowed: from the node"), "{e}");
        let ext = Peer::External("192.0.2.1".parse().expect("ip"));
        let e = explain(&c, &compiled, Peer::Pod(pod("x/a")), ext, Protocol::Tcp, 443);
        assert!(!e.allowed());
        assert!(e.to_string().contains("ingress at 192.0.2.1: allowed: not a pod"), "{e}");
    }

    /// A port name two containers share: explain names the rule for each of its ports, on
    /// the local (datapath) and the remote (reference) path alike.
    #[test]
    fn a_shared_port_name_is_explained_on_each_of_its_ports() {
        let mut c = lab();
        apply(
            &mut c,
            r#"
apiVersion: v1
kind: Pod
metadata: {name: multi, namespace: x, labels: {pod: multi}}
spec:
  containers:
    - {name: web, ports: [{name: http, containerPort: 8080}]}
    - {name: sidecar, ports: [{name: http, containerPort: 9090}]}
status: {podIP: 10.0.1.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: multi-http, namespace: x}
spec:
  podSelector: {matchLabels: {pod: multi}}
  ingress: [{ports: [{port: http}]}]
"#,
        );
        let rule = RuleInfo { policy: PolicyRef::new("x", "multi-http"), direction: Direction::Ingress, index: 0 };
        for local in [true, false] {
            let subjects = if local { BTreeSet::from([pod("x/multi")]) } else { BTreeSet::new() };
            let compiled = compile(&c, &subjects, &mut Identities::new());
            for (port, allowed) in [(8080, true), (9090, true), (8081, false)] {
                let e = explain(&c, &compiled, Peer::Pod(pod("y/a")), Peer::Pod(pod("x/multi")), Protocol::Tcp, port);
                assert_eq!(e.allowed(), allowed, "{e}");
                assert!(!e.ingress.reference_disagrees, "{e}");
                match &e.ingress.why {
                    Why::AllowedBy { rule_id, rule: r } => {
                        assert!(allowed, "{e}");
                        assert_eq!((r, rule_id.is_some()), (&rule, local), "{e}");
                    }
                    Why::DefaultDeny => assert!(!allowed, "{e}"),
                    other => panic!("port {port}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn http_requests_are_explained_with_the_datapath_s_own_parser_and_rules() {
        let mut c = lab();
        apply(
            &mut c,
            r#"
apiVersion: policy.ward.dev/v1alpha1
kind: WardNetworkPolicy
metadata: {name: api, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: b}}}]
      ports: [{port: 8080, http: [{method: GET, pathPrefix: /v1/items/}]}]
"#,
        );
        let compiled = compile_all(&c, &mut Identities::new());
        let ask = |target: &str| {
            explain_request(&c, &compiled, Peer::Pod(pod("x/b")), Peer::Pod(pod("x/a")), 8080, Some(("GET", target)))
        };
        let ok = ask("/v1/items/7?x=1");
        assert!(ok.allowed(), "{ok}");
        assert!(!ok.ingress.reference_disagrees, "{ok}");
        let text = ok.to_string();
        assert!(
            text.contains("http rules at x/a: GET /v1/items/* (x/api (WardNetworkPolicy) ingress rule 0)"),
            "{text}"
        );
        assert!(
            text.contains("request GET /v1/items/7?x=1: ALLOWED (path as matched: /v1/items/7): allowed by x/api"),
            "{text}"
        );
        let dots = ask("/v1/items/../admin");
        assert!(!dots.allowed());
        assert!(dots.to_string().contains("(path as matched: /v1/admin): no HTTP rule matches"), "{dots}");
        let slash = ask("/v1/items%2F7");
        assert!(!slash.allowed());
        assert!(slash.to_string().contains("refused before matching: encoded_slash_or_backslash"), "{slash}");
        // Another peer is not admitted at all; with a plain allow the rules are moot.
        let other = explain_request(
            &c,
            &compiled,
            Peer::Pod(pod("y/b")),
            Peer::Pod(pod("x/a")),
            8080,
            Some(("GET", "/v1/items/7")),
        );
        assert!(!other.allowed(), "{other}");
        apply(
            &mut c,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 8080}]}]\n",
        );
        let compiled = compile_all(&c, &mut Identities::new());
        let moot = explain_request(
            &c,
            &compiled,
            Peer::Pod(pod("x/b")),
            Peer::Pod(pod("x/a")),
            8080,
            Some(("DELETE", "/anything")),
        );
        assert!(moot.allowed(), "{moot}");
        assert!(moot.to_string().contains("WARNING: these HTTP rules are moot"), "{moot}");
    }

    #[test]
    fn pods_not_on_this_node_are_explained_from_the_policies() {
        let mut c = lab();
        apply(&mut c, POLICIES);
        let compiled = compile(&c, &BTreeSet::from([pod("y/a")]), &mut Identities::new());
        let e = explain(&c, &compiled, Peer::Pod(pod("x/c")), Peer::Pod(pod("x/b")), Protocol::Sctp, 7);
        // x/c's egress is denied by deny-all even though x/b's ingress allows x/c.
        assert!(!e.allowed());
        assert_eq!(e.egress.why, Why::DefaultDeny);
        let rule = RuleInfo { policy: PolicyRef::new("x", "web"), direction: Direction::Ingress, index: 0 };
        assert_eq!(e.ingress.why, Why::AllowedBy { rule_id: None, rule });
    }
}
