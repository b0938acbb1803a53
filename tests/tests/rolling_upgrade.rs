//! A rolling upgrade of Ward on the lab's real two-node cluster, one node at a time as the
//! DaemonSet's `updateStrategy` (RollingUpdate, `maxUnavailable: 1`, `maxSurge: 0`) does it:
//! each node's agent gets SIGTERM, exits, and a new agent binary starts with the same command
//! line; the next node waits until the new agent is ready (its readiness answer, what the
//! DaemonSet's probe reads). Throughout, with NetworkPolicies allowing some same-node and
//! cross-node paths and denying others:
//!
//! - long-lived TCP connections on every allowed path exchange an HTTP request and its answer
//!   (keep-alive, agnhost `netexec`'s `/echo`) every 100 ms: none may be cut or stall;
//! - new connections are attempted over and over on every allowed path (each must connect
//!   and get its answer) and on every denied path (each must time out: a policy drop);
//! - each node's conflist is sampled: present with the same bytes at every sample;
//! - the long-lived connections' conntrack entries (`WARD_CT`, read from the pins) are the
//!   same entries afterwards, `created_ns` unchanged: the new agents swept nothing at start-up
//!   (a swept entry would be re-created by the next packet, with a new creation time).
//!
//! The "new" binary is a copy of the built `ward-agent` at another path: the test proves the
//! hand-off (stop, adopt the pins, resume) between two agent processes, not compatibility
//! between two different releases.
//!
//! The clients are sockets this test opens inside the client pods' network namespaces
//! (found among containerd's namespace mounts by the pod's address): their packets leave
//! through the pod's interface and its veth exactly as the pod's own would, and the test
//! can hold them open and time each exchange, which `kubectl exec` probes cannot. The
//! servers are agnhost pods. Needs root, the workspace's binaries and the Kubernetes cache;
//! under CI=true all are required.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ward_common::maps::{CtKey, CtValue, MAP_CT};
use ward_lab::cluster::{Cluster, ClusterConfig, ClusterNode, Kubectl, WardCni, teardown, ward_cni};

const AGNHOST: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";
const NS: &str = "roll";
const PORT: u16 = 8080;
const POD_TIMEOUT: Duration = Duration::from_secs(180);
/// Ward's compiled policy follows the API within seconds; a verdict is read once it holds.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const LONG_LIVED_PER_PATH: usize = 2;
const EXCHANGE_EVERY: Duration = Duration::from_millis(100);
/// An exchange slower than this counts as a cut: nothing on the path waits this long.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPT_EVERY: Duration = Duration::from_millis(200);
const ALLOWED_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A denied SYN is dropped: the connect times out. One SYN (the first retransmit is 1 s
/// later) is enough to see the verdict.
const DENIED_CONNECT_TIMEOUT: Duration = Duration::from_millis(900);
const CONFLIST_SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Traffic under the old agents before the first replacement, and under each new one before
/// the next step: every kind of traffic then runs across each hand-off and after it.
const TRAFFIC_WINDOW: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Every loop of the traffic threads ends by this, even if the test's own flow never stops
/// them (a panic unwinding past the stop guard cannot hang the test).
const TRAFFIC_LIMIT: Duration = Duration::from_secs(300);

/// srv-a (n1) admits cli-a (same node) and cli-b (across); srv-b (n2) admits cli-b (same
/// node) only; cli-a may send only to srv-a. x-a (n1) is admitted nowhere.
fn workloads(n1: &str, n2: &str) -> String {
    let pod = |name: &str, node: &str, args: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NS}, labels: {{app: {name}}}}}\n\
             spec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - {{name: c, image: \"{AGNHOST}\", imagePullPolicy: Never, args: {args}}}\n"
        )
    };
    let netexec = format!("[netexec, --http-port={PORT}]");
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
{}{}{}{}{}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: srv-a, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: srv-a}}}}
  policyTypes: [Ingress]
  ingress: [{{from: [{{podSelector: {{matchExpressions: [{{key: app, operator: In, values: [cli-a, cli-b]}}]}}}}], ports: [{{port: {PORT}, protocol: TCP}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: srv-b, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: srv-b}}}}
  policyTypes: [Ingress]
  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: cli-b}}}}}}], ports: [{{port: {PORT}, protocol: TCP}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: cli-a, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: cli-a}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{podSelector: {{matchLabels: {{app: srv-a}}}}}}], ports: [{{port: {PORT}, protocol: TCP}}]}}]
