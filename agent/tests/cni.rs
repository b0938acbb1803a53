//! Privileged tests of the `ward-cni` binary against real network namespaces.
//!
//! Each test builds a lab: a "node" network namespace (the plugin runs inside it, as it would
//! on a node), pod namespaces, a private IPAM directory and a fake agent: a thread serving the
//! agent's local API (`api::proto`) on a unix socket, which records every request and answers
//! as the test says. Names are unique per process and lab (`ward-<pid>-<n>-...`); every
//! namespace, directory and thread is released by a guard's `Drop`, also when a test panics.
//! Links are only ever created inside the lab's namespaces, so deleting those deletes them.
//!
//! Needs root. Without it the tests skip, unless `CI=true`, where they fail.

use std::fs::{self, File};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};
use ward_agent::api::proto::{AttachmentKey, EndpointRegistration, EndpointStatus, Readiness, Request, Response};

const PLUGIN: &str = env!("CARGO_BIN_EXE_ward-cni");
/// Debian's reference plugins (host-local for delegated IPAM).
const CNI_PATH: &str = "/usr/lib/cni";
const POD_CIDR_V4: &str = "10.244.1.0/24";
const POD_CIDR_V6: &str = "fd77:1::/64";
/// The node's own addresses (documentation ranges), on the node namespace's loopback: the
/// source of the test's connections to pods.
const NODE_V4: &str = "192.0.2.1";
const NODE_V6: &str = "2001:db8::1";

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

fn privileged() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "the CNI tests need root; CI=true forbids skipping them");
    eprintln!("skipping: the CNI tests need root");
    false
}

/// Runs `ip` with `args`, panicking with its stderr on failure; returns stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(out.status.success(), "ip {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop with everything in it.
struct Netns {
    name: String,
    file: File,
}

impl Netns {
    fn new(name: String) -> Self {
        ip(&["netns", "add", &name]);
        let file = File::open(Self::path_of(&name)).unwrap_or_else(|e| panic!("opening netns {name}: {e}"));
        Self { name, file }
    }

    fn path_of(name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }

