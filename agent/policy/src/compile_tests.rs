//! Compiler tests on the conformance lab: each checks the datapath's verdicts (the kernel's
//! lookup order on the compiled maps) and the reference's against upstream's expectations,
//! plus the map-level properties `diff` and the identities promise.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ward_common::Direction;
use ward_common::identity::{ID_ANY, ID_HOST, ID_WORLD, is_cidr_identity};
use ward_common::maps::{EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IpcacheValue};

use super::*;
use crate::reference::{self, Peer};
use crate::tables::{CompiledTables, mask};
use crate::testkit::*;
use crate::validate::PodInfo;

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const SCTP: Protocol = Protocol::Sctp;
const ALL_ALLOWED: [&str; 9] = [
    ".........",
    ".........",
    ".........",
    ".........",
    ".........",
    ".........",
    ".........",
    ".........",
    ".........",
];

fn lab_with(yaml: &str) -> (Cluster, Compiled) {
    let mut c = lab();
    apply(&mut c, yaml);
    let compiled = compile_all(&c, &mut Identities::new());
    (c, compiled)
}

/// Conformance 010: a peer with both selectors needs both (here: pod b outside x).
#[test]
fn pod_and_namespace_selector_in_one_peer_are_anded() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-podselector-and-nsselector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector:
            matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
          podSelector: {matchLabels: {pod: b}}
"#,
    );
    let expected = [
        "X........",
        "X........",
        "X........",
        "X........",
        ".........",
        "X........",
        "X........",
        ".........",
        "X........",
    ];
    assert_matrix(&c, &compiled, TCP, 80, expected);
}

/// The same selectors as two peers: either one suffices.
#[test]
fn separate_peers_are_ored() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector:
            matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
        - podSelector: {matchLabels: {pod: b}}
"#,
    );
    // From y and z: all allowed; from x: only x/b (a pod selector alone means x's pods).
    let expected = [
        "X........",
        ".........",
        "X........",
        ".........",
        ".........",
        ".........",
        ".........",
        ".........",
        ".........",
    ];
    assert_matrix(&c, &compiled, TCP, 80, expected);
}

/// Conformance 031: a port-80-only policy, then an allow-all ingress rule beside it.
#[test]
fn ingress_rule_with_no_peers_and_no_ports_allows_everything() {
    let mut c = lab();
    apply(
        &mut c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-port-80, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{ports: [{port: 80}]}]
"#,
    );
    let mut ids = Identities::new();
    let compiled = compile_all(&c, &mut ids);
    let deny_x = [
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
    ];
    assert_matrix(&c, &compiled, TCP, 81, deny_x);
    assert_matrix(&c, &compiled, TCP, 80, ALL_ALLOWED);
    assert_matrix(&c, &compiled, UDP, 80, deny_x);
    apply(
        &mut c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{}]
"#,
    );
    let compiled = compile_all(&c, &mut ids);
    assert_matrix(&c, &compiled, TCP, 81, ALL_ALLOWED);
    assert_matrix(&c, &compiled, SCTP, 9999, ALL_ALLOWED);
}

/// `ingress: []` (or none) with Ingress in policyTypes denies all; `ingress: [{}]` allows all.
#[test]
fn empty_ingress_list_denies_and_one_empty_rule_allows() {
    let deny_x = [
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
    ];
    for spec in ["{podSelector: {}, ingress: []}", "{podSelector: {}}", "{podSelector: {}, policyTypes: [Ingress]}"] {
        let (c, compiled) = lab_with(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {spec}\n"
        ));
        assert_matrix(&c, &compiled, TCP, 80, deny_x);
        // The pods are isolated for ingress only.
        for letter in LETTERS {
            assert_eq!(compiled.isolation_of(&PodKey::new("x", letter)), EP_ISOLATED_INGRESS, "{spec}");
        }
    }
    let (c, compiled) = lab_with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}\n",
    );
    assert_matrix(&c, &compiled, TCP, 80, ALL_ALLOWED);
    assert_eq!(compiled.isolation_of(&pod("x/a")), EP_ISOLATED_INGRESS);
}

/// Without policyTypes, egress rules make the policy an egress policy too, and an
/// ingress-less policy with egress rules denies all ingress.
#[test]
fn omitted_policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only-to-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
"#,
    );
    assert_eq!(compiled.isolation_of(&pod("x/a")), EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS);
    assert_eq!(compiled.isolation_of(&pod("x/b")), 0);
    // x/a reaches only y; nobody reaches x/a.
    let expected = [
        "XXX...XXX",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
    ];
    assert_matrix(&c, &compiled, TCP, 80, expected);
}

/// Conformance 035: the /4 around the pods (non-canonical, as upstream writes it) except
/// x/b's /32: every pod but x/b is reachable from x/a.
#[test]
fn ip_block_except_carves_a_pod_address_out_of_the_block() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 10.0.1.1/4, except: [10.0.1.2/32]}}]
"#,
    );
    let mut expected = ALL_ALLOWED;
    expected[0] = ".X.......";
    assert_matrix(&c, &compiled, TCP, 80, expected);
    // Outside the block (and the node, which is inside it).
    let xa = Peer::Pod(pod("x/a"));
    let outside = Peer::External(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)));
    assert!(!datapath_allows(&c, &compiled, &xa, &outside, TCP, 80));
    assert!(!reference::allowed(&c, xa.clone(), outside, TCP, 80));
    assert!(datapath_allows(&c, &compiled, &xa, &Peer::Host, TCP, 80));
    // The except prefix has its own CIDR identity in the ipcache.
    let except_key = ipcache_key("10.0.1.2/32".parse().expect("prefix"));
    let xb_entry = compiled.ipcache.get(&except_key).expect("x/b's address is in the ipcache");
    assert_eq!(xb_entry.identity, compiled.pod_identity[&pod("x/b")], "the pod entry carries the label identity");
    assert!(is_cidr_identity(xb_entry.cidr_identity));
}

/// ipBlock on ingress matches pod sources by address, and external sources.
#[test]
fn ingress_ip_block_matches_pod_and_external_sources() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y-subnet, namespace: x}
spec:
  podSelector: {}
  ingress:
    - from: [{ipBlock: {cidr: 10.0.2.0/24}}, {ipBlock: {cidr: 192.168.0.0/16, except: [192.168.7.0/24]}}]
"#,
    );
    let expected = [
        "XXX......",
        "XXX......",
        "XXX......",
        ".........",
        ".........",
        ".........",
        "XXX......",
        "XXX......",
        "XXX......",
    ];
    assert_matrix(&c, &compiled, TCP, 80, expected);
    let xa = Peer::Pod(pod("x/a"));
    for (ip, want) in [([192, 168, 1, 1], true), ([192, 168, 7, 1], false), ([8, 8, 8, 8], false)] {
        let ext = Peer::External(IpAddr::V4(Ipv4Addr::from(ip)));
        assert_eq!(datapath_allows(&c, &compiled, &ext, &xa, TCP, 80), want, "{ext}");
        assert_eq!(reference::allowed(&c, ext, xa.clone(), TCP, 80), want);
    }
    // The node is always let in.
    assert!(datapath_allows(&c, &compiled, &Peer::Host, &xa, TCP, 80));
}

