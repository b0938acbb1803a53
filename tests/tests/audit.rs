//! Audit mode on a live lab node with the real datapath: an enforced and an audited policy on
//! the same pod; what the audited one would deny passes and is recorded as AUDIT naming it,
//! what the enforced one denies still drops, one annotation edit enforces the audited one
//! (within the update latency the lab waits for), and `ward policy audit-report` lists what
//! would break. Needs root and the workspace's binaries (`cargo xtask build`).

use std::time::{Duration, Instant};

use serde_json::Value;
use ward_lab::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, manifest, require_root};

fn pod(name: &str) -> PodSpec {
    PodSpec {
        namespace: "shop".into(),
        name: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into_iter().collect(),
        serves: vec![Serve::new(5432, Protocol::Tcp, Some("pg"))],
    }
}

fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("fixture YAML: {e}"))
}

/// Enforced: only `api` into `db` on `pg`.
const DB_FROM_API: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: db-from-api, \
                           namespace: shop}, spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: \
                           [{podSelector: {matchLabels: {app: api}}}], ports: [{port: pg}]}]}}";

/// On the same pod, `db`: no egress but to `stranger` (so `db` -> `api` would be denied), in
/// the mode given.
fn db_egress(mode: &str) -> serde_yaml::Value {
    yaml(&format!(
        "{{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: db-egress, namespace: shop, \
         annotations: {{policy.ward.dev/mode: {mode}}}}}, spec: {{podSelector: {{matchLabels: {{app: db}}}}, \
         policyTypes: [Egress], egress: [{{to: [{{podSelector: {{matchLabels: {{app: stranger}}}}}}]}}]}}}}"
    ))
}

fn ward(node: &Node, args: &[&str]) -> (bool, String, String) {
    let out = node.ward(args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn observe(node: &Node, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["observe", "-o", "json"];
    all.extend_from_slice(args);
    let (ok, out, err) = ward(node, &all);
    assert!(ok, "ward {all:?} failed: {err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON flow ({e}): {l}"))).collect()
}

fn pod_of(end: &Value) -> String {
    format!("{}/{}", end["namespace"].as_str().unwrap_or(""), end["pod_name"].as_str().unwrap_or(""))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array().into_iter().flatten().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect()
}

