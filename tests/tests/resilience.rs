//! Privileged resilience tests: enforcement stays exact while policy changes fast, while the
//! agent is killed and restarted, and while the manifests directory holds invalid objects.
//! Probers run on their own threads during the disturbance and every single result is
//! checked: an allowed pair must connect every time, a denied pair must never get through.
//!
//! Every prober loop is bounded in count and time; the lab's guards clean up on panic.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_yaml::Value;
use ward_lab::echo::Echo;
use ward_lab::probe::{self, Probe};
use ward_lab::{Family, Labels, Node, NodeConfig, Outcome, PodRef, PodSpec, Protocol, Serve, netns, require_root};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

// ---- lab set-up ----

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn pref(s: &str) -> PodRef {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

/// Namespace `x` with `x/server` (TCP 80 `http`, TCP 81, UDP 53), `x/client`, `x/intruder`
/// and `x/other` (what unrelated policies select).
fn lab() -> Node {
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("starting a lab node: {e}"));
    node.set_namespace("x", &Labels::new()).unwrap_or_else(|e| panic!("namespace x: {e}"));
    let pod = |name: &str| PodSpec {
        namespace: "x".into(),
        name: name.into(),
        labels: labels(&[("app", name)]),
        serves: vec![Serve::new(80, TCP, Some("http")), Serve::new(81, TCP, None), Serve::new(53, UDP, Some("dns"))],
    };
    node.create_pods(&[pod("server"), pod("client"), pod("intruder"), pod("other")])
        .unwrap_or_else(|e| panic!("pods through ward-cni: {e}"));
    node
}

/// A NetworkPolicy in `x` with `spec` (and optionally `annotations`) as flow-style YAML.
fn netpol(name: &str, annotations: &str, spec: &str) -> Value {
    serde_yaml::from_str(&format!(
        "{{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, \
         metadata: {{name: {name}, namespace: x, annotations: {{{annotations}}}}}, spec: {spec}}}"
    ))
    .unwrap_or_else(|e| panic!("policy {name}: {e}"))
}

/// Default deny for the server's ingress.
fn deny_policy(annotation: &str) -> Value {
    netpol("deny", annotation, "{podSelector: {matchLabels: {app: server}}, policyTypes: [Ingress]}")
}

/// Client to server on TCP 80, UDP 53 and `extra` TCP ports; `by_expression` writes the same
/// selector as a set expression instead of a label match (identical semantics).
fn allow_policy(annotation: &str, by_expression: bool, extra: &[u16]) -> Value {
    let from = if by_expression {
        "{podSelector: {matchExpressions: [{key: app, operator: In, values: [client]}]}}"
    } else {
        "{podSelector: {matchLabels: {app: client}}}"
    };
    let mut ports = vec!["{port: 80, protocol: TCP}".to_owned(), "{port: dns, protocol: UDP}".to_owned()];
    ports.extend(extra.iter().map(|p| format!("{{port: {p}, protocol: TCP}}")));
    netpol(
        "allow",
        annotation,
        &format!(
            "{{podSelector: {{matchLabels: {{app: server}}}}, ingress: [{{from: [{from}], ports: [{}]}}]}}",
            ports.join(", ")
        ),
    )
}

/// A policy about `x/other` only; `version` changes its peers and ports.
fn unrelated_policy(version: usize) -> Value {
    netpol(
        "unrelated",
        "",
        &format!(
            "{{podSelector: {{matchLabels: {{app: other}}}}, policyTypes: [Ingress, Egress], \
             ingress: [{{from: [{{podSelector: {{matchLabels: {{gen: g{version}}}}}}}], ports: [{{port: {}}}]}}], \
             egress: [{{ports: [{{port: {}, endPort: {}}}]}}]}}",
            1024 + version % 30000,
            2000 + version % 1000,
            3000 + version % 1000
        ),
    )
}

fn apply(node: &mut Node, policies: &[Value]) -> Vec<String> {
    node.apply(policies)
        .unwrap_or_else(|e| panic!("applying {} policies: {e}\nrejections: {:?}", policies.len(), node.rejections()))
}

fn status_json(node: &Node) -> serde_json::Value {
    node.status().unwrap_or_else(|e| panic!("agent status: {e}")).raw
}

// ---- continuous probing ----

/// One pair probed over and over, and what every probe of it must show.
#[derive(Clone, Debug)]
struct Prober {
    label: String,
    probe: Probe,
    allowed: bool,
    /// The server's name, what an allowed probe must read back.
    reply: String,
}

