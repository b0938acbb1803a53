//! The DNS proxy (FQDN egress): what it adds to a resolution, how many queries per second
//! pass through it, and whether the first connection after an answer ever loses its SYN.
//!
//! One lab node with two pods side by side: `client`, behind the proxy (a WardNetworkPolicy
//! with an `fqdn` peer selects it), and `direct`, which no policy selects, so its queries go
//! straight to the same dnsmasq in a lab namespace. Latency is per query, sequential, from a
//! stub resolver in each pod, the two pods alternating in rounds; added latency is the
//! difference of the percentiles. Queries per second come from dnsperf in each pod. First
//! connections: resolve a name never asked before (each its own address) and connect at once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ward_lab::dnslab::{self, Attempt, DnsServer, ExternalHost, Record};
use ward_lab::{Labels, Node, NodeConfig, PodSpec, Protocol, Serve};

use crate::report::{Section, Table, Target};
use crate::stats::percentile;
use crate::{Ctx, PartResult};

const NAME: &str = "api.bench.example";

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn us(s: f64) -> String {
    format!("{:.0} µs", s * 1e6)
}

struct Lab {
    dns: DnsServer,
    host: ExternalHost,
    node: Node,
}

fn first_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(100, 76, (i / 250) as u8, (i % 250) as u8 + 1))
}

fn build(ctx: &Ctx, names: usize) -> anyhow::Result<Lab> {
    let mut node = Node::start(NodeConfig {
        bins: Some(ctx.bins.clone()),
        agent_log_filter: "warn".into(),
        sync_timeout: Duration::from_secs(120),
        ..NodeConfig::default()
    })
    .context("starting a lab node")?;
    node.set_namespace("bench", &Labels::new())?;
    let pods: Vec<PodSpec> = ["client", "direct"]
        .iter()
        .map(|n| PodSpec {
            namespace: "bench".into(),
            name: (*n).into(),
            labels: labels(&[("app", n)]),
            serves: vec![Serve::new(80, Protocol::Tcp, None)],
        })
        .collect();
    node.create_pods(&pods)?;
    let host = ExternalHost::create(&node, "api", 1, &[Serve::new(443, Protocol::Tcp, None)])?;
    host.add_range(&node, "100.76.0.0/22")?;
    let mut records = vec![Record::Addrs { name: NAME.into(), addrs: vec![host.ip(false)], ttl: 300 }];
    records.extend((0..names).map(|i| Record::Addrs {
        name: format!("n{i}.bench.example"),
        addrs: vec![first_addr(i)],
        ttl: 300,
    }));
    let dns = DnsServer::start(&node, &records)?;
    let policy: serde_yaml::Value = serde_yaml::from_str(
        "apiVersion: policy.ward.dev/v1alpha1\nkind: WardNetworkPolicy\nmetadata: {name: egress, namespace: bench}\n\
         spec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n\
         \x20   - to: [{fqdn: {matchPattern: '**.bench.example'}}]\n      ports: [{port: 443, protocol: TCP}]\n\
         \x20   - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]\n",
    )?;
    node.apply(&[policy])?;
    Ok(Lab { dns, host, node })
}

impl Lab {
    fn ns(&self, pod: &str) -> anyhow::Result<(String, std::path::PathBuf)> {
        let p = self.node.pod(&format!("bench/{pod}").parse()?)?;
        Ok((p.netns().name().to_owned(), p.netns().path().to_owned()))
    }

    /// `n` sequential queries from `pod`; each one's round trip in seconds.
    fn latencies(&self, pod: &str, n: usize) -> anyhow::Result<Vec<f64>> {
        let (name, path) = self.ns(pod)?;
        let server = self.dns.addr(false);
        let r = dnslab::in_netns(&name, &path, || {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                dnslab::query(server, NAME, hickory_proto_record_a(), false, Duration::from_secs(2))?;
                out.push(t.elapsed().as_secs_f64());
            }
            Ok::<_, String>(out)
        })
        .map_err(anyhow::Error::msg)?;
        r.map_err(anyhow::Error::msg)
    }

    /// dnsperf from `pod` for `secs`: (queries per second, queries lost).
    fn dnsperf(&self, pod: &str, data: &Path, secs: u64) -> anyhow::Result<(f64, u64, String)> {
        let (ns, _) = self.ns(pod)?;
        let server = self.dns.addr(false).ip().to_string();
        let secs_s = secs.to_string();
        let args = ["netns", "exec", &ns, "dnsperf", "-s", &server, "-d"];
        let mut cmd = Command::new("ip");
        cmd.args(args).arg(data).args(["-l", &secs_s, "-c", "8", "-q", "64", "-t", "2"]);
        let line = format!("ip netns exec <{pod}> dnsperf -s {server} -d <{NAME} A> -l {secs} -c 8 -q 64 -t 2");
        let out = cmd.output().context("running dnsperf (cargo xtask setup installs it)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |key: &str| {
            text.lines().find(|l| l.trim_start().starts_with(key)).and_then(|l| l.split(':').nth(1)).map(str::trim)
        };
        let qps: f64 = field("Queries per second")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no qps in dnsperf's output: {text}"))?;
        let lost: u64 = field("Queries lost").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
        Ok((qps, lost, line))
    }
}

