//! Identity propagation (`--only propagation`): how long after a new pod turns Ready every
//! node of a real cluster enforces it, i.e. resolves its address to its label identity in the
//! node's `WARD_IPCACHE`, the map the datapath reads (before that a pod-selector rule cannot
//! match the pod: a remote node sees its address as `world`).
//!
//! The lab's real Kubernetes cluster (control plane, kubelet, containerd, kube-proxy per
//! node) with Ward as its CNI. Pods are created one at a time, pinned round-robin to the
//! nodes with `spec.nodeName`, each with labels of its own (a new label identity every time:
//! the slower case, a deployment's next replica reuses one). The bench watches the pods
//! itself (the API's watch endpoint, read raw by curl) and stamps the moment it sees each pod's address and its Ready
//! condition; a thread reads every node's pinned ipcache every millisecond and stamps the
//! first pass that finds the address with a pod identity ([`ipcache`]).

pub mod ipcache;
pub mod timeline;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use ward_lab::cluster::{Cluster, ClusterConfig, Kubectl, WardCni, cache::AGNHOST_IMAGE};

use crate::report::{Section, Table, Target};
use crate::stats::{bytes, percentile, secs};
use crate::{Ctx, PartResult};
use timeline::{PodEvent, Samples, Timeline, pod_event};

/// The target for the p99 of pod Ready → every node enforcing.
const TARGET_P99: f64 = 0.200;
/// Nodes of the cluster (the machine has two cores; three nodes still start).
const NODES: u8 = 3;
const QUICK_NODES: u8 = 2;
/// Sampled pods (after one warm-up pod per node).
const PODS: usize = 30;
const QUICK_PODS: usize = 6;
const NS: &str = "prop";
/// Longest one pod may take from creation to every node enforcing it before it counts as a
/// failure (kubelet and containerd on a shared two-core machine take a second or two).
const POD_DEADLINE: Duration = Duration::from_secs(90);
/// The poller's own time limit (a backstop: the run stops it when done).
const POLL_LIMIT: Duration = Duration::from_secs(60 * 60);
const WAIT_STEP: Duration = Duration::from_millis(1);
/// Quiet time before the watch's events are counted (status updates trail a little).
const SETTLE: Duration = Duration::from_secs(3);

fn log(msg: &str) {
    eprintln!("ward-bench: propagation: {msg}");
}