/// Conformance 038: an SCTP rule does not open TCP.
#[test]
fn sctp_rule_does_not_open_tcp() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-sctp-ingress-on-port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress: [{ports: [{port: 81, protocol: SCTP}]}]
"#,
    );
    let deny_x = [
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
    ];
    assert_matrix(&c, &compiled, TCP, 81, deny_x);
    let sctp = [
        ".XX......",
        ".XX......",
        ".XX......",
        ".XX......",
        ".XX......",
        ".XX......",
        ".XX......",
        ".XX......",
        ".XX......",
    ];
    assert_matrix(&c, &compiled, SCTP, 81, sctp);
}

const BASE_INGRESS: &str = r#"
          ingress:
            - ports: [{port: 80, protocol: TCP}]
              from:
                - podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}
                  namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [x, y]}]}"#;

fn pa_base(ingress: &str, egress_ports: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: base, namespace: x}}
spec:
          podSelector: {{matchLabels: {{pod: a}}}}
          policyTypes: [Ingress, Egress]{ingress}
          egress:
            - ports: [{egress_ports}]
              to:
                - podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [a, b]}}]}}
                  namespaceSelector: {{matchExpressions: [{{key: ns, operator: In, values: [y, z]}}]}}
            - ports: [{{protocol: UDP, port: 53}}, {{protocol: TCP, port: 53}}]
"#
    )
}

/// Conformance 058 (policy-assistant): egress TCP 53-84 to pods a, b of y and z.
#[test]
fn end_port_range_covers_its_ports_and_no_others() {
    let (c, compiled) = lab_with(&pa_base(BASE_INGRESS, "{protocol: TCP, port: 53, endPort: 84}"));
    let tcp = [
        "XXX..X..X",
        ".........",
        ".........",
        "X........",
        ".........",
        ".........",
        "X........",
        "X........",
        "X........",
    ];
    assert_matrix(&c, &compiled, TCP, 80, tcp);
    let tcp81 = [
        "XXX..X..X",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
    ];
    assert_matrix(&c, &compiled, TCP, 81, tcp81);
    let udp = [
        "XXXXXXXXX",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
    ];
    assert_matrix(&c, &compiled, UDP, 80, udp);
    // Range edges: 84 in, 85 out; 53 in (both rules), 52 out.
    let (xa, yb) = (Peer::Pod(pod("x/a")), Peer::Pod(pod("y/b")));
    for (port, want) in [(52, false), (53, true), (84, true), (85, false)] {
        assert_eq!(datapath_allows(&c, &compiled, &xa, &yb, TCP, port), want, "port {port}");
        assert_eq!(reference::allowed(&c, xa.clone(), yb.clone(), TCP, port), want, "port {port}");
    }
}

/// Conformance 065: egress to a named port with the wrong protocol opens nothing.
#[test]
fn egress_named_port_with_wrong_protocol_opens_nothing() {
    let (c, compiled) = lab_with(&pa_base(BASE_INGRESS, "{protocol: TCP, port: serve-81-udp}"));
    let tcp = [
        "XXXXXXXXX",
        ".........",
        ".........",
        "X........",
        ".........",
        ".........",
        "X........",
        "X........",
        "X........",
    ];
    assert_matrix(&c, &compiled, TCP, 80, tcp);
    let rest = [
        "XXXXXXXXX",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
    ];
    assert_matrix(&c, &compiled, TCP, 81, rest);
    assert_matrix(&c, &compiled, UDP, 81, rest);
}

/// Conformance 068: ingress on a named port with the wrong protocol opens nothing.
#[test]
fn ingress_named_port_with_wrong_protocol_opens_nothing() {
    let ingress = r#"
          ingress:
            - ports: [{protocol: TCP, port: serve-81-udp}]
              from:
                - podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}
                  namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [x, y]}]}"#;
    let (c, compiled) = lab_with(&pa_base(ingress, "{port: 80, protocol: TCP}"));
    let tcp80 = [
        "XXX..X..X",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
    ];
    assert_matrix(&c, &compiled, TCP, 80, tcp80);
    let rest = [
        "XXXXXXXXX",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
    ];
    assert_matrix(&c, &compiled, TCP, 81, rest);
    assert_matrix(&c, &compiled, UDP, 81, rest);
}

/// Conformance 017: an ingress named port resolves on the destination pod.
#[test]
fn ingress_named_port_opens_the_named_port_only() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{ports: [{port: serve-81-tcp}]}]
"#,
    );
    assert_matrix(&c, &compiled, TCP, 81, ALL_ALLOWED);
    let deny_x = [
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
        "XXX......",
    ];
    assert_matrix(&c, &compiled, TCP, 80, deny_x);
    assert_matrix(&c, &compiled, UDP, 81, deny_x);
}

/// Conformance 047: egress to a named port plus DNS; the DNS rule opens nothing on 80/81.
#[test]
fn egress_named_port_resolves_on_each_destination() {
    let mut c = lab();
    // z/c names its port 80 differently: the name must resolve per destination pod.
    if let Some(info) = c.pods.get_mut(&pod("z/c")) {
        for np in info.ports.iter_mut().filter(|np| np.name == "serve-80-tcp") {
            np.name = "web".into();
        }
        info.ports.sort();
    }
    apply(
        &mut c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: serve-80-tcp}, {protocol: UDP, port: 53}]}]
"#,
    );
    let compiled = compile_all(&c, &mut Identities::new());
    let tcp80 = [
        "........X",
        "........X",
        "........X",
        ".........",
        ".........",
        ".........",
        ".........",
        ".........",
        ".........",
    ];
    assert_matrix(&c, &compiled, TCP, 80, tcp80);
    let deny = [
        "XXXXXXXXX",
        "XXXXXXXXX",
        "XXXXXXXXX",
        ".........",
        ".........",
        ".........",
        ".........",
        ".........",
        ".........",
    ];
    assert_matrix(&c, &compiled, TCP, 81, deny);
    assert_matrix(&c, &compiled, UDP, 80, deny);
    // Not to the world either: named ports exist only on pods.
    let ext = Peer::External(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)));
    assert!(!datapath_allows(&c, &compiled, &Peer::Pod(pod("x/a")), &ext, TCP, 80));
    assert!(datapath_allows(&c, &compiled, &Peer::Pod(pod("x/a")), &ext, UDP, 53));
}