/// Allowed probes get the lab's usual 1 s (an allow never needs a retransmission); a leak of
/// a denied one would connect in well under the shorter wait.
const ALLOWED_TIMEOUT: Duration = Duration::from_secs(1);
const DENIED_TIMEOUT: Duration = Duration::from_millis(500);
/// Per prober thread: at most one probe per this interval (pacing, so the probers leave CPU
/// to the agent on a small machine)...
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// ...at most this many probes...
const MAX_PROBES: usize = 50_000;
/// ...and never past this hard cap, whatever the main thread does.
const HARD_CAP: Duration = Duration::from_secs(180);

fn prober(node: &Node, from: &str, to: &str, port: u16, protocol: Protocol, allowed: bool) -> Prober {
    let (from, to) = (pref(from), pref(to));
    let mut probe = node
        .probe_spec(&from, &to, port, protocol, Family::IPv4)
        .unwrap_or_else(|e| panic!("probe {from} -> {to}: {e}"));
    probe.timeout = if allowed { ALLOWED_TIMEOUT } else { DENIED_TIMEOUT };
    Prober {
        label: format!("{from} -> {to} {protocol}/{port} ({})", if allowed { "allowed" } else { "denied" }),
        probe,
        allowed,
        reply: to.name,
    }
}

/// The standard pairs: client to server allowed (TCP and UDP); intruder to server and client
/// to server's TCP 81 denied.
fn standard_probers(node: &Node) -> Vec<Prober> {
    vec![
        prober(node, "x/client", "x/server", 80, TCP, true),
        prober(node, "x/client", "x/server", 53, UDP, true),
        prober(node, "x/intruder", "x/server", 80, TCP, false),
        prober(node, "x/intruder", "x/server", 53, UDP, false),
        prober(node, "x/client", "x/server", 81, TCP, false),
    ]
}

/// `probers` with each denied pair probed by `copies` threads: a denied probe waits out its
/// whole timeout, an allowed one does not, and both kinds deserve many samples.
fn denied_copies(probers: Vec<Prober>, copies: usize) -> Vec<Prober> {
    let mut out = Vec::new();
    for p in probers {
        if p.allowed {
            out.push(p);
            continue;
        }
        for k in 0..copies {
            let mut c = p.clone();
            c.label = format!("{} #{k}", p.label);
            out.push(c);
        }
    }
    out
}

/// Every probe of one prober: when, and why it was wrong (`None`: as expected).
struct Record {
    label: String,
    results: Vec<(Instant, Option<String>)>,
}

impl Record {
    fn wrong(&self) -> impl Iterator<Item = &(Instant, Option<String>)> {
        self.results.iter().filter(|(_, w)| w.is_some())
    }
}

/// Probes from inside the from-pod (entered once) until `stop`, `MAX_PROBES` or `HARD_CAP`.
fn run_prober(p: &Prober, stop: &AtomicBool, count: &AtomicU64) -> Record {
    let mut rec = Record { label: p.label.clone(), results: Vec::new() };
    if let Err(e) = netns::enter(&p.probe.from_netns, &p.probe.from_path) {
        rec.results.push((Instant::now(), Some(format!("entering the pod: {e}"))));
        return rec;
    }
    let end = Instant::now() + HARD_CAP;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end && rec.results.len() < MAX_PROBES {
        let at = Instant::now();
        if let Some((last, _)) = rec.results.last() {
            thread::sleep(PROBE_INTERVAL.saturating_sub(at - *last));
        }
        let at = Instant::now();
        let outcome = probe::connect(p.probe.to, p.probe.protocol, p.probe.timeout);
        let ok = match &outcome {
            Outcome::Connected(reply) => p.allowed && *reply == p.reply,
            Outcome::Failed(why) => !p.allowed && why == "timed out",
        };
        rec.results.push((at, (!ok).then(|| outcome.to_string())));
        count.fetch_add(1, Ordering::Relaxed);
    }
    rec
}

