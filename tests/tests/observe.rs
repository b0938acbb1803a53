//! `ward observe` against a live lab node with the real datapath: the kernel's flow events
//! reach the operator named and attributed (the allowing policy and rule for an allow, the
//! isolating policy for a default-deny drop), and the filters select what they say. Needs
//! root and the workspace's binaries (`cargo xtask build`).

use std::time::{Duration, Instant};

use serde_json::Value;
use ward_lab::{Family, Node, NodeConfig, PodRef, Protocol, flowscene, require_root};

/// Runs `ward --socket <node's socket> <args>`; returns (success, stdout, stderr).
fn ward(node: &Node, args: &[&str]) -> (bool, String, String) {
    let out = node.ward(args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// `ward observe -o json <args>`, one record per line.
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

/// The INGRESS record at shop/db from `from` on 5432, if any.
fn at_db<'a>(flows: &'a [Value], from: &str) -> Option<&'a Value> {
    flows.iter().find(|f| {
        f["traffic_direction"] == "INGRESS"
            && pod_of(&f["source"]) == from
            && pod_of(&f["destination"]) == "shop/db"
            && f["l4"]["TCP"]["destination_port"] == 5432
    })
}

#[test]
fn observe_reports_allowed_and_denied_flows_with_their_deciding_policies() {
    if !require_root("observe_reports_allowed_and_denied_flows_with_their_deciding_policies") {
        return;
    }
    let export = TempFile(std::env::temp_dir().join(format!("ward-{}-observe-export.jsonl", std::process::id())));
    let config = NodeConfig {
        agent_args: vec![
            "--flow-events".into(),
            "all".into(),
            "--flow-export-file".into(),
            export.0.to_string_lossy().into_owned(),
        ],
        ..NodeConfig::default()
    };
    let node = flowscene::allowed_and_denied(config).unwrap_or_else(|e| panic!("{e}"));
    let (db, stranger) = (PodRef::new("shop", "db"), PodRef::new("shop", "stranger"));

    // The flow task drains the ring buffer asynchronously: poll with a deadline.
    let deadline = Instant::now() + Duration::from_secs(15);
    let flows = loop {
        let flows = observe(&node, &["--last", "1000"]);
        if at_db(&flows, "shop/api").is_some() && at_db(&flows, "shop/stranger").is_some() {
            break flows;
        }
        assert!(Instant::now() < deadline, "both flows within 15 s; got {flows:#?}\n{}", node.agent_log_tail());
        std::thread::sleep(Duration::from_millis(200));
    };

    let allowed = at_db(&flows, "shop/api").expect("found above");
    assert_eq!(allowed["verdict"], "FORWARDED", "{allowed:#}");
    assert_eq!(allowed["reason"], "policy_allow", "{allowed:#}");
    assert_eq!(allowed["node_name"], node.name(), "{allowed:#}");
    assert_eq!(allowed["IP"]["destination"], db_ip(&node, &db), "{allowed:#}");
    let by = allowed["ingress_allowed_by"].as_array().unwrap_or_else(|| panic!("no ingress_allowed_by: {allowed:#}"));
    assert_eq!(by.len(), 1, "{allowed:#}");
    assert_eq!(
        (by[0]["namespace"].as_str(), by[0]["name"].as_str()),
        (Some("shop"), Some("db-from-api")),
        "{allowed:#}"
    );
    assert_eq!(by[0]["rule_index"], 0, "{allowed:#}");
    assert!(allowed.get("ingress_denied_by").is_none() && allowed.get("drop_reason_desc").is_none(), "{allowed:#}");
    assert!(allowed["destination"]["labels"].as_array().is_some_and(|l| l.contains(&"app=db".into())), "{allowed:#}");

    let dropped = at_db(&flows, "shop/stranger").expect("found above");
    assert_eq!(dropped["verdict"], "DROPPED", "{dropped:#}");
    assert_eq!(dropped["drop_reason_desc"], "POLICY_DENIED", "{dropped:#}");
    let by = dropped["ingress_denied_by"].as_array().unwrap_or_else(|| panic!("no ingress_denied_by: {dropped:#}"));
    assert_eq!(by.iter().map(|p| p["name"].as_str()).collect::<Vec<_>>(), [Some("db-from-api")], "{dropped:#}");
    for field in ["ingress_allowed_by", "egress_allowed_by", "rule_id"] {
        assert!(dropped.get(field).is_none(), "a drop has no {field}: {dropped:#}");
    }
    // The closest miss: db-from-api's rule opens 5432 (pg) to api only.
    let miss = &dropped["ingress_closest_miss"];
    assert_eq!(
        (miss["name"].as_str(), miss["rule_index"].as_u64(), miss["matched"].as_str()),
        (Some("db-from-api"), Some(0), Some("PORT")),
        "{dropped:#}"
    );
    assert_eq!(miss["allows"], serde_json::json!(["5432/TCP"]), "{dropped:#}");

    // A filter: only drops, and the stranger's among them.
    let drops = observe(&node, &["--last", "1000", "--verdict", "DROPPED"]);
    assert!(!drops.is_empty() && drops.iter().all(|f| f["verdict"] == "DROPPED"), "{drops:#?}");
    assert!(at_db(&drops, "shop/stranger").is_some(), "{drops:#?}");
    assert!(at_db(&drops, "shop/api").is_none(), "{drops:#?}");
    // --not and AND across kinds: allowed flows into db.
    let into_db = observe(&node, &["--last", "1000", "--not", "--verdict", "DROPPED", "--to-pod", "shop/db"]);
    assert!(at_db(&into_db, "shop/api").is_some() && at_db(&into_db, "shop/stranger").is_none(), "{into_db:#?}");
    assert!(
        into_db.iter().all(|f| pod_of(&f["destination"]) == "shop/db" && f["verdict"] == "FORWARDED"),
        "{into_db:#?}"
    );

    // The compact line reads at a glance.
    let (ok, text, err) =
        ward(&node, &["observe", "--last", "1000", "--from-pod", "shop/stranger", "--to-pod", "shop/db"]);
    assert!(ok, "{err}");
    assert!(
        text.lines().any(|l| l.contains("shop/stranger:")
            && l.contains(
                "-> shop/db:5432 TCP DROPPED INGRESS default deny (isolated by shop/db-from-api; closest: \
                 shop/db-from-api rule 0 allows port 5432/TCP but not this peer)"
            )),
        "{text}"
    );
    // Into a pipe: never coloured, unless forced.
    assert!(!text.contains('\x1b'), "colour in a pipe: {text:?}");
    let (ok, forced, err) =
        ward(&node, &["observe", "--last", "1000", "--color", "always", "--from-pod", "shop/stranger"]);
    assert!(ok, "{err}");
    assert!(forced.contains("\x1b[31mDROPPED\x1b[0m"), "{forced:?}");

    // A table: a header, then the same flows in aligned columns.
    let (ok, table, err) = ward(&node, &["observe", "--last", "1000", "-o", "table", "--to-pod", "shop/db"]);
    assert!(ok, "{err}");
    let mut rows = table.lines();
    let header = rows.next().unwrap_or_default();
    assert!(header.starts_with("TIME ") && header.ends_with("SUMMARY"), "{table}");
    let column = |name: &str| header.find(name).unwrap_or_else(|| panic!("no {name} column: {table}"));
    let (verdict_at, summary_at) = (column("VERDICT"), column("SUMMARY"));
    let rows: Vec<&str> = rows.collect();
    assert!(!rows.is_empty(), "{table}");
    for r in &rows {
        let verdict = r.get(verdict_at..).unwrap_or_default();
        assert!(verdict.starts_with("FORWARDED ") || verdict.starts_with("DROPPED "), "misaligned: {r}\n{table}");
    }
    assert!(
        rows.iter().any(|r| r.contains("shop/stranger:")
            && r.get(summary_at..)
                .is_some_and(|s| s.starts_with("default deny (isolated by shop/db-from-api; closest"))),
        "{table}"
    );

    // --type: drop and policy-verdict, as hubble's types fall out of Ward's records.
    let drops_by_type = observe(&node, &["--last", "1000", "--type", "drop"]);
    assert_eq!(drops_by_type, observe(&node, &["--last", "1000", "--verdict", "DROPPED"]), "drop = DROPPED");
    let verdicts = observe(&node, &["--last", "1000", "--type", "policy-verdict", "--to-pod", "shop/db"]);
    assert!(at_db(&verdicts, "shop/api").is_some() && at_db(&verdicts, "shop/stranger").is_some(), "{verdicts:#?}");
    assert!(verdicts.iter().all(|f| f["trace_reason"] == "NEW"), "{verdicts:#?}");
    let into_pods = observe(&node, &["--last", "1000", "--type", "trace:to-endpoint"]);
    assert!(at_db(&into_pods, "shop/api").is_some() && at_db(&into_pods, "shop/stranger").is_none(), "{into_pods:#?}");
    assert!(
        into_pods.iter().all(|f| f["traffic_direction"] == "INGRESS" && f["verdict"] == "FORWARDED"),
        "{into_pods:#?}"
    );

    // Explain names the same closest miss for the same connection.
    let (ok, why, err) =
        ward(&node, &["policy", "explain", "--from", "shop/stranger", "--to", "shop/db", "--port", "5432"]);
    assert!(ok || why.contains("DENIED"), "{err}");
    assert!(
        why.contains("closest miss (ingress): shop/db-from-api ingress rule 0 allows port 5432/TCP but not this peer"),
        "{why}"
    );

    // An exported file gives the same answers to the same filters.
    let file = node.dir().join("flows.jsonl");
    let lines: String = flows.iter().map(|f| format!("{f}\n")).collect();
    std::fs::write(&file, lines).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    let path = file.to_string_lossy().into_owned();
    let from_file = observe(&node, &["--input-file", &path, "--last", "1000", "--verdict", "DROPPED"]);
    assert_eq!(from_file, drops_among(&flows), "the file filtered like the agent's history");

    // A time window through the agent: the last minute holds both.
    let recent = observe(&node, &["--since", "1m", "--to-pod", "shop/db", "--traffic-direction", "ingress"]);
    assert!(at_db(&recent, "shop/api").is_some() && at_db(&recent, "shop/stranger").is_some(), "{recent:#?}");
    let future = observe(&node, &["--since", "2999-01-01T00:00:00Z"]);
    assert!(future.is_empty(), "nothing after a future time: {future:#?}");

    // --follow: a new drop arrives on the open stream, and only what matches the filter.
    let mut follower = Follower::start(&node, &["observe", "-f", "-o", "json", "--from-pod", "shop/stranger"]);
    // The follower subscribes once its process has connected: probe until a record arrives.
    let deadline = Instant::now() + Duration::from_secs(15);
    let live = loop {
        let again = node.probe(&stranger, &db, 5432, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
        assert!(!again.connected(), "still denied: {again}");
        if let Some(line) = follower.next_line(Duration::from_secs(1)) {
            break line;
        }
        assert!(Instant::now() < deadline, "no line from ward observe -f within 15 s");
    };
    let live: Value = serde_json::from_str(&live).unwrap_or_else(|e| panic!("not a JSON flow ({e}): {live}"));
    assert_eq!(pod_of(&live["source"]), "shop/stranger", "{live:#}");
    assert!(live["uuid"] != dropped["uuid"], "a new record, not the history: {live:#}");
    drop(follower);

    // The agent's own export holds the same records (it is flushed as the exporter catches up).
    let export_path = export.0.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exported = observe(&node, &["--input-file", &export_path, "--last", "1000", "--from-pod", "shop/stranger"]);
        if let Some(f) = at_db(&exported, "shop/stranger") {
            assert_eq!(f, dropped, "the exported record is the one the agent serves");
            break;
        }
        assert!(Instant::now() < deadline, "the drop in {export_path} within 10 s: {exported:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `ward observe --follow` process, killed when dropped (on panic too), with its stdout
/// read on a thread so a wait can have a deadline.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(node: &Node, args: &[&str]) -> Follower {
        use std::io::BufRead;
        let mut child = std::process::Command::new(&node.binaries().cli)
            .arg("--socket")
            .arg(node.socket())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting ward {args:?}: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout of ward {args:?}"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    fn next_line(&mut self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the file when the test ends, on panic too.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn drops_among(flows: &[Value]) -> Vec<Value> {
    flows.iter().filter(|f| f["verdict"] == "DROPPED").cloned().collect()
}

fn db_ip(node: &Node, db: &PodRef) -> String {
    let pod = node.pod(db).unwrap_or_else(|e| panic!("{e}"));
    pod.ip(Family::IPv4).unwrap_or_else(|| panic!("db has no IPv4 address")).to_string()
}
