//! Control-plane costs seen from outside the agent, in a lab node with a real agent:
//! - policy change to enforcement: a manifest rewritten in standalone mode, and a probe from a
//!   real pod that sees the new verdict, with 10k synthetic pods in the cluster;
//! - CNI ADD and DEL latency of the real `ward-cni`, run as a runtime runs it;
//! - the agent's resident memory, idle, at 1k and 10k local endpoints.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use ward_lab::spec::{Labels, PodSpec, Protocol, Serve};
use ward_lab::{NetNs, Node, NodeConfig};

use crate::report::{Section, Table, Target};
use crate::stats::{bytes, percentile, secs};
use crate::{Ctx, PartResult, synth};

pub fn run(ctx: &Ctx) -> anyhow::Result<PartResult> {
    let mut section = Section {
        title: "Control plane in a lab node".into(),
        intro: "A lab node (network namespace) runs the release `ward-agent` in standalone mode on a \
                directory of manifests; pods are network namespaces wired by the release `ward-cni`. \
                Each measurement starts its own node."
            .into(),
        ..Section::default()
    };
    let mut targets = Vec::new();
    enforcement(ctx, &mut section, &mut targets).context("policy change to enforcement")?;
    cni(ctx, &mut section, &mut targets).context("CNI ADD/DEL latency")?;
    memory(ctx, &mut section).context("agent memory")?;
    Ok(PartResult { section, targets })
}

fn start_node(ctx: &Ctx) -> anyhow::Result<Node> {
    let config = NodeConfig {
        bins: Some(ctx.bins.clone()),
        sync_timeout: Duration::from_secs(300),
        // The agent's own logging is not what is measured.
        agent_log_filter: "warn".into(),
        ..NodeConfig::default()
    };
    Node::start(config).context("starting a lab node")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

// ---- policy change to enforcement ----

/// Port the toggled policy is about.
const TOGGLE_PORT: u16 = 8080;
/// A probe's connect waits this long before it counts as denied: the resolution of the
/// deny-to-allow measurement.
const PROBE_TIMEOUT: Duration = Duration::from_millis(3);
/// Pause between probes (keeps the probe from starving the agent on a 2-core machine).
const PROBE_PAUSE: Duration = Duration::from_micros(250);
/// Longest a change may take to show before it counts as never enforced.
const CHANGE_DEADLINE: Duration = Duration::from_secs(5);

/// The policy selecting the server: allowing the client, or allowing nobody. Both keep the
/// server isolated, so each write is a policy *change*, never an add or a delete.
fn toggle_policy(allow: bool) -> String {
    let from = if allow { "client" } else { "nobody" };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: toggle\n  namespace: bench\n\
         spec:\n  podSelector:\n    matchLabels:\n      app: server\n  policyTypes: [Ingress]\n  ingress:\n\
         \x20 - from:\n    - podSelector:\n        matchLabels:\n          app: {from}\n    ports:\n\
         \x20   - protocol: TCP\n      port: {TOGGLE_PORT}\n"
    )
}

/// One TCP connect from the calling thread's namespace; closed with a reset (SO_LINGER 0) so
/// thousands of probes leave no TIME_WAIT behind to exhaust the ephemeral ports.
fn connects(to: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&to, PROBE_TIMEOUT) {
        Ok(s) => {
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: a valid socket fd and a correctly sized linger struct.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            true
        }
        Err(_) => false,
    }
}

/// Probes until the verdict is `want`; returns when the first probe that showed it started
/// (the change was in force by then), or `None` after [`CHANGE_DEADLINE`].
fn wait_for_verdict(to: SocketAddr, want: bool, since: Instant) -> Option<Instant> {
    loop {
        let started = Instant::now();
        if connects(to) == want {
            return Some(started);
        }
        if since.elapsed() > CHANGE_DEADLINE {
            return None;
        }
        std::thread::sleep(PROBE_PAUSE);
    }
}

