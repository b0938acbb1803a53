//! The flow pipeline under load: a lab node whose release agent exports every flow record
//! (`--flow-events drops --flow-export-file`) into the bench's [`Sink`], and denied SYNs run
//! through its own `from_pod` program at a paced rate ([`testrun`]). Each run of the program
//! is one drop, so it emits exactly one `FlowEvent` or counts one loss in `WARD_EVT_LOST`:
//! the number of runs is the number emitted. At each offered rate the bench counts what the
//! exporter delivered, what the kernel counted lost (read from the pinned map), and what the
//! agent reported lost in its `lost_events` lines, and checks emitted = delivered + lost
//! exactly.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aya::maps::{Map, MapData, PerCpuArray};
use ward_lab::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve};

use super::sink::{Counts, Sink};
use super::testrun::{self, Program};

const K8S_NS: &str = "bench";
/// The port the client's egress policy allows to the server; the SYNs go to another.
const ALLOWED_PORT: u16 = 80;
const DENIED_PORT: u16 = 5432;
/// The TC verdict of a drop.
const TC_ACT_SHOT: i32 = 2;
/// Pacing slot: each slot runs the program `rate × SLOT` times.
const SLOT: Duration = Duration::from_millis(1);
/// Repeat count per call at the unpaced point.
const MAX_REPEAT: u32 = 16_384;
/// How long the agent's flow task may take to notice kernel losses (it polls every second)
/// and the exporter to write them.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);
/// No record for this long after the pods are made: their start-up traffic is over.
const QUIET_FOR: Duration = Duration::from_secs(3);
const QUIET_LIMIT: Duration = Duration::from_secs(60);

/// One point of the curve.
#[derive(Clone, Debug, Default)]
pub struct Point {
    /// The rate asked for, events/s (`None`: as fast as the generator goes).
    pub target: Option<f64>,
    /// How long the generator ran, seconds.
    pub secs: f64,
    /// Program runs: events emitted by the kernel.
    pub emitted: u64,
    /// Flow records the exporter wrote.
    pub delivered: u64,
    /// `WARD_EVT_LOST` (all reasons, all CPUs) over the point.
    pub lost_kernel: u64,
    /// The agent's `lost_events` lines over the point, by source (`kernel`, `export`).
    pub reported_kernel: u64,
    pub reported_export: u64,
    /// Sampled lines that were not flow records.
    pub bad_lines: u64,
}

impl Point {
    pub fn offered_rate(&self) -> f64 {
        self.emitted as f64 / self.secs
    }

    pub fn delivered_rate(&self) -> f64 {
        self.delivered as f64 / self.secs
    }

    pub fn lost(&self) -> u64 {
        self.lost_kernel + self.reported_export
    }

    /// emitted − delivered − counted lost: must be 0.
    pub fn uncounted(&self) -> i128 {
        i128::from(self.emitted) - i128::from(self.delivered) - i128::from(self.lost())
    }

    /// The accounting holds exactly: nothing uncounted, the agent reported exactly the
    /// kernel's count, and every sampled line was a record.
    pub fn accounted(&self) -> bool {
        self.uncounted() == 0 && self.reported_kernel == self.lost_kernel && self.bad_lines == 0
    }
}

/// The node, its client's program and veth, and the sink.
pub struct Lab {
    // Field order is drop order: the agent goes before the FIFO it writes into.
    node: Node,
    sink: Sink,
    _dir: ward_lab::labdir::LabDir,
    program: Program,
    ifindex: u32,
    frame: Vec<u8>,
    pub agent_pid: Option<u32>,
}

fn ipv4(node: &Node, pod: &PodRef) -> anyhow::Result<Ipv4Addr> {
    match node.pod_ip(pod, Family::IPv4)? {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(a) => bail!("{pod} has {a} where IPv4 was asked"),
    }
}

/// The node-side ifindex of a pod's veth: its `eth0`'s link (peer) index.
fn host_ifindex(node: &Node, pod: &PodRef) -> anyhow::Result<u32> {
    let out = node.pod(pod)?.netns().ip(&["-j", "link", "show", "eth0"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link show eth0")?;
    v[0]["link_index"].as_u64().map(|i| i as u32).with_context(|| format!("no peer index on {pod}'s eth0: {out}"))
}

fn lost_total(pin_dir: &Path) -> anyhow::Result<u64> {
    let pin = pin_dir.join(ward_common::maps::MAP_EVENTS_LOST);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))
        .with_context(|| format!("{} as a per-CPU array", pin.display()))?;
    let mut sum = 0;
    for i in 0..map.len() {
        let per_cpu = map.get(&i, 0).with_context(|| format!("reading {} [{i}]", pin.display()))?;
        sum += per_cpu.iter().sum::<u64>();
    }
    Ok(sum)
}

