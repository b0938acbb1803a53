//! From samples to the report: one table per metric with the configurations as rows (median,
//! spread, ratio to the no-program baseline), Ward's run time per invocation, rule-set load
//! times, the equivalence checks, bar charts by N, and the datapath targets stated
//! as met or not met with the measured ratio. Pure: tested on made-up samples.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Plan;
use super::configs::{self, Config, PORT_CONN, PORT_IPERF, PORT_SOCKPERF};
use super::tools;
use super::topology::{Check, Load};
use crate::report::{Plot, Section, Table, Target};
use crate::stats::{self, Summary};
use crate::svg::{BarChart, Series};
use crate::{Ctx, PartResult};

/// What a sample measures.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// TCP round trips per second.
    RrRate,
    /// TCP latency as sockperf reports it (half the round trip), seconds.
    RrP50,
    RrP99,
    /// TCP throughput, bits per second.
    TcpBps,
    /// UDP packets per second received.
    UdpPps,
    /// New connections per second.
    ConnRate,
    /// Run time per invocation of one of Ward's programs, seconds, during established
    /// (`flows = "established"`) or new-connection (`"new"`) traffic.
    ProgNs {
        flows: &'static str,
        prog: String,
    },
}

/// Every sample of a run, by configuration and metric.
#[derive(Debug, Default)]
pub struct Samples {
    map: BTreeMap<(Config, Metric), Vec<f64>>,
}

impl Samples {
    pub fn push(&mut self, config: Config, metric: Metric, value: f64) {
        self.map.entry((config, metric)).or_default().push(value);
    }

    pub fn summary(&self, config: Config, metric: &Metric) -> Option<Summary> {
        self.map.get(&(config, metric.clone())).and_then(|v| Summary::of(v))
    }

