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
use ward_agent::api::proto::{EndpointRegistration, Request, Response};

const PLUGIN: &str = env!("CARGO_BIN_EXE_ward-cni");
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

struct Lab {
    id: String,
    // Field order is drop order: the agent thread first, then the namespaces and files.
    agent: Option<FakeAgent>,
    observed: Arc<Mutex<Vec<NodeAtRegistration>>>,
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
        let observed = Arc::new(Mutex::new(Vec::new()));
        let agent = (mode != AgentMode::Absent).then(|| {
            let (observed, node_name) = (observed.clone(), node.name.clone());
            FakeAgent::start(
                dir.0.join("agent.sock"),
                Box::new(move |request| match request {
                    Request::Register(reg) => {
                        let seen = observe_node(&node_name, reg);
                        observed.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
                        match mode {
                            AgentMode::Refuse => Response::Error { message: REFUSAL.into() },
                            _ => Response::Registered { endpoint_id: 7, identity: 4242 },
                        }
                    }
                    Request::Deregister { .. } => Response::Deregistered { existed: true },
                    other => Response::Error { message: format!("fake agent: unexpected {other:?}") },
                }),
            )
        });
        Some(Self { id, agent, observed, pods: Vec::new(), node, dir })
    }

    fn agent(&self) -> &FakeAgent {
        self.agent.as_ref().unwrap_or_else(|| panic!("this lab has no agent"))
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
        let mut cmd = Command::new(PLUGIN);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={container_id}-pod"))
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(netns) = netns {
            cmd.env("CNI_NETNS", netns);
        }
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
    let seen = lab.observed.lock().unwrap_or_else(|p| p.into_inner()).clone();
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
    let check = lab.cni("CHECK", &pod.container_id, Some(&pod.netns), &lab.conf());
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
    let run = lab.cni("CHECK", &pod.container_id, Some(&pod.netns), &lab.conf());
    assert!(!run.ok);
    assert_eq!(run.stdout["code"], 103, "{}", run.stdout);
    assert!(run.stdout["msg"].as_str().is_some_and(|m| m.contains(&v6.to_string())), "{}", run.stdout);
}

#[test]
fn version_lists_the_supported_versions() {
    let Some(lab) = Lab::new(AgentMode::Absent) else { return };
    let run = lab.cni("VERSION", "unused", None, &json!({"cniVersion": "1.0.0"}));
    assert!(run.ok);
    assert_eq!(run.stdout, json!({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}));
}
