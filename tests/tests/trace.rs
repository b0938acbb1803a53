//! `ward trace` against a live lab node with the real datapath: one crafted probe from a pod,
//! and the programs' own step records of it (from_pod on the source's veth, to_pod on the
//! destination's), named like flow records; the trace's verdict agrees with a real
//! connection attempt; while no trace is armed, no step is recorded whatever the traffic.
//! Needs root and the workspace's binaries (`cargo xtask build`).

use std::net::IpAddr;

use serde_json::Value;
use ward_lab::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, require_root};

fn pod(name: &str, serves: Vec<Serve>) -> PodSpec {
    PodSpec {
        namespace: "shop".into(),
        name: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into_iter().collect(),
        serves,
    }
}

fn policy(yaml: &str) -> serde_yaml::Value {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("policy YAML: {e}: {yaml}"))
}

/// shop/db (TCP 5432 `pg`) admits only shop/api (`db-from-api`); shop/api may only reach db on
/// 5432 (`api-egress`); shop/locked may send nothing (`locked-no-egress`); shop/stranger has
/// no policy; shop/echo serves UDP 7777 and has no policy.
fn scene() -> Node {
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("shop", &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
    let pg = || vec![Serve::new(5432, Protocol::Tcp, Some("pg"))];
    node.create_pods(&[
        pod("db", pg()),
        pod("api", pg()),
        pod("stranger", pg()),
        pod("locked", pg()),
        pod("echo", vec![Serve::new(7777, Protocol::Udp, None)]),
        pod("web", vec![Serve::http(8080, None)]),
    ])
    .unwrap_or_else(|e| panic!("pods: {e}"));
    node.apply(&[
        policy(
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: db-from-api, namespace: shop}, \
             spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], \
             ports: [{port: pg}]}]}}",
        ),
        policy(
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: api-egress, namespace: shop}, \
             spec: {podSelector: {matchLabels: {app: api}}, policyTypes: [Egress], \
             egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 5432, protocol: TCP}]}]}}",
        ),
        policy(
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: locked-no-egress, namespace: shop}, \
             spec: {podSelector: {matchLabels: {app: locked}}, policyTypes: [Egress]}}",
        ),
        policy(
            "{apiVersion: policy.ward.dev/v1alpha1, kind: WardNetworkPolicy, metadata: {name: web-http, namespace: shop}, \
             spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress], \
             ingress: [{from: [{podSelector: {matchLabels: {app: stranger}}}], \
             ports: [{port: 8080, protocol: TCP, http: [{path: /healthz}]}]}]}}",
        ),
    ])
    .unwrap_or_else(|e| panic!("policies: {e}"));
    node
}

