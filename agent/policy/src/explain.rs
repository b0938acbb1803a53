//! `ward policy explain`: why a connection is allowed or denied, side by side.
//!
//! For a pod this node polices (its identity is in `Compiled::isolation`), the verdict comes
//! from the kernel's own lookup order (`decide_new_flow`) run on the compiled maps, and the
//! deciding rule id is named through `Compiled::rules`. For any other pod it comes from the
//! reference evaluator. Either way the policies that select the pod come from the cluster,
//! and a disagreement between the datapath and the reference is shown, not hidden.

use std::fmt;
use std::net::IpAddr;

use ward_common::{Direction, Reason};

use crate::cluster::{Cluster, PodKey, PolicyRef};
use crate::compile::{Compiled, RuleInfo};
use crate::reference::{self, Peer};
use crate::tables::CompiledTables;
use crate::validate::Protocol;

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
    /// Isolated and no rule allows.
    DefaultDeny,
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
    let egress = explain_side(cluster, compiled, Direction::Egress, &from, &to, proto, port);
    let ingress = explain_side(cluster, compiled, Direction::Ingress, &from, &to, proto, port);
    Explanation { from, to, protocol: proto, port, egress, ingress }
}

fn explain_side(
    cluster: &Cluster,
    compiled: &Compiled,
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
    out.why = match datapath {
        Some((reason, rule_id)) => {
            out.allowed = reason.verdict() == ward_common::Verdict::Allow;
            match reason {
                Reason::FromHost => Why::FromHost,
                Reason::NotIsolated => Why::NotIsolated,
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
) -> Option<(Reason, u32)> {
    let (subject, peer) = match dir {
        Direction::Egress => (from, to),
        Direction::Ingress => (to, from),
    };
    let Peer::Pod(key) = subject else { return None };
    let subject_addrs = reference::addresses(cluster, subject);
    let peer_addr = pick_address(&reference::addresses(cluster, peer), subject_addrs.first())?;
    let d = CompiledTables(compiled).decide_for(key, dir, peer_addr, proto, port, *peer == Peer::Host)?;
    Some((d.reason, d.rule_id))
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
        write!(f, "  ingress at {}: {}", self.to, self.ingress)
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
            Why::DefaultDeny => write!(f, "{verdict}: default deny: selected by {}, no rule allows", selected()),
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

        let e = explain(&c, &compiled, Peer::Pod(pod("x/a")), Peer::Pod(pod("y/a")), Protocol::Udp, 53);
        assert!(!e.allowed());
        assert_eq!(e.egress.to_string(), "denied: default deny: selected by x/deny-all, no rule allows");
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