impl Lab {
    pub fn build(bins: &ward_lab::bins::Binaries, log: &dyn Fn(&str)) -> anyhow::Result<Lab> {
        let dir = ward_lab::labdir::LabDir::create("events-sink")?;
        let fifo = dir.path().join("flows.jsonl");
        let sink = Sink::create(&fifo)?;
        log("starting the lab node (agent exporting every flow record into a FIFO)");
        let mut node = Node::start(NodeConfig {
            index: 1,
            bins: Some(bins.clone()),
            agent_log_filter: "warn".into(),
            agent_args: vec![
                "--flow-events".into(),
                "drops".into(),
                "--flow-export-file".into(),
                fifo.to_string_lossy().into_owned(),
                // Never rotate the FIFO.
                "--flow-export-max-bytes".into(),
                (1u64 << 62).to_string(),
            ],
            ..NodeConfig::default()
        })?;
        node.set_namespace(K8S_NS, &Labels::new())?;
        let pod = |name: &str, serves: Vec<Serve>| PodSpec {
            namespace: K8S_NS.into(),
            name: name.into(),
            labels: [("app".to_owned(), name.to_owned())].into(),
            serves,
        };
        node.create_pods(&[pod("client", vec![]), pod("server", vec![Serve::new(ALLOWED_PORT, Protocol::Tcp, None)])])?;
        let policy: serde_yaml::Value = serde_yaml::from_str(&format!(
            "{{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: client-to-server, namespace: {K8S_NS}}}, \
             spec: {{podSelector: {{matchLabels: {{app: client}}}}, policyTypes: [Egress], \
             egress: [{{to: [{{podSelector: {{matchLabels: {{app: server}}}}}}], ports: [{{port: {ALLOWED_PORT}, protocol: TCP}}]}}]}}}}"
        ))?;
        node.apply(&[policy])?;
        let (client, server) = (PodRef::new(K8S_NS, "client"), PodRef::new(K8S_NS, "server"));
        let ifindex = host_ifindex(&node, &client)?;
        let pin = node.pin_dir().join("links").join(format!("{ifindex}-from"));
        let program = Program::from_link_pin(&pin)?;
        let frame = testrun::tcp_syn(ipv4(&node, &client)?, ipv4(&node, &server)?, 40_000, DENIED_PORT);
        let agent_pid = node.agent_pid();
        let lab = Lab { node, sink, _dir: dir, program, ifindex, frame, agent_pid };
        lab.quiet(log)?;
        // One event end to end: the setup is what it claims (a drop, a record, attributed).
        let p = lab.point(Some(1000.0), Duration::from_millis(1))?;
        if p.emitted == 0 || !p.accounted() || p.delivered != p.emitted {
            bail!("the setup check did not deliver its events exactly: {p:?}");
        }
        log(&format!("lab ready: program {} on ifindex {ifindex}", lab.program.id));
        Ok(lab)
    }

    fn counts(&self) -> Counts {
        self.sink.counts()
    }