/// Egress ipBlock + named port: two pods with the same identity, one inside the block and
/// one outside; only the one inside may be reached, on the named port only.
#[test]
fn egress_ip_block_with_named_port_is_exact_per_pod_address() {
    let mut c = lab();
    // y/a's twin (same labels and ports, so the same label identity) outside the block.
    let mut twin = c.pods[&pod("y/a")].clone();
    twin.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1))];
    c.pods.insert(pod("y/twin"), twin);
    apply(
        &mut c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-y-subnet-http, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.3/32]}}]
      ports: [{port: serve-80-tcp}]
"#,
    );
    let compiled = compile_all(&c, &mut Identities::new());
    assert_eq!(compiled.pod_identity[&pod("y/a")], compiled.pod_identity[&pod("y/twin")]);
    let xa = Peer::Pod(pod("x/a"));
    let cases = [("y/a", TCP, 80, true), ("y/b", TCP, 80, true), ("y/c", TCP, 80, false), ("y/twin", TCP, 80, false)];
    for (to, proto, port, want) in cases {
        let to = Peer::Pod(pod(to));
        assert_eq!(reference::allowed(&c, xa.clone(), to.clone(), proto, port), want, "reference {to}");
        assert_eq!(datapath_allows(&c, &compiled, &xa, &to, proto, port), want, "datapath {to}");
    }
    for (to, proto, port) in [("y/a", TCP, 81), ("y/a", UDP, 80)] {
        assert!(!datapath_allows(&c, &compiled, &xa, &Peer::Pod(pod(to)), proto, port));
    }
    // A non-pod address in the block has no named ports.
    let ext = Peer::External(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 200)));
    assert!(!datapath_allows(&c, &compiled, &xa, &ext, TCP, 80));
}

/// `::/0` must not match IPv4 addresses, although IPv4 sits inside it in the shared trie.
#[test]
fn ipv6_block_never_matches_ipv4_addresses() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v6-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: "::/0"}}]}]
"#,
    );
    let xa = Peer::Pod(pod("x/a"));
    let v4 = Peer::External(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)));
    let v6 = Peer::External(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
    assert!(!reference::allowed(&c, xa.clone(), v4.clone(), TCP, 80));
    assert!(!datapath_allows(&c, &compiled, &xa, &v4, TCP, 80));
    assert!(datapath_allows(&c, &compiled, &xa, &v6, TCP, 80));
    assert!(!datapath_allows(&c, &compiled, &xa, &Peer::Pod(pod("y/b")), TCP, 80));
}

/// Traffic from the node to a pod is always allowed, even under deny-all; a pod reaching
/// the node is policed like any address (here: denied, then allowed by an ipBlock).
#[test]
fn host_to_pod_is_always_allowed_and_pod_to_host_is_policed() {
    let deny_all = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;
    let (c, compiled) = lab_with(deny_all);
    let xa = Peer::Pod(pod("x/a"));
    assert!(datapath_allows(&c, &compiled, &Peer::Host, &xa, TCP, 80));
    assert!(reference::allowed(&c, Peer::Host, xa.clone(), TCP, 80));
    assert!(!datapath_allows(&c, &compiled, &xa, &Peer::Host, TCP, 80));
    let host_entry = compiled.ipcache[&ipcache_key(IpNet::from(IpAddr::V4(HOST)))];
    assert_eq!(host_entry, IpcacheValue { identity: ID_HOST, cidr_identity: ID_WORLD });

    let (c, compiled) = lab_with(&format!(
        "{deny_all}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: to-node, namespace: x}}\nspec:\n  podSelector: {{}}\n  egress: [{{to: [{{ipBlock: {{cidr: 10.0.255.0/24}}}}]}}]\n"
    ));
    assert!(datapath_allows(&c, &compiled, &xa, &Peer::Host, TCP, 80));
    assert!(reference::allowed(&c, xa.clone(), Peer::Host, TCP, 80));
}

/// Conformance 028: x/a may reach only y/a; y/b's ingress allows x/a, but x/a's egress
/// does not allow y/b, so the client side denies it.
#[test]
fn egress_deny_at_the_client_wins_over_ingress_allow_at_the_server() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-ns-y-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-xa-on-ya-match-selector, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {pod: a}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-xa-on-yb-match-selector, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {pod: a}}}]
"#,
    );
    let expected = [
        "XXX.XXXXX",
        "...XX....",
        "...XX....",
        "...XX....",
        "...XX....",
        "...XX....",
        "...XX....",
        "...XX....",
        "...XX....",
    ];
    assert_matrix(&c, &compiled, TCP, 80, expected);
}

/// Only local pods are subjects; every pod is in the ipcache.
#[test]
fn only_local_pods_get_policy_entries_and_isolation() {
    let mut c = lab();
    apply(
        &mut c,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}\n",
    );
    let local = BTreeSet::from([pod("x/a")]);
    let compiled = compile(&c, &local, &mut Identities::new());
    let xa = compiled.pod_identity[&pod("x/a")];
    assert_eq!(compiled.isolation, BTreeMap::from([(xa, EP_ISOLATED_INGRESS)]));
    assert!(compiled.policy.keys().all(|k| k.subject() == xa));
    assert_eq!(compiled.policy.len(), 1);
    let only = compiled.policy.keys().next().expect("one entry");
    assert_eq!((only.peer(), only.prefixlen), (ID_ANY, ward_common::maps::POLICY_ANY_PROTO_BITS));
    assert_eq!(compiled.ipcache.len(), 9 + 1, "9 pods and the node");
}

/// Two rules producing the same entry: the smaller rule id wins, whatever the order.
#[test]
fn overlapping_rules_keep_the_smallest_rule_id() {
    let (_, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 80}]}, {ports: [{port: 80}, {port: 81}]}]
"#,
    );
    let rule_of = |index| {
        compiled
            .rules
            .iter()
            .find(|(_, r)| r.direction == Direction::Ingress && r.index == index)
            .map(|(id, _)| *id)
            .expect("rule allocated")
    };
    let (r0, r1) = (rule_of(0), rule_of(1));
    assert!(r0 < r1);
    let xa = compiled.pod_identity[&pod("x/a")];
    let t = CompiledTables(&compiled);
    use ward_common::lookup::Tables;
    let at = |port| t.policy(&PolicyKey::lookup(xa, ID_ANY, Direction::Ingress, 6, port)).map(|v| v.rule_id);
    assert_eq!(at(80), Some(r0));
    assert_eq!(at(81), Some(r1));
}

