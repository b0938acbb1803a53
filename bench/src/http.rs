//! HTTP rules: wrk (Debian's) against nginx in a lab pod, through (a) no policy, (b) an L4
//! policy that allows the client on the port, (c) HTTP rules that allow the requests wrk
//! sends. The three alternate within each round in one lab node (the policy is swapped, the
//! pods and servers stay), and (b) and (c) are reported as ratios to (a). Before measuring,
//! each configuration is shown to do what it claims: (a) and (b) pass any request, (c) passes
//! the benchmark's request and resets another, so a ratio never compares an enforcing
//! datapath with one that is not.
//!
//! Target (issue 10): (c) at least 0.95x the requests/s of (a), and its p99 latency within 10%.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_yaml::Value;
use ward_lab::nginx::Nginx;
use ward_lab::{Family, Node, NodeConfig, PodRef, PodSpec};

use crate::datapath::tools::{self, shown};
use crate::report::{Section, Table, Target};
use crate::stats::{Summary, secs, sig3};
use crate::{Ctx, PartResult};

const PORT: u16 = 8080;
/// wrk's connections and threads: kept-alive connections, one client thread per core share.
const CONNECTIONS: u32 = 32;
const THREADS: u32 = 1;
const PATH: &str = "/v1/items/bench";

/// The three configurations, in the order they alternate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    NoPolicy,
    L4,
    Http,
}

impl Config {
    pub const ALL: [Config; 3] = [Config::NoPolicy, Config::L4, Config::Http];

    pub fn name(self) -> &'static str {
        match self {
            Config::NoPolicy => "(a) no policy",
            Config::L4 => "(b) L4 policy",
            Config::Http => "(c) HTTP rules",
        }
    }

    /// The policy the configuration applies (none for (a)).
    pub fn policy(self) -> Option<Value> {
        let yaml = match self {
            Config::NoPolicy => return None,
            Config::L4 => {
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bench, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}]\n"
            }
            Config::Http => {
                "apiVersion: policy.ward.dev/v1alpha1\nkind: WardNetworkPolicy\nmetadata: {name: bench, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080, http: [{method: GET, pathPrefix: /v1/items/}, {path: /healthz}]}]}]\n"
            }
        };
        serde_yaml::from_str(yaml).ok()
    }
}

/// The lab: a client pod and nginx in a server pod.
pub struct Bed {
    pub node: Node,
    nginx: Option<Nginx>,
}

impl Bed {
    pub fn start(config: NodeConfig) -> anyhow::Result<Bed> {
        let mut node = Node::start(config).context("starting a lab node")?;
        node.set_namespace("bench", &Default::default())?;
        let pod = |name: &str| PodSpec {
            namespace: "bench".into(),
            name: name.into(),
            labels: [("app".to_owned(), name.to_owned())].into(),
            serves: vec![],
        };
        node.create_pods(&[pod("client"), pod("server")])?;
        // Two workers on the two cores of the reference machine, no access log.
        let nginx = Nginx::start_with(node.pod(&server())?.netns(), PORT, 2, false)?;
        Ok(Bed { node, nginx: Some(nginx) })
    }

    /// Puts `config`'s policy in force (removing the others') and waits until it is.
    pub fn set(&mut self, config: Config) -> anyhow::Result<()> {
        for kind in ["NetworkPolicy", "WardNetworkPolicy"] {
            self.node.remove_objects_of_kind(kind)?;
        }
        self.node.sync()?;
        if let Some(p) = config.policy() {
            self.node.apply(&[p])?;
        }
        Ok(())
    }

