//! The datapath bench's lab: where each configuration's client, server and intruder live,
//! and switching between configurations.
//!
//! * The main lab node (a real `ward-agent`) holds the plain pods of (a), (d) and (e): veth
//!   pods made by hand exactly as `ward-cni` wires its pods (pod side /32, gateway
//!   169.254.1.1 answered by a permanent neighbour for the host side's fixed MAC, default
//!   route; node side /32 route and permanent neighbour; same MTU) but in 10.250.0.0/24,
//!   outside Ward's pod CIDRs, with no program attached. iptables and nftables rules for
//!   (d) and (e) are loaded into this node's namespace. It also holds Ward's pods of (b),
//!   which no policy selects.
//! * Each N of (c) gets a lab node of its own, whose agent enforces one policy selecting
//!   that node's server and allowing the N peers. Separate nodes keep each N's maps exactly
//!   that size (a node shared by all N would measure N=10 with 100k prefixes in its trie)
//!   and make switching free: every policy is loaded once, and its load time measured.
//!
//! Each path has an intruder pod beside the client whose address is in no rule set: a
//! configuration that claims to enforce must let the client through and stop the intruder,
//! which [`Lab::check`] verifies.
//!
//! Cleanup on drop, panics included: servers are killed first, then the plain pods'
//! namespaces (their veths go with them), then the nodes (agents, Ward pods, pins, and the
//! node namespace with every iptables and nftables rule in it).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ward_lab::bins::Binaries;
use ward_lab::{Family, NetNs, Node, NodeConfig, PodRef, PodSpec};

use super::configs::{self, Config, PORT_CONN, PORT_IPERF, PORT_SOCKPERF};
use super::connrate::{self, ConnServer};
use super::tools::{self, Daemon};

/// MTU of every pod veth, Ward's and the plain ones alike.
const MTU: u32 = 1500;
/// The host side's MAC on every pod veth (as `ward-cni` sets it).
const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
const GATEWAY: &str = "169.254.1.1";
/// Kubernetes namespace of Ward's bench pods.
const K8S_NS: &str = "bench";
/// The label a policy of (c) selects its server by.
const SERVER_LABEL: &str = "bench-server";
/// How long a denied connection attempt waits before counting as denied.
const DENY_TIMEOUT: Duration = Duration::from_millis(700);
/// How long an allowed one may take.
const ALLOW_TIMEOUT: Duration = Duration::from_secs(2);
/// How long servers get to start listening.
const SERVER_START: Duration = Duration::from_secs(10);

/// A pod wired by hand with no program: (a), (d), (e).
#[derive(Debug)]
pub struct PlainPod {
    pub ip: Ipv4Addr,
    pub netns: NetNs,
}

impl PlainPod {
    /// Creates the pod namespace and its veth, host side `host_if` in `node`.
    pub fn create(node: &NetNs, tag: &str, host_if: &str, ip: Ipv4Addr) -> anyhow::Result<PlainPod> {
        let netns = NetNs::create_unique(tag)?;
        let mtu = MTU.to_string();
        node.ip(&[
            "link",
            "add",
            host_if,
            "mtu",
            &mtu,
            "address",
            HOST_MAC,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu,
            "netns",
            netns.name(),
        ])?;
        let cidr = format!("{ip}/32");
        netns.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&["route", "add", &format!("{GATEWAY}/32"), "dev", "eth0", "scope", "link"])?;
        netns.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"])?;
        netns.ip(&["neigh", "add", GATEWAY, "lladdr", HOST_MAC, "dev", "eth0", "nud", "permanent"])?;
        let pod_mac = link_mac(&netns, "eth0")?;
        node.ip(&["link", "set", host_if, "up"])?;
        node.ip(&["route", "add", &cidr, "dev", host_if, "scope", "link"])?;
        node.ip(&["neigh", "add", &ip.to_string(), "lladdr", &pod_mac, "dev", host_if, "nud", "permanent"])?;
        Ok(PlainPod { ip, netns })
    }
}