/// Every stored key is canonical: no bits past its prefix length (the LPM emulation and
/// the kernel's trie both rely on it).
#[test]
fn stored_keys_have_no_bits_past_their_prefix() {
    let (_, compiled) = lab_with(&pa_base(BASE_INGRESS, "{protocol: TCP, port: 53, endPort: 84}"));
    for k in compiled.ipcache.keys() {
        assert_eq!(mask(k.addr, k.prefixlen), k.addr, "{k:?}");
    }
    for k in compiled.policy.keys() {
        let port = k.port();
        let port_bits = k.prefixlen.saturating_sub(80);
        assert_eq!(mask(port.to_be_bytes(), port_bits), k.port_be, "{k:?}");
        if k.prefixlen <= 72 {
            assert_eq!((k.proto, port), (0, 0));
        }
    }
}

// --- diff ----------------------------------------------------------------------------------

fn three_pods() -> Cluster {
    let mut c = Cluster::new();
    c.set_namespace("x", Labels::new());
    for (name, app, ip) in [("p1", "a", 1), ("p2", "a", 2), ("p3", "b", 3)] {
        let info = PodInfo {
            labels: labels(&[("app", app)]),
            ports: vec![],
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip))],
        };
        c.pods.insert(PodKey::new("x", name), info);
    }
    apply(
        &mut c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-to-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: b}}}]}]
"#,
    );
    c
}

#[test]
fn relabelling_a_pod_to_an_existing_identity_changes_one_ipcache_entry_and_no_policy_entry() {
    let mut c = three_pods();
    let mut ids = Identities::new();
    let before = compile_all(&c, &mut ids);
    if let Some(p) = c.pods.get_mut(&PodKey::new("x", "p2")) {
        p.labels = labels(&[("app", "b")]);
    }
    let after = compile_all(&c, &mut ids);
    let delta = diff(&before, &after);
    assert_eq!(delta.ipcache_upserts.len(), 1, "{delta:#?}");
    assert!(
        delta.ipcache_deletes.is_empty() && delta.policy_upserts.is_empty() && delta.policy_deletes.is_empty(),
        "{delta:#?}"
    );
    let (key, value) = delta.ipcache_upserts[0];
    assert_eq!(key, ipcache_key("10.0.0.2/32".parse().expect("prefix")));
    assert_eq!(value.identity, after.pod_identity[&PodKey::new("x", "p3")]);
    // And the relabelled pod is now treated as a b: a's may reach it, it may not reach b's.
    let (p1, p2, p3) =
        (Peer::Pod(PodKey::new("x", "p1")), Peer::Pod(PodKey::new("x", "p2")), Peer::Pod(PodKey::new("x", "p3")));
    assert!(datapath_allows(&c, &after, &p1, &p2, TCP, 80));
    assert!(!datapath_allows(&c, &after, &p2, &p3, TCP, 80));
}

#[test]
fn editing_one_rule_touches_only_its_entries() {
    let mut c = three_pods();
    let mut ids = Identities::new();
    let before = compile_all(&c, &mut ids);
    apply(
        &mut c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 81}]}]
"#,
    );
    let after = compile_all(&c, &mut ids);
    let delta = diff(&before, &after);
    let (a, b) = (after.pod_identity[&PodKey::new("x", "p1")], after.pod_identity[&PodKey::new("x", "p3")]);
    assert!(delta.ipcache_upserts.is_empty() && delta.ipcache_deletes.is_empty());
    assert_eq!(
        delta.policy_deletes,
        vec![PolicyKey::port_block(b, a, Direction::Ingress, 6, PortBlock { base: 80, prefix_len: 16 })]
    );
    let upserted: Vec<PolicyKey> = delta.policy_upserts.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        upserted,
        vec![PolicyKey::port_block(b, a, Direction::Ingress, 6, PortBlock { base: 81, prefix_len: 16 })]
    );
    let mut applied = before.clone();
    delta.apply_to(&mut applied);
    assert_eq!((applied.ipcache, applied.policy), (after.ipcache.clone(), after.policy.clone()));
    assert!(diff(&after, &after).is_empty());
}

// --- identities across compiles -------------------------------------------------------------

#[test]
fn compile_is_deterministic_and_persisted_identities_give_the_same_maps() {
    let mut c = lab();
    apply(&mut c, &pa_base(BASE_INGRESS, "{protocol: TCP, port: 53, endPort: 84}"));
    apply(
        &mut c,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: cidr, namespace: y}\nspec:\n  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.3.0/24]}}], ports: [{port: serve-80-tcp}]}]\n",
    );
    let mut ids = Identities::new();
    let first = compile_all(&c, &mut ids);
    let saved = serde_json::to_string(&ids).expect("serialises");
    assert_eq!(compile_all(&c, &mut ids), first, "same inputs, same maps");
    let mut restored: Identities = serde_json::from_str(&saved).expect("deserialises");
    assert_eq!(compile_all(&c, &mut restored), first, "a restarted agent gets the same numbers");
    // Another agent starting from nothing gets the same numbers too (allocation in key order).
    assert_eq!(compile_all(&c, &mut Identities::new()), first);
}

#[test]
fn gc_keeps_live_numbers_and_frees_the_rest() {
    let mut c = three_pods();
    let mut ids = Identities::new();
    let before = compile_all(&c, &mut ids);
    let p3 = PodKey::new("x", "p3");
    let b = before.pod_identity[&p3];
    c.pods.remove(&p3);
    c.policies.remove(&PolicyRef::new("x", "a-to-b"));
    let after = compile_all(&c, &mut ids);
    assert_eq!(ids.gc(&after.live()), 2, "identity of app=b and the rule of a-to-b");
    assert_eq!(ids.label_key(b), None);
    assert_eq!(compile_all(&c, &mut ids), after, "live numbers are kept");
}

#[test]
fn prefix_index_finds_the_same_longest_prefix_as_a_scan() {
    let prefixes: BTreeSet<IpNet> = [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.1.2.3/32",
        "192.168.0.0/16",
        "::/0",
        "fd00::/8",
        "fd00:1::/32",
    ]
    .iter()
    .map(|s| s.parse().expect("test prefix"))
    .collect();
    let index = super::PrefixIndex::new(&prefixes);
    let scan = |ip: IpAddr| {
        let ip = ip.to_canonical();
        prefixes.iter().filter(|n| n.contains(&ip)).max_by_key(|n| n.prefix_len()).copied()
    };
    for a in [
        "10.1.2.3",
        "10.1.2.4",
        "10.1.3.1",
        "10.2.0.1",
        "192.168.9.9",
        "8.8.8.8",
        "::ffff:10.1.2.3",
        "fd00:1::1",
        "fd00:2::1",
        "2001:db8::1",
    ] {
        let ip: IpAddr = a.parse().expect("test address");
        assert_eq!(index.longest(ip), scan(ip), "{a}");
    }
    let only_v6 = super::PrefixIndex::new(&["::/0".parse().expect("prefix")].into_iter().collect());
    assert_eq!(only_v6.longest("10.0.0.1".parse().expect("ip")), None, "IPv6 prefixes never contain IPv4");
}