/// The A record type, named once for the stub resolver.
fn hickory_proto_record_a() -> hickory_proto::rr::RecordType {
    hickory_proto::rr::RecordType::A
}

pub fn run(ctx: &Ctx) -> anyhow::Result<PartResult> {
    let (per_round, first_conns, perf_secs) = if ctx.quick { (300, 200, 2) } else { (2000, 1000, 5) };
    let lab = build(ctx, first_conns)?;
    // Warm both paths (the proxy's first answer learns the address).
    lab.latencies("client", 20)?;
    lab.latencies("direct", 20)?;
    let (mut proxied, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..ctx.rounds() {
        direct.extend(lab.latencies("direct", per_round)?);
        proxied.extend(lab.latencies("client", per_round)?);
    }
    let p = |v: &[f64], q| percentile(v, q).unwrap_or(f64::NAN);
    let (d50, d99, x50, x99) = (p(&direct, 50.0), p(&direct, 99.0), p(&proxied, 50.0), p(&proxied, 99.0));
    let data = lab.node.dir().join("dnsperf.txt");
    std::fs::write(&data, format!("{NAME} A\n"))?;
    let (qps_direct, lost_direct, cmd_direct) = lab.dnsperf("direct", &data, perf_secs)?;
    let (qps_proxy, lost_proxy, cmd_proxy) = lab.dnsperf("client", &data, perf_secs)?;

    let (ns, path) = lab.ns("client")?;
    let server: SocketAddr = lab.dns.addr(false);
    let failures = dnslab::in_netns(&ns, &path, || {
        (0..first_conns)
            .filter(|i| {
                let name = format!("n{i}.bench.example");
                !matches!(
                    dnslab::resolve_and_connect(server, &name, 443, 3, Duration::from_secs(1), Duration::from_secs(1)),
                    Attempt::Connected(ip) if ip == first_addr(*i)
                )
            })
            .count()
    })
    .map_err(anyhow::Error::msg)?;
    let _ = &lab.host;

    let mut lat = Table::new(
        "Resolution latency (sequential queries, stub resolver in the pod, same dnsmasq)",
        &["path", "queries", "p50", "p99"],
    );
    lat.command(format!("{} rounds × {per_round} queries per path, alternating", ctx.rounds()));
    lat.row(vec!["direct (no proxy)".into(), direct.len().to_string(), us(d50), us(d99)]);
    lat.row(vec!["through the proxy".into(), proxied.len().to_string(), us(x50), us(x99)]);
    lat.row(vec!["added by the proxy".into(), String::new(), us(x50 - d50), us(x99 - d99)]);
    let mut perf =
        Table::new("Queries per second (dnsperf, one name, 8 clients, 64 in flight)", &["path", "qps", "lost"]);
    perf.command(cmd_direct).command(cmd_proxy);
    perf.row(vec!["direct (no proxy)".into(), format!("{qps_direct:.0}"), lost_direct.to_string()]);
    perf.row(vec!["through the proxy".into(), format!("{qps_proxy:.0}"), lost_proxy.to_string()]);
    let mut first = Table::new("First connection right after the answer", &["names", "connections failed"]);
    first.row(vec![first_conns.to_string(), failures.to_string()]);

    let added50 = x50 - d50;
    let added99 = x99 - d99;
    let targets = vec![
        Target {
            name: "DNS proxy added latency p50".into(),
            goal: "< 100 µs".into(),
            measured: us(added50),
            met: Some(added50 < 100e-6),
            comment: "Cilium's proxy: p50 2.9 ms".into(),
        },
        Target {
            name: "DNS proxy added latency p99".into(),
            goal: "< 1 ms".into(),
            measured: us(added99),
            met: Some(added99 < 1e-3),
            comment: "Cilium's proxy: p99 15–117 ms".into(),
        },
        Target {
            name: "first-SYN losses after resolution".into(),
            goal: "0".into(),
            measured: format!("{failures} of {first_conns}"),
            met: Some(failures == 0),
            comment: String::new(),
        },
    ];
    let section = Section {
        title: "DNS proxy (FQDN egress)".into(),
        intro: "Two pods of one lab node ask the same dnsmasq: `client` through Ward's DNS proxy (a \
                WardNetworkPolicy with an fqdn peer selects it, so each answer's address is written into \
                WARD_FQDN before the answer is released), `direct` straight (no policy). The proxy runs in the \
                release agent; the machine is shared, so absolute figures move with its load, the difference \
                less so."
            .into(),
        tables: vec![lat, perf, first],
        ..Section::default()
    };
    Ok(PartResult { section, targets })
}