/// Sets the stop flag when dropped, so probers end promptly even if the main work panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `probers` on their own threads while `work` runs on this one (it gets the live probe
/// counts); returns what `work` returned and every prober's record.
fn under_probing<T>(
    node: &mut Node,
    probers: &[Prober],
    work: impl FnOnce(&mut Node, &[AtomicU64]) -> T,
) -> (T, Vec<Record>) {
    let stop = AtomicBool::new(false);
    let counts: Vec<AtomicU64> = probers.iter().map(|_| AtomicU64::new(0)).collect();
    thread::scope(|s| {
        let handles: Vec<_> = probers
            .iter()
            .zip(&counts)
            .map(|(p, c)| {
                let stop = &stop;
                s.spawn(move || run_prober(p, stop, c))
            })
            .collect();
        let out = {
            let _stop = StopOnDrop(&stop);
            work(node, &counts)
        };
        let records =
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| panic!("a prober thread panicked"))).collect();
        (out, records)
    })
}

/// Polls until every prober has done at least `more` further probes since `base`.
fn wait_probes(counts: &[AtomicU64], base: &[u64], more: u64, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let now: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        if now.iter().zip(base).all(|(n, b)| *n >= b + more) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: probers did not make {more} more probes within {within:?} (counts {now:?}, from {base:?})"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn snapshot(counts: &[AtomicU64]) -> Vec<u64> {
    counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

/// Per prober: total probes and wrong ones; plus the first wrong results with their phase.
fn summarize(records: &[Record], phase_of: impl Fn(Instant) -> &'static str) -> (usize, String) {
    let mut wrong_total = 0;
    let mut text = String::new();
    for r in records {
        let wrong: Vec<_> = r.wrong().collect();
        wrong_total += wrong.len();
        text.push_str(&format!("\n  {}: {} probes, {} wrong", r.label, r.results.len(), wrong.len()));
        for (at, why) in wrong.iter().take(5) {
            text.push_str(&format!("\n    during {}: {}", phase_of(*at), why.as_deref().unwrap_or_default()));
        }
    }
    (wrong_total, text)
}
// ---- 6. a thousand updates under continuous probing ----

#[test]
fn a_thousand_policy_updates_under_continuous_probing_never_leak_a_denied_or_refuse_an_allowed_connection() {
    if !require_root(
        "a_thousand_policy_updates_under_continuous_probing_never_leak_a_denied_or_refuse_an_allowed_connection",
    ) {
        return;
    }
    const UPDATES: usize = 1000;
    let mut node = lab();
    let files = apply(&mut node, &[deny_policy(""), allow_policy("", false, &[]), unrelated_policy(0)]);
    let [deny_file, allow_file, unrelated_file] = [&files[0], &files[1], &files[2]].map(String::clone);
    let probers = denied_copies(standard_probers(&node), 4);
    let rev_before = status_json(&node)["policy_revision"].as_u64().unwrap_or(0);
    let started = Instant::now();

    let (updates_took, records) = under_probing(&mut node, &probers, |node, counts| {
        wait_probes(counts, &snapshot(counts), 1, Duration::from_secs(10), "before the updates");
        let t0 = Instant::now();
        for i in 1..=UPDATES {
            let note = format!("ward.test/update: '{i}'");
            // Four kinds of update, round robin: the unrelated policy's peers and ports; the
            // deny and allow policies re-written with identical semantics (new annotation,
            // selector spelled another way); the allow policy with an extra unprobed port.
            let (file, obj) = match i % 4 {
                0 => (&unrelated_file, unrelated_policy(i)),
                1 => (&allow_file, allow_policy(&note, i % 8 == 1, &[])),
                2 => (&deny_file, deny_policy(&note)),
                _ => (&allow_file, allow_policy(&note, false, &[9000 + (i % 500) as u16])),
            };
            node.write_manifest(file, &ward_lab::manifest::object_yaml(&obj))
                .unwrap_or_else(|e| panic!("update {i}: {e}"));
            // Synced after every update (about 15 ms each here), so the agent enforces each
            // of the states in turn instead of coalescing several writes into one reload.
            node.sync().unwrap_or_else(|e| panic!("sync after update {i}: {e}"));
        }
        // Let every prober finish a probe against the final state.
        wait_probes(counts, &snapshot(counts), 1, Duration::from_secs(10), "after the updates");
        t0.elapsed()
    });

    let rev_after = status_json(&node)["policy_revision"].as_u64().unwrap_or(0);
    let (wrong, text) = summarize(&records, |_| "the updates");
    let total: usize = records.iter().map(|r| r.results.len()).sum();
    assert_eq!(
        wrong,
        0,
        "{wrong} of {total} probes wrong during {UPDATES} policy updates ({updates_took:?}):{text}\nrejections: {:?}",
        node.rejections()
    );
    for r in &records {
        assert!(
            r.results.len() >= 5,
            "{}: only {} probes during the updates; too few to mean anything{text}",
            r.label,
            r.results.len()
        );
    }
    assert!(
        rev_after >= rev_before + (UPDATES / 4) as u64,
        "the updates must really change the maps (revision {rev_before} -> {rev_after})"
    );
    eprintln!(
        "{UPDATES} updates in {updates_took:?} (test {:?}), revision {rev_before} -> {rev_after}, {total} probes, all as expected:{text}",
        started.elapsed()
    );
}

// ---- 7. SIGKILL and restart under traffic ----

/// What a restart must leave exactly as it was (conntrack excluded: the probes keep adding
/// flows).
fn adopted_state(status: &serde_json::Value) -> serde_json::Value {
    let mut maps = status["map_entries"].clone();
    if let Some(m) = maps.as_object_mut() {
        m.retain(|name, _| name != "WARD_CT");
    }
    serde_json::json!({
        "map_entries": maps,
        "pods": status["pods"],
        "namespaces": status["namespaces"],
        "policies": status["policies"],
        "endpoints": status["endpoints"],
        "identities": status["identities"],
        "policy_revision": status["policy_revision"],
    })
}

#[test]
fn agent_killed_with_sigkill_and_restarted_under_traffic_changes_nothing() {
    if !require_root("agent_killed_with_sigkill_and_restarted_under_traffic_changes_nothing") {
        return;
    }
    const ECHO_PORT: u16 = 7000;
    let mut node = lab();
    apply(&mut node, &[deny_policy(""), allow_policy("", false, &[ECHO_PORT]), unrelated_policy(1)]);
    let server_ip = node.pod_ip(&pref("x/server"), Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
    let mut echo = {
        let server = node.pod(&pref("x/server")).unwrap_or_else(|e| panic!("{e}"));
        let client = node.pod(&pref("x/client")).unwrap_or_else(|e| panic!("{e}"));
        Echo::open(server.netns(), client.netns(), SocketAddr::new(server_ip, ECHO_PORT))
    };
    echo.exchange().unwrap_or_else(|e| panic!("the echo connection before the kill: {e}"));
    let before = status_json(&node);
    let probers = denied_copies(standard_probers(&node), 2);

    let ((killed_at, restarted_at, down_echo), records) = under_probing(&mut node, &probers, |node, counts| {
        wait_probes(counts, &snapshot(counts), 2, Duration::from_secs(15), "before the kill");
        let pid = node.agent_pid();
        let status = node.kill_agent().unwrap_or_else(|e| panic!("SIGKILL to the agent: {e}"));
        let killed_at = Instant::now();
        assert!(!node.agent_running(), "agent {pid:?} still running after SIGKILL ({status:?})");
        // The down period: every prober gets at least two probes in with no agent at all.
        wait_probes(counts, &snapshot(counts), 2, Duration::from_secs(15), "while the agent is down");
        let down_echo = echo.exchange();
        node.start_agent().unwrap_or_else(|e| panic!("restarting the agent: {e}"));
        node.sync().unwrap_or_else(|e| panic!("the restarted agent re-applying the manifests: {e}"));
        let restarted_at = Instant::now();
        wait_probes(counts, &snapshot(counts), 2, Duration::from_secs(15), "after the restart");
        (killed_at, restarted_at, down_echo)
    });

    let phase = |at: Instant| {
        if at < killed_at {
            "before the kill"
        } else if at < restarted_at {
            "the kill, down period and restart"
        } else {
            "after the restart"
        }
    };
    let (wrong, text) = summarize(&records, phase);
    assert_eq!(
        wrong,
        0,
        "{wrong} probes wrong around SIGKILL and restart:{text}\nagent log:\n{}",
        node.agent_log_tail()
    );
    let down: usize = records
        .iter()
        .map(|r| r.results.iter().filter(|(at, _)| phase(*at) == "the kill, down period and restart").count())
        .sum();
    assert!(down >= probers.len() * 2, "too few probes while the agent was down ({down}):{text}");

    let after = status_json(&node);
    let (was, is) = (adopted_state(&before), adopted_state(&after));
    assert_eq!(
        is, was,
        "the restarted agent must adopt the pinned state unchanged (same map entries, pods and \
         policy revision: no rebuild)\nbefore the kill: {was}\nafter the restart: {is}"
    );
    // Each allowed probe is a new flow the server's ingress allows by policy (a few may reuse
    // a tracked tuple); counters recreated at restart would have lost the earlier ones.
    let allowed_probes =
        records.iter().zip(&probers).filter(|(_, p)| p.allowed).map(|(r, _)| r.results.len() as u64).sum::<u64>();
    let allowed_before = before["reason_counters"]["policy_allow"].as_u64().unwrap_or(0);
    let allowed_after = after["reason_counters"]["policy_allow"].as_u64().unwrap_or(0);
    assert!(
        allowed_after >= allowed_before + allowed_probes / 2,
        "the pinned counters must carry on across the restart: policy_allow {allowed_before} -> \
         {allowed_after} over {allowed_probes} allowed probes"
    );
    eprintln!("SIGKILL and restart under traffic, every probe as expected:{text}");
    if let Err(e) = down_echo {
        panic!("the connection opened before the kill must work while the agent is down: {e}");
    }
    echo.exchange()
        .unwrap_or_else(|e| panic!("the connection opened before the kill must work after the restart: {e}"));
}

// ---- 8. invalid input ----

/// The policy the table corrupts: server admits the client on TCP 80 only.
const WEB_VALID: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{port: 80, protocol: TCP}]
";

/// `WEB_VALID` with its ingress rule replaced.
fn web_with_rule(rule: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web, namespace: x}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
    - {rule}
"
    )
}

