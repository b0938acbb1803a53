//! Audit mode in the compiler: audited policies (by annotation, `spec.mode` or their
//! namespace) change nothing that passes or drops; the kernel's lookup on the compiled maps
//! says `Audit` exactly where the audited policies, were they enforced, would deny.

use ward_common::Reason;
use ward_common::http::rules::EP_HTTP_INGRESS;
use ward_common::maps::{EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, POLICY_AUDIT};

use super::*;
use crate::model::{self, parse_documents};
use crate::reference::{self, Peer};
use crate::testkit::*;
use crate::validate::{self, MODE_ANNOTATION_FIELD, MODE_SPEC_FIELD};

const TCP: Protocol = Protocol::Tcp;

/// The lab matrix with audit: `X` dropped, `A` passes but audited policies would deny it on
/// one side, `.` passes.
fn audit_matrix(c: &Cluster, compiled: &Compiled, proto: Protocol, port: u16) -> Vec<String> {
    matrix_of(|from, to| {
        if !datapath_allows(c, compiled, from, to, proto, port) {
            return 'X';
        }
        let from_addr = addr_of(c, from).expect("address");
        let to_addr = addr_of(c, to).expect("address");
        let mut audit = false;
        if let Peer::Pod(k) = from {
            audit |= datapath_decision(compiled, Direction::Egress, k, to_addr, proto, port).reason == Reason::Audit;
        }
        if let Peer::Pod(k) = to {
            audit |= datapath_decision(compiled, Direction::Ingress, k, from_addr, proto, port).reason == Reason::Audit;
        }
        if audit { 'A' } else { '.' }
    })
}

/// What audit must show, from the reference alone: `X` where enforcement (the reference on
/// the cluster as it is, audited policies not in force) denies, `A` where it allows but the
/// same cluster with every audited policy enforced denies.
fn expected_from_reference(c: &Cluster, proto: Protocol, port: u16) -> Vec<String> {
    let all = c.all_enforced();
    matrix_of(|from, to| {
        if !reference::allowed(c, from.clone(), to.clone(), proto, port) {
            'X'
        } else if !reference::allowed(&all, from.clone(), to.clone(), proto, port) {
            'A'
        } else {
            '.'
        }
    })
}

fn matrix_of(cell: impl Fn(&Peer, &Peer) -> char) -> Vec<String> {
    let pods: Vec<PodKey> =
        NAMESPACES.iter().flat_map(|ns| LETTERS.iter().map(move |l| PodKey::new(*ns, *l))).collect();
    pods.iter()
        .map(|from| pods.iter().map(|to| cell(&Peer::Pod(from.clone()), &Peer::Pod(to.clone()))).collect())
        .collect()
}

fn assert_audit(c: &Cluster, compiled: &Compiled, proto: Protocol, port: u16, expected: [&str; 9]) {
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(expected_from_reference(c, proto, port), expected, "reference, {proto} {port}");
    assert_eq!(audit_matrix(c, compiled, proto, port), expected, "datapath, {proto} {port}");
}

fn lab_with(yaml: &str) -> (Cluster, Compiled) {
    let mut c = lab();
    apply(&mut c, yaml);
    let compiled = compile_all(&c, &mut Identities::new());
    (c, compiled)
}

const AUDITED_A_FROM_B: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-b
  namespace: x
  annotations: {policy.ward.dev/mode: audit}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
"#;

#[test]
fn an_audited_policy_isolates_nothing_and_marks_what_it_would_deny() {
    let (c, compiled) = lab_with(AUDITED_A_FROM_B);
    let id = compiled.pod_identity[&pod("x/a")];
    assert_eq!(compiled.isolation[&id], EP_AUDIT_INGRESS, "audited only: not isolated");
    assert_audit(
        &c,
        &compiled,
        TCP,
        80,
        [
            "A........",
            ".........",
            "A........",
            "A........",
            "A........",
            "A........",
            "A........",
            "A........",
            "A........",
        ],
    );
    // Port 81 is not in its rule: x/b would be denied there too.
    let m = audit_matrix(&c, &compiled, TCP, 81);
    assert!(m.iter().all(|row| row.starts_with('A')), "{m:?}");
    // Every entry it wrote is flagged, and only under the audited direction.
    let audit: Vec<_> = compiled.policy.iter().filter(|(k, _)| k.subject() == id).collect();
    assert!(!audit.is_empty());
    for (k, v) in audit {
        assert_eq!(v.flags, POLICY_AUDIT, "{k:?}");
        assert_eq!(k.dir, Direction::Ingress as u8);
    }
}