"#,
        pod("srv-a", n1, &netexec),
        pod("srv-b", n2, &netexec),
        pod("cli-a", n1, "[pause]"),
        pod("cli-b", n2, "[pause]"),
        pod("x-a", n1, "[pause]"),
    )
}

/// One client-to-server path of the scenario.
#[derive(Clone, Debug)]
struct PathSpec {
    name: String,
    /// The client pod's network namespace.
    netns: PathBuf,
    to: SocketAddrV4,
    allowed: bool,
}

/// The network namespace (a containerd mount under `node`'s state directory) holding `ip`.
fn pod_netns(node: &ClusterNode, pod: &str, ip: Ipv4Addr) -> PathBuf {
    let mut candidates = teardown::mounts_under(&node.containerd().state());
    candidates.sort();
    candidates.dedup();
    for path in candidates {
        // Other mounts there (shm, rootfs) are not namespaces: entering them fails.
        let holds = thread::scope(|s| {
            s.spawn(|| {
                ward_lab::netns::enter(pod, &path).is_ok()
                    && nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
                        addrs.any(|a| a.address.and_then(|sa| sa.as_sockaddr_in().map(|v4| v4.ip())) == Some(ip))
                    })
            })
            .join()
            .unwrap_or(false)
        });
        if holds {
            return path;
        }
    }
    panic!("no network namespace under {} holds {pod}'s address {ip}", node.containerd().state().display());
}