fn enforcement(ctx: &Ctx, section: &mut Section, targets: &mut Vec<Target>) -> anyhow::Result<()> {
    let (pods, policies, changes) = if ctx.quick { (2_000, 200, 40) } else { (10_000, 1_000, 200) };
    let mut node = start_node(ctx)?;
    let synthetic = synth::generate(pods, policies, 1);
    let load = Instant::now();
    for (file, yaml) in synthetic.manifest_files(node.name()) {
        node.write_manifest(&file, &yaml)?;
    }
    node.sync()?;
    let load_secs = load.elapsed().as_secs_f64();
    node.set_namespace("bench", &Labels::new())?;
    let serve = vec![Serve::new(TOGGLE_PORT, Protocol::Tcp, None)];
    let server = PodSpec {
        namespace: "bench".into(),
        name: "server".into(),
        labels: labels(&[("app", "server")]),
        serves: serve,
    };
    let client = PodSpec {
        namespace: "bench".into(),
        name: "client".into(),
        labels: labels(&[("app", "client")]),
        serves: vec![],
    };
    node.create_pods(&[server.clone(), client.clone()])?;
    let to = SocketAddr::new(node.pod_ip(&server.pod_ref(), ward_lab::Family::IPv4)?, TOGGLE_PORT);
    node.write_manifest("bench-toggle.yaml", &toggle_policy(false))?;
    node.sync()?;
    let client_ns_path = node.pod(&client.pod_ref())?.netns().path().to_owned();
    let client_ns_name = node.pod(&client.pod_ref())?.netns().name().to_owned();

    // The whole loop runs on one thread inside the client pod: its probes are the pod's own
    // connections; writing manifests is file I/O, the same from any namespace.
    let samples = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<Vec<(bool, Option<f64>)>> {
            ward_lab::netns::enter(&client_ns_name, &client_ns_path)?;
            if connects(to) {
                bail!("the client reaches the server before any allow: the deny baseline does not hold");
            }
            let mut out = Vec::with_capacity(changes);
            for i in 0..changes {
                let allow = i % 2 == 0;
                let t0 = Instant::now();
                node.write_manifest("bench-toggle.yaml", &toggle_policy(allow))?;
                let seen = wait_for_verdict(to, allow, t0).map(|t| t.duration_since(t0).as_secs_f64());
                out.push((allow, seen));
                // Steady state before the next change: the agent has finished this one.
                node.sync()?;
            }
            Ok(out)
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the probe thread panicked")))
    })?;
    drop(node);

    let missed = samples.iter().filter(|(_, s)| s.is_none()).count();
    let all: Vec<f64> = samples.iter().filter_map(|(_, s)| *s).collect();
    let of = |allow: bool| samples.iter().filter(|(a, _)| *a == allow).filter_map(|(_, s)| *s).collect::<Vec<_>>();
    let mut t = Table::new(
        format!("Policy change to enforcement ({pods} pods, {policies} policies in the cluster, {changes} changes)"),
        &["transition", "changes", "p50", "p90", "p99", "max"],
    );
    t.command(ctx.command_line.clone());
    for (name, v) in [("deny → allow", of(true)), ("allow → deny", of(false)), ("all", all.clone())] {
        let p = |q| percentile(&v, q).map(secs).unwrap_or_else(|| "–".into());
        t.row(vec![name.into(), v.len().to_string(), p(50.0), p(90.0), p(99.0), p(100.0)]);
    }
    section.tables.push(t);
    section.notes.push(format!(
        "Policy change to enforcement: the lab rewrites one NetworkPolicy file (atomically, by rename) \
         that selects a real server pod, alternating between allowing the real client pod and allowing \
         nobody, with {pods} synthetic pods and {policies} synthetic policies (`synth`, seed 1) in the \
         cluster. The clock starts before the write and stops when the first TCP connect from the client \
         pod that shows the new verdict started; a probe runs every {} µs, and a denied connect counts \
         after {} ms, so deny → allow is measured to within about {} ms and allow → deny to within a \
         probe. The agent's whole path is inside: inotify, parsing the file, recompiling the cluster, \
         diffing and writing the maps. Loading the synthetic cluster took {} at start. {missed} of \
         {changes} changes were not seen within {} s.",
        PROBE_PAUSE.as_micros(),
        PROBE_TIMEOUT.as_millis(),
        PROBE_TIMEOUT.as_millis(),
        secs(load_secs),
        CHANGE_DEADLINE.as_secs()
    ));
    let p99 = percentile(&all, 99.0);
    targets.push(Target {
        name: format!("policy change to enforcement p99 at {pods} pods"),
        goal: "< 50 ms at 10k pods".into(),
        measured: p99.map(secs).unwrap_or_else(|| "none seen".into()),
        met: if ctx.quick { None } else { p99.map(|p| p < 0.050 && missed == 0) },
        comment: if ctx.quick {
            "quick run: fewer pods than the target's 10k".into()
        } else {
            match p99 {
                Some(p) if p >= 0.050 => format!("{:.1}× over the target", p / 0.050),
                _ if missed > 0 => format!("{missed} changes not seen within the deadline"),
                _ => String::new(),
            }
        },
    });
    Ok(())
}

