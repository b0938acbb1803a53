//! A lab node: one network namespace standing in for a Kubernetes node, a real `ward-agent`
//! enforcing in it (standalone mode, reading a manifests directory), and pods made the way a
//! runtime makes them: Pod object first, then a network namespace wired by `ward-cni`, then
//! servers inside.
//!
//! Sync: the node remembers the FNV-1a hash of every manifest file it wrote. After a change it
//! polls the agent's status until its applied revision's `files` equal exactly that set, which means the
//! agent has those contents in the kernel; only then do probes mean anything.
//!
//! Cleanup (drop, also on panic): agent stopped, pods' namespaces deleted, the node's pins
//! under `<bpffs>/ward/v<layout>/<node>/` removed, the node namespace and scratch directory deleted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_yaml::Value;

use crate::agent::{self, AgentError, Status, file_hash};
use crate::bins::{Binaries, MissingBinary};
use crate::cni::{self, Attachment, CniError, CniPlugin, Runtime};
use crate::labdir::LabDir;
use crate::manifest::{self, ManifestError, ObjectId};
use crate::netns::{NetNs, NetnsError, unique_name};
use crate::probe::{self, Outcome, Probe};
use crate::serve::{ServeError, Servers};
use crate::spec::{Family, Labels, PodRef, PodSpec, Protocol};

/// How often sync and readiness waits ask the agent.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// How long one status call may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a SIGTERMed agent gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of the agent's log shown in errors and on failure.
const LOG_TAIL_LINES: usize = 60;
/// Where the node's own addresses live: its loopback (this kernel has no dummy driver, and
/// an address on `lo` is as much the node's own as one on a dummy).
const HOST_IFACE: &str = "lo";
/// The interface name inside each pod.
const POD_IFNAME: &str = "eth0";
/// A lab node's link to the underlay bridge, when the lab has several nodes.
const UNDERLAY_IFNAME: &str = "ul0";
/// Where Debian's containernetworking-plugins put the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Binary(#[from] MissingBinary),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("node {node}: {what}: {source}")]
    Io { node: String, what: String, source: std::io::Error },
    #[error("node {node}: mounting bpffs at {path}: {source}")]
    Bpffs { node: String, path: PathBuf, source: nix::Error },
    #[error("node {node}: the agent is not running")]
    AgentNotRunning { node: String },
    #[error("node {node}: the agent exited ({status}); its log ends:\n{log_tail}")]
    AgentExited { node: String, status: ExitStatus, log_tail: String },
    #[error(
        "node {node}: the agent did not answer on {socket} within {after:?} ({last_error}); its log ends:\n{log_tail}"
    )]
    AgentNotReady { node: String, socket: PathBuf, after: Duration, last_error: String, log_tail: String },
    #[error("node {node}: the agent did not apply the manifests within {after:?}: {diff}; its log ends:\n{log_tail}")]
    SyncTimeout { node: String, after: Duration, diff: String, log_tail: String },
    #[error("node {node}: no pod {pod}")]
    NoSuchPod { node: String, pod: PodRef },
    #[error("node {node}: pod {pod} exists already")]
    PodExists { node: String, pod: PodRef },
    #[error("node {node}: no namespace {namespace}")]
    NoSuchNamespace { node: String, namespace: String },
    #[error("node {node}: pod {pod} has no {family} address (has {ips:?})")]
    NoAddress { node: String, pod: PodRef, family: Family, ips: Vec<IpAddr> },
    #[error("node {node}: signalling the agent: {source}")]
    Signal { node: String, source: nix::Error },
}

/// How to build a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// 1..=200: picks the node's addresses and pod CIDRs (distinct per node of one lab).
    pub index: u8,
    /// Ward's binaries; [`Binaries::locate`] when `None`.
    pub bins: Option<Binaries>,
    /// Where bpffs is (mounted if it is not).
    pub bpffs: PathBuf,
    /// How long the agent may take to apply a manifest change.
    pub sync_timeout: Duration,
    /// How long the agent may take to answer on its socket after starting.
    pub start_timeout: Duration,
    pub mtu: u32,
    /// `RUST_LOG` for the agent (default `info`, or the caller's `WARD_AGENT_LOG`).
    pub agent_log_filter: String,
    /// Plugins the agent's conflist chains after ward-cni (`--cni-chain`), found in
    /// [`REFERENCE_PLUGINS`].
    pub cni_chain: Vec<serde_json::Value>,
    /// Wire pods through the agent's conflist (every plugin of it, as a runtime does) instead
    /// of calling ward-cni alone.
    pub via_conflist: bool,
    /// More `ward-agent` arguments (e.g. `--dns-min-ttl 0`).
    pub agent_args: Vec<String>,
    /// Give every pod a Service address translated to it by netfilter as kube-proxy does
    /// (`crate::services`), and probe pods through those addresses.
    pub services: bool,
    /// How many nodes the lab has (1: this node alone). Each further node is a lab node of
    /// its own (namespace, agent, manifests directory; index `index + i`) on an underlay
    /// bridge with this one, routes to every other node's pod CIDRs through it (direct
    /// routing) and its default route through this node (where the lab's outside hosts
    /// are). Every manifest goes to every node, pods are spread over the nodes in turn, and
    /// each Pod object carries the addresses its node's ADD gave it in `status.podIPs`, as
    /// kubelet reports them: the other nodes' agents learn remote pods from it.
    pub nodes: u8,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            index: 1,
            bins: None,
            bpffs: PathBuf::from("/sys/fs/bpf"),
            sync_timeout: Duration::from_secs(20),
            start_timeout: Duration::from_secs(60),
            mtu: 1500,
            agent_log_filter: std::env::var("WARD_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            cni_chain: Vec::new(),
            via_conflist: false,
            agent_args: Vec::new(),
            services: false,
            nodes: 1,
        }
    }
}