    fn path(&self) -> PathBuf {
        Self::path_of(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip -j` output inside this namespace.
    fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["-j", "-n", &self.name];
        all.extend_from_slice(args);
        let text = ip(&all);
        if text.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip {all:?} printed invalid JSON ({e}): {text}"))
    }

    fn links(&self) -> Vec<Value> {
        self.ip_json(&["link", "show"])
    }

    fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
    }

    /// Runs `f` on a thread inside this namespace (sockets it creates stay in it).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("entering netns {}: {e}", self.name));
                f()
            })
            .join()
            .unwrap_or_else(|_| panic!("thread in netns {} panicked", self.name))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What the node looked like when the agent was asked to register a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeAtRegistration {
    host_link_exists: bool,
    host_link_up: bool,
    routes_to_pod: usize,
}

type Answer = Box<dyn FnMut(&Request) -> Response + Send>;

/// The agent's side of the local API: one JSON line in, one out, per connection.
struct FakeAgent {
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    fn start(socket: PathBuf, mut answer: Answer) -> Self {
        let listener = UnixListener::bind(&socket).unwrap_or_else(|e| panic!("binding {}: {e}", socket.display()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let mut line = String::new();
                    if BufReader::new(&conn).read_line(&mut line).is_err() {
                        continue;
                    }
                    let response = match serde_json::from_str::<Request>(&line) {
                        Ok(request) => {
                            let response = answer(&request);
                            requests.lock().unwrap_or_else(|p| p.into_inner()).push(request);
                            response
                        }
                        Err(e) => Response::Error { message: format!("fake agent: bad request {line:?}: {e}") },
                    };
                    let mut out = serde_json::to_vec(&response).unwrap_or_default();
                    out.push(b'\n');
                    let _ = conn.write_all(&out);
                }
            })
        };
        Self { socket, requests, stop, thread: Some(thread) }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the fake agent answers registrations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AgentMode {
    Protect,
    Refuse,
    Absent,
}

const REFUSAL: &str = "policy compilation failed for this pod";

/// What the fake agent knows: the endpoints it protects and whether it says it is ready.
#[derive(Default)]
struct AgentState {
    observed: Vec<NodeAtRegistration>,
    registered: Vec<EndpointRegistration>,
    not_ready: Option<String>,
}

type Shared = Arc<Mutex<AgentState>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, AgentState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake agent's answers: the local API as the real agent gives it, from `state`.
fn answer(mode: AgentMode, node_name: String, state: Shared) -> Answer {
    Box::new(move |request| match request {
        Request::Register(reg) => {
            let seen = observe_node(&node_name, reg);
            let mut st = lock(&state);
            st.observed.push(seen);
            if mode == AgentMode::Refuse {
                return Response::Error { message: REFUSAL.into() };
            }
            st.registered.retain(|r| (&r.container_id, &r.ifname) != (&reg.container_id, &reg.ifname));
            st.registered.push(reg.clone());
            Response::Registered { endpoint_id: 7, identity: 4242 }
        }
        Request::Deregister { container_id, ifname } => {
            let mut st = lock(&state);
            let before = st.registered.len();
            st.registered.retain(|r| (&r.container_id, &r.ifname) != (container_id, ifname));
            Response::Deregistered { existed: st.registered.len() != before }
        }
        Request::Readiness => {
            let why = lock(&state).not_ready.clone();
            Response::Readiness(Readiness { ready: why.is_none(), datastore_synced: why.is_none(), reason: why })
        }
        Request::Endpoints => Response::Endpoints {
            endpoints: lock(&state)
                .registered
                .iter()
                .map(|r| EndpointStatus {
                    endpoint_id: 7,
                    container_id: r.container_id.clone(),
                    pod: format!("{}/{}", r.pod_namespace, r.pod_name),
                    host_ifname: r.host_ifname.clone(),
                    host_ifindex: r.host_ifindex,
                    ips: r.ips.clone(),
                    identity: 4242,
                    labels: Default::default(),
                    ingress_isolated: false,
                    egress_isolated: false,
                    tracked_flows: 0,
                })
                .collect(),
        },
        Request::Gc { network, valid } => {
            let mut st = lock(&state);
            let key = |r: &EndpointRegistration| AttachmentKey {
                container_id: r.container_id.clone(),
                ifname: r.ifname.clone(),
            };
            let (stale, kept): (Vec<_>, Vec<_>) =
                st.registered.drain(..).partition(|r| &r.network == network && !valid.contains(&key(r)));
            st.registered = kept;
            Response::Collected { forgotten: stale.iter().map(key).collect() }
        }
        other => Response::Error { message: format!("fake agent: unexpected {other:?}") },
    })
}

struct Lab {
    id: String,
    // Field order is drop order: the agent thread first, then the namespaces and files.
    agent: Option<FakeAgent>,
    state: Shared,
    pods: Vec<Netns>,
    node: Netns,
    dir: TempDir,
}

/// One pod as ADD reported it.
struct Added {
    container_id: String,
    netns: PathBuf,
    result: Value,
}

impl Added {
    fn host_ifname(&self) -> String {
        self.result["interfaces"][0]["name"].as_str().unwrap_or_default().to_owned()
    }

    fn ips(&self) -> Vec<IpAddr> {
        let ips = self.result["ips"].as_array().cloned().unwrap_or_default();
        ips.iter()
            .map(|ip| {
                let cidr = ip["address"].as_str().unwrap_or_else(|| panic!("no address in {ip}"));
                let addr = cidr.split('/').next().unwrap_or(cidr);
                addr.parse().unwrap_or_else(|e| panic!("bad address {cidr}: {e}"))
            })
            .collect()
    }

    fn ip(&self, v4: bool) -> IpAddr {
        self.ips()
            .into_iter()
            .find(|ip| ip.is_ipv4() == v4)
            .unwrap_or_else(|| panic!("no {} address", if v4 { "IPv4" } else { "IPv6" }))
    }
}

/// Exit status, parsed stdout (null if empty) and stderr of one plugin run.
struct Run {
    ok: bool,
    stdout: Value,
    stderr: String,
}

impl Lab {
    fn new(mode: AgentMode) -> Option<Self> {
        if !privileged() {
            return None;
        }
        let id = format!("ward-{}-{}", std::process::id(), NEXT_LAB.fetch_add(1, Ordering::SeqCst));
        let dir = TempDir::new(&id);
        let node = Netns::new(format!("{id}-node"));
        node.ip(&["link", "set", "lo", "up"]);
        node.ip(&["addr", "add", &format!("{NODE_V4}/32"), "dev", "lo"]);
        node.ip(&["addr", "add", &format!("{NODE_V6}/128"), "dev", "lo"]);
        let state = Shared::default();
        let mut lab = Self { id, agent: None, state, pods: Vec::new(), node, dir };
        if mode != AgentMode::Absent {
            lab.start_agent(mode);
        }
        Some(lab)
    }

    fn start_agent(&mut self, mode: AgentMode) {
        let socket = self.dir.0.join("agent.sock");
        let _ = fs::remove_file(&socket);
        self.agent = Some(FakeAgent::start(socket, answer(mode, self.node.name.clone(), self.state.clone())));
    }

    fn stop_agent(&mut self) {
        self.agent = None;
        let _ = fs::remove_file(self.dir.0.join("agent.sock"));
    }

    fn agent(&self) -> &FakeAgent {
        self.agent.as_ref().unwrap_or_else(|| panic!("this lab has no agent"))
    }

    fn registered(&self) -> Vec<String> {
        lock(&self.state).registered.iter().map(|r| r.container_id.clone()).collect()
    }

    /// The plugin's records and queue under the state directory.
    fn state_files(&self, sub: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.ipam_dir().join("ward").join(sub)) else { return Vec::new() };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// Host-side veths in the node namespace.
    fn host_links(&self) -> Vec<String> {
        self.node
            .links()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .filter(|n| n.starts_with("wd"))
            .collect()
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.0.join("ipam")
    }

    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "ward",
            "type": "ward-cni",
            "agentSocket": self.dir.0.join("agent.sock"),
            "podCIDRs": [POD_CIDR_V4, POD_CIDR_V6],
            "dataDir": self.ipam_dir(),
            "mtu": 1500
        })
    }

    /// Allocated addresses on disk (the IPAM files named by address).
    fn allocations(&self) -> Vec<IpAddr> {
        let Ok(entries) = fs::read_dir(self.ipam_dir().join("ward")) else {
            return Vec::new();
        };
        let mut ips: Vec<IpAddr> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        ips.sort();
        ips
    }

    fn new_pod(&mut self) -> (String, PathBuf) {
        let n = self.pods.len();
        let ns = Netns::new(format!("{}-pod{n}", self.id));
        let path = ns.path();
        self.pods.push(ns);
        (format!("{}-c{n}", self.id), path)
    }

    fn pod_ns(&self, netns: &Path) -> &Netns {
        self.pods.iter().find(|p| p.path() == netns).unwrap_or_else(|| panic!("no pod netns {}", netns.display()))
    }

    /// Runs the plugin inside the node namespace.
    fn cni(&self, command: &str, container_id: &str, netns: Option<&Path>, conf: &Value) -> Run {
        let mut env = vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", container_id.to_owned()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={container_id}-pod")),
            ("CNI_PATH", CNI_PATH.to_owned()),
        ];
        if let Some(netns) = netns {
            env.push(("CNI_NETNS", netns.to_string_lossy().into_owned()));
        }
        self.cni_env(&env, conf)
    }

    /// Runs the plugin inside the node namespace with exactly `env`.
    fn cni_env(&self, env: &[(&str, String)], conf: &Value) -> Run {
        let command = env.iter().find(|(k, _)| *k == "CNI_COMMAND").map(|(_, v)| v.clone()).unwrap_or_default();
        let mut cmd = Command::new(PLUGIN);
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let node_fd = self.node.file.as_raw_fd();
        // SAFETY: between fork and exec only the async-signal-safe setns(2) runs; the fd is
        // kept open by `self.node` for the duration of the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(node_fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {PLUGIN}: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes()).unwrap_or_else(|e| panic!("writing the netconf: {e}"));
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("waiting for {PLUGIN}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let stdout = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{command} printed invalid JSON ({e}): {text}"))
        };
        Run { ok: out.status.success(), stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
    }

    fn add(&mut self) -> Added {
        let (container_id, netns) = self.new_pod();
        let run = self.cni("ADD", &container_id, Some(&netns), &self.conf());
        assert!(run.ok, "ADD failed: {} / stderr: {}", run.stdout, run.stderr);
        Added { container_id, netns, result: run.stdout }
    }

    fn del(&self, pod: &Added) {
        let run = self.cni("DEL", &pod.container_id, Some(&pod.netns), &self.conf());
        assert!(run.ok, "DEL failed: {} / stderr: {}", run.stdout, run.stderr);
        assert_eq!(run.stdout, Value::Null, "DEL prints nothing on success");
    }

    /// CHECK as a runtime calls it: with the ADD's result as `prevResult`.
    fn check(&self, pod: &Added) -> Run {
        let mut conf = self.conf();
        conf["prevResult"] = pod.result.clone();
        self.cni("CHECK", &pod.container_id, Some(&pod.netns), &conf)
    }

    /// The configuration at 1.1.0, for STATUS and GC.
    fn conf_1_1(&self) -> Value {
        let mut conf = self.conf();
        conf["cniVersion"] = json!("1.1.0");
        conf
    }

    fn status(&self) -> Run {
        self.cni_env(&[("CNI_COMMAND", "STATUS".into()), ("CNI_PATH", CNI_PATH.into())], &self.conf_1_1())
    }

    fn gc(&self, valid: &[&Added]) -> Run {
        let mut conf = self.conf_1_1();
        conf["cni.dev/valid-attachments"] =
            valid.iter().map(|p| json!({"containerID": p.container_id, "ifname": "eth0"})).collect();
        self.cni_env(&[("CNI_COMMAND", "GC".into()), ("CNI_PATH", CNI_PATH.into())], &conf)
    }
}

fn observe_node(node: &str, reg: &EndpointRegistration) -> NodeAtRegistration {
    let json = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["-j", "-n", node];
        all.extend_from_slice(args);
        serde_json::from_str(&ip(&all)).unwrap_or_default()
    };
    let link = json(&["link", "show"]).into_iter().find(|l| l["ifname"] == reg.host_ifname.as_str());
    let routes_to_pod = [json(&["-4", "route", "show"]), json(&["-6", "route", "show"])]
        .concat()
        .iter()
        .filter(|r| reg.ips.iter().any(|ip| r["dst"] == ip.to_string().as_str()))
        .count();
    NodeAtRegistration {
        host_link_exists: link.is_some(),
        host_link_up: link.as_ref().is_some_and(|l| has_flag(l, "UP")),
        routes_to_pod,
    }
}

fn has_flag(v: &Value, flag: &str) -> bool {
    v["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == flag))
        || v["state"].as_array().is_some_and(|f| f.iter().any(|x| x == flag))
}

/// Connects to `addr` from inside `ns`, retrying until a deadline (the carrier comes up
/// asynchronously after the host side is set up).
fn connect_from(ns: &Netns, addr: SocketAddr) -> TcpStream {
    ns.run(|| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => return s,
                Err(e) if Instant::now() >= deadline => panic!("connecting to {addr} from {}: {e}", ns.name),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

/// A pod answers on `ip` and the node reaches it: accept, and carry a byte each way.
fn assert_node_reaches_pod(lab: &Lab, pod_ns: &Netns, pod_ip: IpAddr) {
    let listener =
        pod_ns.run(|| TcpListener::bind((pod_ip, 0)).unwrap_or_else(|e| panic!("binding {pod_ip} in the pod: {e}")));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("listener address: {e}"));
    let mut client = connect_from(&lab.node, addr);
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
    let (mut server, peer) = listener.accept().unwrap_or_else(|e| panic!("accepting in the pod: {e}"));
    let node_ip: IpAddr =
        if pod_ip.is_ipv4() { NODE_V4.parse() } else { NODE_V6.parse() }.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(peer.ip(), node_ip, "the pod sees the node's address");
    client.write_all(b"?").unwrap_or_else(|e| panic!("node → pod: {e}"));
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).unwrap_or_else(|e| panic!("pod reading: {e}"));
    server.write_all(b"!").unwrap_or_else(|e| panic!("pod → node: {e}"));
    client.read_exact(&mut byte).unwrap_or_else(|e| panic!("node reading the pod's answer: {e}"));
    assert_eq!(&byte, b"!");
}

fn registration(request: &Request) -> &EndpointRegistration {
    match request {
        Request::Register(reg) => reg,
        other => panic!("expected a registration, got {other:?}"),
    }
}

#[test]
fn add_wires_the_pod_and_opens_the_host_side_only_after_registration() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let pod = lab.add();
    let pod_ns = lab.pod_ns(&pod.netns);
    let host = pod.host_ifname();
    let (v4, v6) = (pod.ip(true), pod.ip(false));
    assert!(POD_CIDR_V4.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&v4)), "{v4} in {POD_CIDR_V4}");
    assert!(POD_CIDR_V6.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&v6)), "{v6} in {POD_CIDR_V6}");

    // The registration named the real interface, addresses and pod.
    let requests = lab.agent().requests();
    assert_eq!(requests.len(), 1, "exactly one request: {requests:?}");
    let reg = registration(&requests[0]);
    let host_link = lab.node.link(&host).unwrap_or_else(|| panic!("host side {host} missing"));
    assert_eq!(Some(u64::from(reg.host_ifindex)), host_link["ifindex"].as_u64(), "registered ifindex");
    assert_eq!(reg.host_ifname, host);
    assert_eq!(reg.ips, vec![v4, v6]);
    assert_eq!(
        (reg.pod_namespace.as_str(), reg.pod_name.as_str()),
        ("shop", format!("{}-pod", pod.container_id).as_str())
    );
    assert_eq!((reg.container_id.as_str(), reg.ifname.as_str()), (pod.container_id.as_str(), "eth0"));
    assert_eq!(Path::new(&reg.netns), pod.netns);

    // While the agent was deciding, the host side existed but carried nothing.
    let seen = lock(&lab.state).observed.clone();
    assert_eq!(seen, vec![NodeAtRegistration { host_link_exists: true, host_link_up: false, routes_to_pod: 0 }]);

    // Afterwards: host side up with its fixed MAC, a route per pod address.
    assert!(has_flag(&host_link, "UP"), "host side up: {host_link}");
    assert_eq!(host_link["address"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(host_link["mtu"], 1500);
    for (family, ip) in [("-4", v4), ("-6", v6)] {
        let routes = lab.node.ip_json(&[family, "route", "show"]);
        assert!(
            routes.iter().any(|r| r["dst"] == ip.to_string().as_str() && r["dev"] == host.as_str()),
            "node route to {ip} via {host}: {routes:?}"
        );
    }

    // Inside the pod: addresses, gateway routes, permanent gateway neighbours.
    let eth0 = pod_ns.ip_json(&["addr", "show", "dev", "eth0"]);
    let addrs: Vec<(String, u64)> = eth0[0]["addr_info"]
        .as_array()
        .unwrap_or_else(|| panic!("no addr_info: {eth0:?}"))
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| (a["local"].as_str().unwrap_or_default().to_owned(), a["prefixlen"].as_u64().unwrap_or_default()))
        .collect();
    assert_eq!(addrs, vec![(v4.to_string(), 32), (v6.to_string(), 128)]);
    assert!(has_flag(&pod_ns.link("lo").unwrap_or_default(), "UP"), "pod loopback up");
    let routes4 = pod_ns.ip_json(&["-4", "route", "show"]);
    assert!(
        routes4.iter().any(|r| r["dst"] == "169.254.1.1" && r["scope"] == "link" && r["dev"] == "eth0"),
        "{routes4:?}"
    );
    assert!(routes4.iter().any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1"), "{routes4:?}");
    let routes6 = pod_ns.ip_json(&["-6", "route", "show"]);
    assert!(
        routes6.iter().any(|r| r["dst"] == "default" && r["gateway"] == "fe80::1" && r["dev"] == "eth0"),
        "{routes6:?}"
    );
    let neighbours = pod_ns.ip_json(&["neigh", "show", "dev", "eth0"]);
    for gw in ["169.254.1.1", "fe80::1"] {
        assert!(
            neighbours.iter().any(|n| n["dst"] == gw && n["lladdr"] == "ee:ee:ee:ee:ee:ee" && has_flag(n, "PERMANENT")),
            "permanent neighbour {gw}: {neighbours:?}"
        );
    }

    // The CNI result says the same.
    let r = &pod.result;
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["sandbox"], pod.netns.to_string_lossy().as_ref());
    assert_eq!(r["ips"][0], json!({"address": format!("{v4}/32"), "interface": 1}));
    assert_eq!(r["ips"][1], json!({"address": format!("{v6}/128"), "interface": 1}));
    assert!(r["routes"].as_array().is_some_and(|rs| rs.contains(&json!({"dst": "::/0", "gw": "fe80::1"}))), "{r}");

    // And traffic flows both ways, in both families.
    assert_node_reaches_pod(&lab, pod_ns, v4);
    assert_node_reaches_pod(&lab, pod_ns, v6);

    // CHECK agrees.
    let check = lab.check(&pod);
    assert!(check.ok, "CHECK failed: {} / {}", check.stdout, check.stderr);
}

#[test]
fn a_second_pod_gets_different_addresses_and_its_own_veth() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let first = lab.add();
    let second = lab.add();
    for v4 in [true, false] {
        assert_ne!(first.ip(v4), second.ip(v4));
    }
    assert_ne!(first.host_ifname(), second.host_ifname());
    assert_eq!(lab.allocations().len(), 4, "two addresses per pod on disk");
    assert_node_reaches_pod(&lab, lab.pod_ns(&second.netns), second.ip(true));
    assert_node_reaches_pod(&lab, lab.pod_ns(&first.netns), first.ip(false));
}

#[test]
fn del_removes_the_veth_releases_the_addresses_and_can_be_repeated() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let pod = lab.add();
    let host = pod.host_ifname();
    lab.del(&pod);
    assert!(lab.node.link(&host).is_none(), "host side {host} still exists");
    assert!(lab.pod_ns(&pod.netns).link("eth0").is_none(), "pod side still exists");
    assert_eq!(lab.allocations(), Vec::<IpAddr>::new(), "addresses not released");
    let routes = lab.node.ip_json(&["-4", "route", "show"]);
    assert!(!routes.iter().any(|r| r["dst"] == pod.ip(true).to_string().as_str()), "route left behind: {routes:?}");

    // Again: nothing left to do, still a success.
    lab.del(&pod);
    let deregister = Request::Deregister { container_id: pod.container_id.clone(), ifname: "eth0".into() };
    let requests = lab.agent().requests();
    assert_eq!(requests[1..], [deregister.clone(), deregister], "ADD's registration then one deregistration per DEL");
}

#[test]
fn del_succeeds_without_an_agent_and_without_the_netns() {
    let Some(lab) = Lab::new(AgentMode::Absent) else { return };
    let container_id = format!("{}-c0", lab.id);
    let gone = Netns::path_of(&format!("{}-gone", lab.id));
    let run = lab.cni("DEL", &container_id, Some(&gone), &lab.conf());
    assert!(run.ok, "DEL failed: {} / {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("cannot reach the ward agent"), "the skipped deregistration is logged: {}", run.stderr);
    let run = lab.cni("DEL", &container_id, None, &lab.conf());
    assert!(run.ok, "DEL without CNI_NETNS failed: {} / {}", run.stdout, run.stderr);
}

#[test]
fn released_addresses_are_not_reused_by_the_next_add() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let first = lab.add();
    let released = first.ips();
    lab.del(&first);
    // Every plugin run is a new process: what it knows, it read from the IPAM directory.
    let next = lab.add();
    for ip in next.ips() {
        assert!(!released.contains(&ip), "{ip} was handed out again right after its release");
    }
    assert_eq!(lab.allocations(), {
        let mut ips = next.ips();
        ips.sort();
        ips
    });
    let record = fs::read_to_string(lab.ipam_dir().join("ward").join(next.ip(true).to_string()))
        .unwrap_or_else(|e| panic!("reading the allocation file: {e}"));
    assert_eq!(record, format!("{}\neth0", next.container_id));
}

#[test]
fn a_refused_registration_leaves_no_interface_and_no_allocation() {
    let Some(mut lab) = Lab::new(AgentMode::Refuse) else { return };
    let (container_id, netns) = lab.new_pod();
    let run = lab.cni("ADD", &container_id, Some(&netns), &lab.conf());
    assert!(!run.ok, "ADD must fail when the agent refuses");
    assert_eq!(run.stdout["code"], 102, "{}", run.stdout);
    assert_eq!(run.stdout["cniVersion"], "1.0.0");
    assert!(run.stdout["msg"].as_str().is_some_and(|m| m.contains(REFUSAL)), "{}", run.stdout);

    let requests = lab.agent().requests();
    assert_eq!(requests.len(), 1, "one registration and nothing else: {requests:?}");
    let host = registration(&requests[0]).host_ifname.clone();
    assert!(lab.node.link(&host).is_none(), "host side {host} left behind");
    assert!(lab.pod_ns(&netns).link("eth0").is_none(), "pod side left behind");
    assert_eq!(lab.allocations(), Vec::<IpAddr>::new(), "allocation left behind");
}

#[test]
fn an_unreachable_agent_fails_add_with_try_again_and_rolls_back() {
    let Some(mut lab) = Lab::new(AgentMode::Absent) else { return };
    let (container_id, netns) = lab.new_pod();
    let run = lab.cni("ADD", &container_id, Some(&netns), &lab.conf());
    assert!(!run.ok);
    assert_eq!(run.stdout["code"], 11, "{}", run.stdout);
    let links: Vec<Value> = lab.node.links().into_iter().filter(|l| l["ifname"] != "lo").collect();
    assert!(links.is_empty(), "links left behind: {links:?}");
    assert_eq!(lab.allocations(), Vec::<IpAddr>::new());
}

#[test]
fn bad_netconf_gets_a_cni_error_naming_the_field() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let (container_id, netns) = lab.new_pod();
    let mut conf = lab.conf();
    conf["podCIDRs"] = json!([POD_CIDR_V4, "x"]);
    let run = lab.cni("ADD", &container_id, Some(&netns), &conf);
    assert!(!run.ok);
    assert_eq!(run.stdout, json!({"cniVersion": "1.0.0", "code": 7, "msg": "podCIDRs[1]: invalid CIDR \"x\""}));

    let mut conf = lab.conf();
    conf["mtu"] = json!("jumbo");
    let run = lab.cni("ADD", &container_id, Some(&netns), &conf);
    assert_eq!((run.stdout["code"].as_u64(), run.stdout["msg"].as_str()), (Some(7), Some("mtu: expected an integer")));

    assert!(lab.agent().requests().is_empty(), "nothing reached the agent");
    let links: Vec<Value> = lab.node.links().into_iter().filter(|l| l["ifname"] != "lo").collect();
    assert!(links.is_empty(), "links created: {links:?}");
}

#[test]
fn check_fails_once_the_pod_lost_an_address() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let pod = lab.add();
    let v6 = pod.ip(false);
    lab.pod_ns(&pod.netns).ip(&["addr", "del", &format!("{v6}/128"), "dev", "eth0"]);
    let run = lab.check(&pod);
    assert!(!run.ok);
    assert_eq!(run.stdout["code"], 103, "{}", run.stdout);
    assert!(run.stdout["msg"].as_str().is_some_and(|m| m.contains(&v6.to_string())), "{}", run.stdout);
}

#[test]
fn version_lists_the_supported_versions() {
    let Some(lab) = Lab::new(AgentMode::Absent) else { return };
    let run = lab.cni("VERSION", "unused", None, &json!({"cniVersion": "1.0.0"}));
    assert!(run.ok);
    assert_eq!(run.stdout, json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}));
}

impl Lab {
    fn add_with(&mut self, conf: &Value) -> Added {
        let (container_id, netns) = self.new_pod();
        let run = self.cni("ADD", &container_id, Some(&netns), conf);
        assert!(run.ok, "ADD failed: {} / stderr: {}", run.stdout, run.stderr);
        Added { container_id, netns, result: run.stdout }
    }

    /// The configuration delegating IPAM to Debian's host-local, dual-stack.
    fn host_local_conf(&self, v4: &str, v6: &str) -> Value {
        let mut conf = self.conf();
        let obj = conf.as_object_mut().unwrap_or_else(|| panic!("conf is an object"));
        obj.remove("podCIDRs");
        obj.insert(
            "ipam".into(),
            json!({"type": "host-local", "ranges": [[{"subnet": v4}], [{"subnet": v6}]],
                   "dataDir": self.dir.0.join("host-local")}),
        );
        conf
    }

    /// host-local's reservations: files named by address under its data directory.
    fn host_local_reservations(&self) -> Vec<IpAddr> {
        let Ok(entries) = fs::read_dir(self.dir.0.join("host-local/ward")) else { return Vec::new() };
        let mut ips: Vec<IpAddr> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        ips.sort();
        ips
    }
}

#[test]
fn status_is_ready_only_with_a_ready_agent_and_room_for_a_pod() {
    let Some(mut lab) = Lab::new(AgentMode::Absent) else { return };
    let run = lab.status();
    assert!(!run.ok);
    assert_eq!(run.stdout["code"], 50, "agent down: {}", run.stdout);
    assert!(run.stdout["msg"].as_str().is_some_and(|m| m.contains("cannot reach the ward agent")), "{}", run.stdout);

    lab.start_agent(AgentMode::Protect);
    lock(&lab.state).not_ready = Some("the datastore has not synced: /m not read yet".into());
    let run = lab.status();
    assert_eq!(run.stdout["code"], 50, "agent not synced: {}", run.stdout);
    assert!(run.stdout["msg"].as_str().is_some_and(|m| m.contains("has not synced")), "{}", run.stdout);

    lock(&lab.state).not_ready = None;
    let run = lab.status();
    assert!(run.ok, "ready: {} / {}", run.stdout, run.stderr);
    assert_eq!(run.stdout, Value::Null, "STATUS prints nothing on success");

    // A pod CIDR with no address left: ADD could not succeed, so STATUS says so.
    let mut conf = lab.conf_1_1();
    conf["podCIDRs"] = json!(["10.250.0.0/30"]);
    let pod = lab.add_with(&conf);
    let run = lab.cni_env(&[("CNI_COMMAND", "STATUS".into())], &conf);
    assert_eq!(run.stdout["code"], 50, "{}", run.stdout);
    assert!(
        run.stdout["msg"].as_str().is_some_and(|m| m.contains("no free address left in 10.250.0.0/30")),
        "{}",
        run.stdout
    );
    assert!(pod.ok_ips(), "the one pod keeps its address");
}

impl Added {
    fn ok_ips(&self) -> bool {
        !self.ips().is_empty()
    }
}

#[test]
fn gc_releases_every_attachment_not_listed_as_valid() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let kept = lab.add();
    let stale = lab.add();
    assert_eq!(lab.registered().len(), 2);
    let run = lab.gc(&[&kept]);
    assert!(run.ok, "GC: {} / {}", run.stdout, run.stderr);
    assert_eq!(run.stdout, Value::Null, "GC prints nothing on success");

    let mut kept_ips = kept.ips();
    kept_ips.sort();
    assert_eq!(lab.allocations(), kept_ips, "only the valid attachment keeps addresses");
    let mut quarantined = lab.state_files("quarantine");
    let mut expected: Vec<String> = stale.ips().iter().map(ToString::to_string).collect();
    quarantined.sort();
    expected.sort();
    assert_eq!(quarantined, expected, "the stale pod's addresses are in quarantine");
    assert_eq!(lab.host_links(), vec![kept.host_ifname()], "the stale veth is gone");
    assert_eq!(lab.state_files("attachments"), vec![format!("{}:eth0", kept.container_id)]);
    assert_eq!(lab.registered(), vec![kept.container_id.clone()], "the agent forgot the stale endpoint");
    let gc_request = lab.agent().requests().into_iter().find(|r| matches!(r, Request::Gc { .. }));
    assert_eq!(
        gc_request,
        Some(Request::Gc {
            network: "ward".into(),
            valid: vec![AttachmentKey { container_id: kept.container_id.clone(), ifname: "eth0".into() }]
        })
    );
    assert!(lab.check(&kept).ok, "the valid pod is untouched");

    // A GC without its list is refused rather than taken as "nothing is valid".
    let run = lab.cni_env(&[("CNI_COMMAND", "GC".into()), ("CNI_PATH", CNI_PATH.into())], &lab.conf_1_1());
    assert_eq!(run.stdout["code"], 7, "{}", run.stdout);
    assert_eq!(lab.registered().len(), 1);
}

#[test]
fn a_del_while_the_agent_is_down_is_queued_and_delivered_by_the_next_call() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let pod = lab.add();
    let other = lab.add();
    lab.stop_agent();
    let started = Instant::now();
    lab.del(&pod);
    assert!(started.elapsed() < Duration::from_secs(5), "DEL must not block on a dead agent ({:?})", started.elapsed());
    assert!(lab.host_links().iter().all(|l| *l != pod.host_ifname()), "the veth goes even with the agent down");
    assert_eq!(lab.state_files("pending"), vec![format!("{}:eth0", pod.container_id)], "the deregistration is queued");
    assert!(lab.registered().contains(&pod.container_id), "the agent has not heard yet");

    lab.start_agent(AgentMode::Protect);
    // Any call drains the queue: here, a CHECK of another pod.
    let run = lab.check(&other);
    assert!(run.ok, "{} / {}", run.stdout, run.stderr);
    assert!(lab.state_files("pending").is_empty(), "the queue is empty once delivered");
    assert_eq!(lab.registered(), vec![other.container_id.clone()], "the queued deregistration reached the agent");
    let deregistered = lab
        .agent()
        .requests()
        .into_iter()
        .any(|r| r == Request::Deregister { container_id: pod.container_id.clone(), ifname: "eth0".into() });
    assert!(deregistered);
}

#[test]
fn a_pod_removed_without_del_is_swept_by_the_next_add() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let gone = lab.add();
    // The runtime loses the pod: its namespace is deleted, no DEL ever comes.
    let index = lab.pods.iter().position(|p| p.path() == gone.netns).unwrap_or_else(|| panic!("pod netns"));
    drop(lab.pods.remove(index));
    // The kernel tears a deleted namespace's devices down in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.host_links().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lab.host_links().is_empty(), "deleting the namespace took the veth pair with it");
    let next = lab.add();
    let mut next_ips = next.ips();
    next_ips.sort();
    assert_eq!(lab.allocations(), next_ips, "the lost pod's addresses were released");
    assert_eq!(lab.registered(), vec![next.container_id.clone()], "and its registration dropped");
    assert_eq!(lab.state_files("attachments"), vec![format!("{}:eth0", next.container_id)]);
}

#[test]
fn a_released_address_stays_in_quarantine_and_add_asks_to_try_again() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let mut conf = lab.conf();
    conf["podCIDRs"] = json!(["10.250.0.0/30"]); // one address: 10.250.0.2
    conf["addressQuarantineSeconds"] = json!(2);
    let first = lab.add_with(&conf);
    assert_eq!(first.ips(), vec!["10.250.0.2".parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"))]);
    let run = lab.cni("DEL", &first.container_id, Some(&first.netns), &conf);
    assert!(run.ok);
    let (container_id, netns) = lab.new_pod();
    let run = lab.cni("ADD", &container_id, Some(&netns), &conf);
    assert!(!run.ok, "the only address is in quarantine");
    assert_eq!(run.stdout["code"], 11, "try again later: {}", run.stdout);
    assert!(run.stdout["msg"].as_str().is_some_and(|m| m.contains("in quarantine")), "{}", run.stdout);
    assert!(lab.host_links().is_empty(), "the failed ADD left nothing");
    // Once the quarantine is over the same address is handed out again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let run = loop {
        let run = lab.cni("ADD", &container_id, Some(&netns), &conf);
        if run.ok || Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(run.ok, "after the quarantine: {}", run.stdout);
    assert_eq!(run.stdout["ips"][0]["address"], "10.250.0.2/32");
}

#[test]
fn ipam_delegated_to_host_local_is_dual_stack_checked_and_released() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let conf = lab.host_local_conf("10.251.0.0/24", "fd78:1::/64");
    let pod = lab.add_with(&conf);
    let (v4, v6) = (pod.ip(true), pod.ip(false));
    assert!(v4.to_string().starts_with("10.251.0."), "{v4} from host-local's range");
    assert!(v6.to_string().starts_with("fd78:1::"), "{v6} from host-local's range");
    assert_eq!(lab.host_local_reservations(), vec![v4, v6], "host-local holds both");
    assert!(lab.allocations().is_empty(), "Ward's own store is not used");
    assert_eq!(pod.result["ips"][0]["address"], format!("{v4}/32"), "Ward applies the address as a /32");
    assert_node_reaches_pod(&lab, lab.pod_ns(&pod.netns), v4);
    assert_node_reaches_pod(&lab, lab.pod_ns(&pod.netns), v6);

    let mut check = conf.clone();
    check["prevResult"] = pod.result.clone();
    let run = lab.cni("CHECK", &pod.container_id, Some(&pod.netns), &check);
    assert!(run.ok, "CHECK (with host-local's CHECK): {} / {}", run.stdout, run.stderr);

    let run = lab.cni("DEL", &pod.container_id, Some(&pod.netns), &conf);
    assert!(run.ok);
    assert!(lab.host_local_reservations().is_empty(), "DEL went to host-local");
    assert!(lab.host_links().is_empty());
}

#[test]
fn a_failing_ipam_plugin_passes_its_error_through_and_leaves_nothing() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    // host-local keeps .1 for the gateway: a /30 has room for one pod.
    let conf = lab.host_local_conf("10.252.0.0/30", "fd78:2::/120");
    let first = lab.add_with(&conf);
    let (container_id, netns) = lab.new_pod();
    let run = lab.cni("ADD", &container_id, Some(&netns), &conf);
    assert!(!run.ok);
    let msg = run.stdout["msg"].as_str().unwrap_or_default();
    assert!(msg.starts_with("ipam plugin host-local ADD: "), "the plugin's error, named: {}", run.stdout);
    assert_ne!(run.stdout["code"], 0);
    assert_eq!(lab.host_local_reservations(), first.ips(), "the failed ADD released what host-local gave it");
    assert_eq!(lab.host_links(), vec![first.host_ifname()]);
    assert_eq!(lab.registered(), vec![first.container_id.clone()]);

    let mut conf = lab.host_local_conf("10.252.0.0/30", "fd78:2::/120");
    conf["ipam"]["type"] = json!("no-such-ipam");
    let run = lab.cni("ADD", &container_id, Some(&netns), &conf);
    assert_eq!(run.stdout["code"], 7, "{}", run.stdout);
    assert_eq!(run.stdout["msg"], format!(r#"ipam.type: plugin "no-such-ipam" not found in CNI_PATH ({CNI_PATH})"#));
}

#[test]
fn add_extends_a_prev_result_instead_of_replacing_it() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let (container_id, netns) = lab.new_pod();
    let mut conf = lab.conf();
    conf["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "sandbox": netns}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    let run = lab.cni("ADD", &container_id, Some(&netns), &conf);
    assert!(run.ok, "{} / {}", run.stdout, run.stderr);
    let r = run.stdout;
    assert_eq!(r["interfaces"][0]["name"], "lo");
    assert_eq!(r["interfaces"][2]["name"], "eth0");
    assert_eq!(r["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(r["ips"][1]["interface"], 2, "Ward's address points at eth0 in the combined list");
    assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
}

#[test]
fn check_needs_the_prev_result_and_finds_a_lost_registration() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let pod = lab.add();
    let run = lab.cni("CHECK", &pod.container_id, Some(&pod.netns), &lab.conf());
    assert_eq!(
        (run.stdout["code"].as_u64(), run.stdout["msg"].as_str()),
        (Some(7), Some("prevResult: required field is missing"))
    );
    lock(&lab.state).registered.clear();
    let run = lab.check(&pod);
    assert_eq!(run.stdout["code"], 103, "{}", run.stdout);
    assert!(run.stdout["msg"].as_str().is_some_and(|m| m.contains("does not protect it")), "{}", run.stdout);
    lab.stop_agent();
    let run = lab.check(&pod);
    assert_eq!(run.stdout["code"], 11, "an unreachable agent is transient: {}", run.stdout);
}

/// Every way the environment or the configuration can be missing or wrong, with the code the
/// spec gives it and the name of the variable or field in the message.
#[test]
fn bad_input_gets_the_spec_code_and_names_what_is_wrong() {
    let Some(mut lab) = Lab::new(AgentMode::Protect) else { return };
    let (id, netns) = lab.new_pod();
    let netns = netns.to_string_lossy().into_owned();
    let good = lab.conf();
    let base = |command: &str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", id.clone()),
            ("CNI_NETNS", netns.clone()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b".to_owned()),
            ("CNI_PATH", CNI_PATH.to_owned()),
        ]
    };
    let without = |command: &str, var: &str| -> Vec<(&'static str, String)> {
        base(command).into_iter().filter(|(k, _)| *k != var).collect()
    };
    let with = |command: &str, var: &'static str, value: &str| -> Vec<(&'static str, String)> {
        let mut env = without(command, var);
        env.push((var, value.to_owned()));
        env
    };
    let set = |field: &str, value: Value| -> Value {
        let mut conf = good.clone();
        conf[field] = value;
        conf
    };
    let cases: Vec<(&str, Vec<(&'static str, String)>, Value, u64, &str)> = vec![
        ("no command", without("ADD", "CNI_COMMAND"), good.clone(), 4, "CNI_COMMAND is not set"),
        ("unknown command", with("ADD", "CNI_COMMAND", "ATTACH"), good.clone(), 4, "unknown CNI_COMMAND \"ATTACH\""),
        ("ADD without container", without("ADD", "CNI_CONTAINERID"), good.clone(), 4, "CNI_CONTAINERID is not set"),
        (
            "bad container id",
            with("DEL", "CNI_CONTAINERID", "-x"),
            good.clone(),
            4,
            "CNI_CONTAINERID \"-x\" is invalid",
        ),
        ("ADD without netns", without("ADD", "CNI_NETNS"), good.clone(), 4, "CNI_NETNS is not set"),
        ("CHECK without netns", without("CHECK", "CNI_NETNS"), good.clone(), 4, "CNI_NETNS is not set"),
        (
            "relative netns",
            with("ADD", "CNI_NETNS", "netns/x"),
            good.clone(),
            4,
            "CNI_NETNS \"netns/x\" must be an absolute path",
        ),
        ("DEL without ifname", without("DEL", "CNI_IFNAME"), good.clone(), 4, "CNI_IFNAME is not set"),
        (
            "long ifname",
            with("ADD", "CNI_IFNAME", "a-very-long-ifname"),
            good.clone(),
            4,
            "CNI_IFNAME \"a-very-long-ifname\"",
        ),
        (
            "ADD without pod",
            with("ADD", "CNI_ARGS", "K8S_POD_NAMESPACE=a"),
            good.clone(),
            4,
            "CNI_ARGS: K8S_POD_NAME is required",
        ),
        ("malformed args", with("ADD", "CNI_ARGS", "K8S_POD_NAME"), good.clone(), 4, "CNI_ARGS: malformed entry"),
        ("GC without CNI_PATH", without("GC", "CNI_PATH"), set("cniVersion", json!("1.1.0")), 4, "CNI_PATH is not set"),
        ("not JSON", base("ADD"), json!("{"), 6, "the network configuration must be a JSON object"),
        ("no version", base("ADD"), set("cniVersion", Value::Null), 7, "cniVersion: required field is missing"),
        ("old version", base("ADD"), set("cniVersion", json!("0.3.1")), 1, "cniVersion: \"0.3.1\" is not supported"),
        ("STATUS at 1.0.0", base("STATUS"), good.clone(), 1, "cniVersion: STATUS needs version 1.1.0"),
        ("no name", base("ADD"), set("name", Value::Null), 7, "name: required field is missing"),
        ("bad name", base("ADD"), set("name", json!("a/b")), 7, "name: \"a/b\" is not a valid network name"),
        (
            "bad socket",
            base("ADD"),
            set("agentSocket", json!("run/x.sock")),
            7,
            "agentSocket: \"run/x.sock\" must be an absolute path",
        ),
        ("bad data dir", base("DEL"), set("dataDir", json!(1)), 7, "dataDir: expected a string"),
        ("bad CIDR", base("ADD"), set("podCIDRs", json!(["10.0.0.0/33"])), 7, "podCIDRs[0]: invalid CIDR"),
        (
            "two families alike",
            base("ADD"),
            set("podCIDRs", json!(["10.0.0.0/24", "10.1.0.0/24"])),
            7,
            "podCIDRs[1]: a second IPv4 CIDR",
        ),
        ("both IPAMs", base("ADD"), set("ipam", json!({"type": "host-local"})), 7, "podCIDRs and ipam: give one"),
        ("bad mtu", base("ADD"), set("mtu", json!(70_000)), 7, "mtu: 70000 is out of range"),
        ("bad quarantine", base("ADD"), set("addressQuarantineSeconds", json!(-5)), 7, "addressQuarantineSeconds: -5"),
        ("bad prevResult", base("ADD"), set("prevResult", json!("x")), 7, "prevResult: expected an object"),
        (
            "a whole conflist",
            base("ADD"),
            set("plugins", json!([{"type": "ward-cni"}])),
            7,
            "plugins: this is a configuration list",
        ),
        (
            "bad GC list",
            base("GC"),
            {
                let mut c = set("cniVersion", json!("1.1.0"));
                c["cni.dev/valid-attachments"] = json!([{"ifname": "eth0"}]);
                c
            },
            7,
            "cni.dev/valid-attachments[0].containerID: expected a string",
        ),
    ];
    for (what, env, conf, code, msg) in cases {
        let run = lab.cni_env(&env, &conf);
        assert!(!run.ok, "{what}: must fail");
        assert_eq!(run.stdout["code"], code, "{what}: {}", run.stdout);
        let got = run.stdout["msg"].as_str().unwrap_or_default();
        assert!(got.starts_with(msg), "{what}: the message names the variable or field: {got:?} (want {msg:?}...)");
    }
    assert!(lab.agent().requests().is_empty(), "no bad input reached the agent");
    assert!(lab.host_links().is_empty(), "no bad input created an interface");
}