/// A TCP connection opened from inside `netns` (the socket stays in that namespace).
fn connect_from(netns: &Path, to: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    thread::scope(|s| {
        s.spawn(|| {
            ward_lab::netns::enter("client pod", netns).map_err(std::io::Error::other)?;
            TcpStream::connect_timeout(&SocketAddr::V4(to), timeout)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
    })
}

/// `s` as a query value needing no escapes (path names have spaces and `>`).
fn token(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// One HTTP/1.1 keep-alive request to netexec's `/echo` and its answer, which must carry `msg`.
fn exchange(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, msg: &str) -> Result<(), String> {
    let msg = &token(msg);
    write!(stream, "GET /echo?msg={msg} HTTP/1.1\r\nHost: srv\r\n\r\n").map_err(|e| format!("sending: {e}"))?;
    let mut line = String::new();
    let mut status = None;
    let mut length = None;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("closed by the peer".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
        if line == "\r\n" {
            break;
        }
        if status.is_none() {
            status = Some(line.trim_end().to_owned());
        } else if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let status = status.unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("answered {status:?}"));
    }
    let length = length.ok_or("an answer without Content-Length")?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| format!("reading the body: {e}"))?;
    if body != msg.as_bytes() {
        return Err(format!("echoed {:?} for {msg:?}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

/// A fresh connection on `path` and one exchange over it: whether it got through, and how it
/// failed if not.
fn attempt(path: &PathSpec, n: u64) -> Result<(), (ErrorKind, String)> {
    let timeout = if path.allowed { ALLOWED_CONNECT_TIMEOUT } else { DENIED_CONNECT_TIMEOUT };
    let mut stream = connect_from(&path.netns, path.to, timeout).map_err(|e| (e.kind(), e.to_string()))?;
    let _ = stream.set_read_timeout(Some(EXCHANGE_TIMEOUT));
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| (e.kind(), e.to_string()))?);
    exchange(&mut stream, &mut reader, &format!("{}-new-{n}", path.name)).map_err(|e| (ErrorKind::Other, e))
}

/// Polls until every path's attempt answers as its policy says, twice in a row.
fn settle(paths: &[PathSpec]) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut streak = 0;
    let mut n = 0;
    while streak < 2 {
        let wrong: Vec<String> = paths
            .iter()
            .filter_map(|p| match attempt(p, n) {
                Ok(()) if !p.allowed => Some(format!("{}: got through", p.name)),
                Err((_, e)) if p.allowed => Some(format!("{}: {e}", p.name)),
                _ => None,
            })
            .collect();
        n += 1;
        if wrong.is_empty() {
            streak += 1;
        } else {
            streak = 0;
            assert!(Instant::now() < deadline, "the policy did not settle within {SETTLE_TIMEOUT:?}: wrong {wrong:?}");
            thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Sets the stop flag when dropped, also while a panic unwinds, so the traffic threads end.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn running(stop: &AtomicBool, started: Instant) -> bool {
    !stop.load(Ordering::SeqCst) && started.elapsed() < TRAFFIC_LIMIT
}

#[derive(Debug, Default)]
struct LongLived {
    path: String,
    local: Option<SocketAddr>,
    exchanges: u64,
    slowest: Duration,
    cut: Option<String>,
}

/// Exchanges over `stream` every [`EXCHANGE_EVERY`] until stopped or cut.
fn hold(path: &str, mut stream: TcpStream, stop: &AtomicBool, started: Instant) -> LongLived {
    let mut out = LongLived { path: path.to_owned(), local: stream.local_addr().ok(), ..LongLived::default() };
    let _ = stream.set_read_timeout(Some(EXCHANGE_TIMEOUT));
    let mut reader = match stream.try_clone() {
        Ok(s) => BufReader::new(s),
        Err(e) => {
            out.cut = Some(format!("cloning the socket: {e}"));
            return out;
        }
    };
    while running(stop, started) {
        let t = Instant::now();
        if let Err(e) = exchange(&mut stream, &mut reader, &format!("{path}-{}", out.exchanges)) {
            out.cut =
                Some(format!("after {} exchanges ({:.1}s in): {e}", out.exchanges, started.elapsed().as_secs_f64()));
            return out;
        }
        out.slowest = out.slowest.max(t.elapsed());
        out.exchanges += 1;
        thread::sleep(EXCHANGE_EVERY);
    }
    out
}

#[derive(Debug, Default)]
struct Attempts {
    path: String,
    allowed: bool,
    tried: u64,
    got_through: u64,
    /// Failures by kind (for a denied path: all should be time-outs, the sign of a drop).
    failures: BTreeMap<String, u64>,
    first_failure: Option<String>,
}

fn keep_attempting(path: &PathSpec, stop: &AtomicBool, started: Instant) -> Attempts {
    let mut out = Attempts { path: path.name.clone(), allowed: path.allowed, ..Attempts::default() };
    while running(stop, started) {
        match attempt(path, out.tried) {
            Ok(()) => out.got_through += 1,
            Err((kind, e)) => {
                *out.failures.entry(format!("{kind:?}")).or_default() += 1;
                out.first_failure.get_or_insert_with(|| {
                    format!("attempt {} ({:.1}s in): {e}", out.tried, started.elapsed().as_secs_f64())
                });
            }
        }
        out.tried += 1;
        thread::sleep(ATTEMPT_EVERY);
    }
    out
}

#[derive(Debug, Default)]
struct ConflistSamples {
    node: String,
    samples: u64,
    differed: u64,
    first_difference: Option<String>,
}

/// Samples `dir` until stopped: exactly the files (names and bytes) of `expected` each time.
fn sample_conflist(
    node: &str,
    dir: &Path,
    expected: &BTreeMap<String, Vec<u8>>,
    stop: &AtomicBool,
    started: Instant,
) -> ConflistSamples {
    let mut out = ConflistSamples { node: node.to_owned(), ..ConflistSamples::default() };
    while running(stop, started) {
        let now = read_dir_files(dir);
        out.samples += 1;
        if &now != expected {
            out.differed += 1;
            out.first_difference.get_or_insert_with(|| {
                format!("{:.2}s in: files {:?}", started.elapsed().as_secs_f64(), now.keys().collect::<Vec<_>>())
            });
        }
        thread::sleep(CONFLIST_SAMPLE_EVERY);
    }
    out
}

fn read_dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).ok()?)))
        .collect()
}