#[test]
fn cidrs_within_finds_the_same_identities_as_a_scan() {
    let keys = [
        ("0.0.0.0/0", false),
        ("10.0.0.0/8", false),
        ("10.0.0.0/16", true),
        ("10.1.0.0/16", false),
        ("10.1.2.0/24", false),
        ("10.1.2.3/32", true),
        ("10.1.2.3/32", false),
        ("10.255.255.255/32", false),
        ("11.0.0.0/8", false),
        ("192.168.0.0/16", false),
        ("::/0", false),
        ("fd00::/8", false),
        ("fd00:1::/32", true),
    ];
    let port = NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 80 };
    let cidr_ids: BTreeMap<CidrKey, u32> = keys
        .iter()
        .enumerate()
        .map(|(i, (p, flavoured))| {
            let ports = if *flavoured { vec![port.clone()] } else { vec![] };
            (CidrKey { prefix: p.parse().expect("test prefix"), ports }, i as u32)
        })
        .collect();
    for c in ["0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "12.0.0.0/8", "::/0", "fd00::/8"]
    {
        let cidr: IpNet = c.parse().expect("test cidr");
        let fast: Vec<u32> = super::cidrs_within(&cidr_ids, &cidr).map(|(_, id)| *id).collect();
        let scan: Vec<u32> = cidr_ids.iter().filter(|(k, _)| cidr.contains(&k.prefix)).map(|(_, id)| *id).collect();
        assert_eq!(fast, scan, "{c}");
    }
}

/// A WardNetworkPolicy's HTTP port admits the connection for its requests only (never every
/// request), an fqdn peer opens nothing in the policy map (the DNS proxy writes learned
/// addresses per pod into WARD_FQDN, see `fqdn_subjects_go_behind_the_proxy_with_their_rules`),
/// and the policy's plain ports and peers work as in a NetworkPolicy.
#[test]
fn http_ports_admit_requests_only_and_fqdn_peers_fail_closed() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: policy.ward.dev/v1alpha1
kind: WardNetworkPolicy
metadata: {name: l7, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
    - ports:
        - {port: 80, protocol: TCP, http: [{method: GET, path: /}]}
        - {port: 81, protocol: TCP}
  egress:
    - to: [{fqdn: {matchName: api.bank.example}}]
    - to: [{podSelector: {matchLabels: {pod: b}}}]
"#,
    );
    // Nobody reaches x/a on port 80 for every request (HTTP rules only); x/a reaches only x/b.
    let expected80 = [
        "X.XXXXXXX",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
        "X........",
    ];
    assert_matrix(&c, &compiled, TCP, 80, expected80);
    // Port 81 is plain L4: everyone reaches x/a.
    let mut expected81 = ALL_ALLOWED;
    expected81[0] = "X.XXXXXXX";
    assert_matrix(&c, &compiled, TCP, 81, expected81);
    // Port 80 admits every peer's connection for GET / only, as the reference says.
    let xa = pod("x/a");
    for from in ["x/b", "y/c", "z/a"] {
        let addr = addr_of(&c, &Peer::Pod(pod(from))).expect("address");
        let d = datapath_decision(&compiled, Direction::Ingress, &xa, addr, TCP, 80);
        assert!(d.http_only(), "{from}: {d:?}");
        let set = &compiled.http_sets[&d.http[2]];
        assert_eq!(set.entries().len(), 1);
        assert_eq!((set.entries()[0].method(), set.entries()[0].path()), (Some(&b"GET"[..]), &b"/"[..]));
        let r = reference::side(&c, Direction::Ingress, &Peer::Pod(pod(from)), &Peer::Pod(xa.clone()), TCP, 80);
        assert_eq!((r.allowed, r.http_by.len()), (false, 1), "{from}");
    }
    let id = compiled.pod_identity[&xa];
    assert_ne!(compiled.isolation[&id] & EP_HTTP_INGRESS, 0, "x/a's endpoint goes through the HTTP program");
    let xb = compiled.pod_identity[&pod("x/b")];
    assert_eq!(compiled.isolation[&xb] & EP_HTTP_INGRESS, 0);
}

const HTTP_TWO_POLICIES: &str = r#"
apiVersion: policy.ward.dev/v1alpha1
kind: WardNetworkPolicy
metadata: {name: api, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: b}}}]
      ports: [{port: 8080, http: [{method: GET, pathPrefix: /v1/items/}, {path: /healthz}]}]
---
apiVersion: policy.ward.dev/v1alpha1
kind: WardNetworkPolicy
metadata: {name: admin, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: b}}}]
      ports: [{port: 8080, http: [{method: POST, path: /v1/admin}]}]
    - from: [{podSelector: {matchLabels: {pod: c}}}]
      ports: [{protocol: TCP, http: [{method: GET, path: /metrics}]}]
"#;

/// The rules of every policy that selects the pod for one peer and port form one set (the
/// union); a broader HTTP entry's rules (any port) join a narrower one's.
#[test]
fn http_rules_of_several_policies_and_ports_are_one_union() {
    let (c, compiled) = lab_with(HTTP_TWO_POLICIES);
    let xa = pod("x/a");
    let rules = |from: &str, port: u16| -> Vec<String> {
        let addr = addr_of(&c, &Peer::Pod(pod(from))).expect("address");
        let d = datapath_decision(&compiled, Direction::Ingress, &xa, addr, TCP, port);
        let mut out: Vec<String> = d
            .http
            .iter()
            .filter(|s| **s != 0)
            .flat_map(|s| compiled.http_sets[s].entries().to_vec())
            .map(|e| {
                let m = e.method().map_or("*".into(), |m| String::from_utf8_lossy(m).into_owned());
                let kind = if e.kind == ward_common::http::rules::KIND_PREFIX { "*" } else { "" };
                format!("{m} {}{kind}", String::from_utf8_lossy(e.path()))
            })
            .collect();
        out.sort();
        out
    };
    assert_eq!(rules("x/b", 8080), ["* /healthz", "GET /v1/items/*", "POST /v1/admin"]);
    assert_eq!(rules("x/c", 8080), ["GET /metrics"]);
    assert_eq!(rules("x/c", 9090), ["GET /metrics"]);
    assert!(rules("y/b", 8080).is_empty());
    let yb = addr_of(&c, &Peer::Pod(pod("y/b"))).expect("address");
    assert_eq!(
        datapath_decision(&compiled, Direction::Ingress, &xa, yb, TCP, 8080).reason,
        ward_common::Reason::PolicyDenied
    );
    assert!(compiled.http_warnings.is_empty(), "{:?}", compiled.http_warnings);
}