impl NodeConfig {
    /// `10.<index>.0.0/16` and `fd77:0:0:<index>::/64`: every node's pods lie in 10.0.0.0/8,
    /// hence in one /4 as the conformance cases require; never the machine's fd00::/64.
    pub fn pod_cidrs(&self) -> Vec<IpNet> {
        let k = self.index;
        vec![
            IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, k, 0, 0), 16).unwrap_or_default()),
            IpNet::V6(Ipv6Net::new(Ipv6Addr::new(0xfd77, 0, 0, k.into(), 0, 0, 0, 0), 64).unwrap_or_default()),
        ]
    }

    /// `10.255.<index>.1` and `fd77:ffff::<index>`, outside every pod CIDR.
    pub fn host_addrs(&self) -> Vec<IpAddr> {
        let k = self.index;
        vec![
            IpAddr::V4(Ipv4Addr::new(10, 255, k, 1)),
            IpAddr::V6(Ipv6Addr::new(0xfd77, 0xffff, 0, 0, 0, 0, 0, k.into())),
        ]
    }
}

/// A pod of the lab: its spec, network namespace, addresses and running servers.
#[derive(Debug)]
pub struct Pod {
    spec: PodSpec,
    container_id: String,
    ips: Vec<IpAddr>,
    /// The final ADD result (the runtime keeps it for CHECK and DEL).
    result: serde_json::Value,
    /// The capability arguments it was added with.
    caps: serde_json::Value,
    // Declared before `netns`: servers stop before their namespace goes.
    servers: Option<Servers>,
    netns: NetNs,
}

impl Pod {
    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    pub fn pod_ref(&self) -> PodRef {
        self.spec.pod_ref()
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// Every address the CNI plugin gave the pod.
    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    /// The final CNI ADD result.
    pub fn result(&self) -> &serde_json::Value {
        &self.result
    }

    /// The pod's address of `family`, if it has one.
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| match family {
            Family::IPv4 => ip.is_ipv4(),
            Family::IPv6 => ip.is_ipv6(),
        })
    }
}

/// One lab node. See the module docs.
#[derive(Debug)]
pub struct Node {
    name: String,
    config: NodeConfig,
    bins: Binaries,
    cni: CniPlugin,
    agent: Option<Child>,
    /// Manifest file name to the hash of what the lab last wrote there.
    written: BTreeMap<String, String>,
    /// Namespaced objects other than pods (policies), by file name.
    objects: BTreeMap<String, ObjectId>,
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<PodRef, Pod>,
    /// Capability arguments (`portMappings`, `bandwidth`, ...) for pods not created yet.
    caps: BTreeMap<PodRef, serde_json::Value>,
    /// The pods' Service addresses (`NodeConfig::services`).
    services: Option<crate::services::ServiceFront>,
    /// The lab's further nodes (`NodeConfig::nodes`), and which node each pod runs on (0:
    /// this one, i: `peers[i - 1]`); `pods` holds every pod of the lab.
    peers: Vec<Node>,
    placement: BTreeMap<PodRef, usize>,
    /// Where the next pod goes.
    next_node: usize,
    /// The underlay bridge's namespace, when the lab has further nodes.
    underlay: Option<NetNs>,
    keep: bool,
    // Dropped last, in this order, after `Drop::drop` has stopped the agent.
    netns: NetNs,
    dir: LabDir,
}

impl Node {
    /// Creates the node namespace, starts the agent in it and waits until it answers.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let name = unique_name("");
        let bins = match &config.bins {
            Some(b) => b.clone(),
            None => Binaries::locate()?,
        };
        ensure_bpffs(&name, &config.bpffs)?;
        let dir = LabDir::create("lab").map_err(|source| io_err(&name, "creating the lab directory", source))?;
        for sub in ["manifests", "state", "ipam", "staging", "net.d", "cni-bin"] {
            fs::create_dir(dir.path().join(sub))
                .map_err(|source| io_err(&name, &format!("creating {sub}/"), source))?;
        }
        let netns = boot_netns(&name, &config)?;

        // The node's plugin directory: ward-cni and the chained reference plugins.
        let bin_dir = dir.path().join("cni-bin");
        let mut links = vec![(bins.cni.clone(), cni::PLUGIN.to_owned())];
        for plugin in &config.cni_chain {
            let t = plugin["type"].as_str().unwrap_or_default().to_owned();
            links.push((Path::new(REFERENCE_PLUGINS).join(&t), t));
        }
        for (target, plugin) in links {
            std::os::unix::fs::symlink(&target, bin_dir.join(&plugin))
                .map_err(|source| io_err(&name, &format!("linking {}", target.display()), source))?;
        }

