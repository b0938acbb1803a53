//! The datapath part of the suite: traffic between two lab pods on one node under (a) no
//! program, (b) Ward with no policy selecting the pods, (c) Ward with a policy allowing N
//! ipBlock peers, (d) iptables with N peer rules and (e) nftables with the N peers in a set.
//!
//! Flow: [`topology::Lab::build`] makes the pods and loads every rule set once (timed);
//! each round then alternates all configurations ([`configs::Config::round`]), switching by
//! hooking a rule set in or out, checks in the first round that each configuration lets the
//! client through and stops an intruder, and measures TCP request/response rate and latency
//! (sockperf), TCP throughput and UDP packet rate (iperf3), the new-connection rate
//! ([`connrate`]) and, for Ward, the programs' run time per invocation ([`bpfstats`]).
//! [`results`] turns the samples into tables, plots and the targets.

pub mod bpfstats;
pub mod configs;
pub mod connrate;
pub mod results;
pub mod tools;
pub mod topology;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Ctx, PartResult};
use configs::{Config, PORT_CONN, PORT_IPERF, PORT_SOCKPERF};
use results::{Metric, Samples};
use topology::Lab;

/// What one run measures and for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    pub ns: Vec<usize>,
    pub rounds: usize,
    /// sockperf and iperf3 TCP run length, seconds (their `-t` takes whole seconds; sockperf
    /// adds two seconds of its own before every run).
    pub tool_secs: u32,
    /// iperf3 UDP run length, seconds.
    pub udp_secs: u32,
    pub conn_time: Duration,
    /// The shorter runs with BPF statistics on (Ward only): a UDP stream, then short connections.
    pub stats_udp_secs: u32,
    pub stats_conn_time: Duration,
}

/// A bound on connections per new-connection run, whatever the time says.
const MAX_CONNS: u64 = 1_000_000;
/// Extra time a tool gets beyond its run length before it is killed.
const TOOL_GRACE: Duration = Duration::from_secs(20);

impl Plan {
    pub fn new(quick: bool, rounds: usize) -> Plan {
        if quick {
            Plan {
                ns: vec![10, 1_000],
                rounds,
                tool_secs: 1,
                udp_secs: 1,
                conn_time: Duration::from_secs(1),
                stats_udp_secs: 1,
                stats_conn_time: Duration::from_millis(500),
            }
        } else {
            Plan {
                ns: vec![10, 1_000, 10_000, 100_000],
                rounds,
                tool_secs: 2,
                udp_secs: 1,
                conn_time: Duration::from_secs(1),
                stats_udp_secs: 1,
                stats_conn_time: Duration::from_millis(500),
            }
        }
    }
}

fn log(msg: &str) {
    eprintln!("ward-bench: datapath: {msg}");
}

pub fn run(ctx: &Ctx) -> anyhow::Result<PartResult> {
    let plan = Plan::new(ctx.quick, ctx.rounds());
    let started = Instant::now();
    let mut lab = Lab::build(&ctx.bins, &plan.ns, &log)?;
    log(&format!("lab ready in {:.1} s: {}", started.elapsed().as_secs_f64(), lab.describe()));
    let mut samples = Samples::default();
    let mut checks = Vec::new();
    let mut failures = Vec::new();
    let mut programs = BTreeMap::new();
    let agents = lab.agents();
    let cpu_before: Vec<Option<f64>> = agents.iter().map(|(_, pid)| cpu_secs(*pid)).collect();
    let measuring = Instant::now();
    for round in 0..plan.rounds {
        let t = Instant::now();
        for config in Config::round(&plan.ns) {
            let t = Instant::now();
            lab.switch(config).with_context(|| format!("switching to {config}"))?;
            if t.elapsed() > Duration::from_secs(1) {
                log(&format!("{config}: switching took {:.1} s", t.elapsed().as_secs_f64()));
            }
            if round == 0 {
                let t = Instant::now();
                let c = lab.check(config)?;
                if !c.holds(config) {
                    bail!("{config} does not enforce what it claims: client {:?}, intruder {:?}", c.client, c.intruder);
                }
                log(&format!("{config}: checked in {:.1} s", t.elapsed().as_secs_f64()));
                checks.push((config, c));
                if let Some(node) = lab.path(config)?.ward_node {
                    programs.insert(config, bpfstats::node_programs(&node.pin_dir())?);
                }
            }
            let t = Instant::now();
            measure(&lab, config, &plan, programs.get(&config), &mut samples, &mut failures);
            log(&format!("{config}: measured in {:.1} s", t.elapsed().as_secs_f64()));
        }
        log(&format!("round {}/{} took {:.0} s", round + 1, plan.rounds, t.elapsed().as_secs_f64()));
    }
    let wall = measuring.elapsed().as_secs_f64();
    let agent_cpu: Vec<(String, f64)> = agents
        .iter()
        .zip(&cpu_before)
        .filter_map(|((what, pid), before)| Some((what.clone(), (cpu_secs(*pid)? - (*before)?) / wall)))
        .collect();
    lab.switch(Config::Plain)?;
    let loads = lab.loads.clone();
    drop(lab);
    let mut part = results::part(ctx, &plan, &samples, &checks, &loads, &failures, started.elapsed());
    part.section.notes.push(results::agent_cpu_note(&agent_cpu));
    Ok(part)
}