/// Union semantics: a plain allow for the same peer and port, in the same or another
/// policy, under the same or a broader entry or for any peer, moots the HTTP rules, and the
/// compiler says so.
#[test]
fn a_plain_allow_for_the_same_peer_and_port_moots_http_rules_and_is_reported() {
    for plain in [
        "from: [{podSelector: {matchLabels: {pod: b}}}]\n      ports: [{port: 8080}]",
        "from: [{podSelector: {matchLabels: {pod: b}}}]\n      ports: [{port: 8000, endPort: 8100}]",
        "from: [{podSelector: {matchLabels: {pod: b}}}]",
        "ports: [{port: 8080}]",
        "{}",
    ] {
        let plain = plain.replace("\\n", "\n");
        let yaml = format!(
            "{HTTP_TWO_POLICIES}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: open, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n    - {plain}\n"
        );
        let (c, compiled) = lab_with(&yaml);
        let addr = addr_of(&c, &Peer::Pod(pod("x/b"))).expect("address");
        let d = datapath_decision(&compiled, Direction::Ingress, &pod("x/a"), addr, TCP, 8080);
        assert_eq!((d.reason, d.http_only()), (ward_common::Reason::PolicyAllow, false), "{plain}");
        assert!(datapath_side(&compiled, Direction::Ingress, &pod("x/a"), addr, TCP, 8080), "{plain}");
        assert!(
            compiled.http_warnings.iter().any(|w| matches!(w, HttpWarning::Moot { .. })),
            "{plain}: {:?}",
            compiled.http_warnings
        );
        let r = reference::side(&c, Direction::Ingress, &Peer::Pod(pod("x/b")), &Peer::Pod(pod("x/a")), TCP, 8080);
        assert!(r.allowed && !r.http_by.is_empty(), "{plain}");
    }
}

/// HTTP set ids are stable: the same rules keep their number across compiles (the kernel
/// never sees one id mean two rule sets), and unused ones are freed by gc.
#[test]
fn http_set_ids_are_stable_and_freed_when_unused() {
    let mut c = lab();
    apply(&mut c, HTTP_TWO_POLICIES);
    let mut ids = Identities::new();
    let first = compile_all(&c, &mut ids);
    let again = compile_all(&c, &mut ids);
    assert_eq!(first.http_sets, again.http_sets);
    assert_eq!(first.policy, again.policy);
    let old: BTreeSet<u32> = first.http_sets.keys().copied().collect();
    c.policies.retain(|k, _| k.name != "admin");
    let fewer = compile_all(&c, &mut ids);
    ids.gc(&fewer.live());
    let now: BTreeSet<u32> = fewer.http_sets.keys().copied().collect();
    assert!(now.iter().all(|id| !old.contains(id)), "x/b's set changed content, so it has a new id");
    for id in &old {
        assert!(ids.http_set_key(*id).is_none(), "set {id} freed");
    }
    let restored: Identities = serde_json::from_str(&serde_json::to_string(&ids).expect("json")).expect("back");
    assert_eq!(restored, ids);
}

/// Issue 13, item 3, at the compiler: when an `except` prefix gets no CIDR identity (the
/// space is exhausted), its enclosing block stays out of the ipcache too, so the excepted
/// addresses never take the block's identity. Fewer allows, never more.
#[test]
fn a_block_whose_except_has_no_identity_stays_out_of_the_ipcache() {
    let mut c = lab();
    apply(
        &mut c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-block, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 172.16.0.0/12, except: [172.17.0.0/16]}}]
"#,
    );
    let x_a = pod("x/a");
    let outside = |a: &str| Peer::External(a.parse().expect("address"));
    let excepted = "172.17.3.4";
    let inside = "172.18.0.1";
    // With room for every identity: the block allows, the except does not.
    let full = compile_all(&c, &mut Identities::new());
    assert!(datapath_allows(&c, &full, &Peer::Pod(x_a.clone()), &outside(inside), TCP, 80));
    assert!(!datapath_allows(&c, &full, &Peer::Pod(x_a.clone()), &outside(excepted), TCP, 80));
    // Room for one CIDR identity: the block (first in key order) gets it, its except does not.
    let mut ids = Identities::with_cidr_room(1);
    let short = compile_all(&c, &mut ids);
    assert_eq!(short.cidr_identity.len(), 1, "only one prefix numbered: {:?}", short.cidr_identity);
    assert!(
        !datapath_allows(&c, &short, &Peer::Pod(x_a.clone()), &outside(excepted), TCP, 80),
        "an excepted address must never be allowed through the block"
    );
    assert!(!datapath_allows(&c, &short, &Peer::Pod(x_a), &outside(inside), TCP, 80), "the block is withheld");
    let block = ipcache_key("172.16.0.0/12".parse().expect("net"));
    assert!(!short.ipcache.contains_key(&block), "the block is not in the ipcache");
}

/// Issue 13, item 5: an address this node assigned (to a local pod, by its CNI plugin) or owns
/// is never taken over by what another Pod object claims; claims between pods none of which
/// this node placed leave the address to no pod. Each conflict names both objects.
#[test]
fn addresses_the_node_assigned_or_owns_are_never_taken_by_a_claim() {
    let mut c = lab();
    // Remote pods (not local) whose objects claim x/b's address, the node's, and each other's.
    let claim = |name: &str, ip: &str, app: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: w, labels: {{app: {app}}}}}\nstatus: {{podIP: {ip}}}\n"
        )
    };
    let x_b_ip = lab_ip(0, 1).to_string();
    apply(&mut c, &claim("aa-thief", &x_b_ip, "db"));
    apply(&mut c, &claim("node-thief", &HOST.to_string(), "db"));
    apply(&mut c, &claim("r1", "10.99.0.7", "one"));
    apply(&mut c, &claim("r2", "10.99.0.7", "two"));
    let local: BTreeSet<PodKey> = lab().pods.keys().cloned().collect();
    let compiled = compile(&c, &local, &mut Identities::new());
    let entry = |ip: &str| compiled.ipcache[&ipcache_key(host_net(ip.parse().expect("ip")))];
    assert_eq!(entry(&x_b_ip).identity, compiled.pod_identity[&pod("x/b")], "the local pod keeps its address");
    assert_eq!(entry(&HOST.to_string()).identity, ID_HOST, "the node keeps its address");
    assert_eq!(entry("10.99.0.7").identity, ID_UNKNOWN_POD, "a contested remote address is nobody's");
    let shown: Vec<String> = compiled.address_conflicts.iter().map(|c| c.to_string()).collect();
    assert_eq!(compiled.address_conflicts.len(), 3, "{shown:#?}");
    assert!(
        shown.iter().any(|s| s.contains(&x_b_ip) && s.contains("Pod x/b") && s.contains("Pod w/aa-thief")),
        "{shown:#?}"
    );
    assert!(shown.iter().any(|s| s.contains("address of this node") && s.contains("Pod w/node-thief")), "{shown:#?}");
    assert!(
        shown.iter().any(|s| s.contains("10.99.0.7") && s.contains("Pod w/r1") && s.contains("Pod w/r2")),
        "{shown:#?}"
    );
    // Once one claim remains, its pod has the address.
    c.pods.remove(&pod("w/r1"));
    let compiled = compile(&c, &local, &mut Identities::new());
    assert_eq!(
        compiled.ipcache[&ipcache_key(host_net("10.99.0.7".parse().expect("ip")))].identity,
        compiled.pod_identity[&pod("w/r2")]
    );
}