    /// Waits until the pods' own start-up traffic (IPv6 neighbour discovery and the like,
    /// dropped by the client's egress policy) has stopped producing records, so that every
    /// record counted later is one of the bench's.
    fn quiet(&self, log: &dyn Fn(&str)) -> anyhow::Result<()> {
        let deadline = Instant::now() + QUIET_LIMIT;
        let mut last = self.counts().flows;
        let mut since = Instant::now();
        while since.elapsed() < QUIET_FOR {
            if Instant::now() >= deadline {
                bail!("the node kept producing flow records for {QUIET_LIMIT:?} without the bench");
            }
            std::thread::sleep(Duration::from_millis(200));
            let now = self.counts().flows;
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        log(&format!("node quiet after {last} start-up records"));
        Ok(())
    }

    /// Runs `f` in a thread inside the node's namespace (test runs name the veth by its
    /// index there).
    fn in_node<T: Send>(&self, f: impl FnOnce(&Program, &[u8], u32) -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        let (program, frame, ifindex) = (&self.program, self.frame.as_slice(), self.ifindex);
        self.node.netns().run_in(move || f(program, frame, ifindex)).context("entering the node's namespace")?
    }

    /// Offers events at `rate` per second (unpaced if `None`) for `secs`, then waits until
    /// everything is delivered or counted lost, and returns the accounting.
    pub fn point(&self, rate: Option<f64>, secs: Duration) -> anyhow::Result<Point> {
        let pin_dir = self.node.pin_dir();
        let before = self.counts();
        let lost_before = lost_total(&pin_dir)?;
        let (emitted, took) = self.in_node(|program, frame, ifindex| {
            let fire = |n: u32| fire(program, frame, ifindex, n);
            let start = Instant::now();
            let mut emitted = 0u64;
            match rate {
                None => {
                    while start.elapsed() < secs {
                        fire(MAX_REPEAT)?;
                        emitted += u64::from(MAX_REPEAT);
                    }
                }
                Some(r) => {
                    let total = (r * secs.as_secs_f64()).round().max(1.0) as u64;
                    let per_slot = (r * SLOT.as_secs_f64()).max(1.0);
                    let mut due = 0f64;
                    let mut slot = 0u32;
                    while emitted < total {
                        // Catch up on slots the generator fell behind in (bounded: at most
                        // the total), never sleeping past the schedule.
                        let at = start + SLOT * slot;
                        if let Some(wait) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        due += per_slot;
                        let n = (due as u64).min(total - emitted).min(u64::from(u32::MAX)) as u32;
                        if n > 0 {
                            fire(n)?;
                            emitted += u64::from(n);
                            due -= f64::from(n);
                        }
                        slot += 1;
                    }
                }
            }
            Ok((emitted, start.elapsed()))
        })?;

        // Settle: everything emitted is either delivered or counted lost by the kernel, and
        // the agent has reported the kernel's losses (it notices them within a second and
        // writes them with the next record: nudge with one more event, counted as emitted).
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut emitted = emitted;
        let mut last_nudge = Instant::now();
        loop {
            let now = self.counts();
            let lost_kernel = lost_total(&pin_dir)? - lost_before;
            let p = point_from(rate, took, emitted, &before, &now, lost_kernel);
            if p.uncounted() == 0 && p.reported_kernel == p.lost_kernel {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                return Ok(p);
            }
            if p.uncounted() == 0 && last_nudge.elapsed() > Duration::from_millis(1200) {
                self.in_node(|program, frame, ifindex| fire(program, frame, ifindex, 1))?;
                emitted += 1;
                last_nudge = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs the program `repeat` times; it must drop.
fn fire(program: &Program, frame: &[u8], ifindex: u32, repeat: u32) -> anyhow::Result<()> {
    let v = program.run(frame, ifindex, repeat).context("BPF_PROG_TEST_RUN")?;
    if v != TC_ACT_SHOT {
        bail!("the program passed the denied SYN (verdict {v})");
    }
    Ok(())
}

fn point_from(
    rate: Option<f64>,
    took: Duration,
    emitted: u64,
    before: &Counts,
    now: &Counts,
    lost_kernel: u64,
) -> Point {
    let src = |c: &Counts, s: &str| c.lost.get(s).copied().unwrap_or(0);
    Point {
        target: rate,
        secs: took.as_secs_f64(),
        emitted,
        delivered: now.flows - before.flows,
        lost_kernel,
        reported_kernel: src(now, "kernel") - src(before, "kernel"),
        reported_export: src(now, "export") - src(before, "export"),
        bad_lines: now.bad - before.bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accounting_balances_only_when_every_event_is_delivered_or_counted() {
        let p = Point {
            target: Some(1e6),
            secs: 2.0,
            emitted: 2_000_000,
            delivered: 1_500_000,
            lost_kernel: 400_000,
            reported_kernel: 400_000,
            reported_export: 100_000,
            bad_lines: 0,
        };
        assert_eq!(p.uncounted(), 0);
        assert!(p.accounted());
        assert_eq!(p.offered_rate(), 1e6);
        assert_eq!(p.delivered_rate(), 750_000.0);
        let short = Point { delivered: 1_499_999, ..p.clone() };
        assert_eq!(short.uncounted(), 1);
        assert!(!short.accounted());
        let unreported = Point { reported_kernel: 399_999, ..p };
        assert!(!unreported.accounted(), "the agent must report exactly the kernel's count");
    }
}
