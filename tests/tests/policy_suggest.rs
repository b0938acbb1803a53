//! `ward policy suggest` against a live lab node with the real datapath: flows observed with
//! no policy in place become NetworkPolicies that, once applied, keep exactly those flows
//! connecting and deny every other connection into or out of the namespace's workloads.
//! Needs root and the workspace's binaries (`cargo xtask build`).

use std::time::{Duration, Instant};

use serde_json::Value;
use ward_lab::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, require_root};

fn pod(namespace: &str, name: &str) -> PodSpec {
    PodSpec {
        namespace: namespace.into(),
        name: name.into(),
        // A per-pod label the suggestion must not select by.
        labels: [("app".to_owned(), name.to_owned()), ("pod-template-hash".to_owned(), format!("{name}-7f9c"))]
            .into_iter()
            .collect(),
        serves: vec![Serve::new(80, Protocol::Tcp, Some("http")), Serve::new(5432, Protocol::Tcp, Some("pg"))],
    }
}

/// Runs `ward --socket <node's socket> <args>`; returns stdout, panicking with stderr on failure.
fn ward(node: &Node, args: &[&str]) -> String {
    let out = node.ward(args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "ward {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

fn end(v: &Value) -> String {
    format!("{}/{}", v["namespace"].as_str().unwrap_or(""), v["pod_name"].as_str().unwrap_or(""))
}

#[test]
fn suggested_policies_allow_exactly_the_observed_flows() {
    if !require_root("suggested_policies_allow_exactly_the_observed_flows") {
        return;
    }
    let config = NodeConfig { agent_args: vec!["--flow-events".into(), "all".into()], ..NodeConfig::default() };
    let mut node = Node::start(config).unwrap_or_else(|e| panic!("lab node: {e}"));
    for ns in ["shop", "ops"] {
        node.set_namespace(ns, &Labels::new()).unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    }
    node.create_pods(&[pod("shop", "a"), pod("shop", "b"), pod("shop", "c"), pod("shop", "d"), pod("ops", "mon")])
        .unwrap_or_else(|e| panic!("pods: {e}"));
    let r = |s: &str| {
        let (ns, name) = s.split_once('/').unwrap_or(("shop", s));
        PodRef::new(ns, name)
    };
    let connects = |node: &Node, from: &str, to: &str, port: u16| {
        node.probe(&r(from), &r(to), port, Protocol::Tcp, Family::IPv4)
            .unwrap_or_else(|e| panic!("probe {from} -> {to}:{port}: {e}"))
    };

    // The baseline traffic, with no policy: everything connects.
    let observed = [("a", "b", 80), ("c", "b", 80), ("b", "d", 5432), ("ops/mon", "b", 80)];
    for (from, to, port) in observed {
        let o = connects(&node, from, to, port);
        assert!(o.connected(), "{from} -> {to}:{port} before any policy: {o}");
    }
    // The flow task drains the ring asynchronously: wait until history holds every flow.
    let deadline = Instant::now() + Duration::from_secs(15);
    let flows: Vec<Value> = loop {
        let text = ward(&node, &["observe", "-o", "json", "--last", "10000", "--verdict", "FORWARDED"]);
        let flows: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
        let seen = |from: &str, to: &str, port: u16| {
            let from = if from.contains('/') { from.to_owned() } else { format!("shop/{from}") };
            flows.iter().any(|f| {
                end(&f["source"]) == from
                    && end(&f["destination"]) == format!("shop/{to}")
                    && f["l4"]["TCP"]["destination_port"] == port
            })
        };
        if observed.iter().all(|(f, t, p)| seen(f, t, *p)) {
            break flows;
        }
        assert!(
            Instant::now() < deadline,
            "every flow in history within 15 s; got {flows:#?}\n{}",
            node.agent_log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let out = node.dir().join("suggested.yaml");
    let out_arg = out.to_string_lossy().into_owned();
    let printed = ward(&node, &["policy", "suggest", "--namespace", "shop"]);
    ward(&node, &["policy", "suggest", "--namespace", "shop", "--output", &out_arg]);
    let yaml = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("reading {out_arg}: {e}"));
    assert_eq!(yaml, printed, "--output writes what stdout shows");
    for name in ["suggested-a", "suggested-b", "suggested-c", "suggested-d"] {
        assert!(yaml.contains(&format!("name: {name}\n")), "a policy per workload ({name})\n{yaml}");
    }
    assert!(!yaml.contains("suggested-mon") && !yaml.contains("pod-template-hash"), "{yaml}");
    for f in &flows {
        for side in ["source", "destination"] {
            if let Some(ip) = f["IP"][side].as_str().filter(|_| f[side]["pod_name"].is_string()) {
                assert!(!yaml.contains(ip), "pods by labels, never by address ({ip})\n{yaml}");
            }
        }
    }

    // The same flows from an exported file give the same suggestion.
    let file = node.dir().join("flows.jsonl");
    std::fs::write(&file, flows.iter().map(|f| format!("{f}\n")).collect::<String>())
        .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    let file_arg = file.to_string_lossy().into_owned();
    assert_eq!(ward(&node, &["policy", "suggest", "--namespace", "shop", "--input-file", &file_arg]), yaml);

    node.write_manifest("suggested.yaml", &yaml).unwrap_or_else(|e| panic!("writing the suggestion: {e}"));
    node.sync().unwrap_or_else(|e| panic!("the agent applies the suggestion: {e}\n{yaml}"));

    for (from, to, port) in observed {
        let o = connects(&node, from, to, port);
        assert!(o.connected(), "observed {from} -> {to}:{port} still connects: {o}\n{yaml}");
    }
    let unobserved = [
        ("a", "d", 5432),
        ("b", "a", 80),
        ("d", "b", 80),
        ("a", "b", 5432),
        ("c", "d", 5432),
        ("ops/mon", "d", 5432),
        ("ops/mon", "b", 5432),
    ];
    for (from, to, port) in unobserved {
        let o = connects(&node, from, to, port);
        assert!(!o.connected(), "unobserved {from} -> {to}:{port} is denied: {o}\n{yaml}");
    }
    // Egress too: b may reach d only on the port it was seen on, not mon (another namespace).
    let o =
        node.probe(&r("b"), &r("ops/mon"), 80, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("probe: {e}"));
    assert!(!o.connected(), "b's egress to ops/mon was never observed: {o}\n{yaml}");
}