/// Containers of one pod may share a port name (the API server accepts it): a named port
/// then opens every container port of that name and the rule's protocol, on ingress (the
/// subject's ports), on egress to selected pods, to any peer, and through an ipBlock.
#[test]
fn a_port_name_shared_by_containers_opens_each_of_their_ports() {
    let mut c = lab();
    apply(
        &mut c,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: multi, namespace: y, labels: {pod: multi}}
spec:
  containers:
    - {name: web, ports: [{name: http, containerPort: 8080}, {name: metrics, containerPort: 9100}]}
    - {name: sidecar, ports: [{name: http, containerPort: 9090}]}
    - {name: dns, ports: [{name: http, containerPort: 8080, protocol: UDP}]}
status: {podIP: 10.0.2.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: multi-http, namespace: y}
spec:
  podSelector: {matchLabels: {pod: multi}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-http, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: multi}}}]
      ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-any-http, namespace: z}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{ports: [{port: http, protocol: UDP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-block-http, namespace: z}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.2.0/24}}], ports: [{port: http}]}]
"#,
    );
    let compiled = compile_all(&c, &mut Identities::new());
    let multi = Peer::Pod(pod("y/multi"));
    let cases = [
        // Ingress at y/multi from x/a (x/a's egress allows http to multi).
        ("x/a", TCP, 8080, true),
        ("x/a", TCP, 9090, true),
        ("x/a", TCP, 9100, false),
        ("x/a", UDP, 8080, false),
        // From y/a: ingress at multi allows only namespace x.
        ("y/a", TCP, 8080, false),
        // z/a: egress UDP http to any peer; multi's ingress allows TCP http only.
        ("z/a", UDP, 8080, false),
        // z/b: egress through an ipBlock; ingress at multi still denies z.
        ("z/b", TCP, 9090, false),
    ];
    for (from, proto, port, want) in cases {
        let from = Peer::Pod(pod(from));
        assert_eq!(reference::allowed(&c, from.clone(), multi.clone(), proto, port), want, "reference {from} {port}");
        assert_eq!(datapath_allows(&c, &compiled, &from, &multi, proto, port), want, "datapath {from} {port}");
    }
    // The egress sides alone, where ingress at multi does not hide them.
    let egress = |from: &str, proto, port| {
        datapath_side(&compiled, Direction::Egress, &pod(from), "10.0.2.9".parse().expect("ip"), proto, port)
    };
    for (from, proto, port, want) in [
        ("x/b", TCP, 8080, true),
        ("x/b", TCP, 9090, true),
        ("x/b", TCP, 9100, false),
        ("z/a", UDP, 8080, true),
        ("z/a", UDP, 9090, false),
        ("z/b", TCP, 8080, true),
        ("z/b", TCP, 9090, true),
        ("z/b", TCP, 9100, false),
    ] {
        let spec = reference::side(&c, Direction::Egress, &Peer::Pod(pod(from)), &multi, proto, port).allowed;
        assert_eq!(spec, want, "reference egress {from} {proto} {port}");
        assert_eq!(egress(from, proto, port), want, "datapath egress {from} {proto} {port}");
    }
}

/// A pod an fqdn policy selects for egress carries `EP_DNS_PROXY` and gets its rules (rule
/// id and port blocks per selector); `dns` rules list every way it reaches port 53, a plain
/// NetworkPolicy's included; other pods are not behind the proxy.
#[test]
fn fqdn_subjects_go_behind_the_proxy_with_their_rules() {
    use crate::fqdn_policy::{L4Block, QueryVerdict};
    let (c, compiled) = lab_with(
        r#"
apiVersion: policy.ward.dev/v1alpha1
kind: WardNetworkPolicy
metadata: {name: fqdn, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{fqdn: {matchName: api.bank.example}}, {fqdn: {matchPattern: "*.s3.example"}}]
      ports: [{port: 443, protocol: TCP}, {port: 8000, endPort: 8003, protocol: TCP}]
    - to: [{podSelector: {matchLabels: {pod: b}}}]
      ports: [{port: 53, protocol: UDP, dns: [{matchPattern: "*.bank.example"}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-to-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {pod: c}}}]
      ports: [{port: 53, protocol: UDP}]
"#,
    );
    let a = compiled.pod_identity[&pod("x/a")];
    assert_ne!(compiled.isolation_of(&pod("x/a")) & ward_common::fqdn::EP_DNS_PROXY, 0);
    assert_eq!(compiled.isolation_of(&pod("x/b")) & ward_common::fqdn::EP_DNS_PROXY, 0);
    let fp = &compiled.fqdn[&a];
    assert_eq!(compiled.fqdn.len(), 1, "only x/a is behind the proxy");
    let selectors: Vec<String> = fp.rules.iter().map(|r| r.selector.to_string()).collect();
    assert_eq!(selectors, ["api.bank.example", "*.s3.example"], "in selector order (exact before patterns)");
    let blocks = fp.rules[0].ports.clone().expect("ports");
    assert_eq!(blocks[0], L4Block { proto: 6, base: 443, prefix_len: 16 });
    assert_eq!(blocks[1], L4Block { proto: 6, base: 8000, prefix_len: 14 }, "8000-8003 as one block");
    let info = &compiled.rules[&fp.rules[0].rule_id];
    assert_eq!((info.policy.name.as_str(), info.index), ("fqdn", 0));
    // DNS to x/b: only *.bank.example; to x/c (the plain NetworkPolicy): any name.
    let b = compiled.pod_identity[&pod("x/b")];
    let cc = compiled.pod_identity[&pod("x/c")];
    assert_eq!(fp.query_allowed([b, ID_WORLD], 17, "api.bank.example"), QueryVerdict::Allowed);
    assert_eq!(fp.query_allowed([b, ID_WORLD], 17, "evil.example"), QueryVerdict::Refused);
    assert_eq!(fp.query_allowed([cc, ID_WORLD], 17, "evil.example"), QueryVerdict::Allowed);
    assert_eq!(fp.query_allowed([ID_WORLD, ID_WORLD], 17, "api.bank.example"), QueryVerdict::Refused);
    let _ = c;
}