#[test]
fn enforced_and_audited_policies_on_the_same_pod_keep_enforcement_exact() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: audit-deny-all
  namespace: x
  annotations: {policy.ward.dev/mode: audit}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
"#,
    );
    let xa = compiled.pod_identity[&pod("x/a")];
    let xb = compiled.pod_identity[&pod("x/b")];
    // x/a: ingress enforced (a-from-b), egress audited; x/b: both audited.
    assert_eq!(compiled.isolation[&xa], EP_ISOLATED_INGRESS | EP_AUDIT_EGRESS);
    assert_eq!(compiled.isolation[&xb], EP_AUDIT_INGRESS | EP_AUDIT_EGRESS);
    // Into x/a only x/b passes (enforced; the audited deny-all adds nothing there); into x/b
    // and x/c everything would be denied (audited deny-all ingress); out of x, everything
    // outside y would be (audited egress).
    assert_audit(
        &c,
        &compiled,
        TCP,
        80,
        [
            "XAA...AAA",
            "AAA...AAA",
            "XAA...AAA",
            "XAA......",
            "XAA......",
            "XAA......",
            "XAA......",
            "XAA......",
            "XAA......",
        ],
    );
    // No audit entry under a subject and direction an enforced policy isolates.
    for (k, v) in &compiled.policy {
        if v.flags & POLICY_AUDIT != 0 {
            let bits = compiled.isolation[&k.subject()];
            let enforced = if k.dir == Direction::Ingress as u8 { EP_ISOLATED_INGRESS } else { EP_ISOLATED_EGRESS };
            assert_eq!(bits & enforced, 0, "audit entry {k:?} under an isolated subject");
        }
    }
}

#[test]
fn the_decisions_with_audited_policies_equal_those_without_them() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: serve-80-tcp}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: audit-blocks
  namespace: x
  annotations: {policy.ward.dev/mode: audit}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}]}]
  egress: [{to: [{ipBlock: {cidr: 10.0.3.0/24}}], ports: [{port: serve-81-tcp}]}]
"#;
    let (c, compiled) = lab_with(yaml);
    let mut without = c.clone();
    without.policies.retain(|_, p| c.mode(p) == Mode::Enforce);
    let compiled_without = compile_all(&without, &mut Identities::new());
    for proto in [Protocol::Tcp, Protocol::Udp] {
        for port in [80, 81] {
            let with = matrix(|f, t| datapath_allows(&c, &compiled, f, t, proto, port));
            let plain = matrix(|f, t| datapath_allows(&without, &compiled_without, f, t, proto, port));
            assert_eq!(with, plain, "{proto} {port}");
            assert_eq!(expected_from_reference(&c, proto, port), audit_matrix(&c, &compiled, proto, port));
        }
    }
}

#[test]
fn a_namespace_annotation_audits_its_policies_and_enforce_restores_them() {
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}}
"#;
    let ns = |mode: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {{ns: x}}\n  annotations: {{policy.ward.dev/mode: {mode}}}\n"
        )
    };
    let (mut c, compiled) = lab_with(&format!("{}---\n{policy}", ns("audit")));
    // Ingress into every pod of x would be denied; nothing is.
    let audited: Vec<String> = (0..9).map(|_| "AAA......".to_string()).collect();
    assert_eq!(audit_matrix(&c, &compiled, TCP, 80), audited);
    assert_eq!(expected_from_reference(&c, TCP, 80), audited);

    apply(&mut c, &ns("enforce"));
    let compiled = compile_all(&c, &mut Identities::new());
    let enforced: Vec<String> = (0..9).map(|_| "XXX......".to_string()).collect();
    assert_eq!(audit_matrix(&c, &compiled, TCP, 80), enforced, "one annotation edit enforces it");

    // Removing the annotation is enforce too.
    apply(&mut c, "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n");
    assert!(c.audited_namespaces.is_empty());
}

#[test]
fn a_ward_policy_is_audited_by_spec_mode_and_its_http_ports_count_at_l4() {
    let (c, compiled) = lab_with(
        r#"
apiVersion: policy.ward.dev/v1alpha1
kind: WardNetworkPolicy
metadata: {name: web, namespace: x}
spec:
  mode: audit
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: b}}}]
      ports: [{port: 80, protocol: TCP, http: [{method: GET, path: /}]}]