// ---- CNI ADD / DEL ----

fn cni(ctx: &Ctx, section: &mut Section, targets: &mut Vec<Target>) -> anyhow::Result<()> {
    let count = if ctx.quick { 50 } else { 200 };
    let mut node = start_node(ctx)?;
    node.set_namespace("cnibench", &Labels::new())?;
    let mut file = String::new();
    for i in 0..count {
        let spec = PodSpec {
            namespace: "cnibench".into(),
            name: format!("pod-{i}"),
            labels: labels(&[("app", &format!("app-{}", i % 10))]),
            serves: vec![],
        };
        file.push_str("---\n");
        file.push_str(&ward_lab::manifest::pod_yaml(&spec, node.name()));
    }
    node.write_manifest("cnibench-pods.yaml", &file)?;
    node.sync()?;
    let netnses: Vec<NetNs> = (0..count).map(|i| NetNs::create_unique(&format!("cni{i}"))).collect::<Result<_, _>>()?;
    let netconf =
        ward_lab::cni::netconf(&node.socket(), &node.config().pod_cidrs(), &node.dir().join("ipam"), node.config().mtu)
            .to_string();
    let plugin = ctx.bins.cni.clone();
    // Pods alternate between the kernel's default RCU grace periods and expedited ones
    // (`/sys/kernel/rcu_expedited`), so both rows come from the same run: each TCX attach
    // waits for a grace period (synchronize_rcu in the kernel's tcx attach), and this shows
    // how much of ADD that is.
    let expedited_of = |i: usize| i % 2 == 1;
    // A runtime runs the plugin in the host's (here: the node's) namespace: the children of a
    // thread inside the node namespace start there, with no `ip netns exec` in the timing.
    let (adds, dels) = node.netns().run_in(|| -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let invoke = |command: &str, i: usize, ns: &NetNs| -> anyhow::Result<f64> {
            let _rcu = RcuExpedited::set(expedited_of(i))?;
            let mut cmd = Command::new(&plugin);
            cmd.env_clear()
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", format!("cnibench-{}-{i}", std::process::id()))
                .env("CNI_NETNS", ns.path())
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", plugin.parent().unwrap_or(std::path::Path::new("/")))
                .env("CNI_ARGS", format!("K8S_POD_NAMESPACE=cnibench;K8S_POD_NAME=pod-{i}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let started = Instant::now();
            let mut child = cmd.spawn().with_context(|| format!("starting {}", plugin.display()))?;
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(netconf.as_bytes());
            }
            let out = child.wait_with_output()?;
            let took = started.elapsed().as_secs_f64();
            if !out.status.success() {
                bail!(
                    "CNI {command} of pod-{i} failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(took)
        };
        let adds = netnses.iter().enumerate().map(|(i, ns)| invoke("ADD", i, ns)).collect::<Result<Vec<_>, _>>()?;
        let dels = netnses.iter().enumerate().map(|(i, ns)| invoke("DEL", i, ns)).collect::<Result<Vec<_>, _>>()?;
        Ok((adds, dels))
    })??;
    drop(netnses);
    drop(node);

    let mut t = Table::new(
        format!("CNI ADD and DEL latency ({count} pods, one after another)"),
        &["command", "kernel RCU grace periods", "pods", "p50", "p99", "max", "pods/s"],
    );
    t.command(ctx.command_line.clone()).command(format!(
        "CNI_COMMAND=ADD|DEL CNI_NETNS=/run/netns/<pod> ... ward-cni < network-config.json   # × {count}, in the node's namespace"
    ));
    let of = |v: &[f64], expedited: bool| {
        v.iter().enumerate().filter(|(i, _)| expedited_of(*i) == expedited).map(|(_, t)| *t).collect::<Vec<_>>()
    };
    for (name, v) in [("ADD", &adds), ("DEL", &dels)] {
        for expedited in [false, true] {
            let v = of(v, expedited);
            let p = |q| percentile(&v, q).map(secs).unwrap_or_else(|| "–".into());
            let mode = if expedited { "expedited (rcu_expedited=1)" } else { "default" };
            let rate = v.len() as f64 / v.iter().sum::<f64>();
            t.row(vec![
                name.into(),
                mode.into(),
                v.len().to_string(),
                p(50.0),
                p(99.0),
                p(100.0),
                format!("{rate:.0}"),
            ]);
        }
    }
    section.tables.push(t);
    section.notes.push(
        "CNI latency is the whole plugin process as a runtime sees it: exec, reading the network \
         configuration, IPAM, the veth pair and its addresses and routes, the agent registering the \
         endpoint (maps written, both programs attached, a recompile of the node's policy) and the \
         result on stdout. Pods/s is sequential: pods divided by the sum of their ADD (or DEL) times. \
         Odd pods ran with `/sys/kernel/rcu_expedited=1` (restored after): creating each of the two TCX \
         links waits for an RCU grace period in the kernel (synchronize_rcu in the tcx attach path, \
         about 12 ms each on this VM by `strace -T` of BPF_LINK_CREATE), and DEL waits for more while \
         the kernel unregisters the veth. Expedited grace periods are a node-wide setting (more \
         inter-processor interrupts), so Ward does not set it; this row shows what the kernel's \
         waiting costs."
            .into(),
    );
    let adds_default = of(&adds, false);
    let adds_expedited = of(&adds, true);
    let p50 = percentile(&adds_default, 50.0);
    let p50_expedited = percentile(&adds_expedited, 50.0).map(secs).unwrap_or_default();
    targets.push(Target {
        name: "CNI ADD p50".into(),
        goal: "< 20 ms".into(),
        measured: p50.map(secs).unwrap_or_default(),
        met: p50.map(|p| p < 0.020),
        comment: match p50 {
            Some(p) if p >= 0.020 => format!(
                "{:.1}× over the target: the kernel waits for an RCU grace period on each of the two TCX \
                 attaches; with expedited grace periods ADD p50 is {p50_expedited}",
                p / 0.020
            ),
            _ => format!("with expedited RCU grace periods: {p50_expedited}"),
        },
    });
    Ok(())
}

/// Sets `/sys/kernel/rcu_expedited` and puts the previous value back on drop (also when a
/// measurement fails), so the bench never leaves the machine changed.
struct RcuExpedited {
    previous: String,
}

const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

impl RcuExpedited {
    fn set(on: bool) -> anyhow::Result<RcuExpedited> {
        let previous = std::fs::read_to_string(RCU_EXPEDITED).with_context(|| format!("reading {RCU_EXPEDITED}"))?;
        std::fs::write(RCU_EXPEDITED, if on { "1" } else { "0" })
            .with_context(|| format!("writing {RCU_EXPEDITED}"))?;
        Ok(RcuExpedited { previous: previous.trim().to_owned() })
    }
}

impl Drop for RcuExpedited {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(RCU_EXPEDITED, &self.previous) {
            eprintln!("ward-bench: restoring {RCU_EXPEDITED}: {e}");
        }
    }
}

// ---- agent memory ----

/// Resident and peak resident memory of a process, in bytes (from /proc/PID/status).
fn rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the agent's status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|kb| kb * 1024.0)
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(r), Some(h)) => Ok((r, h)),
        _ => bail!("no VmRSS/VmHWM in /proc/{pid}/status"),
    }
}