/// Service ranges resolve to `ID_SERVICE` in the ipcache, and so does every policy prefix
/// inside one: egress to a Service address is decided on its backend, never on an ipBlock
/// naming the address. Prefixes outside keep `ID_WORLD`; the range keeps the CIDR identity
/// of the policy prefix holding it.
#[test]
fn service_ranges_and_the_prefixes_inside_them_resolve_to_the_service_identity() {
    use ward_common::identity::ID_SERVICE;
    let mut c = lab();
    c.service_cidrs = vec!["10.96.0.0/16".parse().expect("range")];
    apply(
        &mut c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: blocks, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 10.0.0.0/8}}, {ipBlock: {cidr: 10.96.0.10/32}}]
"#,
    );
    let compiled = compile_all(&c, &mut Identities::new());
    let range = compiled.ipcache[&ipcache_key("10.96.0.0/16".parse().expect("prefix"))];
    assert_eq!(range.identity, ID_SERVICE);
    let wide = compiled.ipcache[&ipcache_key("10.0.0.0/8".parse().expect("prefix"))];
    assert_eq!(wide.identity, ID_WORLD, "a prefix holding the range is not a Service address");
    assert_eq!(range.cidr_identity, wide.cidr_identity, "the range carries the CIDR identity holding it");
    let inside = compiled.ipcache[&ipcache_key("10.96.0.10/32".parse().expect("prefix"))];
    assert_eq!(inside.identity, ID_SERVICE, "an ipBlock on a ClusterIP does not make it world");
    assert!(is_cidr_identity(inside.cidr_identity));
    // The kernel's own lookup: egress from x/a to the ClusterIP is deferred, not decided.
    let d = datapath_decision(&compiled, Direction::Egress, &pod("x/a"), "10.96.0.10".parse().expect("ip"), TCP, 80);
    assert_eq!(d.reason, ward_common::Reason::ServicePending);
}

/// The identity race: cluster pod ranges resolve to `ID_UNKNOWN_POD` where no known pod
/// holds the address, and so does a policy prefix inside one; every address keeps the CIDR
/// identity it had without the ranges, so ipBlocks decide as before, and a default deny of
/// such an address is `IdentityUnknown` while a known pod's stays `PolicyDenied`. A range
/// inside a Service range is left to the Service.
#[test]
fn pod_ranges_resolve_to_the_unknown_pod_identity_and_keep_every_cidr_identity() {
    use ward_common::Reason;
    use ward_common::identity::{ID_SERVICE, ID_UNKNOWN_POD};
    use ward_common::lookup::Tables;
    let mut c = lab();
    c.service_cidrs = vec!["10.96.0.0/12".parse().expect("range")];
    apply(
        &mut c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: blocks, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
    - from: [{ipBlock: {cidr: 10.0.9.128/25, except: [10.0.9.192/26]}}]
      ports: [{port: 80}]
    - from: [{ipBlock: {cidr: 10.0.0.0/16}}]
      ports: [{port: 81}]
"#,
    );
    let without = compile_all(&c, &mut Identities::new());
    // 10.0.3.0/24 holds namespace z's pods (another node's range); 10.0.9.0/24 no pod yet.
    let ranges = ["10.0.3.0/24", "10.0.9.0/24", "10.96.1.0/24"];
    c.pod_cidrs = ranges.iter().map(|r| r.parse().expect("range")).collect();
    let compiled = compile_all(&c, &mut Identities::new());
    let entry = |p: &str| compiled.ipcache[&ipcache_key(p.parse().expect("prefix"))];
    let wide = entry("10.0.0.0/16");
    assert_eq!(wide.identity, ID_WORLD, "a prefix holding a range is not a pod");
    assert_eq!(entry("10.0.9.0/24"), IpcacheValue { identity: ID_UNKNOWN_POD, cidr_identity: wide.cidr_identity });
    assert_eq!(entry("10.0.3.0/24"), IpcacheValue { identity: ID_UNKNOWN_POD, cidr_identity: wide.cidr_identity });
    let inside = entry("10.0.9.128/25");
    assert_eq!(inside.identity, ID_UNKNOWN_POD, "a policy prefix inside a pod range keeps that identity");
    assert_ne!(inside.cidr_identity, wide.cidr_identity);
    assert_eq!(entry("10.0.9.192/26").identity, ID_UNKNOWN_POD);
    assert!(!compiled.ipcache.contains_key(&ipcache_key("10.96.1.0/24".parse().expect("prefix"))));
    assert!(compiled.policy.keys().all(|k| k.peer() != ID_UNKNOWN_POD), "no rule names a pod not known yet");

    // Address by address: the CIDR identity is the one without the ranges; the label
    // identity changes only for addresses in a range that no pod holds.
    let ranges: Vec<IpNet> = c.pod_cidrs.clone();
    let (before, after) = (CompiledTables(&without), CompiledTables(&compiled));
    for a in ["10.0.9.1", "10.0.9.130", "10.0.9.200", "10.0.3.3", "10.0.3.77", "10.0.4.1", "10.0.255.1", "10.96.1.5"]
        .iter()
        .chain(&["192.0.2.1", "10.1.0.1", "fd00::1"])
    {
        let ip: IpAddr = a.parse().expect("address");
        let world = IpcacheValue { identity: ID_WORLD, cidr_identity: ID_WORLD };
        let (b, n) = (before.ipcache(&addr16(ip)).unwrap_or(world), after.ipcache(&addr16(ip)).unwrap_or(world));
        assert_eq!(n.cidr_identity, b.cidr_identity, "{a}: the CIDR identity is unchanged");
        let pod_addr = c.pods.values().any(|p| p.ips.contains(&ip));
        let unknown = ranges.iter().any(|r| r.contains(&ip)) && !pod_addr && !ip.to_string().starts_with("10.96.");
        assert_eq!(n.identity == ID_UNKNOWN_POD, unknown, "{a}: {n:?}");
    }
    assert_eq!(after.ipcache(&addr16("10.96.1.5".parse().expect("ip"))).map(|v| v.identity), Some(ID_SERVICE));

    // The kernel's lookup at x/a (isolated for ingress).
    let at = |from: &str, port| {
        datapath_decision(&compiled, Direction::Ingress, &pod("x/a"), from.parse().expect("ip"), TCP, port).reason
    };
    assert_eq!(at("10.0.9.1", 80), Reason::IdentityUnknown, "a pod not known yet, no rule allows it");
    assert_eq!(at("10.0.9.200", 80), Reason::IdentityUnknown, "inside the except");
    assert_eq!(at("10.0.9.130", 80), Reason::PolicyAllow, "the ipBlock inside the range still allows");
    assert_eq!(at("10.0.9.1", 81), Reason::PolicyAllow, "and so does the one holding it");
    assert_eq!(at(&lab_ip(2, 0).to_string(), 80), Reason::PolicyDenied, "z/a is known: a real deny");
    assert_eq!(at("192.0.2.1", 80), Reason::PolicyDenied, "outside every pod range: the world");
}