struct BadCase {
    name: &'static str,
    content: String,
    /// The object the rejection must name.
    object: &'static str,
    /// The field the rejection must name (empty: the document could not be read at all).
    field: &'static str,
    /// What its message must say.
    message: &'static str,
}

fn bad_cases() -> Vec<BadCase> {
    let from = "from: [{podSelector: {matchLabels: {app: client}}}]";
    vec![
        BadCase {
            name: "endPort below port",
            content: web_with_rule(&format!("{{{from}, ports: [{{port: 80, endPort: 70, protocol: TCP}}]}}")),
            object: "NetworkPolicy x/web",
            field: "spec.ingress[0].ports[0].endPort",
            message: "70 is below port 80",
        },
        BadCase {
            name: "unknown protocol",
            content: web_with_rule(&format!("{{{from}, ports: [{{port: 80, protocol: ICMP}}]}}")),
            object: "NetworkPolicy x/web",
            field: "spec.ingress[0].ports[0].protocol",
            message: "ICMP",
        },
        BadCase {
            name: "invalid CIDR",
            content: web_with_rule("{from: [{ipBlock: {cidr: 10.0.0.0/33}}], ports: [{port: 80}]}"),
            object: "NetworkPolicy x/web",
            field: "spec.ingress[0].from[0].ipBlock.cidr",
            message: "10.0.0.0/33",
        },
        BadCase {
            name: "bad selector operator",
            content: web_with_rule(
                "{from: [{podSelector: {matchExpressions: [{key: app, operator: Equals, values: [client]}]}}], ports: [{port: 80}]}",
            ),
            object: "NetworkPolicy x/web",
            field: "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
            message: "Equals",
        },
        BadCase {
            name: "a field of the wrong type",
            content: web_with_rule(&format!("{{{from}, ports: {{port: 80}}}}")),
            object: "NetworkPolicy x/web",
            field: "spec.ingress[0].ports",
            message: "expected a sequence",
        },
        BadCase {
            name: "malformed YAML",
            content:
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x\nspec: [\n"
                    .into(),
            object: "document 1",
            field: "",
            // Where the parser gave up, as a line of the file.
            message: "line 4",
        },
    ]
}

/// `ward status --json`, the operator's view.
fn cli_status(node: &Node) -> serde_json::Value {
    let out = Command::new(&node.binaries().cli)
        .arg("--socket")
        .arg(node.socket())
        .args(["status", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("running ward status --json: {e}"));
    assert!(
        out.status.success(),
        "ward status --json failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("ward status --json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Probes each pair once (in parallel); returns the wrong results.
fn check_probes(context: &str, probers: &[Prober]) -> Vec<String> {
    let probes: Vec<Probe> = probers.iter().map(|p| p.probe.clone()).collect();
    probe::probe_all(&probes, probes.len())
        .into_iter()
        .zip(probers)
        .filter_map(|(o, p)| {
            let ok = match &o {
                Outcome::Connected(reply) => p.allowed && *reply == p.reply,
                Outcome::Failed(why) => !p.allowed && why == "timed out",
            };
            (!ok).then(|| format!("{context}: {}: got {o}", p.label))
        })
        .collect()
}

#[test]
fn invalid_policy_versions_are_rejected_naming_file_object_and_field_while_the_last_valid_stays_enforced() {
    if !require_root(
        "invalid_policy_versions_are_rejected_naming_file_object_and_field_while_the_last_valid_stays_enforced",
    ) {
        return;
    }
    let mut node = lab();
    let web_file = ward_lab::manifest::object_file("NetworkPolicy", "x", "web");
    node.write_manifest(&web_file, WEB_VALID).unwrap_or_else(|e| panic!("{e}"));
    node.sync().unwrap_or_else(|e| panic!("the valid policy: {e}"));
    // What the valid version enforces, and what the fix and the other file each change.
    let valid_in_force = [
        prober(&node, "x/client", "x/server", 80, TCP, true),
        prober(&node, "x/client", "x/server", 81, TCP, false),
        prober(&node, "x/intruder", "x/server", 80, TCP, false),
    ];
    let other_file_applied = [
        prober(&node, "x/client", "x/server", 80, TCP, true),
        prober(&node, "x/intruder", "x/server", 81, TCP, true),
        prober(&node, "x/intruder", "x/server", 80, TCP, false),
    ];
    let fix_applied =
        [prober(&node, "x/client", "x/server", 81, TCP, true), prober(&node, "x/client", "x/server", 80, TCP, false)];
    let mut failures = check_probes("the valid version", &valid_in_force);
    assert!(failures.is_empty(), "before any invalid input:\n  {}", failures.join("\n  "));
    let other = netpol(
        "other",
        "",
        "{podSelector: {matchLabels: {app: server}}, ingress: [{from: [{podSelector: {matchLabels: {app: intruder}}}], ports: [{port: 81}]}]}",
    );

    for case in bad_cases() {
        let name = case.name;
        node.write_manifest(&web_file, &case.content).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The agent reports the file's new bytes as loaded once it has read them.
        if let Err(e) = node.sync() {
            failures.push(format!("{name}: the agent did not take in the invalid version: {e}"));
            continue;
        }
        if !node.agent_running() {
            panic!("{name}: the agent died on invalid input; log:\n{}", node.agent_log_tail());
        }
        for (source, status) in [("agent status", status_json(&node)), ("ward status --json", cli_status(&node))] {
            let rejected = status["rejected"].as_array().cloned().unwrap_or_default();
            let hit = rejected.iter().find(|r| {
                r["file"] == web_file.as_str()
                    && r["object"] == case.object
                    && r["field"] == case.field
                    && r["message"].as_str().unwrap_or_default().contains(case.message)
            });
            if let Some(r) = hit {
                eprintln!("{name}: {source} lists {r}");
            } else {
                failures.push(format!(
                    "{name}: {source} must list the rejection of {web_file} / {} / field {:?} / message with {:?}; rejected: {}",
                    case.object,
                    case.field,
                    case.message,
                    serde_json::Value::Array(rejected)
                ));
            }
        }
        failures.extend(check_probes(&format!("{name}: the last valid version"), &valid_in_force));

        // Another file of the directory still loads while this one is bad...
        let other_files = apply(&mut node, std::slice::from_ref(&other));
        failures.extend(check_probes(&format!("{name}: another file changed"), &other_file_applied));
        node.remove_manifest(&other_files[0]).unwrap_or_else(|e| panic!("{e}"));
        node.sync().unwrap_or_else(|e| panic!("{name}: removing the other file: {e}"));

        // ...and fixing the file applies the fix and clears the rejection.
        node.write_manifest(&web_file, &WEB_VALID.replace("port: 80", "port: 81")).unwrap_or_else(|e| panic!("{e}"));
        node.sync().unwrap_or_else(|e| panic!("{name}: the fixed version: {e}"));
        failures.extend(check_probes(&format!("{name}: fixed"), &fix_applied));
        let left = node.rejections();
        if !left.is_empty() {
            failures.push(format!("{name}: rejections left after the fix: {left:?}"));
        }
        // Back to the valid version for the next case.
        node.write_manifest(&web_file, WEB_VALID).unwrap_or_else(|e| panic!("{e}"));
        node.sync().unwrap_or_else(|e| panic!("{name}: restoring the valid version: {e}"));
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n  {}\nagent log:\n{}",
        failures.len(),
        failures.join("\n  "),
        node.agent_log_tail()
    );
}