pub fn run(ctx: &Ctx) -> anyhow::Result<PartResult> {
    let (nodes, pods) = if ctx.quick { (QUICK_NODES, QUICK_PODS) } else { (NODES, PODS) };
    let cni = WardCni {
        bins: ctx.bins.clone(),
        manifests: ward_lab::bins::workspace_root().join("manifests"),
        // The agents' own logging is not what is measured.
        log_filter: "warn".into(),
        agent_args: Vec::new(),
    };
    log(&format!("starting a {nodes}-node cluster with Ward as its CNI"));
    let mut cluster = Cluster::start(ClusterConfig { nodes, cni: Arc::new(cni), ..ClusterConfig::default() })
        .map_err(|e| anyhow!("starting the cluster: {e}"))?;
    log(&format!("cluster {} up in {:.1} s", cluster.name(), cluster.startup_time().as_secs_f64()));
    let node_names: Vec<String> = cluster.nodes().iter().map(|n| n.name().to_owned()).collect();
    let k = &cluster.kubectl().clone();
    k.apply(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"))?;

    let poller = ipcache::Poller::start(&node_names, POLL_LIMIT)?;
    if !poller.baseline.is_empty() {
        log(&format!("pod addresses enforced before the run (ignored): {:?}", poller.baseline));
    }
    let watch = Watch::start(&mut cluster)?;
    let mut state = Observed::default();
    let mut samples = Samples::default();
    let mut failures = Vec::new();
    // One warm-up pod per node: the watch is surely established, images and the agents'
    // first pod handling are behind us. Their figures are not kept.
    let warm: Vec<(String, usize)> = (0..node_names.len()).map(|n| (format!("warm-{n}"), n)).collect();
    let sampled: Vec<(String, usize)> = (0..pods).map(|i| (format!("p{i}"), i % node_names.len())).collect();
    let state_dir = WardCni::agent_dir(cluster.nodes()[0].dir()).join("state");
    let mut files_before = Vec::new();
    for (keep, list) in [(false, &warm), (true, &sampled)] {
        if keep {
            thread::sleep(SETTLE);
            files_before = state_files(&state_dir);
        }
        for (name, node) in list {
            let t = one_pod(k, &watch.events, &mut state, &poller, &node_names, name, *node)?;
            match (t.complete(), keep) {
                (true, true) => {
                    samples.add(&t);
                    let ready = t.ready_seen.expect("complete");
                    let all = t.all_enforced().expect("complete");
                    log(&format!(
                        "{name} on {}: Ready after {}, every node {} after Ready",
                        node_names[*node],
                        secs(timeline::signed_secs(ready, t.created)),
                        secs(timeline::signed_secs(all, ready))
                    ));
                }
                (true, false) => {}
                (false, _) => {
                    let missing = describe_missing(&t, &node_names);
                    log(&format!("{name}: not complete within {POD_DEADLINE:?}: {missing}"));
                    failures.push(format!("{name}: {missing}"));
                }
            }
        }
    }
    // Watch traffic of the creations (every agent receives the same events).
    thread::sleep(SETTLE);
    state.drain(&watch.events);
    let created_traffic = traffic(&state, &sampled);
    let files_after = state_files(&state_dir);
    let files: Vec<(String, u64, u64)> = files_before
        .iter()
        .filter_map(|(f, b)| files_after.iter().find(|(g, _)| g == f).map(|(_, a)| (f.clone(), *b, *a)))
        .collect();

    // Deletions, one at a time: the request until no node resolves the address to a pod any
    // more (a stale entry would hand the next pod at that address the old pod's allows).
    let mut deleted = Deleted::default();
    for (name, node) in &sampled {
        let Some((_, ip)) = state.ip.get(name).copied() else { continue };
        let asked = Instant::now();
        k.run(&["-n", NS, "delete", "pod", name, "--wait=false"]).with_context(|| format!("deleting {name}"))?;
        let mut gone: Vec<Option<Instant>> = vec![None; node_names.len()];
        while asked.elapsed() < POD_DEADLINE && gone.iter().any(Option::is_none) {
            for (i, g) in gone.iter_mut().enumerate() {
                if g.is_none() {
                    *g = poller.first_gone(i, ip);
                }
            }
            if !poller.running() {
                bail!("the ipcache poller stopped while following the deletion of {name}");
            }
            thread::sleep(WAIT_STEP);
        }
        match gone.iter().copied().collect::<Option<Vec<Instant>>>() {
            Some(at) => {
                let last = at.iter().copied().max().expect("nodes");
                deleted.all.push(timeline::signed_secs(last, asked));
                // The DELETED event may trail the last node's removal: wait for it briefly.
                let until = Instant::now() + SETTLE;
                while !state.deleted.contains_key(name) && Instant::now() < until {
                    state.drain(&watch.events);
                    thread::sleep(WAIT_STEP);
                }
                if let Some(d) = state.deleted.get(name) {
                    deleted.api.push(timeline::signed_secs(*d, asked));
                    deleted.after_api.push(timeline::signed_secs(last, *d));
                }
                for (i, g) in at.iter().enumerate() {
                    let v = timeline::signed_secs(*g, asked);
                    if i == *node { deleted.local.push(v) } else { deleted.remote.push(v) }
                }
            }
            None => failures.push(format!("{name}: still enforced somewhere {POD_DEADLINE:?} after its deletion")),
        }
    }
    thread::sleep(SETTLE);
    state.drain(&watch.events);
    let total_traffic = traffic(&state, &sampled);
    drop(watch);
    let stats = poller.finish()?;
    drop(cluster);
    let traffic = Traffic { created: created_traffic, total: total_traffic };
    Ok(report(ctx, &node_names, pods, &samples, &deleted, traffic, &files, &failures, stats))
}

/// Sizes of the agent's persisted state files (the snapshot is rewritten after every pass
/// that changed it, so its size per pod is a write cost at scale).
fn state_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    ["datastore.json", "identities.json"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok().map(|m| ((*f).to_owned(), m.len())))
        .collect()
}

/// Watch events a sampled pod caused: (events, compact JSON bytes), summed over the pods.
fn traffic(state: &Observed, pods: &[(String, usize)]) -> (usize, usize) {
    pods.iter().filter_map(|(n, _)| state.events.get(n)).fold((0, 0), |(e, b), (e2, b2)| (e + e2, b + b2))
}