/// The `WARD_CT` entries of node `node` whose flow is one of `flows` (client, server), with
/// their creation times.
fn ct_entries_of(node: &str, flows: &[(SocketAddrV4, SocketAddrV4)]) -> BTreeMap<String, u64> {
    let pin = Path::new("/sys/fs/bpf").join(ward_lab::node::layout_dir()).join(node).join(MAP_CT);
    let data = aya::maps::MapData::from_pin(&pin).unwrap_or_else(|e| panic!("opening {}: {e}", pin.display()));
    let ct: aya::maps::HashMap<_, CtKey, CtValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("WARD_CT is a hash");
    let v4 = |a: &[u8; 16]| Ipv4Addr::new(a[12], a[13], a[14], a[15]);
    let mut out = BTreeMap::new();
    for (k, v) in ct.iter().filter_map(Result::ok) {
        let src = SocketAddrV4::new(v4(&k.saddr), u16::from_be_bytes(k.sport_be));
        let dst = SocketAddrV4::new(v4(&k.daddr), u16::from_be_bytes(k.dport_be));
        if flows.iter().any(|f| *f == (src, dst) || *f == (dst, src)) {
            out.insert(format!("{node} ep {} dir {} {src} -> {dst}", k.ep_id, k.dir), v.created_ns);
        }
    }
    out
}