    pub fn server_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(SocketAddr::new(self.node.pod_ip(&server(), Family::IPv4)?, PORT))
    }

    /// One request from the client pod on a new connection: its status code, or `None` when
    /// the connection was reset or closed without an answer.
    pub fn request(&self, path: &str) -> anyhow::Result<Option<u16>> {
        let to = self.server_addr()?;
        let ns = self.node.pod(&client())?.netns();
        let answer = ns.run_in(|| -> std::io::Result<Option<u16>> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n").as_bytes())?;
            let mut buf = Vec::new();
            match s.read_to_end(&mut buf) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
            let text = String::from_utf8_lossy(&buf);
            Ok(text.split(' ').nth(1).and_then(|c| c.parse().ok()))
        })?;
        answer.context("the benchmark's probe request")
    }

    /// Shows that `config` is in force and passes the benchmark's requests.
    pub fn check(&self, config: Config) -> anyhow::Result<()> {
        let ok = self.request(PATH)?;
        let other = self.request("/admin")?;
        let want_other = if config == Config::Http { None } else { Some(200) };
        if ok != Some(200) || other != want_other {
            bail!(
                "{}: GET {PATH} answered {ok:?}, GET /admin {other:?} (wanted 200 and {want_other:?})",
                config.name()
            );
        }
        Ok(())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // nginx goes before its pod's namespace.
        self.nginx.take();
    }
}

fn server() -> PodRef {
    PodRef::new("bench", "server")
}

fn client() -> PodRef {
    PodRef::new("bench", "client")
}

/// One wrk run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WrkResult {
    pub rps: f64,
    /// Latency percentiles, seconds.
    pub p50: f64,
    pub p99: f64,
    /// Socket errors and non-2xx responses (must be 0 for a valid run).
    pub errors: u64,
}