/// Pod watch traffic: up to every pod running, and to every pod gone.
struct Traffic {
    created: (usize, usize),
    total: (usize, usize),
}

/// Deletion request to the address leaving each node's ipcache, in seconds.
#[derive(Default)]
struct Deleted {
    all: Vec<f64>,
    /// The request to the `DELETED` event (kubelet stopping the pod, then the API).
    api: Vec<f64>,
    /// The `DELETED` event to the last node's removal.
    after_api: Vec<f64>,
    local: Vec<f64>,
    remote: Vec<f64>,
}

/// What the bench's watch has seen so far, by pod name: first address and first Ready.
#[derive(Default)]
struct Observed {
    ip: HashMap<String, (Instant, Ipv4Addr)>,
    ready: HashMap<String, Instant>,
    deleted: HashMap<String, Instant>,
    /// Watch events and their compact JSON bytes, per pod: what every agent receives too.
    events: HashMap<String, (usize, usize)>,
}

impl Observed {
    fn drain(&mut self, events: &Receiver<(Instant, PodEvent, usize)>) {
        for (at, ev, bytes) in events.try_iter() {
            let count = self.events.entry(ev.name.clone()).or_default();
            count.0 += 1;
            count.1 += bytes;
            if let Some(ip) = ev.ip {
                self.ip.entry(ev.name.clone()).or_insert((at, ip));
            }
            if ev.deleted {
                self.deleted.entry(ev.name.clone()).or_insert(at);
            }
            if ev.ready {
                self.ready.entry(ev.name).or_insert(at);
            }
        }
    }
}

fn pod_manifest(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NS}, labels: {{app: prop, pod: {name}}}}}\n\
         spec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n  containers:\n\
         \x20 - {{name: c, image: \"{}\", imagePullPolicy: Never, args: [pause]}}\n",
        AGNHOST_IMAGE.reference
    )
}

/// Creates one pod and follows it until every node enforces it, or [`POD_DEADLINE`].
fn one_pod(
    k: &Kubectl,
    events: &Receiver<(Instant, PodEvent, usize)>,
    state: &mut Observed,
    poller: &ipcache::Poller,
    nodes: &[String],
    name: &str,
    node: usize,
) -> anyhow::Result<Timeline> {
    let created = Instant::now();
    k.apply(&pod_manifest(name, &nodes[node])).with_context(|| format!("creating pod {NS}/{name}"))?;
    let mut t = Timeline::new(created, nodes.len(), node);
    while created.elapsed() < POD_DEADLINE {
        state.drain(events);
        if let Some((at, ip)) = state.ip.get(name).copied() {
            t.ip_seen = Some(at);
            for (i, slot) in t.enforced.iter_mut().enumerate() {
                if slot.is_none() {
                    *slot = poller.first_seen(i, ip);
                }
            }
        }
        t.ready_seen = state.ready.get(name).copied();
        if t.complete() {
            return Ok(t);
        }
        if !poller.running() {
            bail!("the ipcache poller stopped while following {name}");
        }
        thread::sleep(WAIT_STEP);
    }
    Ok(t)
}

fn describe_missing(t: &Timeline, nodes: &[String]) -> String {
    let mut missing = Vec::new();
    if t.ip_seen.is_none() {
        missing.push("no address in the API".to_owned());
    }
    if t.ready_seen.is_none() {
        missing.push("never Ready".to_owned());
    }
    for (i, e) in t.enforced.iter().enumerate() {
        if e.is_none() {
            missing.push(format!("{} never had a pod identity for it", nodes[i]));
        }
    }
    missing.join(", ")
}