"#,
    );
    let id = compiled.pod_identity[&pod("x/a")];
    assert_eq!(compiled.isolation[&id], EP_AUDIT_INGRESS, "no HTTP program for an audited policy");
    assert_eq!(compiled.isolation[&id] & EP_HTTP_INGRESS, 0);
    assert!(compiled.http_sets.is_empty());
    let m = audit_matrix(&c, &compiled, TCP, 80);
    assert_eq!(&m[1][..1], ".", "x/b's connection is what the HTTP port would admit");
    assert_eq!(&m[0][..1], "A");
}

fn policy_of(yaml: &str) -> (Mode, Option<validate::ObjectError>) {
    let obj = parse_documents(yaml, "f.yaml").into_iter().next().expect("one").expect("parses");
    match obj {
        model::Object::NetworkPolicy(np) => {
            let p = validate::policy(&np, "f.yaml").expect("valid");
            let (mode, err) = validate::policy_mode(PolicyKind::NetworkPolicy, &np.metadata, &np.spec, "f.yaml");
            assert_eq!(p.mode, mode);
            (mode, err)
        }
        model::Object::WardNetworkPolicy(wp) => {
            let p = validate::ward_policy(&wp, "f.yaml").expect("valid");
            let (mode, err) = validate::policy_mode(PolicyKind::WardNetworkPolicy, &wp.metadata, &wp.spec, "f.yaml");
            assert_eq!(p.mode, mode);
            (mode, err)
        }
        other => panic!("not a policy: {other:?}"),
    }
}

use crate::cluster::PolicyKind;

#[test]
fn a_wrong_mode_is_an_error_naming_object_and_field_and_the_policy_is_enforced() {
    let np = |annotation: &str, spec: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\n{annotation}spec:\n  podSelector: {{}}\n{spec}"
        )
    };
    let wnp = |annotation: &str, spec: &str| {
        np(annotation, spec)
            .replace("networking.k8s.io/v1\nkind: NetworkPolicy", "policy.ward.dev/v1alpha1\nkind: WardNetworkPolicy")
    };
    let ann = |v: &str| format!("  annotations: {{policy.ward.dev/mode: {v}}}\n");

    assert_eq!(policy_of(&np("", "")), (Mode::Enforce, None));
    assert_eq!(policy_of(&np(&ann("audit"), "")), (Mode::Audit, None));
    assert_eq!(policy_of(&np(&ann("enforce"), "")), (Mode::Enforce, None));
    assert_eq!(policy_of(&wnp("", "  mode: audit\n")), (Mode::Audit, None));
    assert_eq!(policy_of(&wnp(&ann("audit"), "  mode: audit\n")), (Mode::Audit, None));

    for (yaml, object, field) in [
        (np(&ann("Audit"), ""), "NetworkPolicy x/p", MODE_ANNOTATION_FIELD),
        (np(&ann("\"\""), ""), "NetworkPolicy x/p", MODE_ANNOTATION_FIELD),
        (np("", "  mode: audit\n"), "NetworkPolicy x/p", MODE_SPEC_FIELD),
        (wnp("", "  mode: dry-run\n"), "WardNetworkPolicy x/p", MODE_SPEC_FIELD),
        (wnp(&ann("enforce"), "  mode: audit\n"), "WardNetworkPolicy x/p", MODE_SPEC_FIELD),
        (wnp(&ann("audit"), "  mode: enforce\n"), "WardNetworkPolicy x/p", MODE_SPEC_FIELD),
    ] {
        let (mode, err) = policy_of(&yaml);
        assert_eq!(mode, Mode::Enforce, "fails closed: {yaml}");
        let err = err.unwrap_or_else(|| panic!("an error for {yaml}"));
        assert_eq!((err.object.as_str(), err.field.as_str()), (object, field), "{err}");
        assert!(err.message.contains("enforced"), "{err}");
    }

    let ns = |v: &str| {
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  annotations: {{policy.ward.dev/mode: {v}}}\n"
        );
        match parse_documents(&yaml, "f.yaml").into_iter().next().expect("one").expect("parses") {
            model::Object::Namespace(n) => validate::namespace_mode(&n, "f.yaml"),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ns("audit"), (Mode::Audit, None));
    let (mode, err) = ns("yes");
    assert_eq!(mode, Mode::Enforce);
    let err = err.expect("an error");
    assert_eq!((err.object.as_str(), err.field.as_str()), ("Namespace x", MODE_ANNOTATION_FIELD));

    // In a cluster, a wrong namespace value leaves its policies enforced.
    let mut c = lab();
    apply(
        &mut c,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  annotations: {policy.ward.dev/mode: Audit}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n",
    );
    let compiled = compile_all(&c, &mut Identities::new());
    assert_eq!(compiled.isolation_of(&pod("x/a")), EP_ISOLATED_INGRESS);
}