pub fn wrk_argv(to: SocketAddr, secs: u32) -> Vec<String> {
    [
        "wrk",
        "-t",
        &THREADS.to_string(),
        "-c",
        &CONNECTIONS.to_string(),
        "-d",
        &format!("{secs}s"),
        "--latency",
        &format!("http://{to}{PATH}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A wrk duration (`1.23ms`, `456.78us`, `1.02s`) in seconds.
fn duration(s: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

/// Parses wrk's `--latency` output.
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkResult> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0u64;
    for line in text.lines() {
        let t = line.trim();
        let mut words = t.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse().ok(),
            (Some("50%"), Some(v)) => p50 = duration(v),
            (Some("99%"), Some(v)) => p99 = duration(v),
            (Some("Non-2xx"), _) => errors += t.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(1),
            (Some("Socket"), Some("errors:")) => {
                // `Socket errors: connect 0, read 0, write 0, timeout 0`
                errors += t
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last().and_then(|n| n.parse::<u64>().ok()))
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    match (rps, p50, p99) {
        (Some(rps), Some(p50), Some(p99)) => Ok(WrkResult { rps, p50, p99, errors }),
        _ => bail!("wrk printed no Requests/sec or latency distribution:\n{text}"),
    }
}

pub fn run(ctx: &Ctx) -> anyhow::Result<PartResult> {
    let config = NodeConfig {
        bins: Some(ctx.bins.clone()),
        sync_timeout: Duration::from_secs(120),
        agent_log_filter: "warn".into(),
        ..NodeConfig::default()
    };
    let mut bed = Bed::start(config)?;
    let secs: u32 = if ctx.quick { 3 } else { 10 };
    let client_ns = bed.node.pod(&client())?.netns().name().to_owned();
    let argv = wrk_argv(bed.server_addr()?, secs);
    let mut runs: Vec<(Config, WrkResult)> = Vec::new();
    for round in 0..ctx.rounds() {
        for config in Config::ALL {
            bed.set(config)?;
            bed.check(config)?;
            let out = tools::run_in(&client_ns, &argv, Duration::from_secs(u64::from(secs) + 30))?;
            let r = parse_wrk(&out)?;
            if r.errors > 0 {
                bail!("{} round {round}: wrk saw {} errors:\n{out}", config.name(), r.errors);
            }
            eprintln!("ward-bench: http {} round {round}: {:.0} req/s p99 {}", config.name(), r.rps, secs_str(r.p99));
            runs.push((config, r));
        }
    }
    let summary = |c: Config, f: fn(&WrkResult) -> f64| -> Option<Summary> {
        Summary::of(&runs.iter().filter(|(k, _)| *k == c).map(|(_, r)| f(r)).collect::<Vec<_>>())
    };
    let base = (
        summary(Config::NoPolicy, |r| r.rps),
        summary(Config::NoPolicy, |r| r.p50),
        summary(Config::NoPolicy, |r| r.p99),
    );
    let mut table = Table::new(
        "wrk against nginx, kept-alive connections",
        &["configuration", "requests/s", "× (a)", "p50", "× (a)", "p99", "× (a)"],
    );
    table.command(shown("client pod", &argv));
    let ratio = |s: &Option<Summary>, b: &Option<Summary>| match (s, b) {
        (Some(s), Some(b)) => s.ratio_to(b).map_or("–".into(), |r| format!("{}×", sig3(r))),
        _ => "–".into(),
    };
    let mut measured = (None, None);
    for c in Config::ALL {
        let (rps, p50, p99) = (summary(c, |r| r.rps), summary(c, |r| r.p50), summary(c, |r| r.p99));
        if c == Config::Http {
            measured = (
                rps.as_ref().zip(base.0.as_ref()).and_then(|(s, b)| s.ratio_to(b)),
                p99.as_ref().zip(base.2.as_ref()).and_then(|(s, b)| s.ratio_to(b)),
            );
        }
        table.row(vec![
            c.name().into(),
            rps.map_or("–".into(), |s| s.to_string()),
            ratio(&rps, &base.0),
            p50.map_or("–".into(), |s| s.display_with(secs_str)),
            ratio(&p50, &base.1),
            p99.map_or("–".into(), |s| s.display_with(secs_str)),
            ratio(&p99, &base.2),
        ]);
    }
    let targets = vec![
        Target {
            name: "HTTP rules: requests/s".into(),
            goal: "≥ 0.95× no policy".into(),
            measured: measured.0.map_or("–".into(), |r| format!("{}×", sig3(r))),
            met: measured.0.map(|r| r >= 0.95),
            comment: "wrk against nginx, same run, alternating".into(),
        },
        Target {
            name: "HTTP rules: p99 latency".into(),
            goal: "≤ 1.10× no policy".into(),
            measured: measured.1.map_or("–".into(), |r| format!("{}×", sig3(r))),
            met: measured.1.map(|r| r <= 1.10),
            comment: "wrk --latency p99, same run, alternating".into(),
        },
    ];
    let section = Section {
        title: "HTTP rules".into(),
        intro: format!(
            "wrk ({THREADS} thread, {CONNECTIONS} kept-alive connections, {secs} s per run) from a lab pod \
             against nginx (2 workers) in another, through (a) no policy, (b) an L4 NetworkPolicy for the \
             port, (c) a WardNetworkPolicy with HTTP rules that admit the requests. Alternating within \
             each of {} rounds; each configuration checked first (the benchmark's request answered, another \
             request reset under (c)). Median (min–max).",
            ctx.rounds()
        ),
        tables: vec![table],
        ..Section::default()
    };
    Ok(PartResult { section, targets })
}

fn secs_str(s: f64) -> String {
    secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses_into_rate_percentiles_and_errors() {
        let out = "Running 3s test @ http://10.1.0.3:8080/v1/items/bench\n  1 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   812.31us  201.10us   5.01ms   88.00%\n    Req/Sec    39.12k     1.20k   41.00k    70.00%\n  Latency Distribution\n     50%  780.00us\n     75%    0.90ms\n     90%    1.02ms\n     99%    1.53ms\n  117360 requests in 3.00s, 17.23MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\nRequests/sec:  39120.55\nTransfer/sec:      5.74MB\n";
        let r = parse_wrk(out).unwrap();
        assert!((r.rps - 39120.55).abs() < 1e-6);
        assert!((r.p50 - 780e-6).abs() < 1e-12);
        assert!((r.p99 - 1.53e-3).abs() < 1e-12);
        assert_eq!(r.errors, 3);
        assert!(parse_wrk("nothing").is_err());
        assert_eq!(duration("1.5s"), Some(1.5));
    }

    #[test]
    fn each_configuration_has_the_policy_it_claims() {
        assert!(Config::NoPolicy.policy().is_none());
        let l4 = Config::L4.policy().unwrap();
        assert_eq!(l4["kind"], "NetworkPolicy");
        let http = Config::Http.policy().unwrap();
        assert_eq!(http["kind"], "WardNetworkPolicy");
        assert!(serde_yaml::to_string(&http).unwrap().contains("/v1/items/"));
        assert!(PATH.starts_with("/v1/items/"), "(c) must admit the benchmark's request");
    }
}