/// Applications local endpoints are spread over, and policies (one per application, allowing
/// the next one), so the agent holds a realistic policy state, not just a list.
const MEM_APPS: usize = 50;

/// The address of local endpoint `i` on node `index` (inside the node's 10.<index>.0.0/16).
fn endpoint_ip(index: u8, i: usize) -> IpAddr {
    // .0.x is left to the CNI's own IPAM; endpoints start at 10.<index>.1.0.
    let n = i + 256;
    IpAddr::V4(Ipv4Addr::new(10, index, (n / 256) as u8, (n % 256) as u8))
}

fn memory(ctx: &Ctx, section: &mut Section) -> anyhow::Result<()> {
    let steps: &[usize] = if ctx.quick { &[500, 1_000] } else { &[1_000, 10_000] };
    let total = *steps.last().unwrap_or(&0);
    let mut node = start_node(ctx)?;
    let pid = node.agent_pid().context("the agent's pid")?;
    node.set_namespace("mem", &Labels::new())?;
    // Policies first, then the Pod objects of every endpoint (the agent looks a pod up when
    // it registers), then the endpoints in steps.
    let mut policies = String::new();
    for a in 0..MEM_APPS {
        policies.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: app-{a}\n  namespace: mem\n\
             spec:\n  podSelector:\n    matchLabels:\n      app: app-{a}\n  ingress:\n  - from:\n    - podSelector:\n\
             \x20       matchLabels:\n          app: app-{}\n    ports:\n    - port: 8080\n",
            (a + 1) % MEM_APPS
        ));
    }
    node.write_manifest("mem-policies.yaml", &policies)?;
    let mut pods = String::new();
    for i in 0..total {
        let spec = PodSpec {
            namespace: "mem".into(),
            name: format!("ep-{i}"),
            labels: labels(&[("app", &format!("app-{}", i % MEM_APPS))]),
            serves: vec![],
        };
        pods.push_str("---\n");
        pods.push_str(&ward_lab::manifest::pod_yaml(&spec, node.name()));
    }
    node.write_manifest("mem-pods.yaml", &pods)?;
    node.sync()?;
    std::thread::sleep(Duration::from_secs(2));
    let mut rows = vec![(0usize, rss(pid)?, "", 0.0)];

    // The endpoints' pod sides all live in one holder namespace: the agent only sees host
    // sides, so this is what 10k pods look like to it without 10k namespaces.
    let holder = NetNs::create_unique("memholder")?;
    // Registration time is not what this measures (CNI latency is): expedited RCU grace
    // periods make the 2 TCX attaches per endpoint quick, so 10k endpoints take minutes less.
    let _rcu = RcuExpedited::set(true)?;
    let index = node.config().index;
    let registration = |i: usize, ifindex: &BTreeMap<String, u32>| -> anyhow::Result<serde_json::Value> {
        let host = format!("wm{i}");
        let index_of = *ifindex.get(&host).with_context(|| format!("no ifindex for {host}"))?;
        Ok(json!({
            "container_id": format!("mem-{i}"),
            "ifname": "eth0",
            "netns": holder.path(),
            "pod_namespace": "mem",
            "pod_name": format!("ep-{i}"),
            "host_ifname": host,
            "host_ifindex": index_of,
            "ips": [endpoint_ip(index, i)],
        }))
    };
    let mut registered = 0;
    let mut pid = pid;
    for (k, &step) in steps.iter().enumerate() {
        let batch: Vec<usize> = (registered..step).collect();
        let mut script = String::new();
        for &i in &batch {
            script.push_str(&format!("link add wm{i} type veth peer name wp{i} netns {}\n", holder.name()));
        }
        ip_batch(node.netns().name(), &script)?;
        let ifindex = ifindexes(node.netns().name())?;
        let started = Instant::now();
        let how = if k == 0 {
            // The first step goes through the API one endpoint at a time, as CNI ADDs do.
            for &i in &batch {
                let mut request = registration(i, &ifindex)?;
                request["op"] = json!("register");
                let answer = ward_lab::agent::call(&node.socket(), &request, Duration::from_secs(60))?;
                if answer.get("result").and_then(|r| r.as_str()) != Some("registered") {
                    bail!("registering endpoint {i}: {answer}");
                }
            }
            "registered one by one through the API"
        } else {
            // Further steps: one CNI ADD re-compiles the node's policy for all its endpoints,
            // so thousands one after another take many minutes. The agent's restart path is
            // the bulk one: stop it, add the endpoints to its registry in one write, start it
            // and let it adopt them all (maps, then both programs on each interface).
            node.stop_agent()?;
            let regs = batch
                .iter()
                .map(|i| Ok(serde_json::from_value(registration(*i, &ifindex)?)?))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut reg = ward_agent::daemon::registry::Registry::load(&node.state_dir())?;
            reg.add_many(&regs)?;
            node.start_agent()?;
            node.sync()?;
            wait_for_endpoints(&node.socket(), step)?;
            pid = node.agent_pid().context("the restarted agent's pid")?;
            "adopted by a restarted agent"
        };
        let took = started.elapsed().as_secs_f64();
        registered = step;
        // Idle: let the agent settle (no requests, no changes) before reading its memory.
        std::thread::sleep(Duration::from_secs(3));
        rows.push((step, rss(pid)?, how, took));
        eprintln!("ward-bench: agent memory at {step} endpoints: {}", bytes(rows.last().map(|r| r.1.0).unwrap_or(0.0)));
    }
    drop(node);
    drop(holder);

    let mut t = Table::new(
        format!("Agent memory, idle, by local endpoints ({MEM_APPS} policies)"),
        &[
            "local endpoints",
            "RSS (idle)",
            "peak RSS",
            "endpoints added",
            "adding them took (expedited RCU)",
            "per endpoint",
        ],
    );
    t.command(ctx.command_line.clone());
    let mut prev = 0;
    for (n, (r, hwm), how, took) in &rows {
        let (how, took, per) = if *n > prev {
            ((*how).to_owned(), secs(*took), secs(took / (n - prev) as f64))
        } else {
            ("–".into(), "–".into(), "–".into())
        };
        t.row(vec![n.to_string(), bytes(*r), bytes(*hwm), how, took, per]);
        prev = *n;
    }
    section.tables.push(t);
    section.notes.push(format!(
        "Agent memory: the first step's endpoints are registered through the agent's API exactly as \
         `ward-cni` does (the agent checks the host-side interface, writes the maps and attaches both \
         programs with TCX links); the rest are added to the agent's registry in one write and adopted \
         by a restarted agent (its recovery path), so the last row is a fresh process. The veths' pod \
         sides are in one namespace instead of one each, which the agent cannot tell apart. \
         Endpoints are spread over {MEM_APPS} applications with one policy each; the row with 0 \
         endpoints already holds every endpoint's Pod object and the policies in the datastore. \
         RSS is read from /proc/PID/status 3 s after the step."
    ));
    Ok(())
}

