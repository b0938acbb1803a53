//! What flow events cost the datapath: TCP request/response rate (sockperf ping-pong, as the
//! datapath part measures it) and new connections per second between two lab pods, with no
//! program, and with Ward enforcing a policy on the server under `--flow-events none`,
//! `drops` and `all`. Each mode is its own lab node (the flag is the agent's, read at start),
//! all built once; every round alternates all four configurations, and each Ward figure is a
//! ratio to the no-program figure of the same round.
//!
//! Under `all` every new connection emits an event on each side it is decided at, which the
//! agent's flow task reads and names while the load runs: the connection rate is where
//! events cost most. The request/response rate runs over one connection (one event at its
//! start), so it measures what the per-packet check of the event flags costs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use ward_lab::{Family, Labels, NetNs, Node, NodeConfig, PodRef, PodSpec};

use crate::datapath::configs::{PORT_CONN, PORT_IPERF, PORT_SOCKPERF};
use crate::datapath::topology::{PlainPod, ServerSet, start_servers};
use crate::datapath::{connrate, tools};

const K8S_NS: &str = "bench";
/// A bound on connections per new-connection run, whatever the time says.
const MAX_CONNS: u64 = 1_000_000;
const TOOL_GRACE: Duration = Duration::from_secs(20);

/// The configurations compared, in the order each round runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Plain,
    /// Ward with `--flow-events <flag>`.
    Ward(&'static str),
}

pub const MODES: [Mode; 4] = [Mode::Plain, Mode::Ward("none"), Mode::Ward("drops"), Mode::Ward("all")];

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Plain => f.write_str("no program"),
            Mode::Ward(flag) => write!(f, "Ward, --flow-events {flag}"),
        }
    }
}

/// A Ward node with a client and a server, the server's ingress allowed from the client.
struct Side {
    node: Node,
    client: PodRef,
    server: Ipv4Addr,
}

fn side(bins: &ward_lab::bins::Binaries, index: u8, flag: &str) -> anyhow::Result<Side> {
    let mut node = Node::start(NodeConfig {
        index,
        bins: Some(bins.clone()),
        agent_log_filter: "warn".into(),
        agent_args: vec!["--flow-events".into(), flag.into()],
        ..NodeConfig::default()
    })?;
    node.set_namespace(K8S_NS, &Labels::new())?;
    let pod = |name: &str| PodSpec {
        namespace: K8S_NS.into(),
        name: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into(),
        serves: vec![],
    };
    node.create_pods(&[pod("client"), pod("server")])?;
    let policy: serde_yaml::Value = serde_yaml::from_str(&format!(
        "{{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: server-from-client, namespace: {K8S_NS}}}, \
         spec: {{podSelector: {{matchLabels: {{app: server}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}], \
         ports: [{{port: {PORT_SOCKPERF}, protocol: TCP}}, {{port: {PORT_CONN}, protocol: TCP}}, {{port: {PORT_IPERF}, protocol: TCP}}]}}]}}}}"
    ))?;
    node.apply(&[policy])?;
    let server = match node.pod_ip(&PodRef::new(K8S_NS, "server"), Family::IPv4)? {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => bail!("server has {a} where IPv4 was asked"),
    };
    Ok(Side { node, client: PodRef::new(K8S_NS, "client"), server })
}

/// The whole lab; field order is drop order (servers before their namespaces).
pub struct Lab {
    _servers: Vec<ServerSet>,
    plain_client: PlainPod,
    plain_server: PlainPod,
    sides: Vec<(&'static str, Side)>,
}

impl Lab {
    pub fn build(bins: &ward_lab::bins::Binaries, log: &dyn Fn(&str)) -> anyhow::Result<Lab> {
        let mut sides = Vec::new();
        for (i, flag) in ["none", "drops", "all"].into_iter().enumerate() {
            log(&format!("starting the lab node with --flow-events {flag}"));
            sides.push((flag, side(bins, 1 + i as u8, flag).with_context(|| format!("--flow-events {flag}"))?));
        }
        let node_ns = sides[0].1.node.netns();
        let plain_client = PlainPod::create(node_ns, "ev-plain-client", "wbevplain2", Ipv4Addr::new(10, 250, 0, 2))?;
        let plain_server = PlainPod::create(node_ns, "ev-plain-server", "wbevplain3", Ipv4Addr::new(10, 250, 0, 3))?;
        let mut servers = vec![start_servers(&plain_server.netns, plain_server.ip)?];
        for (_, s) in &sides {
            servers.push(start_servers(s.node.pod(&PodRef::new(K8S_NS, "server"))?.netns(), s.server)?);
        }
        Ok(Lab { _servers: servers, plain_client, plain_server, sides })
    }

    /// The client namespace and server address of `mode`.
    fn path(&self, mode: Mode) -> anyhow::Result<(&NetNs, Ipv4Addr)> {
        match mode {
            Mode::Plain => Ok((&self.plain_client.netns, self.plain_server.ip)),
            Mode::Ward(flag) => {
                let (_, s) =
                    self.sides.iter().find(|(f, _)| *f == flag).with_context(|| format!("no node for {flag}"))?;
                Ok((s.node.pod(&s.client)?.netns(), s.server))
            }
        }
    }

    /// Request/response rate (per second) of `mode`, one sockperf run of `secs`.
    pub fn rr(&self, mode: Mode, secs: u32) -> anyhow::Result<f64> {
        let (client, server) = self.path(mode)?;
        let argv = tools::sockperf_ping_pong(server, PORT_SOCKPERF, secs);
        let limit = Duration::from_secs(secs.into()) + TOOL_GRACE;
        Ok(tools::parse_sockperf(&tools::run_in(client.name(), &argv, limit)?)?.rate)
    }

    /// New connections per second of `mode` over `time`.
    pub fn conns(&self, mode: Mode, time: Duration) -> anyhow::Result<f64> {
        let (client, server) = self.path(mode)?;
        Ok(connrate::measure(client, SocketAddr::new(IpAddr::V4(server), PORT_CONN), time, MAX_CONNS)?.rate())
    }

    /// Each Ward node's agent: (flag, pid).
    pub fn agents(&self) -> Vec<(&'static str, u32)> {
        self.sides.iter().filter_map(|(f, s)| Some((*f, s.node.agent_pid()?))).collect()
    }
}