fn link_mac(ns: &NetNs, ifname: &str) -> anyhow::Result<String> {
    let out = ns.ip(&["-j", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link show")?;
    v[0]["address"].as_str().map(str::to_owned).with_context(|| format!("no MAC on {ifname} in {}", ns.name()))
}

/// The servers of one server pod: sockperf, iperf3 and the connection server.
pub struct ServerSet {
    _daemons: Vec<Daemon>,
    _conn: ConnServer,
}

pub fn start_servers(ns: &NetNs, ip: Ipv4Addr) -> anyhow::Result<ServerSet> {
    let mut daemons = vec![
        Daemon::spawn(ns.name(), &tools::sockperf_server(ip, PORT_SOCKPERF))?,
        Daemon::spawn(ns.name(), &tools::iperf3_server(ip, PORT_IPERF))?,
    ];
    let conn = ConnServer::start(ns, SocketAddr::new(IpAddr::V4(ip), PORT_CONN))?;
    // Listening is checked from inside the server pod itself (local delivery: no veth, no rule).
    for port in [PORT_SOCKPERF, PORT_IPERF, PORT_CONN] {
        let to = SocketAddr::new(IpAddr::V4(ip), port);
        let deadline = Instant::now() + SERVER_START;
        loop {
            for d in &mut daemons {
                d.check_running()?;
            }
            let up = ns.run_in(|| std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok())?;
            if up {
                break;
            }
            if Instant::now() >= deadline {
                bail!("no server listening on {to} in {} after {SERVER_START:?}", ns.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(ServerSet { _daemons: daemons, _conn: conn })
}

/// Who talks to whom in one configuration.
pub struct Path<'a> {
    pub client: &'a NetNs,
    /// A pod beside the client whose address no rule lists.
    pub intruder: &'a NetNs,
    pub server: Ipv4Addr,
    /// The node whose programs carry the traffic (Ward configurations).
    pub ward_node: Option<&'a Node>,
}

/// What [`Lab::check`] saw.
#[derive(Debug)]
pub struct Check {
    pub client: Result<(), String>,
    pub intruder: Result<(), String>,
}

impl Check {
    /// The client gets through; the intruder is stopped exactly where `config` enforces (so
    /// that a denial means the rule set, not a broken intruder).
    pub fn holds(&self, config: Config) -> bool {
        self.client.is_ok() && self.intruder.is_err() == config.enforces()
    }
}

/// A time the lab spent loading a rule set.
#[derive(Clone, Debug)]
pub struct Load {
    pub config: Config,
    pub secs: f64,
}

/// A Ward node with a client, an intruder and a server.
struct WardSide {
    node: Node,
    client: PodRef,
    intruder: PodRef,
    server: PodRef,
}

impl WardSide {
    /// `delivery`: the agent's `--local-delivery`.
    fn start(bins: &Binaries, index: u8, server_label: Option<&str>, delivery: &str) -> anyhow::Result<WardSide> {
        let mut node = Node::start(NodeConfig {
            index,
            agent_args: vec!["--local-delivery".into(), delivery.into()],
            bins: Some(bins.clone()),
            mtu: MTU,
            // A 100k-peer policy takes a while to compile and write into the maps.
            sync_timeout: Duration::from_secs(600),
            ..NodeConfig::default()
        })?;
        node.set_namespace(K8S_NS, &Default::default())?;
        let spec = |name: &str, label: Option<&str>| PodSpec {
            namespace: K8S_NS.into(),
            name: name.into(),
            labels: label.map(|v| [(SERVER_LABEL.to_owned(), v.to_owned())].into()).unwrap_or_default(),
            serves: vec![],
        };
        let specs = [spec("client", None), spec("intruder", None), spec("server", server_label)];
        node.create_pods(&specs)?;
        let [client, intruder, server] = specs.map(|s| s.pod_ref());
        Ok(WardSide { node, client, intruder, server })
    }

    fn ip(&self, pod: &PodRef) -> anyhow::Result<Ipv4Addr> {
        match self.node.pod_ip(pod, Family::IPv4)? {
            IpAddr::V4(a) => Ok(a),
            IpAddr::V6(a) => bail!("pod {pod} has IPv6 {a} where IPv4 was asked"),
        }
    }

    fn netns(&self, pod: &PodRef) -> anyhow::Result<&NetNs> {
        Ok(self.node.pod(pod)?.netns())
    }
}

/// Which netfilter rule set is hooked into the main node's forward path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hooked {
    Nothing,
    Iptables(usize),
    Nft(usize),
}

/// The whole datapath lab. See the module docs.
pub struct Lab {
    // Field order is drop order: servers before the namespaces they run in.
    servers: Vec<ServerSet>,
    plain_client: PlainPod,
    plain_server: PlainPod,
    plain_intruder: PlainPod,
    open: WardSide,
    by_n: BTreeMap<usize, WardSide>,
    /// The same policies on nodes whose agents leave same-node delivery to routing.
    routed_by_n: BTreeMap<usize, WardSide>,
    hooked: Hooked,
    /// Rule-set load times, in the order loaded.
    pub loads: Vec<Load>,
}

impl Lab {
    /// Builds everything for the peer counts `ns`: nodes, pods, servers; loads every rule
    /// set once (iptables peer chains and nft sets into the main node, one Ward policy per
    /// node of (c)), timing each load. `log` reports progress.
    pub fn build(bins: &Binaries, ns: &[usize], log: &dyn Fn(&str)) -> anyhow::Result<Lab> {
        log("starting the main lab node");
        let open = WardSide::start(bins, 1, None, "peer").context("the main lab node")?;
        let node_ns = open.node.netns();
        let plain = |tag: &str, host_if: &str, last: u8| {
            PlainPod::create(node_ns, tag, host_if, Ipv4Addr::new(10, 250, 0, last))
                .with_context(|| format!("plain pod {tag}"))
        };
        let plain_client = plain("plain-client", "wbplain2", 2)?;
        let plain_server = plain("plain-server", "wbplain3", 3)?;
        let plain_intruder = plain("plain-intruder", "wbplain4", 4)?;
        let mut lab = Lab {
            servers: Vec::new(),
            plain_client,
            plain_server,
            plain_intruder,
            open,
            by_n: BTreeMap::new(),
            routed_by_n: BTreeMap::new(),
            hooked: Hooked::Nothing,
            loads: Vec::new(),
        };
        lab.servers.push(start_servers(&lab.plain_server.netns, lab.plain_server.ip)?);
        let open_server = lab.open.ip(&lab.open.server)?;
        lab.servers.push(start_servers(lab.open.netns(&lab.open.server)?, open_server)?);

        for (i, &n) in ns.iter().enumerate() {
            for (delivery, config) in [("peer", Config::Ward(n)), ("route", Config::WardRouted(n))] {
                let count = configs::count(n);
                log(&format!("starting the lab node of {config}"));
                let label = format!("n{n}");
                let index =
                    u8::try_from(2 + 2 * i + usize::from(delivery == "route")).context("too many peer counts")?;
                let mut side = WardSide::start(bins, index, Some(&label), delivery)
                    .with_context(|| format!("node of {config}"))?;
                let server = side.ip(&side.server)?;
                lab.servers.push(start_servers(side.netns(&side.server)?, server)?);
                let peers = configs::peers(n, side.ip(&side.client)?);
                let yaml = configs::ward_policy_yaml(&format!("allow-{label}"), K8S_NS, (SERVER_LABEL, &label), &peers);
                log(&format!("loading Ward's policy with {count} peers ({delivery})"));
                let t = Instant::now();
                side.node.write_manifest(&format!("bench-policy-{label}.yaml"), &yaml)?;
                side.node.sync().with_context(|| format!("Ward enforcing the policy of {config}"))?;
                lab.loaded(config, t.elapsed(), log);
                let rejected = side.node.rejections();
                if !rejected.is_empty() {
                    bail!("Ward rejected the policy of {config}: {}", rejected.join("; "));
                }
                match config {
                    Config::Ward(_) => lab.by_n.insert(n, side),
                    _ => lab.routed_by_n.insert(n, side),
                };
            }
        }

        for &n in ns {
            let count = configs::count(n);
            let peers = configs::peers(n, lab.plain_client.ip);
            log(&format!("loading iptables rules for {count} peers"));
            let t = Instant::now();
            lab.node_exec(&["iptables-restore", "--noflush"], &configs::ipt_peers_restore(n, &peers))
                .with_context(|| format!("iptables rules of N={count}"))?;
            lab.loaded(Config::Iptables(n), t.elapsed(), log);
            log(&format!("loading the nftables set of {count} peers"));
            let t = Instant::now();
            lab.node_exec(&["nft", "-f", "-"], &configs::nft_peers(n, &peers))
                .with_context(|| format!("nftables set of N={count}"))?;
            lab.loaded(Config::Nft(n), t.elapsed(), log);
        }
        // iptables-nft may leave an empty FORWARD base chain behind; nothing may be hooked
        // until a configuration asks for it.
        lab.unhook()?;
        Ok(lab)
    }

    fn loaded(&mut self, config: Config, took: Duration, log: &dyn Fn(&str)) {
        log(&format!("{config}: loaded in {:.2} s", took.as_secs_f64()));
        self.loads.push(Load { config, secs: took.as_secs_f64() });
    }

    /// Runs a command in the main node's namespace with `stdin`.
    fn node_exec(&self, argv: &[&str], stdin: &str) -> anyhow::Result<String> {
        let ns = self.open.node.netns().name();
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", ns]).args(argv);
        c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = c.spawn().with_context(|| format!("starting {}", argv.join(" ")))?;
        if let Some(mut pipe) = child.stdin.take() {
            use std::io::Write as _;
            let _ = pipe.write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().with_context(|| format!("waiting for {}", argv.join(" ")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!("{} in {ns} failed ({}): {}", argv.join(" "), out.status, err.trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The main node's netfilter chains (declarations with their hooks, without rules: listing
    /// 200k rules would take longer than a measurement), as `nft list chains` prints them.
    pub fn chains(&self) -> anyhow::Result<String> {
        self.node_exec(&["nft", "list", "chains"], "")
    }

    /// Removes whatever netfilter hook is in place; afterwards no base chain exists in the
    /// main node (the peer chains and sets stay, hooked to nothing).
    fn unhook(&mut self) -> anyhow::Result<()> {
        match self.hooked {
            Hooked::Nothing => {}
            Hooked::Iptables(_) => {
                self.node_exec(&["iptables-restore", "--noflush"], &configs::ipt_switch_off(self.plain_server.ip))?;
            }
            Hooked::Nft(_) => {
                self.node_exec(&["nft", "-f", "-"], &configs::nft_switch_off())?;
            }
        }
        self.hooked = Hooked::Nothing;
        // iptables-nft keeps its (now empty) FORWARD base chain registered; delete it so the
        // configurations without netfilter have no hook at all. It is recreated on demand.
        if self.chains()?.contains("chain FORWARD") {
            self.node_exec(&["nft", "delete", "chain", "ip", "filter", "FORWARD"], "")?;
        }
        let chains = self.chains()?;
        if chains.contains("hook ") {
            bail!("a netfilter base chain is left in the main node:\n{chains}");
        }
        Ok(())
    }

    /// Puts `config` in force: hooks its netfilter rule set in (or none). Ward's
    /// configurations are always in force on their own nodes.
    pub fn switch(&mut self, config: Config) -> anyhow::Result<()> {
        let want = match config {
            Config::Iptables(n) => Hooked::Iptables(n),
            Config::Nft(n) => Hooked::Nft(n),
            Config::Plain | Config::WardOpen | Config::Ward(_) | Config::WardRouted(_) => Hooked::Nothing,
        };
        if want == self.hooked {
            return Ok(());
        }
        self.unhook()?;
        let server = self.plain_server.ip;
        match want {
            Hooked::Nothing => {}
            Hooked::Iptables(n) => {
                self.node_exec(&["iptables-restore", "--noflush"], &configs::ipt_switch_on(server, n))?;
            }
            Hooked::Nft(n) => {
                self.node_exec(&["nft", "-f", "-"], &configs::nft_switch_on(server, n))?;
            }
        }
        self.hooked = want;
        Ok(())
    }

    /// The client, intruder and server of `config`.
    pub fn path(&self, config: Config) -> anyhow::Result<Path<'_>> {
        fn ward(side: &WardSide) -> anyhow::Result<Path<'_>> {
            Ok(Path {
                client: side.netns(&side.client)?,
                intruder: side.netns(&side.intruder)?,
                server: side.ip(&side.server)?,
                ward_node: Some(&side.node),
            })
        }
        match config {
            Config::Plain | Config::Iptables(_) | Config::Nft(_) => Ok(Path {
                client: &self.plain_client.netns,
                intruder: &self.plain_intruder.netns,
                server: self.plain_server.ip,
                ward_node: None,
            }),
            Config::WardOpen => ward(&self.open),
            Config::Ward(n) => ward(self.by_n.get(&n).with_context(|| format!("no Ward node for N={n}"))?),
            Config::WardRouted(n) => {
                ward(self.routed_by_n.get(&n).with_context(|| format!("no routed Ward node for N={n}"))?)
            }
        }
    }

    /// Whether the client reaches the server and the intruder does not (one short connection
    /// each to the connection server). Call after [`Lab::switch`].
    pub fn check(&self, config: Config) -> anyhow::Result<Check> {
        let p = self.path(config)?;
        let to = SocketAddr::new(IpAddr::V4(p.server), PORT_CONN);
        let client = connrate::reachable(p.client, to, ALLOW_TIMEOUT)?;
        let intruder = connrate::reachable(p.intruder, to, DENY_TIMEOUT)?;
        Ok(Check { client, intruder })
    }

    /// Each Ward node's agent process: (what it serves, pid).
    pub fn agents(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> =
            self.open.node.agent_pid().map(|p| ("main node (no policy)".to_owned(), p)).into_iter().collect();
        for (n, side) in &self.by_n {
            if let Some(p) = side.node.agent_pid() {
                v.push((format!("N={}", configs::count(*n)), p));
            }
        }
        for (n, side) in &self.routed_by_n {
            if let Some(p) = side.node.agent_pid() {
                v.push((format!("N={}, routed", configs::count(*n)), p));
            }
        }
        v
    }

    /// The node and namespaces, for reports and debugging.
    pub fn describe(&self) -> String {
        format!(
            "main node {} (plain pods 10.250.0.2-4, Ward pods of (b)); Ward nodes per N: {}",
            self.open.node.name(),
            self.by_n
                .iter()
                .map(|(n, s)| format!("{}={}", configs::count(*n), s.node.name()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}