/// CPU time (user + system) a process has used so far, seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

/// Runs `f`, once more after a short pause if it fails (an iperf3 server still finishing the
/// previous test refuses the next one).
fn retry<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match f() {
        Ok(v) => Ok(v),
        Err(_) => {
            std::thread::sleep(Duration::from_millis(300));
            f()
        }
    }
}

/// One configuration's measurements of one round, into `s`; a failed measurement is noted
/// in `failures` and leaves a gap rather than ending the part.
fn measure(
    lab: &Lab,
    config: Config,
    plan: &Plan,
    programs: Option<&BTreeMap<String, Vec<u32>>>,
    s: &mut Samples,
    failures: &mut Vec<String>,
) {
    let Ok(p) = lab.path(config) else {
        failures.push(format!("{config}: no path"));
        return;
    };
    let client = p.client.name();
    let secs = plan.tool_secs;
    let limit = Duration::from_secs(secs.into()) + TOOL_GRACE;
    let mut note = |what: &str, e: anyhow::Error| failures.push(format!("{config}: {what}: {e:#}"));

    match retry(|| {
        tools::parse_sockperf(&tools::run_in(client, &tools::sockperf_ping_pong(p.server, PORT_SOCKPERF, secs), limit)?)
    }) {
        Ok(r) => {
            s.push(config, Metric::RrRate, r.rate);
            s.push(config, Metric::RrP50, r.p50);
            s.push(config, Metric::RrP99, r.p99);
        }
        Err(e) => note("sockperf", e),
    }
    match retry(|| {
        tools::parse_iperf3_tcp(&tools::run_in(client, &tools::iperf3_tcp(p.server, PORT_IPERF, secs), limit)?)
    }) {
        Ok(bps) => s.push(config, Metric::TcpBps, bps),
        Err(e) => note("iperf3 TCP", e),
    }
    let udp = |secs: u32| {
        let limit = Duration::from_secs(secs.into()) + TOOL_GRACE;
        retry(|| {
            tools::parse_iperf3_udp(&tools::run_in(client, &tools::iperf3_udp(p.server, PORT_IPERF, secs), limit)?)
        })
    };
    match udp(plan.udp_secs) {
        Ok(pps) => s.push(config, Metric::UdpPps, pps),
        Err(e) => note("iperf3 UDP", e),
    }
    let conn_to = SocketAddr::new(IpAddr::V4(p.server), PORT_CONN);
    match connrate::measure(p.client, conn_to, plan.conn_time, MAX_CONNS) {
        Ok(r) => s.push(config, Metric::ConnRate, r.rate()),
        Err(e) => note("new connections", e),
    }

    // Ward's run time per invocation, in separate short runs: statistics cost two clock reads
    // per invocation, which the rates above must not pay.
    let Some(programs) = programs else { return };
    let stats = (|| -> anyhow::Result<()> {
        let _on = bpfstats::StatsOn::enable()?;
        let before = bpfstats::read(programs)?;
        udp(plan.stats_udp_secs)?;
        let mid = bpfstats::read(programs)?;
        connrate::measure(p.client, conn_to, plan.stats_conn_time, MAX_CONNS)?;
        let after = bpfstats::read(programs)?;
        for (run, (a, b)) in [("established", (&before, &mid)), ("new", (&mid, &after))] {
            for (prog, ns) in bpfstats::ns_per_run(a, b) {
                if let Some(ns) = ns {
                    s.push(config, Metric::ProgNs { flows: run, prog }, ns * 1e-9);
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = stats {
        note("BPF run-time statistics", e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_a_process_grows_with_work() {
        // Work until 0.1 s of CPU time shows, however loaded the machine is (a wall-clock
        // budget would make this a timed test); bounded so a clock that never moves fails.
        let me = std::process::id();
        let before = cpu_secs(me).expect("this process's CPU time");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut x = 0u64;
        loop {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(10) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let now = cpu_secs(me).expect("this process's CPU time");
            if now - before >= 0.1 {
                break;
            }
            assert!(Instant::now() < deadline, "busy for a minute, CPU time went from {before} to {now}");
        }
        assert_eq!(cpu_secs(u32::MAX), None, "no such process");
    }
}