/// `ward trace -o json ...`: the report.
fn trace(node: &Node, from: &str, to: &str, port: &str) -> Value {
    let out = node.ward(&["trace", "--from", from, "--to", to, "--port", port, "-o", "json"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ward trace {from} -> {to} {port} failed: {stderr}\n{}", node.agent_log_tail());
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not a trace report ({e}): {stdout}"))
}

fn programs(r: &Value) -> Vec<String> {
    r["steps"]
        .as_array()
        .map(|s| s.iter().map(|s| s["program"].as_str().unwrap_or("?").to_owned()).collect())
        .unwrap_or_default()
}

fn step<'a>(r: &'a Value, program: &str) -> &'a Value {
    r["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["program"] == program))
        .unwrap_or_else(|| panic!("no {program} step: {r:#}"))
}

fn pod_of(end: &Value) -> String {
    format!("{}/{}", end["namespace"].as_str().unwrap_or(""), end["pod_name"].as_str().unwrap_or(""))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|p| {
                    let rule = p["rule_index"].as_u64().map(|i| format!(" rule {i}")).unwrap_or_default();
                    format!("{}/{}{rule}", p["namespace"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or(""))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The kernel recorded exactly the steps the report shows (nothing else matched the marker).
fn records_match(r: &Value) {
    let (before, after) = (r["kernel_records_before"].as_u64(), r["kernel_records_after"].as_u64());
    let steps = r["steps"].as_array().map_or(0, |s| s.len()) as u64;
    assert_eq!(after.zip(before).map(|(a, b)| a - b), Some(steps), "records written = steps shown: {r:#}");
}

fn connects(node: &Node, from: &str, to: &str, port: u16, proto: Protocol) -> bool {
    let p = |s: &str| {
        let (ns, name) = s.split_once('/').expect("ns/pod");
        PodRef::new(ns, name)
    };
    node.probe(&p(from), &p(to), port, proto, Family::IPv4).unwrap_or_else(|e| panic!("probe: {e}")).connected()
}

#[test]
fn trace_reports_each_programs_decision_on_one_probe_and_agrees_with_real_probes() {
    if !require_root("trace_reports_each_programs_decision_on_one_probe_and_agrees_with_real_probes") {
        return;
    }
    let node = scene();

    // Allowed: out of api by its egress rule, into db by db's ingress rule.
    let ok = trace(&node, "shop/api", "shop/db", "5432/TCP");
    assert_eq!(programs(&ok), ["from_pod", "to_pod"], "{ok:#}");
    assert_eq!(ok["verdict"], "FORWARDED", "{ok:#}");
    let out = step(&ok, "from_pod");
    assert_eq!((out["stage"].as_str(), out["new_flow"].as_bool()), (Some("policy_lookup"), Some(true)), "{out:#}");
    assert_eq!(out["flow"]["reason"], "policy_allow", "{out:#}");
    assert_eq!(out["flow"]["traffic_direction"], "EGRESS", "{out:#}");
    assert_eq!(names(&out["flow"]["egress_allowed_by"]), ["shop/api-egress rule 0"], "{out:#}");
    assert_eq!(
        (pod_of(&out["flow"]["source"]), pod_of(&out["flow"]["destination"])),
        ("shop/api".into(), "shop/db".into())
    );
    let into = step(&ok, "to_pod");
    assert_eq!(into["flow"]["reason"], "policy_allow", "{into:#}");
    assert_eq!(into["flow"]["traffic_direction"], "INGRESS", "{into:#}");
    assert_eq!(names(&into["flow"]["ingress_allowed_by"]), ["shop/db-from-api rule 0"], "{into:#}");
    // The identities the lookup used: db's own as subject, api's as peer.
    assert_ne!(into["flow"]["destination"]["identity"], 0, "{into:#}");
    assert_eq!(into["flow"]["source"]["identity"], out["flow"]["source"]["identity"], "{ok:#}");
    assert_eq!(into["flow"]["l4"]["TCP"]["destination_port"], 5432, "{into:#}");
    records_match(&ok);
    assert!(connects(&node, "shop/api", "shop/db", 5432, Protocol::Tcp), "a real connection agrees: allowed");

    // Denied at ingress: stranger is not isolated, db's default deny drops it.
    let denied = trace(&node, "shop/stranger", "shop/db", "5432/TCP");
    assert_eq!(programs(&denied), ["from_pod", "to_pod"], "{denied:#}");
    assert_eq!(denied["verdict"], "DROPPED", "{denied:#}");
    assert_eq!(step(&denied, "from_pod")["flow"]["reason"], "not_isolated", "{denied:#}");
    let at_db = step(&denied, "to_pod");
    assert_eq!(
        (at_db["stage"].as_str(), at_db["flow"]["reason"].as_str()),
        (Some("policy_lookup"), Some("policy_denied"))
    );
    assert_eq!(at_db["flow"]["verdict"], "DROPPED", "{at_db:#}");
    assert_eq!(names(&at_db["flow"]["ingress_denied_by"]), ["shop/db-from-api"], "{at_db:#}");
    assert_eq!(denied["summary"], "dropped by to_pod at shop/db (ingress): policy_denied", "{denied:#}");
    records_match(&denied);
    assert!(!connects(&node, "shop/stranger", "shop/db", 5432, Protocol::Tcp), "a real connection agrees: denied");

    // Denied at egress: locked may send nothing; the probe never reaches db's veth.
    let locked = trace(&node, "shop/locked", "shop/db", "5432/TCP");
    assert_eq!(programs(&locked), ["from_pod"], "{locked:#}");
    assert_eq!(locked["verdict"], "DROPPED", "{locked:#}");
    let at_src = step(&locked, "from_pod");
    assert_eq!(at_src["flow"]["reason"], "policy_denied", "{at_src:#}");
    assert_eq!(names(&at_src["flow"]["egress_denied_by"]), ["shop/locked-no-egress"], "{at_src:#}");
    assert_eq!(locked["summary"], "dropped by from_pod at shop/locked (egress): policy_denied", "{locked:#}");
    records_match(&locked);
    assert!(!connects(&node, "shop/locked", "shop/db", 5432, Protocol::Tcp), "a real connection agrees: denied");

    // UDP, to an address rather than a pod name: the same pod is named.
    let echo_ip = node.pod_ip(&PodRef::new("shop", "echo"), Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
    let udp = trace(&node, "shop/stranger", &echo_ip.to_string(), "7777/UDP");
    assert_eq!(programs(&udp), ["from_pod", "to_pod"], "{udp:#}");
    assert_eq!(udp["verdict"], "FORWARDED", "{udp:#}");
    let at_echo = step(&udp, "to_pod");
    assert_eq!(pod_of(&at_echo["flow"]["destination"]), "shop/echo", "{at_echo:#}");
    assert_eq!(at_echo["flow"]["l4"]["UDP"]["destination_port"], 7777, "{at_echo:#}");
    records_match(&udp);
    assert!(connects(&node, "shop/stranger", "shop/echo", 7777, Protocol::Udp), "a real datagram agrees: allowed");

    // IPv6, to db's IPv6 address: the same decisions (the marker is the flow label).
    let db6 = node.pod_ip(&PodRef::new("shop", "db"), Family::IPv6).unwrap_or_else(|e| panic!("{e}"));
    let ok6 = trace(&node, "shop/api", &db6.to_string(), "5432/TCP");
    assert_eq!(
        (programs(&ok6), ok6["verdict"].as_str()),
        (vec!["from_pod".to_owned(), "to_pod".to_owned()], Some("FORWARDED")),
        "{ok6:#}"
    );
    assert!(ok6["source"].as_str().is_some_and(|s| s.contains(':')), "an IPv6 probe: {ok6:#}");
    assert_eq!(names(&step(&ok6, "to_pod")["flow"]["ingress_allowed_by"]), ["shop/db-from-api rule 0"], "{ok6:#}");
    let denied6 = trace(&node, "shop/stranger", &db6.to_string(), "5432/TCP");
    assert_eq!(denied6["summary"], "dropped by to_pod at shop/db (ingress): policy_denied", "{denied6:#}");
    records_match(&ok6);
    records_match(&denied6);
    let v6 = |from: &str| {
        let (ns, name) = from.split_once('/').expect("ns/pod");
        node.probe(&PodRef::new(ns, name), &PodRef::new("shop", "db"), 5432, Protocol::Tcp, Family::IPv6)
            .unwrap_or_else(|e| panic!("probe: {e}"))
            .connected()
    };
    assert!(v6("shop/api") && !v6("shop/stranger"), "real IPv6 connections agree");

    // A port with HTTP rules: to_pod admits the connection for the HTTP program, which notes
    // that each request will be judged.
    let web = trace(&node, "shop/stranger", "shop/web", "8080/TCP");
    assert_eq!(programs(&web), ["from_pod", "to_pod", "ward_http"], "{web:#}");
    assert_eq!(web["verdict"], "FORWARDED", "{web:#}");
    assert_eq!(names(&step(&web, "to_pod")["flow"]["ingress_allowed_by"]), ["shop/web-http rule 0"]);
    let http = step(&web, "ward_http");
    assert_eq!((http["stage"].as_str(), http["http_policed"].as_bool()), (Some("http"), Some(true)), "{http:#}");
    assert_eq!(http["flow"]["reason"], "http_requests_judged", "{http:#}");
    assert_eq!(names(&http["flow"]["ingress_allowed_by"]), ["shop/web-http rule 0"], "{http:#}");
    records_match(&web);

    // An address no pod holds (the node's own): from_pod is as far as Ward's programs see.
    let host = node.config().host_addrs().into_iter().find(IpAddr::is_ipv4).expect("an IPv4 node address");
    let to_node = trace(&node, "shop/stranger", &host.to_string(), "9/TCP");
    assert_eq!((programs(&to_node), to_node["verdict"].as_str()), (vec!["from_pod".to_owned()], Some("FORWARDED")));

    // The text form names the same steps as `ward observe` lines.
    let text = node.ward(&["trace", "--from", "shop/stranger", "--to", "shop/db", "--port", "5432/TCP"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    eprintln!("{text}");
    assert!(text.contains("1. from_pod") && text.contains("2. to_pod"), "{text}");
    // (The compact line goes on with the closest miss: "; closest: ...)".)
    assert!(text.contains("-> shop/db:5432 TCP DROPPED INGRESS default deny (isolated by shop/db-from-api"), "{text}");
    assert!(text.contains("verdict: DROPPED"), "{text}");

    // Bad requests are refused with the field named.
    let bad = node.ward(&["trace", "--from", "shop/nobody", "--to", "shop/db", "--port", "5432/TCP"]);
    assert!(
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stderr).contains("from: shop/nobody is not a pod of this node")
    );

    // No trace armed: other traffic, the probes' very pairs and ports included, records nothing.
    let last = trace(&node, "shop/api", "shop/db", "5432/TCP");
    assert_eq!(last["verdict"], "FORWARDED", "{last:#}");
    for _ in 0..5 {
        assert!(connects(&node, "shop/api", "shop/db", 5432, Protocol::Tcp));
        assert!(!connects(&node, "shop/stranger", "shop/db", 5432, Protocol::Tcp));
        assert!(!connects(&node, "shop/locked", "shop/db", 5432, Protocol::Tcp));
        assert!(connects(&node, "shop/stranger", "shop/echo", 7777, Protocol::Udp));
    }
    let next = trace(&node, "shop/api", "shop/db", "5432/TCP");
    assert_eq!(
        next["kernel_records_before"], last["kernel_records_after"],
        "no step record between two traces, whatever the traffic: {last:#}\n{next:#}"
    );
    assert_ne!(next["source_port"], last["source_port"], "each probe its own five-tuple");
    assert_eq!(next["verdict"], "FORWARDED", "a second trace of the same path: {next:#}");
    assert_eq!(step(&next, "from_pod")["flow"]["reason"], "policy_allow", "a fresh flow, not a tracked one: {next:#}");
}