/// Polls the agent's readiness (what the DaemonSet's probe reads) until it says ready.
fn wait_ready(node_dir: &Path, what: &str) {
    let socket = WardCni::socket(node_dir);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match ward_lab::agent::call(&socket, &serde_json::json!({"op": "readiness"}), Duration::from_secs(5))
        {
            Ok(r) if r["ready"] == true => return,
            Ok(r) => r.to_string(),
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "{what} not ready within {READY_TIMEOUT:?}; last: {last}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn joined<T>(handles: Vec<thread::ScopedJoinHandle<'_, T>>, what: &str) -> Vec<T> {
    handles.into_iter().map(|h| h.join().unwrap_or_else(|_| panic!("a {what} thread panicked"))).collect()
}

fn running_pod_ip(k: &Kubectl, name: &str) -> Ipv4Addr {
    k.running_pod_ip(NS, name, POD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_rolling_agent_upgrade_cuts_no_connection_and_lets_no_denied_one_through() {
    let test = "a_rolling_agent_upgrade_cuts_no_connection_and_lets_no_denied_one_through";
    let Some(cache) = ward_cni::prerequisites(test) else { return };
    let ward = WardCni::locate().unwrap_or_else(|e| panic!("{e:?}"));
    let built_agent = ward.bins.agent.clone();
    let mut cluster =
        Cluster::start(ClusterConfig { nodes: 2, cache: Some(cache), cni: Arc::new(ward), ..ClusterConfig::default() })
            .unwrap_or_else(|e| panic!("starting the cluster: {e}"));
    eprintln!("{test}: cluster {} with 2 nodes up in {:.1}s", cluster.name(), cluster.startup_time().as_secs_f64());
    // The upgrade's binary, inside the cluster's directory (removed with it; teardown kills
    // whatever names that directory on its command line).
    let next_agent = cluster.dir().join("next").join("ward-agent");
    std::fs::create_dir_all(next_agent.parent().expect("a parent")).expect("creating the upgrade's directory");
    std::fs::copy(&built_agent, &next_agent).expect("copying ward-agent as the upgrade");

    let k = cluster.kubectl().clone();
    let (n1, n2) = (&cluster.nodes()[0], &cluster.nodes()[1]);
    k.apply(&workloads(n1.name(), n2.name())).unwrap_or_else(|e| panic!("applying the workloads: {e}"));
    let [srv_a, srv_b, cli_a, cli_b, x_a] = ["srv-a", "srv-b", "cli-a", "cli-b", "x-a"].map(|p| running_pod_ip(&k, p));
    let (ns_cli_a, ns_cli_b, ns_x_a) =
        (pod_netns(n1, "cli-a", cli_a), pod_netns(n2, "cli-b", cli_b), pod_netns(n1, "x-a", x_a));
    let path = |name: &str, netns: &PathBuf, to: Ipv4Addr, allowed: bool| PathSpec {
        name: name.to_owned(),
        netns: netns.clone(),
        to: SocketAddrV4::new(to, PORT),
        allowed,
    };
    let paths = [
        path("cli-a->srv-a (n1, same node)", &ns_cli_a, srv_a, true),
        path("cli-b->srv-b (n2, same node)", &ns_cli_b, srv_b, true),
        path("cli-b->srv-a (n2 to n1)", &ns_cli_b, srv_a, true),
        path("x-a->srv-a (n1, same node; srv-a's ingress)", &ns_x_a, srv_a, false),
        path("x-a->srv-b (n1 to n2; srv-b's ingress)", &ns_x_a, srv_b, false),
        path("cli-a->srv-b (n1 to n2; cli-a's egress)", &ns_cli_a, srv_b, false),
    ];
    settle(&paths);

    // The long-lived connections, opened and answered once under the old agents.
    let mut held = Vec::new();
    for p in paths.iter().filter(|p| p.allowed) {
        for i in 0..LONG_LIVED_PER_PATH {
            let mut s = connect_from(&p.netns, p.to, ALLOWED_CONNECT_TIMEOUT)
                .unwrap_or_else(|e| panic!("{}: opening long-lived connection {i}: {e}", p.name));
            s.set_read_timeout(Some(EXCHANGE_TIMEOUT)).expect("read timeout");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            exchange(&mut s, &mut r, "hello").unwrap_or_else(|e| panic!("{}: first exchange: {e}", p.name));
            held.push((format!("{} #{i}", p.name), s));
        }
    }
    let flows: Vec<(SocketAddrV4, SocketAddrV4)> = held
        .iter()
        .map(|(_, s)| match (s.local_addr(), s.peer_addr()) {
            (Ok(SocketAddr::V4(l)), Ok(SocketAddr::V4(p))) => (l, p),
            other => panic!("a long-lived connection without IPv4 addresses: {other:?}"),
        })
        .collect();
    let node_names: Vec<String> = cluster.nodes().iter().map(|n| n.name().to_owned()).collect();
    let ct_of_all = || node_names.iter().flat_map(|n| ct_entries_of(n, &flows)).collect::<BTreeMap<_, _>>();
    let ct_before = ct_of_all();
    let conf_dirs: Vec<(String, PathBuf)> =
        cluster.nodes().iter().map(|n| (n.name().to_owned(), n.containerd().cni_conf_dir())).collect();
    let conf_before: Vec<BTreeMap<String, Vec<u8>>> = conf_dirs.iter().map(|(_, d)| read_dir_files(d)).collect();
    for ((node, dir), files) in conf_dirs.iter().zip(&conf_before) {
        assert_eq!(files.len(), 1, "{node}: one conflist in {} before the upgrade: {:?}", dir.display(), files.keys());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut steps: Vec<(String, Duration, Duration)> = Vec::new();
    let (long_lived, attempts, conflists) = thread::scope(|s| {
        let _stop_guard = StopOnDrop(stop.clone());
        let holders: Vec<_> = held
            .into_iter()
            .map(|(name, stream)| {
                let stop = &*stop;
                s.spawn(move || hold(&name, stream, stop, started))
            })
            .collect();
        let attempters: Vec<_> = paths
            .iter()
            .map(|p| {
                let stop = &*stop;
                s.spawn(move || keep_attempting(p, stop, started))
            })
            .collect();
        let samplers: Vec<_> = conf_dirs
            .iter()
            .zip(&conf_before)
            .map(|((node, dir), expected)| {
                let stop = &*stop;
                s.spawn(move || sample_conflist(node, dir, expected, stop, started))
            })
            .collect();

        // Traffic under the old agents, then one node at a time.
        thread::sleep(TRAFFIC_WINDOW);
        for i in 0..cluster.nodes().len() {
            let node = &mut cluster.nodes_mut()[i];
            let (name, dir) = (node.name().to_owned(), node.dir().to_owned());
            let t = Instant::now();
            node.replace_companion(&next_agent).unwrap_or_else(|e| panic!("replacing the agent of {name}: {e}"));
            let stopped_and_started = t.elapsed();
            wait_ready(&dir, &format!("the new agent of {name}"));
            steps.push((name.clone(), stopped_and_started, t.elapsed()));
            assert!(
                node.companion_diagnostics().contains(&*next_agent.to_string_lossy()),
                "{name} runs the new binary: {}",
                node.companion_diagnostics()
            );
            eprintln!(
                "{test}: {name}: old agent stopped and new one started in {:.2}s, ready {:.2}s after the SIGTERM",
                stopped_and_started.as_secs_f64(),
                t.elapsed().as_secs_f64()
            );
            thread::sleep(TRAFFIC_WINDOW);
        }
        stop.store(true, Ordering::SeqCst);
        (joined(holders, "long-lived"), joined(attempters, "attempt"), joined(samplers, "conflist"))
    });
    let traffic = started.elapsed();
    cluster.check_running().unwrap_or_else(|e| panic!("after the upgrade: {e}"));
    let ct_after = ct_of_all();

    eprintln!("{test}: {:.1}s of traffic across {} node replacements", traffic.as_secs_f64(), steps.len());
    for l in &long_lived {
        eprintln!(
            "{test}: long-lived {} ({:?}): {} exchanges, slowest {:.0} ms, cut: {:?}",
            l.path,
            l.local,
            l.exchanges,
            l.slowest.as_secs_f64() * 1000.0,
            l.cut
        );
    }
    for a in &attempts {
        eprintln!(
            "{test}: new connections {} ({}): {} tried, {} got through, failures {:?}, first {:?}",
            a.path,
            if a.allowed { "allowed" } else { "denied" },
            a.tried,
            a.got_through,
            a.failures,
            a.first_failure
        );
    }
    for c in &conflists {
        eprintln!("{test}: conflist of {}: {} samples, {} differed", c.node, c.samples, c.differed);
    }
    eprintln!(
        "{test}: conntrack entries of the long-lived connections: {} before, {} after",
        ct_before.len(),
        ct_after.len()
    );

    let cut: Vec<String> =
        long_lived.iter().filter_map(|l| l.cut.as_ref().map(|c| format!("{}: {c}", l.path))).collect();
    assert!(cut.is_empty(), "long-lived connections cut during the upgrade: {cut:#?}");
    let few: Vec<&str> = long_lived
        .iter()
        .filter(|l| (l.exchanges as f64) < traffic.as_secs_f64() * 2.0)
        .map(|l| l.path.as_str())
        .collect();
    assert!(few.is_empty(), "long-lived connections that stalled (fewer than 2 exchanges a second): {few:?}");
    for a in &attempts {
        assert!(a.tried >= 5, "{}: only {} attempts", a.path, a.tried);
        if a.allowed {
            assert_eq!(a.got_through, a.tried, "{}: allowed new connections failed: {:?}", a.path, a.first_failure);
        } else {
            assert_eq!(a.got_through, 0, "{}: denied new connections got through", a.path);
            assert_eq!(
                a.failures.keys().collect::<Vec<_>>(),
                ["TimedOut"],
                "{}: a denied connection is dropped (times out), not refused or unroutable",
                a.path
            );
        }
    }
    for c in &conflists {
        assert!(c.samples > 0, "{}: the conflist was never sampled", c.node);
        assert_eq!(c.differed, 0, "{}: the conflist changed or went missing: {:?}", c.node, c.first_difference);
    }
    // Each long-lived connection is tracked somewhere (at least the server's ingress; the
    // isolated client cli-a's egress too), and every entry is the one from before.
    assert!(
        ct_before.len() >= flows.len(),
        "{} conntrack entries for {} long-lived connections: {ct_before:#?}",
        ct_before.len(),
        flows.len()
    );
    assert_eq!(
        ct_after, ct_before,
        "the long-lived connections' conntrack entries (with their creation times) changed"
    );
    drop(cluster);
}