        let socket = dir.path().join("agent.sock");
        let cni = CniPlugin {
            binary: bins.cni.clone(),
            node_netns: netns.name().to_owned(),
            netconf: cni::netconf(&socket, &config.pod_cidrs(), &dir.path().join("ipam"), config.mtu),
        };
        let mut node = Node {
            name,
            config,
            bins,
            cni,
            agent: None,
            written: BTreeMap::new(),
            objects: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            caps: BTreeMap::new(),
            services: None,
            peers: Vec::new(),
            placement: BTreeMap::new(),
            next_node: 0,
            underlay: None,
            keep: false,
            netns,
            dir,
        };
        node.start_agent()?;
        if node.config.nodes > 1 {
            node.start_peers()?;
        }
        Ok(node)
    }

    /// Starts the further nodes and wires the underlay (see [`NodeConfig::nodes`]).
    fn start_peers(&mut self) -> Result<(), NodeError> {
        if self.config.services {
            // The Service addresses are one node's netfilter rules; a lab of several nodes
            // would need each rule on every node.
            return Err(io_err(&self.name, "a lab of several nodes", std::io::Error::other("has no Services mode")));
        }
        for i in 1..self.config.nodes {
            let index = u8::try_from((u16::from(self.config.index) - 1 + u16::from(i)) % 200 + 1).unwrap_or(1);
            let config = NodeConfig { index, nodes: 1, ..self.config.clone() };
            self.peers.push(Node::start(config)?);
        }
        let underlay = NetNs::create(format!("{}-ul", self.name))?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let all: Vec<(&NetNs, Vec<IpNet>, Vec<IpAddr>)> = std::iter::once(&*self)
            .chain(self.peers.iter())
            .map(|n| (&n.netns, n.config.pod_cidrs(), n.config.host_addrs()))
            .collect();
        for (p, (netns, _, _)) in all.iter().enumerate() {
            let port = format!("n{p}");
            underlay.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_IFNAME,
                "netns",
                netns.name(),
            ])?;
            underlay.ip(&["link", "set", &port, "master", "br0", "up"])?;
            let (v4, v6) = underlay_addrs(p);
            // No duplicate address detection on the link (the bridge is the lab's alone):
            // while its link-local address is tentative, the node's first IPv6 packets to
            // another node wait for neighbour discovery longer than a probe does.
            netns.sysctl(&format!("net/ipv6/conf/{UNDERLAY_IFNAME}/accept_dad"), "0")?;
            netns.ip(&["addr", "add", &format!("{v4}/24"), "dev", UNDERLAY_IFNAME])?;
            netns.ip(&["addr", "add", &format!("{v6}/64"), "dev", UNDERLAY_IFNAME, "nodad"])?;
            netns.ip(&["link", "set", UNDERLAY_IFNAME, "up"])?;
        }
        for (p, (netns, _, _)) in all.iter().enumerate() {
            for (q, (_, cidrs, hosts)) in all.iter().enumerate().filter(|(q, _)| *q != p) {
                let (v4, v6) = underlay_addrs(q);
                let dests = cidrs.iter().map(ToString::to_string).chain(hosts.iter().map(|h| match h {
                    IpAddr::V4(a) => format!("{a}/32"),
                    IpAddr::V6(a) => format!("{a}/128"),
                }));
                for dest in dests {
                    let via = if dest.contains(':') { v6.to_string() } else { v4.to_string() };
                    let family = if dest.contains(':') { "-6" } else { "-4" };
                    netns.ip(&[family, "route", "add", &dest, "via", &via, "dev", UNDERLAY_IFNAME])?;
                }
            }
            if p > 0 {
                let (v4, v6) = underlay_addrs(0);
                netns.ip(&["-4", "route", "add", "default", "via", &v4.to_string(), "dev", UNDERLAY_IFNAME])?;
                netns.ip(&["-6", "route", "add", "default", "via", &v6.to_string(), "dev", UNDERLAY_IFNAME])?;
            }
        }
        self.underlay = Some(underlay);
        Ok(())
    }

    /// The lab's further nodes ([`NodeConfig::nodes`]).
    pub fn peers(&self) -> &[Node] {
        &self.peers
    }

    /// The name of the node `pod` runs on.
    pub fn node_of(&self, pod: &PodRef) -> Result<&str, NodeError> {
        self.pod(pod)?;
        Ok(self.host(self.placement.get(pod).copied().unwrap_or(0)).name())
    }

    /// Node `i` of the lab (0: this one).
    fn host(&self, i: usize) -> &Node {
        i.checked_sub(1).and_then(|p| self.peers.get(p)).unwrap_or(self)
    }

    /// The Pod object of `spec` on node `owner`, with `ips` as its `status.podIPs` when the
    /// lab has several nodes and the ADD has given them.
    fn pod_manifest(&self, spec: &PodSpec, owner: usize, ips: &[IpAddr]) -> String {
        let ips = if self.peers.is_empty() { &[][..] } else { ips };
        manifest::pod_yaml_with_ips(spec, self.host(owner).name(), ips)
    }

    /// The node name given to the agent (`ward-<pid>-<n>`), unique on the machine.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Where the agent writes the node's conflist (`--cni-conf-dir`).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// The node's CNI plugin directory (ward-cni and the chained plugins).
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.path().join("cni-bin")
    }

    /// The plugin's state directory (`dataDir`), shared by the lab's calls and the conflist.
    pub fn cni_data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The lab's direct caller of ward-cni for this node (its netconf matches the conflist's
    /// ward-cni object).
    pub fn cni_plugin(&self) -> &CniPlugin {
        &self.cni
    }

    /// The attachment the lab uses for a pod of `spec` in `netns`.
    pub fn attachment_for(&self, spec: &PodSpec, container_id: &str, netns: &Path) -> Attachment {
        self.attachment(spec, container_id, netns)
    }

    /// A runtime for the conflist the agent wrote.
    pub fn runtime(&self) -> Result<Runtime, NodeError> {
        let path = self.cni_conf_dir().join(cni::CONFLIST_NAME);
        Ok(Runtime::load(&path, &self.cni_bin_dir(), self.netns.name())?)
    }

    /// Capability arguments for a pod created later (through the conflist).
    pub fn set_capability_args(&mut self, pod: &PodRef, caps: serde_json::Value) {
        self.caps.insert(pod.clone(), caps);
    }

    /// Runs the `ward` CLI against this node's agent: `ward --socket <socket> <args>`.
    pub fn ward(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bins.cli)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running ward {args:?}: {e}"))
    }

    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// `<bpffs>/ward/v<layout>/<node>`: where the agent pins this node's maps and links.
    pub fn pin_dir(&self) -> PathBuf {
        self.config.bpffs.join(layout_dir()).join(&self.name)
    }

    // ---- the agent process ----

    /// Starts the agent (if not running) and waits until it answers on its socket.
    pub fn start_agent(&mut self) -> Result<(), NodeError> {
        if self.agent_running() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|source| io_err(&self.name, "opening the agent log", source))?;
        let log2 = log.try_clone().map_err(|source| io_err(&self.name, "opening the agent log", source))?;
        let mut cmd = Command::new(&self.bins.agent);
        cmd.arg("--node-name")
            .arg(&self.name)
            .arg("--manifests")
            .arg(self.manifests_dir())
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--bpffs")
            .arg(&self.config.bpffs)
            .arg("--netns")
            .arg(self.netns.name());
        for a in self.config.host_addrs() {
            cmd.arg("--host-addr").arg(a.to_string());
        }
        cmd.arg("--cni-conf-dir")
            .arg(self.cni_conf_dir())
            .arg("--cni-bin-dir")
            .arg(self.cni_bin_dir())
            .arg("--cni-data-dir")
            .arg(self.cni_data_dir())
            .arg("--cni-mtu")
            .arg(self.config.mtu.to_string());
        for c in self.config.pod_cidrs() {
            cmd.arg("--pod-cidr").arg(c.to_string());
        }
        if self.config.services {
            for c in crate::services::cidrs(self.config.index) {
                cmd.arg("--service-cidr").arg(c.to_string());
            }
        }
        for plugin in &self.config.cni_chain {
            cmd.arg("--cni-chain").arg(plugin.to_string());
        }
        cmd.args(&self.config.agent_args);
        cmd.env("RUST_LOG", &self.config.agent_log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd.spawn().map_err(|source| io_err(&self.name, "starting ward-agent", source))?;
        self.agent = Some(child);
        self.wait_agent_ready()
    }

    /// Polls the socket until the agent answers a status request.
    fn wait_agent_ready(&mut self) -> Result<(), NodeError> {
        let deadline = Instant::now() + self.config.start_timeout;
        let socket = self.socket();
        loop {
            self.check_agent_alive()?;
            let last_error = match agent::status(&socket, STATUS_TIMEOUT) {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(NodeError::AgentNotReady {
                    node: self.name.clone(),
                    socket,
                    after: self.config.start_timeout,
                    last_error,
                    log_tail: self.agent_log_tail(),
                });
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// Errors if the agent is not running, naming its exit status and log if it died.
    fn check_agent_alive(&mut self) -> Result<(), NodeError> {
        let Some(child) = self.agent.as_mut() else {
            return Err(NodeError::AgentNotRunning { node: self.name.clone() });
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.agent = None;
                Err(NodeError::AgentExited { node: self.name.clone(), status, log_tail: self.agent_log_tail() })
            }
            Err(source) => Err(io_err(&self.name, "checking on the agent", source)),
        }
    }

    pub fn agent_running(&mut self) -> bool {
        self.check_agent_alive().is_ok()
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// SIGTERM (the agent's clean stop: pins stay, enforcement continues), then SIGKILL if it
    /// has not exited within the grace period. Returns its exit status.
    pub fn stop_agent(&mut self) -> Result<Option<ExitStatus>, NodeError> {
        self.signal_agent(Signal::SIGTERM, STOP_GRACE)
    }

    /// SIGKILL, as a crash would.
    pub fn kill_agent(&mut self) -> Result<Option<ExitStatus>, NodeError> {
        self.signal_agent(Signal::SIGKILL, STOP_GRACE)
    }

    /// The node reboots. What a reboot loses goes: the agent dies with the machine (SIGKILL),
    /// every pod's sandbox and the node's network namespace are gone (host veths, routes,
    /// netfilter), and bpffs is empty again (the node's pins removed). What is on disk stays:
    /// the agent's state directory, the plugin's data directory and the manifests (the
    /// cluster's objects, pods included). Then the node boots: a fresh namespace of the same
    /// name with its addresses, the agent starts and syncs, and the runtime re-creates every
    /// pod (a new sandbox and CNI ADD each), as kubelet does after a reboot.
    pub fn reboot(&mut self) -> Result<(), NodeError> {
        if !self.peers.is_empty() {
            return Err(io_err(&self.name, "rebooting", std::io::Error::other("only a one-node lab reboots")));
        }
        self.kill_agent()?;
        crate::dnslab::stop_dns_keeper(&self.state_dir());
        let pods = std::mem::take(&mut self.pods);
        let specs: Vec<PodSpec> = pods.values().map(|p| p.spec.clone()).collect();
        drop(pods);
        self.services = None;
        match fs::remove_dir_all(self.pin_dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_err(&self.name, "clearing the node's pins", source)),
        }
        // The namespace is deleted when its handle drops; hold a stand-in meanwhile.
        let stand_in = NetNs::create(format!("{}-boot", self.name))?;
        drop(std::mem::replace(&mut self.netns, stand_in));
        self.netns = boot_netns(&self.name, &self.config)?;
        self.start_agent()?;
        self.sync()?;
        self.create_pods(&specs)
    }

    /// Stops the agent cleanly, starts it again, and waits until it has re-applied every
    /// manifest.
    pub fn restart_agent(&mut self) -> Result<(), NodeError> {
        self.stop_agent()?;
        self.start_agent()?;
        self.sync()
    }

    fn signal_agent(&mut self, signal: Signal, grace: Duration) -> Result<Option<ExitStatus>, NodeError> {
        let Some(mut child) = self.agent.take() else {
            return Ok(None);
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(Some(status));
        }
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, signal).map_err(|source| NodeError::Signal { node: self.name.clone(), source })?;
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(Some(status)),
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("ward-lab: node {}: agent ignored {signal} for {grace:?}; killing it", self.name);
                    let _ = child.kill();
                    return child.wait().map(Some).map_err(|source| io_err(&self.name, "reaping the agent", source));
                }
                Ok(None) => thread::sleep(POLL_EVERY),
                Err(source) => return Err(io_err(&self.name, "waiting for the agent", source)),
            }
        }
    }

    /// The agent's status report.
    pub fn status(&self) -> Result<Status, AgentError> {
        agent::status(&self.socket(), STATUS_TIMEOUT)
    }

    /// The last lines of the agent's log.
    pub fn agent_log_tail(&self) -> String {
        crate::cluster::process::log_tail(&self.log_path(), LOG_TAIL_LINES)
    }

    /// Prints the tail of the agent's log to stderr (used when something failed).
    pub fn dump_agent_log(&self) {
        eprintln!(
            "---- ward-agent log of node {} ({}), last {LOG_TAIL_LINES} lines ----\n{}\n---- end of log ----",
            self.name,
            self.log_path().display(),
            self.agent_log_tail()
        );
    }

    // ---- manifests and sync ----

    /// Writes a manifest file (atomically: the agent never reads half a file). Call
    /// [`Node::sync`] afterwards to wait until it is enforced.
    pub fn write_manifest(&mut self, file: &str, content: &str) -> Result<(), NodeError> {
        let staging = self.dir.path().join("staging").join(file);
        fs::write(&staging, content).map_err(|source| io_err(&self.name, &format!("writing {file}"), source))?;
        fs::rename(&staging, self.manifests_dir().join(file))
            .map_err(|source| io_err(&self.name, &format!("moving {file} into place"), source))?;
        self.written.insert(file.to_owned(), file_hash(content.as_bytes()));
        for peer in &mut self.peers {
            peer.write_manifest(file, content)?;
        }
        Ok(())
    }

    /// Removes a manifest file the lab wrote (no-op if absent). Call [`Node::sync`] after.
    pub fn remove_manifest(&mut self, file: &str) -> Result<(), NodeError> {
        match fs::remove_file(self.manifests_dir().join(file)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_err(&self.name, &format!("removing {file}"), source)),
        }
        self.written.remove(file);
        self.objects.remove(file);
        for peer in &mut self.peers {
            peer.remove_manifest(file)?;
        }
        Ok(())
    }

    /// The files the lab has written and their hashes: what the applied revision's files must equal.
    pub fn written_manifests(&self) -> &BTreeMap<String, String> {
        &self.written
    }

    /// Waits until the agent (every node's, in a lab of several) reports exactly the written
    /// manifests as applied (polling every 20 ms, up to the configured sync timeout).
    pub fn sync(&mut self) -> Result<(), NodeError> {
        self.sync_own()?;
        for peer in &mut self.peers {
            peer.sync()?;
        }
        Ok(())
    }

    fn sync_own(&mut self) -> Result<(), NodeError> {
        let deadline = Instant::now() + self.config.sync_timeout;
        let socket = self.socket();
        loop {
            self.check_agent_alive()?;
            let last = agent::status(&socket, STATUS_TIMEOUT);
            if let Ok(s) = &last
                && s.applied.files == self.written
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let diff = match &last {
                    Ok(s) => sync_diff(&self.written, s),
                    Err(e) => format!("last status call failed: {e}"),
                };
                return Err(NodeError::SyncTimeout {
                    node: self.name.clone(),
                    after: self.config.sync_timeout,
                    diff,
                    log_tail: self.agent_log_tail(),
                });
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// Rejections the agent reports for files the lab wrote (why a policy is not in force).
    pub fn rejections(&self) -> Vec<String> {
        match self.status() {
            Ok(s) => {
                s.rejected.iter().filter(|r| self.written.contains_key(&r.file)).map(ToString::to_string).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    // ---- namespaces ----

    /// Creates or replaces a namespace with exactly these labels (plus the implied
    /// `kubernetes.io/metadata.name`) and waits for sync.
    pub fn set_namespace(&mut self, name: &str, labels: &Labels) -> Result<(), NodeError> {
        self.write_manifest(&manifest::namespace_file(name), &manifest::namespace_yaml(name, labels))?;
        self.namespaces.insert(name.to_owned(), labels.clone());
        self.sync()
    }

    /// Merges `labels` into a namespace's labels and waits for sync.
    pub fn update_namespace_labels(&mut self, name: &str, labels: &Labels) -> Result<(), NodeError> {
        let mut merged = self.namespace_labels(name)?.clone();
        merged.extend(labels.clone());
        self.set_namespace(name, &merged)
    }

    pub fn namespace_labels(&self, name: &str) -> Result<&Labels, NodeError> {
        self.namespaces
            .get(name)
            .ok_or_else(|| NodeError::NoSuchNamespace { node: self.name.clone(), namespace: name.to_owned() })
    }

    pub fn namespaces(&self) -> &BTreeMap<String, Labels> {
        &self.namespaces
    }

    /// Deletes a namespace object (its pods must be deleted first) and waits for sync.
    pub fn delete_namespace(&mut self, name: &str) -> Result<(), NodeError> {
        self.namespace_labels(name)?;
        self.remove_manifest(&manifest::namespace_file(name))?;
        self.namespaces.remove(name);
        self.sync()
    }

    // ---- policies and other namespaced objects ----

    /// Creates or replaces (by kind, namespace and name) each object, one file each, and waits
    /// until all of them are in force. Returns the file names.
    pub fn apply(&mut self, objects: &[Value]) -> Result<Vec<String>, NodeError> {
        let mut files = Vec::new();
        for (i, obj) in objects.iter().enumerate() {
            let id = manifest::object_id(i, obj)?;
            let file = manifest::object_file(&id.kind, &id.namespace, &id.name);
            self.write_manifest(&file, &manifest::object_yaml(obj))?;
            self.objects.insert(file.clone(), id);
            files.push(file);
        }
        self.sync()?;
        Ok(files)
    }

    /// Deletes one object applied earlier (no-op if it does not exist) and waits for sync.
    pub fn delete_object(&mut self, kind: &str, namespace: &str, name: &str) -> Result<(), NodeError> {
        self.remove_manifest(&manifest::object_file(kind, namespace, name))?;
        self.sync()
    }

    /// Deletes every applied object of `kind` (e.g. `NetworkPolicy`); no sync.
    pub fn remove_objects_of_kind(&mut self, kind: &str) -> Result<(), NodeError> {
        let files: Vec<String> =
            self.objects.iter().filter(|(_, id)| id.kind == kind).map(|(f, _)| f.clone()).collect();
        for f in files {
            self.remove_manifest(&f)?;
        }
        Ok(())
    }

    /// The objects applied and not deleted.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectId> {
        self.objects.values()
    }

    // ---- pods ----

    pub fn pod(&self, pod: &PodRef) -> Result<&Pod, NodeError> {
        self.pods.get(pod).ok_or_else(|| NodeError::NoSuchPod { node: self.name.clone(), pod: pod.clone() })
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// Creates one pod; see [`Node::create_pods`].
    pub fn create_pod(&mut self, spec: &PodSpec) -> Result<&Pod, NodeError> {
        self.create_pods(std::slice::from_ref(spec))?;
        self.pod(&spec.pod_ref())
    }

    /// Creates pods as a runtime would: the Pod objects are written and synced first (the
    /// agent looks a pod up when the plugin registers it), then for each pod a network
    /// namespace, CNI ADD, and its servers.
    pub fn create_pods(&mut self, specs: &[PodSpec]) -> Result<(), NodeError> {
        for spec in specs {
            self.namespace_labels(&spec.namespace)?;
            if self.pods.contains_key(&spec.pod_ref()) {
                return Err(NodeError::PodExists { node: self.name.clone(), pod: spec.pod_ref() });
            }
        }
        let mut owners = Vec::new();
        for spec in specs {
            let owner = self.next_node % (self.peers.len() + 1);
            self.next_node += 1;
            let yaml = self.pod_manifest(spec, owner, &[]);
            self.write_manifest(&manifest::pod_file(&spec.namespace, &spec.name), &yaml)?;
            owners.push(owner);
        }
        self.sync()?;
        for (spec, &owner) in specs.iter().zip(&owners) {
            let pod = match owner.checked_sub(1) {
                None => self.wire_pod(spec)?,
                Some(p) => {
                    if let Some(caps) = self.caps.remove(&spec.pod_ref()) {
                        self.peers[p].caps.insert(spec.pod_ref(), caps);
                    }
                    self.peers[p].wire_pod(spec)?
                }
            };
            self.placement.insert(spec.pod_ref(), owner);
            if self.config.services {
                let front = self
                    .services
                    .get_or_insert_with(|| crate::services::ServiceFront::new(self.netns.name(), self.config.index));
                front
                    .expose(&spec.pod_ref(), &pod.ips)
                    .map_err(|e| io_err(&self.name, "a pod's Service address", std::io::Error::other(e)))?;
            }
            self.pods.insert(spec.pod_ref(), pod);
        }
        if !self.peers.is_empty() {
            // As kubelet reports the pod's addresses once its sandbox is up.
            for (spec, &owner) in specs.iter().zip(&owners) {
                let yaml = self.pod_manifest(spec, owner, self.pod(&spec.pod_ref())?.ips());
                self.write_manifest(&manifest::pod_file(&spec.namespace, &spec.name), &yaml)?;
            }
            self.sync()?;
        }
        Ok(())
    }

    fn wire_pod(&mut self, spec: &PodSpec) -> Result<Pod, NodeError> {
        let netns = NetNs::create(unique_name(&format!("{}-{}", spec.namespace, spec.name)))?;
        let container_id = unique_name("ctr");
        let attachment = self.attachment(spec, &container_id, netns.path());
        let caps = self.caps.remove(&spec.pod_ref()).unwrap_or(serde_json::Value::Null);
        let (ips, result) = if self.config.via_conflist {
            let result = self.runtime()?.add(&attachment, &caps)?;
            (cni::result_ips(&format!("{}/{}", spec.namespace, spec.name), &result)?, result)
        } else {
            let added = self.cni.add(&attachment)?;
            (added.ips, added.raw)
        };
        let pod = Pod { spec: spec.clone(), container_id, ips, result, caps, servers: None, netns };
        match Servers::start(pod.netns.name(), pod.netns.path().to_owned(), &spec.name, &spec.serves) {
            Ok(s) => Ok(Pod { servers: Some(s), ..pod }),
            Err(e) => {
                let _ = self.cni_del(&pod);
                Err(e.into())
            }
        }
    }

    /// CNI DEL of `pod` on the node it runs on.
    fn cni_del_on_owner(&self, pod: &Pod) -> Result<(), CniError> {
        self.host(self.placement.get(&pod.pod_ref()).copied().unwrap_or(0)).cni_del(pod)
    }

    /// CNI DEL of `pod` (through the conflist if the node uses it).
    fn cni_del(&self, pod: &Pod) -> Result<(), CniError> {
        let attachment = self.attachment(&pod.spec, &pod.container_id, pod.netns.path());
        if self.config.via_conflist {
            self.runtime().map_err(|e| CniError::Conflist { path: self.cni_conf_dir(), why: e.to_string() })?.del(
                &attachment,
                &pod.caps,
                &pod.result,
            )
        } else {
            self.cni.del(&attachment)
        }
    }

    /// CNI CHECK of `pod` through the conflist (every plugin but those in `skip`, with the
    /// ADD's result).
    pub fn check_pod(&self, pod: &PodRef, skip: &[&str]) -> Result<(), NodeError> {
        let p = self.pod(pod)?;
        let attachment = self.attachment(&p.spec, &p.container_id, p.netns.path());
        let owner = self.host(self.placement.get(pod).copied().unwrap_or(0));
        Ok(owner.runtime()?.check(&attachment, &p.caps, &p.result, skip)?)
    }

    fn attachment(&self, spec: &PodSpec, container_id: &str, netns: &Path) -> Attachment {
        Attachment {
            container_id: container_id.to_owned(),
            netns: netns.to_owned(),
            ifname: POD_IFNAME.to_owned(),
            pod_namespace: spec.namespace.clone(),
            pod_name: spec.name.clone(),
        }
    }

    /// Deletes a pod as a runtime would: servers stopped, CNI DEL, namespace deleted, then
    /// the Pod object removed; waits for sync.
    pub fn delete_pod(&mut self, pod: &PodRef) -> Result<(), NodeError> {
        let mut p =
            self.pods.remove(pod).ok_or_else(|| NodeError::NoSuchPod { node: self.name.clone(), pod: pod.clone() })?;
        if let Some(s) = p.servers.take() {
            s.stop();
        }
        let del = self.cni_del_on_owner(&p);
        self.placement.remove(pod);
        drop(p);
        if let Some(front) = self.services.as_mut() {
            front.withdraw(pod).map_err(|e| io_err(&self.name, "a pod's Service address", std::io::Error::other(e)))?;
        }
        self.remove_manifest(&manifest::pod_file(&pod.namespace, &pod.name))?;
        del?;
        self.sync()
    }

    /// Replaces a pod's labels and waits for sync.
    pub fn set_pod_labels(&mut self, pod: &PodRef, labels: &Labels) -> Result<(), NodeError> {
        let p =
            self.pods.get_mut(pod).ok_or_else(|| NodeError::NoSuchPod { node: self.name.clone(), pod: pod.clone() })?;
        p.spec.labels = labels.clone();
        let owner = self.placement.get(pod).copied().unwrap_or(0);
        let p = self.pod(pod)?;
        let (file, yaml) = (manifest::pod_file(&pod.namespace, &pod.name), self.pod_manifest(&p.spec, owner, &p.ips));
        self.write_manifest(&file, &yaml)?;
        self.sync()
    }

    /// Merges `labels` into a pod's labels (set or overwrite each key) and waits for sync.
    pub fn update_pod_labels(&mut self, pod: &PodRef, labels: &Labels) -> Result<(), NodeError> {
        let mut merged = self.pod(pod)?.spec.labels.clone();
        merged.extend(labels.clone());
        self.set_pod_labels(pod, &merged)
    }

    // ---- probes ----

    /// The address of `pod` a probe of `family` goes to.
    pub fn pod_ip(&self, pod: &PodRef, family: Family) -> Result<IpAddr, NodeError> {
        let p = self.pod(pod)?;
        p.ip(family).ok_or_else(|| NodeError::NoAddress {
            node: self.name.clone(),
            pod: pod.clone(),
            family,
            ips: p.ips.clone(),
        })
    }

    /// A probe from `from` to `to:port/protocol` (not yet run).
    pub fn probe_spec(
        &self,
        from: &PodRef,
        to: &PodRef,
        port: u16,
        protocol: Protocol,
        family: Family,
    ) -> Result<Probe, NodeError> {
        let ip = self.pod_ip(to, family)?;
        // Through the pod's Service address, when the node gives pods one.
        let ip = self.services.as_ref().and_then(|f| f.address(to, family)).unwrap_or(ip);
        let from = self.pod(from)?;
        Ok(Probe {
            from_netns: from.netns.name().to_owned(),
            from_path: from.netns.path().to_owned(),
            to: SocketAddr::new(ip, port),
            protocol,
            timeout: probe::DEFAULT_TIMEOUT,
            http: None,
        })
    }

    /// Probes once from `from` to `to:port/protocol`.
    pub fn probe(
        &self,
        from: &PodRef,
        to: &PodRef,
        port: u16,
        protocol: Protocol,
        family: Family,
    ) -> Result<Outcome, NodeError> {
        Ok(probe::probe(&self.probe_spec(from, to, port, protocol, family)?))
    }

    // ---- keeping a lab for inspection ----

    /// Leaves the node running after this process exits (`demo --keep`): the agent keeps
    /// running, each pod's servers are replaced by `socat` processes, and a script that
    /// removes everything is written. Returns the script's path.
    pub fn keep(mut self) -> Result<PathBuf, NodeError> {
        if !self.peers.is_empty() {
            return Err(io_err(
                &self.name,
                "keeping the lab",
                std::io::Error::other("only a one-node lab can be kept"),
            ));
        }
        let mut script = String::new();
        let mut pids = Vec::new();
        for pod in self.pods.values_mut() {
            if let Some(s) = pod.servers.take() {
                s.stop();
            }
            for s in &pod.spec.serves {
                let (listen, reply) = match s.protocol {
                    Protocol::Tcp => (format!("TCP6-LISTEN:{},ipv6only=0,reuseaddr,fork", s.port), "SYSTEM:echo"),
                    Protocol::Udp => (format!("UDP6-RECVFROM:{},ipv6only=0,reuseaddr,fork", s.port), "SYSTEM:echo"),
                };
                let child = Command::new("ip")
                    .args(["netns", "exec", pod.netns.name(), "socat", &listen])
                    .arg(format!("{reply} {}", pod.spec.name))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|source| io_err(&self.name, "starting socat (is it installed?)", source))?;
                pids.push(child.id());
            }
            pod.netns.keep();
            let _ = writeln!(script, "ip netns del {}", pod.netns.name());
        }
        if let Some(pid) = self.agent_pid() {
            pids.push(pid);
        }
        let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
        script.insert_str(
            0,
            &format!(
                "#!/bin/sh\n# Removes the kept ward lab node {}.\nkill {} 2>/dev/null\nsleep 1\n",
                self.name,
                pid_list.join(" ")
            ),
        );
        let _ = writeln!(script, "ip netns del {}", self.netns.name());
        let _ = writeln!(script, "rm -rf '{}'", self.pin_dir().display());
        let _ = writeln!(script, "rm -rf '{}'", self.dir.path().display());
        let path = self.dir.path().join("cleanup.sh");
        fs::write(&path, script).map_err(|source| io_err(&self.name, "writing cleanup.sh", source))?;
        self.keep = true;
        self.netns.keep();
        self.dir.keep();
        // The agent must outlive us: forget the handle instead of stopping it.
        self.agent = None;
        Ok(path)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if thread::panicking() {
            self.dump_agent_log();
        }
        if let Err(e) = self.stop_agent() {
            eprintln!("ward-lab: cleanup: {e}");
        }
        // The agent's DNS keeper outlives a stopped agent on purpose (restarts); not a node's.
        crate::dnslab::stop_dns_keeper(&self.state_dir());
        // Servers stop and pod namespaces go with the pods.
        self.pods.clear();
        let pins = self.pin_dir();
        match fs::remove_dir_all(&pins) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("ward-lab: cleanup: removing {}: {e}", pins.display()),
        }
        // Parents only if no other node uses them (rmdir fails on a non-empty directory).
        for parent in [self.config.bpffs.join(layout_dir()), self.config.bpffs.join("ward")] {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// The node's namespace, `<name>-node`, forwarding, with the node's addresses on its loopback.
fn boot_netns(name: &str, config: &NodeConfig) -> Result<NetNs, NodeError> {
    let netns = NetNs::create(format!("{name}-node"))?;
    netns.sysctl("net/ipv4/ip_forward", "1")?;
    netns.sysctl("net/ipv6/conf/all/forwarding", "1")?;
    for addr in config.host_addrs() {
        let cidr = match addr {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        };
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", HOST_IFACE];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        netns.ip(&args)?;
    }
    Ok(netns)
}

/// Node `p`'s underlay addresses (0: the lab's first node): `10.254.0.<p+1>` and
/// `fd77:fe::<p+1>`, outside every pod CIDR and node address.
fn underlay_addrs(p: usize) -> (Ipv4Addr, Ipv6Addr) {
    let n = u8::try_from(p + 1).unwrap_or(u8::MAX);
    (Ipv4Addr::new(10, 254, 0, n), Ipv6Addr::new(0xfd77, 0xfe, 0, 0, 0, 0, 0, n.into()))
}

fn io_err(node: &str, what: &str, source: std::io::Error) -> NodeError {
    NodeError::Io { node: node.to_owned(), what: what.to_owned(), source }
}

/// Mounts bpffs at `path` unless a bpf filesystem is mounted there already.
pub fn ensure_bpffs(node: &str, path: &Path) -> Result<(), NodeError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(|source| io_err(node, "reading /proc/mounts", source))?;
    let target = path.to_string_lossy();
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        (f.nth(1), f.next()) == (Some(target.as_ref()), Some("bpf"))
    }) {
        return Ok(());
    }
    fs::create_dir_all(path).map_err(|source| io_err(node, "creating the bpffs mount point", source))?;
    nix::mount::mount(Some("bpf"), path, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|source| NodeError::Bpffs { node: node.to_owned(), path: path.to_owned(), source })
}

/// What differs between the files written and those the agent reports as applied.
fn sync_diff(written: &BTreeMap<String, String>, status: &Status) -> String {
    let mut parts = Vec::new();
    for (file, hash) in written {
        match status.applied.files.get(file) {
            None => parts.push(format!("{file} not applied")),
            Some(h) if h != hash => parts.push(format!("{file} applied at an older content ({h}, wrote {hash})")),
            Some(_) => {}
        }
    }
    for file in status.applied.files.keys().filter(|f| !written.contains_key(*f)) {
        parts.push(format!("{file} still applied though the lab removed it"));
    }
    for r in &status.rejected {
        parts.push(format!("rejected: {r}"));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Rejection;

    #[test]
    fn pod_cidrs_lie_in_ten_slash_eight_and_avoid_the_uplink() {
        let c = NodeConfig { index: 3, ..NodeConfig::default() };
        let cidrs = c.pod_cidrs();
        assert_eq!(cidrs[0].to_string(), "10.3.0.0/16");
        assert_eq!(cidrs[1].to_string(), "fd77:0:0:3::/64");
        let uplink: IpNet = "fd00::/64".parse().unwrap();
        assert!(!uplink.contains(&cidrs[1]));
        for a in c.host_addrs() {
            assert!(!cidrs.iter().any(|n| n.contains(&a)), "{a} inside a pod CIDR");
        }
    }

    #[test]
    fn sync_diff_names_missing_stale_leftover_and_rejected_files() {
        let written: BTreeMap<_, _> =
            [("a.yaml".to_owned(), "1".to_owned()), ("b.yaml".to_owned(), "2".to_owned())].into();
        let status = Status {
            applied: crate::agent::Applied {
                files: [("b.yaml".to_owned(), "9".to_owned()), ("c.yaml".to_owned(), "3".to_owned())].into(),
                ..Default::default()
            },
            rejected: vec![Rejection {
                file: "a.yaml".into(),
                object: "o".into(),
                field: "f".into(),
                message: "m".into(),
            }],
            raw: serde_json::Value::Null,
        };
        let d = sync_diff(&written, &status);
        assert!(d.contains("a.yaml not applied"), "{d}");
        assert!(d.contains("b.yaml applied at an older content"), "{d}");
        assert!(d.contains("c.yaml still applied"), "{d}");
        assert!(d.contains("rejected: a.yaml"), "{d}");
    }
}

/// `ward/v<LAYOUT_VERSION>`: the agent's pin directory for this build's map layout.
pub fn layout_dir() -> String {
    format!("ward/v{}", ward_common::maps::LAYOUT_VERSION)
}