    /// The programs that have run-time samples, by name.
    fn programs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .map
            .keys()
            .filter_map(|(_, m)| match m {
                Metric::ProgNs { prog, .. } => Some(prog.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// How a metric reads in the report.
struct Shown {
    metric: Metric,
    title: &'static str,
    unit: &'static str,
    fmt: fn(f64) -> String,
    /// Commands behind it (client side; the servers are listed in the intro).
    commands: Vec<String>,
}

fn per_sec(x: f64) -> String {
    format!("{}/s", stats::human(x))
}

fn bits(x: f64) -> String {
    format!("{}bit/s", stats::human(x))
}

fn shown(plan: &Plan) -> Vec<Shown> {
    let t = plan.tool_secs;
    let sockperf = tools::shown("client pod", &tools::sockperf_ping_pong("<server>", PORT_SOCKPERF, t));
    let conn = format!(
        "short connections for {:.1} s from a thread in <client pod> to <server>:{PORT_CONN} \
         (connect, 1-byte request, 1-byte reply, server closes first), one after another",
        plan.conn_time.as_secs_f64()
    );
    vec![
        Shown {
            metric: Metric::RrRate,
            title: "TCP request/response rate",
            unit: "round trips/s",
            fmt: per_sec,
            commands: vec![sockperf.clone()],
        },
        Shown {
            metric: Metric::RrP50,
            title: "TCP latency p50 (sockperf's figure: half the round trip)",
            unit: "latency",
            fmt: stats::secs,
            commands: vec![sockperf.clone()],
        },
        Shown {
            metric: Metric::RrP99,
            title: "TCP latency p99 (sockperf's figure: half the round trip)",
            unit: "latency",
            fmt: stats::secs,
            commands: vec![sockperf],
        },
        Shown {
            metric: Metric::TcpBps,
            title: "TCP throughput, one stream",
            unit: "bit/s (receiver)",
            fmt: bits,
            commands: vec![tools::shown("client pod", &tools::iperf3_tcp("<server>", PORT_IPERF, t))],
        },
        Shown {
            metric: Metric::UdpPps,
            title: "UDP packet rate, 64-byte payloads",
            unit: "packets/s received",
            fmt: per_sec,
            commands: vec![tools::shown("client pod", &tools::iperf3_udp("<server>", PORT_IPERF, plan.udp_secs))],
        },
        Shown {
            metric: Metric::ConnRate,
            title: "New-connection rate",
            unit: "connections/s",
            fmt: per_sec,
            commands: vec![conn],
        },
    ]
}

fn n_cell(c: Config) -> String {
    c.n().map(configs::count).unwrap_or_else(|| "-".into())
}

fn metric_table(s: &Samples, plan: &Plan, m: &Shown) -> Table {
    let mut t = Table::new(m.title, &["configuration", "N", m.unit, "ratio to no program"]);
    for c in &m.commands {
        t.command(c.clone());
    }
    let base = s.summary(Config::Plain, &m.metric);
    for config in Config::round(&plan.ns) {
        let v = s.summary(config, &m.metric);
        let ratio = match (v, base) {
            (Some(v), Some(b)) => v.ratio_to(&b).map(stats::ratio).unwrap_or_else(|| "-".into()),
            _ => "-".into(),
        };
        t.row(vec![
            config.kind().into(),
            n_cell(config),
            v.map(|v| v.display_with(m.fmt)).unwrap_or_else(|| "not measured".into()),
            ratio,
        ]);
    }
    t
}

fn chart(s: &Samples, plan: &Plan, m: &Shown, log_y: bool) -> BarChart {
    let mut c = BarChart::new(format!("{} by N", m.title), m.unit);
    c.log_y = log_y;
    c.categories = plan.ns.iter().map(|n| format!("N={}", configs::count(*n))).collect();
    let flat = |name: &str, config: Config| Series {
        name: name.into(),
        values: plan.ns.iter().map(|_| s.summary(config, &m.metric)).collect(),
    };
    let by_n = |name: &str, f: fn(usize) -> Config| Series {
        name: name.into(),
        values: plan.ns.iter().map(|n| s.summary(f(*n), &m.metric)).collect(),
    };
    c.series = vec![
        flat("no program", Config::Plain),
        flat("Ward, no policy", Config::WardOpen),
        by_n("Ward", Config::Ward),
        by_n("Ward, routed", Config::WardRouted),
        by_n("iptables", Config::Iptables),
        by_n("nftables", Config::Nft),
    ];
    c
}

fn prog_table(s: &Samples, plan: &Plan) -> Table {
    let progs = s.programs();
    let mut cols = vec!["configuration".to_owned(), "N".to_owned()];
    for flows in ["established", "new"] {
        for p in &progs {
            cols.push(format!("{p}, {flows} flows"));
        }
    }
    let col_refs: Vec<&str> = cols.iter().map(String::as_str).collect();
    let mut t = Table::new("Ward's programs: run time per invocation (BPF run-time statistics)", &col_refs);
    t.command(format!(
        "BPF_ENABLE_STATS (kernel.bpf_stats_enabled) on only around: {} (established flows: one UDP stream of \
         64-byte packets), then {:.1} s of short connections (new flows: every connection is a new flow, its \
         handshake and teardown packets included); run_time_ns / run_cnt deltas of the programs behind the \
         node's pinned TCX links",
        tools::shown("client pod", &tools::iperf3_udp("<server>", PORT_IPERF, plan.stats_udp_secs)),
        plan.stats_conn_time.as_secs_f64()
    ));
    for config in Config::round(&plan.ns).into_iter().filter(|c| c.on_ward_pods()) {
        let mut row = vec![config.kind().to_owned(), n_cell(config)];
        for flows in ["established", "new"] {
            for p in &progs {
                let v = s.summary(config, &Metric::ProgNs { flows, prog: p.clone() });
                row.push(v.map(|v| v.display_with(stats::secs)).unwrap_or_else(|| "-".into()));
            }
        }
        t.row(row);
    }
    t
}

fn load_table(loads: &[Load]) -> Table {
    let mut t = Table::new("Loading the rule sets (once per run)", &["configuration", "N", "load time"]);
    t.command("Ward: the policy manifest written into the agent's directory, until the agent reports it applied");
    t.command("iptables: ip netns exec <node> iptables-restore --noflush < peer chain (2 rules per peer)");
    t.command("nftables: ip netns exec <node> nft -f - < set of the peers");
    for l in loads {
        t.row(vec![l.config.kind().into(), n_cell(l.config), stats::secs(l.secs)]);
    }
    t
}

fn check_table(checks: &[(Config, Check)]) -> Table {
    let mut t = Table::new(
        "Equivalence: what each configuration allowed before it was measured",
        &["configuration", "N", "client", "intruder (a pod in no rule)"],
    );
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "connected".to_owned(),
        Err(e) => format!("blocked ({e})"),
    };
    for (c, k) in checks {
        t.row(vec![c.kind().into(), n_cell(*c), show(&k.client), show(&k.intruder)]);
    }
    t
}

/// The datapath targets: Ward against no program at N = 10k and 100k (same-node delivery by
/// the datapath), and against iptables and nftables at 10k.
pub fn targets(s: &Samples, plan: &Plan) -> Vec<Target> {
    let mut out = Vec::new();
    let mut target = |name: String, goal: f64, metric: Metric, ward: Config, base: Config, why_missed: &str| {
        let n = ward.n().unwrap_or(0);
        let goal_text = match base {
            Config::Plain => format!("≥ {goal}× no program"),
            other => format!("≥ {goal}× {} at N={}", other.kind(), configs::count(n)),
        };
        if !plan.ns.contains(&n) {
            out.push(Target {
                name,
                goal: goal_text,
                measured: "-".into(),
                met: None,
                comment: format!("quick run: N={} is not part of the reduced matrix", configs::count(n)),
            });
            return;
        }
        let r = match (s.summary(ward, &metric), s.summary(base, &metric)) {
            (Some(w), Some(b)) => w.ratio_to(&b),
            _ => None,
        };
        let Some(r) = r else {
            out.push(Target {
                name,
                goal: goal_text,
                measured: "not measured".into(),
                met: None,
                comment: "a run failed; see the notes".into(),
            });
            return;
        };
        let met = r >= goal;
        let comment = if met {
            String::new()
        } else {
            format!(
                "missed by {:.0}% of the goal ({} of {goal}×). {why_missed}",
                (1.0 - r / goal) * 100.0,
                stats::ratio(r)
            )
        };
        out.push(Target { name, goal: goal_text, measured: stats::ratio(r), met: Some(met), comment });
    };
    let cost = "Same-node delivery skips the node's routing and netfilter for every packet after the \
                decisions, but Ward's programs still run twice per packet (from_pod, then to_peer for the \
                receiver) with a FIB lookup; their run time per invocation is in the table below. Next steps: \
                direct packet access for the headers and a single conntrack lookup per packet.";
    for n in [10_000, 100_000] {
        let k = configs::count(n);
        let ward = Config::Ward(n);
        target(format!("Ward N={k}: TCP throughput"), 1.10, Metric::TcpBps, ward, Config::Plain, cost);
        target(format!("Ward N={k}: TCP request/response rate"), 1.05, Metric::RrRate, ward, Config::Plain, cost);
        target(format!("Ward N={k}: new-connection rate"), 1.0, Metric::ConnRate, ward, Config::Plain, cost);
    }
    const N: usize = 10_000;
    let ward = Config::Ward(N);
    let est = "iptables and nftables accept established packets by conntrack before any per-peer rule, so the \
               rule count costs them only the first packet of a flow; on a single long connection both run near \
               the no-program rate and no policy engine can be several times faster. The per-flow cost shows in \
               the new-connection rate.";
    target(
        "Ward N=10k vs iptables: TCP request/response rate".into(),
        3.0,
        Metric::RrRate,
        ward,
        Config::Iptables(N),
        est,
    );
    target("Ward N=10k vs iptables: new-connection rate".into(), 3.0, Metric::ConnRate, ward, Config::Iptables(N), est);
    target("Ward N=10k vs nftables: TCP request/response rate".into(), 1.5, Metric::RrRate, ward, Config::Nft(N), est);
    target(
        "Ward N=10k vs nftables: new-connection rate".into(),
        1.5,
        Metric::ConnRate,
        ward,
        Config::Nft(N),
        "nftables decides a new flow with one hash-set lookup plus conntrack setup; Ward's new-flow decision \
         (three LPM lookups and a conntrack insert) costs about as much.",
    );
    out
}

/// The datapath section and targets.
pub fn part(
    ctx: &Ctx,
    plan: &Plan,
    s: &Samples,
    checks: &[(Config, Check)],
    loads: &[Load],
    failures: &[String],
    took: Duration,
) -> PartResult {
    let shows = shown(plan);
    let mut section =
        Section { title: "Datapath: two pods on one node".into(), intro: intro(plan, took), ..Section::default() };
    section.tables.push(check_table(checks));
    for m in &shows {
        section.tables.push(metric_table(s, plan, m));
    }
    section.tables.push(prog_table(s, plan));
    section.tables.push(load_table(loads));
    let plot = |m: &Shown, file: &str, log_y: bool| Plot { file: file.into(), chart: chart(s, plan, m, log_y) };
    section.plots.push(plot(&shows[0], "datapath-tcp-rr.svg", false));
    section.plots.push(plot(&shows[2], "datapath-tcp-rr-p99.svg", false));
    section.plots.push(plot(&shows[3], "datapath-tcp-throughput.svg", false));
    section.plots.push(plot(&shows[4], "datapath-udp-pps.svg", false));
    section.plots.push(plot(&shows[5], "datapath-new-connections.svg", true));
    if ctx.quick {
        section
            .notes
            .push("Quick run: N ∈ {10, 1k} and 1-second runs; figures check the harness, not the datapath.".into());
    }
    for f in failures {
        section.notes.push(format!("Failed measurement (left out of the medians): {f}"));
    }
    PartResult { section, targets: targets(s, plan) }
}

/// How busy Ward's agents were while the rounds ran: they share the machine's cores with the
/// traffic, so a busy agent slows every configuration.
pub fn agent_cpu_note(cpu: &[(String, f64)]) -> String {
    let parts: Vec<String> = cpu.iter().map(|(what, share)| format!("{what}: {:.0}%", share * 100.0)).collect();
    format!(
        "CPU used by Ward's agents while the rounds ran, as a share of one core (the agents share this \
         machine's cores with the traffic, so a busy agent slows every configuration alike): {}.",
        parts.join(", ")
    )
}

fn intro(plan: &Plan, took: Duration) -> String {
    format!(
        "Traffic between a client and a server pod on one lab node, {rounds} rounds; each round alternates every \
         configuration, so each figure is the median of {rounds} runs with the min–max spread, and each ratio \
         compares runs taken side by side. Configurations: **no program**: veth pods wired by hand exactly as \
         ward-cni wires them (pod /32, link-local gateway with a permanent neighbour, node-side /32 route and \
         neighbour, MTU 1500), no program, no netfilter rule; **Ward, no policy**: Ward's pods, programs attached, no \
         policy selecting them; **Ward N**: a NetworkPolicy selecting the server allows N ipBlock /32 peers (the \
         client's address last) on TCP {PORT_IPERF}, {PORT_CONN}, {PORT_SOCKPERF} and UDP {PORT_IPERF}, each N on a \
         node of its own so the maps hold exactly that policy; **iptables N**: on the plain pods, FORWARD jumps \
         for the server's address to a per-pod chain (conntrack ESTABLISHED,RELATED accept, then a chain of one \
         TCP and one UDP rule per peer, client last, then DROP), iptables-nft as Debian ships it; **nftables N**: \
         the peers in a hash set, `ct state established,related accept; ip saddr @peers tcp dport {{...}} accept; \
         ... drop`. Rule sets are loaded once and hooked in only for their configuration: the others run with no \
         netfilter base chain in the node (so no conntrack either). Before the first measurement of each \
         configuration a client connection must succeed and one from an intruder pod (in no rule) must fail. \
         N ∈ {{{ns}}}; sockperf and iperf3 TCP run {t} s each (sockperf leaves its first 0.4 s out), iperf3 UDP \
         {udp} s, new connections {conn:.1} s; servers: `sockperf server --tcp -i <server> -p {PORT_SOCKPERF}`, `iperf3 -s -B <server> -p \
         {PORT_IPERF}`, a Rust accept loop on {PORT_CONN}. The part took {took:.0} s.",
        rounds = plan.rounds,
        ns = plan.ns.iter().map(|n| configs::count(*n)).collect::<Vec<_>>().join(", "),
        t = plan.tool_secs,
        udp = plan.udp_secs,
        conn = plan.conn_time.as_secs_f64(),
        took = took.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(ns: &[usize]) -> Samples {
        let mut s = Samples::default();
        for c in Config::round(ns) {
            let f = match c {
                Config::Plain => 1.0,
                Config::WardOpen => 0.98,
                Config::Ward(_) => 0.96,
                Config::WardRouted(_) => 0.9,
                Config::Iptables(n) => 1.0 / (1.0 + n as f64 / 1000.0),
                Config::Nft(_) => 0.9,
            };
            for r in [0.99, 1.0, 1.01] {
                s.push(c, Metric::RrRate, 50_000.0 * f * r);
                s.push(c, Metric::ConnRate, 10_000.0 * f * r);
                s.push(c, Metric::TcpBps, 20e9 * f * r);
            }
        }
        s
    }

    #[test]
    fn tables_have_a_row_per_configuration_with_ratios_to_no_program() {
        let plan = Plan::new(true, 3);
        let s = samples(&plan.ns);
        let t = metric_table(&s, &plan, &shown(&plan)[0]);
        assert_eq!(t.rows.len(), 10);
        assert_eq!(t.rows[0], vec!["no program", "-", "50.0k/s (49.5k/s–50.5k/s, n=3)", "1.00×"]);
        assert_eq!(t.rows[3][..2], ["Ward".to_owned(), "1k".to_owned()]);
        assert_eq!(t.rows[3][3], "0.96×");
        assert_eq!(t.rows[5][..2], ["Ward, routed".to_owned(), "1k".to_owned()]);
        assert_eq!(t.rows[5][3], "0.90×");
        assert_eq!(t.rows[7][3], "0.50×", "iptables at N=1k");
        assert!(
            t.commands[0].contains("sockperf ping-pong --tcp --dontwarmup -i <server> -p 11111 -t 1"),
            "{:?}",
            t.commands
        );
        // p50 has no samples here: shown as such, never as zero.
        assert_eq!(metric_table(&s, &plan, &shown(&plan)[1]).rows[0][2], "not measured");
    }

    #[test]
    fn targets_state_met_and_missed_with_the_ratio() {
        let plan = Plan::new(false, 3);
        let t = targets(&samples(&plan.ns), &plan);
        let get = |name: &str| t.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no target {name}"));
        let rr = get("Ward N=10k: TCP request/response rate");
        assert_eq!((rr.met, rr.measured.as_str()), (Some(false), "0.96×"));
        assert!(rr.comment.starts_with("missed by 9% of the goal (0.96× of 1.05×)"), "{}", rr.comment);
        let conn = get("Ward N=100k: new-connection rate");
        assert_eq!((conn.met, conn.goal.as_str()), (Some(false), "≥ 1× no program"));
        let ipt = get("Ward N=10k vs iptables: new-connection rate");
        assert_eq!((ipt.met, ipt.measured.as_str()), (Some(true), "10.56×"));
        let nft = get("Ward N=10k vs nftables: new-connection rate");
        assert_eq!(nft.met, Some(false));
        assert!(nft.comment.starts_with("missed by 29% of the goal (1.07× of 1.5×)"), "{}", nft.comment);
        assert_eq!(t.len(), 10);
    }

    #[test]
    fn quick_runs_leave_the_targets_unmeasured() {
        let plan = Plan::new(true, 2);
        let t = targets(&samples(&plan.ns), &plan);
        assert!(t.iter().all(|t| t.met.is_none() && t.comment.contains("quick")), "{t:?}");
    }

    #[test]
    fn agent_cpu_is_stated_per_node() {
        let n = agent_cpu_note(&[("main node (no policy)".into(), 0.012), ("N=100k".into(), 0.4)]);
        assert!(n.ends_with("main node (no policy): 1%, N=100k: 40%."), "{n}");
    }

    #[test]
    fn charts_show_every_configuration_by_n() {
        let plan = Plan::new(false, 3);
        let s = samples(&plan.ns);
        let c = chart(&s, &plan, &shown(&plan)[5], true);
        assert_eq!(c.categories, ["N=10", "N=1k", "N=10k", "N=100k"]);
        let names: Vec<&str> = c.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["no program", "Ward, no policy", "Ward", "Ward, routed", "iptables", "nftables"]);
        assert!(c.series.iter().all(|s| s.values.iter().all(Option::is_some)));
        assert!(c.log_y);
    }
}