/// The API's watch of the bench's namespace (`GET .../pods?watch=1`, one JSON event per
/// line), read raw by curl in the control plane's namespace and parsed on a thread of its
/// own; each event stamped when its last byte was read. Nothing decodes or re-prints the
/// objects on the way (kubectl's `get -w` added milliseconds). Killed on drop.
struct Watch {
    child: Child,
    events: Receiver<(Instant, PodEvent, usize)>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Watch {
    fn start(cluster: &mut Cluster) -> anyhow::Result<Watch> {
        let token = cluster.control_plane_mut().context("the control plane")?.admin().token.clone();
        let api = cluster.api();
        let url = format!("{}/api/v1/namespaces/{NS}/pods?watch=1", api.server);
        let ca = api.ca_file.clone();
        let mut cmd = cluster.control_plane_command(std::path::Path::new("curl"))?;
        cmd.args(["--silent", "--show-error", "--no-buffer", "--cacert"]).arg(&ca).args([
            "-H",
            &format!("Authorization: Bearer {token}"),
            &url,
        ]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().context("starting curl on the pod watch")?;
        let stdout = child.stdout.take().context("curl's stdout")?;
        let (tx, events) = mpsc::channel();
        let reader = thread::Builder::new()
            .name("pod-watch".into())
            .spawn(move || {
                // Ends when curl exits (killed on drop) or prints something that is not JSON.
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { break };
                    if let Some(ev) = pod_event(&v)
                        && tx.send((at, ev, line.len())).is_err()
                    {
                        break;
                    }
                }
            })
            .context("starting the watch reader")?;
        Ok(Watch { child, events, reader: Some(reader) })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[allow(clippy::too_many_arguments, reason = "one call, from run: the figures and how they were taken")]
fn report(
    ctx: &Ctx,
    nodes: &[String],
    pods: usize,
    s: &Samples,
    deleted: &Deleted,
    traffic: Traffic,
    files: &[(String, u64, u64)],
    failures: &[String],
    stats: ipcache::PollStats,
) -> PartResult {
    let fmt = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), secs);
    let row = |what: &str, kind: &str, v: &[f64]| {
        let min = v.iter().copied().reduce(f64::min);
        let max = v.iter().copied().reduce(f64::max);
        vec![
            what.to_owned(),
            kind.to_owned(),
            fmt(percentile(v, 50.0)),
            fmt(percentile(v, 99.0)),
            fmt(min),
            fmt(max),
            v.len().to_string(),
        ]
    };
    let mut t = Table::new(
        format!("Pod to every node's ipcache ({} nodes, {pods} pods one at a time)", nodes.len()),
        &["interval", "node", "p50", "p99", "min", "max", "n"],
    );
    t.command(ctx.command_line.clone());
    t.command(format!(
        "kubectl create -f - (pod pN, labels app=prop,pod=pN, spec.nodeName round-robin, agnhost pause) × {pods}"
    ));
    t.command(format!(
        "curl --no-buffer {}/api/v1/namespaces/{NS}/pods?watch=1 (the bench's own watch: \
         address, Ready and DELETED stamped on arrival)",
        ward_lab::cluster::network::api_server_url()
    ));
    t.command(format!("kubectl delete pod pN -n {NS} --wait=false (one at a time, after all were created)"));
    t.command(format!(
        "every {} ms: iterate /sys/fs/bpf/{}/<node>/WARD_IPCACHE on each node",
        ipcache::POLL_EVERY.as_millis(),
        ward_lab::node::layout_dir()
    ));
    t.row(row("pod Ready → enforced", "every node (the last)", &s.ready_to_all));
    t.row(row("pod Ready → enforced", "remote", &s.ready_to_remote));
    t.row(row("pod Ready → enforced", "local (its own node)", &s.ready_to_local));
    t.row(row("address in the API → enforced", "every node (the last)", &s.ip_to_all));
    t.row(row("address in the API → enforced", "remote", &s.ip_to_remote));
    t.row(row("address in the API → enforced", "local (its own node)", &s.ip_to_local));
    t.row(row("create request → pod Ready (kubelet, for scale)", "–", &s.create_to_ready));
    t.row(row("delete request → no longer a pod", "every node (the last)", &deleted.all));
    t.row(row("delete request → no longer a pod", "remote", &deleted.remote));
    t.row(row("delete request → no longer a pod", "local (its own node)", &deleted.local));
    t.row(row("delete request → DELETED event (kubelet and the API, for scale)", "–", &deleted.api));
    t.row(row("DELETED event → no longer a pod", "every node (the last)", &deleted.after_api));

    let mut w = Table::new(
        "Pod watch traffic per pod (what every agent receives)",
        &["phase", "events per pod", "bytes per event (compact JSON)", "bytes per pod"],
    );
    w.command(format!("curl --no-buffer .../api/v1/namespaces/{NS}/pods?watch=1 (each event as the API sent it)"));
    let per_pod = |(e, b): (usize, usize)| {
        let n = pods.max(1) as f64;
        vec![
            format!("{:.1}", e as f64 / n),
            if e == 0 { "–".into() } else { bytes(b as f64 / e as f64) },
            bytes(b as f64 / n),
        ]
    };
    let deletion = (traffic.total.0 - traffic.created.0, traffic.total.1 - traffic.created.1);
    let mut r = vec!["create → Running and Ready".to_owned()];
    r.extend(per_pod(traffic.created));
    w.row(r);
    let mut r = vec!["delete → gone".to_owned()];
    r.extend(per_pod(deletion));
    w.row(r);
    let mut r = vec!["whole life".to_owned()];
    r.extend(per_pod(traffic.total));
    w.row(r);

    let p99 = percentile(&s.ready_to_all, 99.0);
    let p50 = percentile(&s.ready_to_all, 50.0);
    let complete = failures.is_empty() && s.ready_to_all.len() == pods;
    let target = Target {
        name: "identity propagation: pod Ready → every node enforcing, p99".into(),
        goal: format!("< {} (Cilium: about 8 s)", secs(TARGET_P99)),
        measured: format!("p99 {} (p50 {}, n={})", fmt(p99), fmt(p50), s.ready_to_all.len()),
        met: if ctx.quick || !complete { None } else { p99.map(|p| p < TARGET_P99) },
        comment: if !complete {
            format!("not judged: {} of {pods} pods complete; {}", s.ready_to_all.len(), failures.join("; "))
        } else if ctx.quick {
            "not judged in --quick".into()
        } else {
            format!(
                "{} nodes; remote nodes p99 {} after the address first shows in the API",
                nodes.len(),
                fmt(percentile(&s.ip_to_remote, 99.0))
            )
        },
    };
    let mut notes = vec![
        "How it is measured: a pod counts as enforced on a node at the first poll that finds its address \
         in that node's pinned `WARD_IPCACHE` with a pod label identity (not world, host, unknown pod or \
         Service), which is what the datapath looks up for the peer of every new flow; from then on \
         pod-selector rules match it. The moments \"Ready\" and \"address in the API\" are when the \
         bench's own watch (curl on the API's watch endpoint, no decoding on the way) received the \
         event, not the API's second-resolution `lastTransitionTime`; the bench's watch and the agents' \
         watches read the same API server, so each figure is the agents' watch delivery, decoding, \
         compile and map write, minus the bench's own (small) watch delay. Negative figures mean the node \
         had the pod before the bench saw the event: the pod's own node learns it at CNI ADD, before the \
         sandbox is up."
            .to_owned(),
        format!(
            "Resolution: the poller made {} passes over every node's map in {:.1} s, one per {} on average \
             (longest pass {}), so each enforcement moment is late by at most about that much.",
            stats.passes,
            stats.secs,
            fmt(Some(stats.period())),
            secs(stats.max_pass.as_secs_f64())
        ),
        "Each pod has labels of its own, so every pod needs a new label identity on every node (a \
         deployment's next replica would reuse its siblings' identity); each node's agent allocates \
         identities itself from the labels, so no cluster-wide allocation round trip is involved. One \
         warm-up pod per node ran first and is not counted. Cluster, kubelet and containerd share the \
         machine's two cores with the agents, so the figures include scheduling delays a real node \
         would mostly not have."
            .to_owned(),
    ];
    if !failures.is_empty() {
        notes.push(format!("Pods that did not complete: {}.", failures.join("; ")));
    }
    let mut f = Table::new(
        format!("The first node's persisted agent state, before and after the {pods} pods"),
        &["file", "before", "after", "per pod"],
    );
    for (name, before, after) in files {
        f.row(vec![
            name.clone(),
            bytes(*before as f64),
            bytes(*after as f64),
            bytes((*after as f64 - *before as f64) / pods.max(1) as f64),
        ]);
    }
    let section = Section {
        title: "Identity propagation in a lab cluster".into(),
        intro: format!(
            "A real Kubernetes cluster of the lab ({} nodes: kube-apiserver, etcd, controller manager and \
             scheduler, then kubelet, containerd and kube-proxy per node) with Ward as its CNI: the release \
             `ward-agent` per node in cluster mode, watching every pod of the cluster. Pods are created one \
             after another, pinned round-robin to the nodes, and each is followed until every node's \
             datapath resolves its address to its identity.",
            nodes.len()
        ),
        tables: vec![t, w, f],
        plots: Vec::new(),
        notes,
    };
    PartResult { section, targets: vec![target] }
}
