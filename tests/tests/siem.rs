//! The flow export file as a SIEM pipeline takes it: a real log shipper (rsyslog's imfile,
//! forwarding over TCP to a second rsyslog's imtcp, see `ward_lab::rsyslog`) tails the
//! agent's `--flow-export-file` while it rotates, and every exported line arrives intact: the
//! same bytes, each a JSON flow record equal to what `ward observe -o json` serves for it.
//! Needs root, the workspace's binaries (`cargo xtask build`) and Debian's rsyslog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use ward_lab::labdir::LabDir;
use ward_lab::rsyslog::{self, Shipper};
use ward_lab::{Family, Node, NodeConfig, PodRef, Protocol, flowscene, require_root};

/// Small enough that a few dozen flows rotate the file several times.
const MAX_BYTES: u64 = 8 * 1024;
/// Large enough that no rotated file is deleted during the test: every line ever exported
/// is still on disk to compare with.
const KEEP: usize = 200;

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Every line the exporter wrote, oldest file first, and how many rotated files there are.
fn exported(path: &Path) -> (Vec<String>, usize) {
    let files: Vec<PathBuf> = (1..=KEEP).rev().map(|n| rotated(path, n)).filter(|p| p.exists()).collect();
    let rotations = files.len();
    let mut lines = Vec::new();
    for f in files.iter().chain([&path.to_path_buf()]) {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        lines.extend(text.lines().map(str::to_owned));
    }
    (lines, rotations)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// `ward observe -o json` over the whole history, by uuid.
fn observed(node: &Node) -> BTreeMap<String, Value> {
    let out = node.ward(&["observe", "-o", "json", "--last", "100000"]);
    assert!(out.status.success(), "ward observe: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON flow ({e}): {l}")))
        .map(|f| (f["uuid"].as_str().unwrap_or_default().to_owned(), f))
        .collect()
}

#[test]
fn rsyslog_ships_every_exported_flow_intact_across_rotations() {
    let test = "rsyslog_ships_every_exported_flow_intact_across_rotations";
    if !require_root(test) || !rsyslog::available(test) {
        return;
    }
    let dir = LabDir::create("siem").unwrap_or_else(|e| panic!("scratch directory: {e}"));
    let export = dir.path().join("flows.jsonl");
    let config = NodeConfig {
        agent_args: vec![
            "--flow-events".into(),
            "all".into(),
            "--flow-export-file".into(),
            export.to_string_lossy().into_owned(),
            "--flow-export-max-bytes".into(),
            MAX_BYTES.to_string(),
            "--flow-export-keep".into(),
            KEEP.to_string(),
        ],
        ..NodeConfig::default()
    };
    let node = flowscene::allowed_and_denied(config).unwrap_or_else(|e| panic!("{e}"));
    // The shipper starts after the first flows: imfile reads the file from its start.
    let shipper = Shipper::start(node.netns(), &export).unwrap_or_else(|e| panic!("{e}"));

    // More flows, paced like traffic rather than a flood, until the file has rotated a few
    // times (bounded in count and time).
    let (api, db, stranger) = (PodRef::new("shop", "api"), PodRef::new("shop", "db"), PodRef::new("shop", "stranger"));
    let deadline = Instant::now() + Duration::from_secs(90);
    for round in 0..200 {
        let ok = node.probe(&api, &db, 5432, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.connected(), "api -> db stays allowed: {ok}");
        if round % 4 == 0 {
            let denied =
                node.probe(&stranger, &db, 5432, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
            assert!(!denied.connected(), "stranger -> db stays denied: {denied}");
        }
        if exported(&export).1 >= 3 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Everything exported arrives: the same lines, each once (the exporter writes as the
    // flow task delivers, the shipper forwards as it reads, so poll until both settle).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (lines, rotations, received) = loop {
        let (lines, rotations) = exported(&export);
        let received = shipper.received();
        if sorted(received.clone()) == sorted(lines.clone()) || Instant::now() >= deadline {
            break (lines, rotations, received);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        rotations >= 1,
        "the export rotated at least once ({} lines of at most {MAX_BYTES} bytes per file)",
        lines.len()
    );
    assert!(!rotated(&export, KEEP).exists(), "no rotated file was deleted: the comparison covers every line");
    let missing: Vec<&String> = lines.iter().filter(|l| !received.contains(l)).collect();
    let extra: Vec<&String> = received.iter().filter(|l| !lines.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && received.len() == lines.len(),
        "{} exported, {} received; missing {missing:#?}\nnot exported {extra:#?}\n{}",
        lines.len(),
        received.len(),
        shipper.logs()
    );

    // Each received line is a flow record (or a loss record) and the one the agent serves.
    let served = observed(&node);
    let (mut forwarded, mut dropped) = (0, 0);
    for line in &received {
        let got: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON after shipping ({e}): {line}"));
        if got.get("lost_events").is_some() {
            continue;
        }
        let uuid = got["uuid"].as_str().unwrap_or_else(|| panic!("a flow without a uuid: {got:#}"));
        let theirs = served.get(uuid).unwrap_or_else(|| panic!("flow {uuid} is not in ward observe's history"));
        assert_eq!(&got, theirs, "the shipped record is the one `ward observe -o json` prints");
        match got["verdict"].as_str() {
            Some("FORWARDED") => forwarded += 1,
            Some("DROPPED") => {
                if got["drop_reason_desc"] == "POLICY_DENIED" {
                    assert!(got["ingress_denied_by"].is_array() || got["egress_denied_by"].is_array(), "{got:#}");
                }
                dropped += 1;
            }
            _ => {}
        }
    }
    eprintln!(
        "{} lines in {} files shipped intact: {forwarded} forwarded, {dropped} dropped",
        lines.len(),
        rotations + 1
    );
    assert!(forwarded > 0 && dropped > 0, "both kinds shipped: {forwarded} forwarded, {dropped} dropped");
    // Lines from before and after a rotation both arrived (the rotated file and the current one).
    let first_file = std::fs::read_to_string(rotated(&export, rotations)).unwrap_or_default();
    let current = std::fs::read_to_string(&export).unwrap_or_default();
    for text in [first_file, current] {
        if let Some(l) = text.lines().next() {
            assert!(received.iter().any(|r| r == l), "{l} arrived");
        }
    }
}