/// Waits until the agent lists `count` local endpoints (a restarted agent adopting them).
fn wait_for_endpoints(socket: &std::path::Path, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let answer = ward_lab::agent::call(socket, &json!({"op": "endpoints"}), Duration::from_secs(60))?;
        let have = answer.get("endpoints").and_then(|e| e.as_array()).map_or(0, Vec::len);
        if have >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent lists {have} of {count} endpoints after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `ip -n NETNS -batch -` with `script` on stdin.
fn ip_batch(netns: &str, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ip -batch")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).context("feeding ip -batch")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -n {netns} -batch failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Interface name to ifindex in a namespace.
fn ifindexes(netns: &str) -> anyhow::Result<BTreeMap<String, u32>> {
    let out = Command::new("ip").args(["-n", netns, "-j", "link", "show"]).output().context("ip -j link show")?;
    let links: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).context("parsing ip -j link show")?;
    Ok(links
        .iter()
        .filter_map(|l| Some((l.get("ifname")?.as_str()?.to_owned(), u32::try_from(l.get("ifindex")?.as_u64()?).ok()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toggle_policy_is_a_valid_policy_that_names_the_peer() {
        for allow in [true, false] {
            let yaml = toggle_policy(allow);
            let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
            assert_eq!(v["spec"]["podSelector"]["matchLabels"]["app"], "server");
            let peer = &v["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"];
            assert_eq!(peer, if allow { "client" } else { "nobody" });
            assert_eq!(v["spec"]["ingress"][0]["ports"][0]["port"], u64::from(TOGGLE_PORT));
        }
    }

    #[test]
    fn rcu_expedited_is_put_back() {
        if !ward_lab::require_root("rcu_expedited_is_put_back") {
            return;
        }
        let read = || std::fs::read_to_string(RCU_EXPEDITED).unwrap().trim().to_owned();
        let before = read();
        {
            let _g = RcuExpedited::set(before != "1").unwrap();
            assert_ne!(read(), before, "the guard sets the knob");
        }
        assert_eq!(read(), before, "and puts the old value back when dropped");
    }

    #[test]
    fn endpoint_addresses_are_unique_and_inside_the_node_cidr() {
        let ips: std::collections::BTreeSet<IpAddr> = (0..10_000).map(|i| endpoint_ip(3, i)).collect();
        assert_eq!(ips.len(), 10_000);
        let cidr: ipnet::IpNet = "10.3.0.0/16".parse().unwrap();
        assert!(ips.iter().all(|ip| cidr.contains(ip)));
        assert!(!ips.contains(&"10.3.0.5".parse::<IpAddr>().unwrap()), "the CNI's range is left alone");
    }
}