/// The EGRESS record of `db` -> `api` on 5432 with `verdict`, polled for (the flow task
/// drains the ring buffer asynchronously).
fn db_to_api(node: &Node, verdict: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let flows = observe(node, &["--last", "1000", "--from-pod", "shop/db", "--verdict", verdict]);
        if let Some(f) = flows.iter().find(|f| {
            f["traffic_direction"] == "EGRESS"
                && pod_of(&f["destination"]) == "shop/api"
                && f["l4"]["TCP"]["destination_port"] == 5432
        }) {
            return f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {verdict} db -> api record within 15 s: {flows:#?}\n{}",
            node.agent_log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_audited_policy_passes_and_records_what_it_would_deny_until_one_edit_enforces_it() {
    if !require_root("an_audited_policy_passes_and_records_what_it_would_deny_until_one_edit_enforces_it") {
        return;
    }
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("shop", &Labels::new()).unwrap_or_else(|e| panic!("{e}"));
    node.create_pods(&[pod("db"), pod("api"), pod("stranger")]).unwrap_or_else(|e| panic!("{e}"));
    node.apply(&[yaml(DB_FROM_API), db_egress("audit")]).unwrap_or_else(|e| panic!("{e}"));
    assert!(node.rejections().is_empty(), "{:?}", node.rejections());
    let (api, db, stranger) = (PodRef::new("shop", "api"), PodRef::new("shop", "db"), PodRef::new("shop", "stranger"));
    let probe = |node: &Node, from: &PodRef, to: &PodRef| {
        node.probe(from, to, 5432, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("probe {from} -> {to}: {e}"))
    };

    // Audited: db -> api passes (the audited egress policy would deny it) ...
    let p = probe(&node, &db, &api);
    assert!(p.connected(), "an audited policy never denies: {p}");
    // ... the enforced policy on the same pod keeps enforcing: api in, stranger not.
    let p = probe(&node, &api, &db);
    assert!(p.connected(), "{p}");
    let p = probe(&node, &stranger, &db);
    assert!(!p.connected(), "the enforced policy still denies: {p}");
    // And what the audited policy allows passes without an AUDIT record.
    let p = probe(&node, &db, &stranger);
    assert!(p.connected(), "{p}");

    let audit = db_to_api(&node, "AUDIT");
    assert_eq!(audit["reason"], "audit", "{audit:#}");
    assert_eq!(names(&audit["egress_denied_by"]), ["db-egress"], "the would-be denier is named: {audit:#}");
    assert_eq!(audit["egress_denied_by"][0]["namespace"], "shop", "{audit:#}");
    for field in ["drop_reason_desc", "egress_allowed_by", "ingress_denied_by"] {
        assert!(audit.get(field).is_none(), "an AUDIT record has no {field}: {audit:#}");
    }
    let audits = observe(&node, &["--last", "1000", "--verdict", "AUDIT"]);
    assert!(
        !audits.iter().any(|f| pod_of(&f["destination"]) == "shop/stranger"),
        "db -> stranger is allowed by the audited policy: no AUDIT record: {audits:#?}"
    );
    let drop = observe(&node, &["--last", "1000", "--verdict", "DROPPED", "--from-pod", "shop/stranger"]);
    let drop = drop.iter().find(|f| pod_of(&f["destination"]) == "shop/db").unwrap_or_else(|| panic!("{drop:#?}"));
    assert_eq!(names(&drop["ingress_denied_by"]), ["db-from-api"], "{drop:#}");

    // The counters say AUDIT too (status, which /metrics renders as verdict="AUDIT").
    let status = node.status().unwrap_or_else(|e| panic!("{e}"));
    let audited = status.raw["reason_counters"]["audit"].as_u64().unwrap_or(0);
    assert!(audited >= 1, "reason_counters: {:#}", status.raw["reason_counters"]);

    // The report: what would break, per audited policy.
    let (ok, report, err) = ward(&node, &["policy", "audit-report", "--since", "7d"]);
    assert!(ok, "{err}");
    assert!(report.contains("shop/db-egress: would deny 1 distinct flows"), "{report}");
    assert!(report.lines().any(|l| l.contains("EGRESS") && l.contains("shop/db -> shop/api:5432/TCP")), "{report}");
    let (ok, json, err) = ward(&node, &["policy", "audit-report", "--json"]);
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(json[0]["policy"], "shop/db-egress", "{json:#}");
    assert!(json[0]["flows"][0]["count"].as_u64().is_some_and(|n| n >= 1), "{json:#}");

    // A wrong value is reported and enforces (fails closed).
    node.apply(&[db_egress("Audit")]).unwrap_or_else(|e| panic!("{e}"));
    let status = node.status().unwrap_or_else(|e| panic!("{e}"));
    let notices = status.raw["notices"].as_array().cloned().unwrap_or_default();
    assert!(
        notices.iter().any(|n| n["object"] == "NetworkPolicy shop/db-egress"
            && n["field"] == "metadata.annotations[policy.ward.dev/mode]"
            && n["message"].as_str().is_some_and(|m| m.contains("enforced"))),
        "{notices:#?}"
    );
    let p = probe(&node, &db, &api);
    assert!(!p.connected(), "a wrong mode enforces: {p}");

    // Back to audit, then one edit to enforce: in force once the agent has applied it.
    node.apply(&[db_egress("audit")]).unwrap_or_else(|e| panic!("{e}"));
    let p = probe(&node, &db, &api);
    assert!(p.connected(), "audited again: {p}");
    let started = Instant::now();
    node.apply(&[db_egress("enforce")]).unwrap_or_else(|e| panic!("{e}"));
    let latency = started.elapsed();
    let p = probe(&node, &db, &api);
    assert!(!p.connected(), "enforced after one edit: {p}");
    eprintln!("audit -> enforce applied in {latency:?}");
    let dropped = db_to_api(&node, "DROPPED");
    assert_eq!(names(&dropped["egress_denied_by"]), ["db-egress"], "{dropped:#}");
    let p = probe(&node, &db, &stranger);
    assert!(p.connected(), "what the policy allows still passes: {p}");
    let p = probe(&node, &api, &db);
    assert!(p.connected(), "{p}");

    // The report reads an exported file the same way.
    let flows = observe(&node, &["--last", "1000"]);
    let file = node.dir().join("audit-flows.jsonl");
    std::fs::write(&file, flows.iter().map(|f| format!("{f}\n")).collect::<String>())
        .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    let path = file.to_string_lossy().into_owned();
    let (ok, from_file, err) = ward(&node, &["policy", "audit-report", "--input-file", &path]);
    assert!(ok, "{err}");
    assert!(from_file.contains("shop/db-egress: would deny 1 distinct flows"), "{from_file}");
}

#[test]
fn a_namespace_annotation_audits_every_policy_in_it() {
    if !require_root("a_namespace_annotation_audits_every_policy_in_it") {
        return;
    }
    let mut node =
        Node::start(NodeConfig { index: 2, ..NodeConfig::default() }).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("shop", &Labels::new()).unwrap_or_else(|e| panic!("{e}"));
    node.create_pods(&[pod("db"), pod("stranger")]).unwrap_or_else(|e| panic!("{e}"));
    // The namespace's own manifest file, rewritten with the annotation (one declaration).
    let set_mode = |node: &mut Node, mode: &str| {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {{kubernetes.io/metadata.name: shop}}\n  annotations: {{policy.ward.dev/mode: {mode}}}\n"
        );
        node.write_manifest(&manifest::namespace_file("shop"), &text).unwrap_or_else(|e| panic!("{e}"));
        node.sync().unwrap_or_else(|e| panic!("{e}"));
    };
    set_mode(&mut node, "audit");
    let deny_all = yaml(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny-all, namespace: shop}, spec: \
         {podSelector: {}}}",
    );
    node.apply(&[deny_all]).unwrap_or_else(|e| panic!("{e}"));
    let (db, stranger) = (PodRef::new("shop", "db"), PodRef::new("shop", "stranger"));
    let p = node.probe(&stranger, &db, 5432, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.connected(), "the namespace audits deny-all: {p}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let flows = observe(&node, &["--last", "1000", "--verdict", "AUDIT", "--to-pod", "shop/db"]);
        if let Some(f) =
            flows.iter().find(|f| f["traffic_direction"] == "INGRESS" && pod_of(&f["source"]) == "shop/stranger")
        {
            assert_eq!(names(&f["ingress_denied_by"]), ["deny-all"], "{f:#}");
            break;
        }
        assert!(Instant::now() < deadline, "no AUDIT record within 15 s: {flows:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    set_mode(&mut node, "enforce");
    let p = node.probe(&stranger, &db, 5432, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
    assert!(!p.connected(), "enforced once the namespace says so: {p}");
}
