//! Runs case files against lab nodes. The model lab (9 pods) is built once and reset between
//! cases (policies removed, labels restored, sync awaited, then the all-allowed matrix
//! observed, as upstream waits for it before each test); a scenario file gets a fresh node of
//! its own. After each step's action and sync, every check is probed; a wrong check is
//! retried about once a second for up to ~10 s, then everything is probed once more (as
//! upstream does) and what still differs fails the case.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::node::{Node, NodeConfig, NodeError};
use crate::probe::{self, Outcome};
use crate::spec::{Family, PodRef, Protocol};

use super::case::{self, Action, Case, Check, ClusterSpec, Notation, ProbeSet};
use super::dns::{self, Extension, Target};
use super::matrix::Matrix;
use super::model;
use super::placeholder;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub node: NodeConfig,
    /// Probes in flight at once.
    pub parallelism: usize,
    /// How long a wrong check is retried before the final full pass.
    pub budget: Duration,
    /// Pause between retries of wrong checks.
    pub retry_every: Duration,
    /// Only files whose path contains this.
    pub filter: Option<String>,
    /// After each step's probes pass, ask `ward policy explain` about every probed pod pair
    /// too: a verdict that differs from the probe fails the case.
    pub explain: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            node: NodeConfig::default(),
            parallelism: probe::DEFAULT_PARALLELISM,
            budget: Duration::from_secs(10),
            retry_every: Duration::from_secs(1),
            filter: None,
            explain: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CaseResult {
    /// The file's path relative to the cases directory.
    pub file: String,
    pub passed: bool,
    pub elapsed: Duration,
    /// Why it failed (empty when it passed).
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub results: Vec<CaseResult>,
}

impl Summary {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// `N passed, M failed`.
    pub fn line(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }
}

/// Every `.yaml`/`.yml` file under `dir`, recursively, in path order.
pub fn discover(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Runs every case file under `dir`, printing `PASS`/`FAIL` per file and the summary line.
pub fn run_dir(dir: &Path, opts: &RunOptions) -> std::io::Result<Summary> {
    run_dirs(&[dir.to_owned()], opts)
}

/// Runs the case files of several directories as one suite (one model lab, one summary
/// line). With more than one directory, each file is named with its directory's last
/// component first.
pub fn run_dirs(dirs: &[PathBuf], opts: &RunOptions) -> std::io::Result<Summary> {
    let mut named = Vec::new();
    for dir in dirs {
        let prefix = match (dirs.len(), dir.file_name()) {
            (2.., Some(last)) => PathBuf::from(last),
            _ => PathBuf::new(),
        };
        for path in discover(dir)? {
            let name = prefix.join(path.strip_prefix(dir).unwrap_or(&path)).display().to_string();
            named.push((name, path));
        }
    }
    Ok(run_named(&named, opts))
}

/// Runs `files` (named relative to `root` in the output).
pub fn run_files(root: &Path, files: &[PathBuf], opts: &RunOptions) -> Summary {
    let named: Vec<(String, PathBuf)> =
        files.iter().map(|p| (p.strip_prefix(root).unwrap_or(p).display().to_string(), p.clone())).collect();
    run_named(&named, opts)
}

fn run_named(files: &[(String, PathBuf)], opts: &RunOptions) -> Summary {
    let mut runner = Runner { opts, model: None };
    let mut summary = Summary::default();
    for (file, path) in files {
        if opts.filter.as_ref().is_some_and(|f| !file.contains(f.as_str())) {
            continue;
        }
        let start = Instant::now();
        let outcome = runner.run_file(path);
        let elapsed = start.elapsed();
        match &outcome {
            Ok(()) => println!("PASS {file} ({:.1}s)", elapsed.as_secs_f64()),
            Err(message) => println!("FAIL {file}: {message}"),
        }
        let _ = std::io::stdout().flush();
        summary.results.push(CaseResult {
            file: file.clone(),
            passed: outcome.is_ok(),
            elapsed,
            message: outcome.err().unwrap_or_default(),
        });
    }
    println!("{}", summary.line());
    summary
}

struct Runner<'a> {
    opts: &'a RunOptions,
    /// The model lab, kept between model cases.
    model: Option<Node>,
}

impl Runner<'_> {
    fn run_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        let case = case::parse(&text).map_err(|e| e.to_string())?;
        if case.is_model() {
            let opts = self.opts;
            let node = self.ready_model_lab(&case)?;
            run_steps(node, &mut Extension::default(), &case, opts)
        } else {
            let cluster = case.initial_cluster();
            let mut node = build(&cluster, self.opts).map_err(|e| format!("building the lab: {e}"))?;
            let mut ext = Extension::build(&node, &cluster.external, &cluster.dns)
                .map_err(|e| format!("building the lab's outside (cluster.external, cluster.dns): {e}"))?;
            let mut checks = scenario_readiness(&cluster);
            if let Some(first) = cluster.pods.first() {
                checks.extend(ext.readiness(&first.pod_ref(), &cluster.external));
            }
            verify(&node, &mut ext, &checks, self.opts).map_err(|m| format!("lab not ready (no policy yet): {m}"))?;
            let result = run_steps(&mut node, &mut ext, &case, self.opts);
            if result.is_err() {
                node.dump_agent_log();
            }
            result
        }
    }

    /// The model lab, reset to the model with no policy and observed all-allowed on every
    /// port the case probes. A lab that cannot be reset is rebuilt once.
    fn ready_model_lab(&mut self, case: &Case) -> Result<&mut Node, String> {
        let cluster = model::cluster();
        let checks = model_readiness(case);
        let mut last = String::new();
        for attempt in 0..2 {
            if attempt > 0 || self.model.is_none() {
                if let Some(old) = self.model.take() {
                    old.dump_agent_log();
                }
                match build(&cluster, self.opts) {
                    Ok(node) => self.model = Some(node),
                    Err(e) => {
                        last = format!("building the model lab: {e}");
                        continue;
                    }
                }
            }
            let Some(node) = self.model.as_mut() else {
                continue;
            };
            if let Err(e) = reset(node, &cluster) {
                last = format!("resetting the model lab: {e}");
                continue;
            }
            match verify(node, &mut Extension::default(), &checks, self.opts) {
                Ok(()) => {
                    return self.model.as_mut().ok_or_else(|| "model lab vanished".to_owned());
                }
                Err(m) => last = format!("model lab not ready (no policy, expecting all allowed): {m}"),
            }
        }
        Err(last)
    }
}

/// A fresh node holding `cluster`.
fn build(cluster: &ClusterSpec, opts: &RunOptions) -> Result<Node, NodeError> {
    let mut node = Node::start(opts.node.clone())?;
    reset(&mut node, cluster)?;
    Ok(node)
}

/// Brings `node` to exactly `cluster` with no policy: objects removed, extra pods and
/// namespaces deleted, labels restored, missing pods created.
fn reset(node: &mut Node, cluster: &ClusterSpec) -> Result<(), NodeError> {
    let kinds: BTreeSet<String> = node.objects().map(|o| o.kind.clone()).collect();
    for kind in &kinds {
        node.remove_objects_of_kind(kind)?;
    }
    node.sync()?;
    let wanted: BTreeMap<PodRef, _> = cluster.pods.iter().map(|p| (p.pod_ref(), p)).collect();
    let mut missing = Vec::new();
    let have: Vec<PodRef> = node.pods().map(|p| p.pod_ref()).collect();
    for r in have {
        match wanted.get(&r) {
            None => node.delete_pod(&r)?,
            Some(spec) if node.pod(&r)?.spec().serves != spec.serves => {
                node.delete_pod(&r)?;
            }
            Some(spec) if node.pod(&r)?.spec().labels != spec.labels => node.set_pod_labels(&r, &spec.labels)?,
            Some(_) => {}
        }
    }
    let extra_ns: Vec<String> =
        node.namespaces().keys().filter(|n| !cluster.namespaces.iter().any(|c| &c.name == *n)).cloned().collect();
    for ns in extra_ns {
        node.delete_namespace(&ns)?;
    }
    for ns in &cluster.namespaces {
        if node.namespace_labels(&ns.name).ok() != Some(&ns.labels) {
            node.set_namespace(&ns.name, &ns.labels)?;
        }
    }
    for spec in &cluster.pods {
        if node.pod(&spec.pod_ref()).is_err() {
            missing.push(spec.clone());
        }
    }
    if !missing.is_empty() {
        node.create_pods(&missing)?;
    }
    Ok(())
}

/// All-allowed checks on every (protocol, port, family) the case's matrices probe.
fn model_readiness(case: &Case) -> Vec<Check> {
    let mut seen = BTreeSet::new();
    let mut checks = Vec::new();
    for step in &case.steps {
        for p in &step.probes {
            if let ProbeSet::Matrix { protocol, port, family, .. } = p
                && seen.insert((*protocol, *port, *family == Family::IPv6))
            {
                let all = ProbeSet::Matrix {
                    protocol: *protocol,
                    port: *port,
                    family: *family,
                    matrix: Matrix::all_allowed(),
                };
                checks.extend(all.checks());
            }
        }
    }
    checks
}

/// One check per served port of each pod, from another pod: the servers answer.
fn scenario_readiness(cluster: &ClusterSpec) -> Vec<Check> {
    let mut checks = Vec::new();
    for (i, to) in cluster.pods.iter().enumerate() {
        let Some(from) = cluster.pods.iter().enumerate().find(|(j, _)| *j != i).map(|(_, p)| p) else {
            continue;
        };
        for s in &to.serves {
            checks.push(Check {
                from: from.pod_ref(),
                to: Target::Pod(to.pod_ref()),
                port: s.port,
                protocol: s.protocol,
                family: Family::IPv4,
                allow: true,
                notation: Notation::Words,
                // An HTTP server must answer a request, not just accept the connection.
                http: s.http.then(|| crate::http::HttpRequest::new("GET", "/")),
            });
        }
    }
    checks
}

fn run_steps(node: &mut Node, ext: &mut Extension, case: &Case, opts: &RunOptions) -> Result<(), String> {
    for (i, step) in case.steps.iter().enumerate() {
        let label = format!("steps[{i}] ({})", step.action.key());
        act(node, &step.action).map_err(|e| format!("{label}: {e}"))?;
        let checks: Vec<Check> = step.probes.iter().flat_map(ProbeSet::checks).collect();
        if let Err(m) = verify(node, ext, &checks, opts) {
            let mut message = format!("{label}: {m}");
            let rejected = node.rejections();
            if !rejected.is_empty() {
                message.push_str(&format!("\n  the agent rejected: {}", rejected.join("; ")));
            }
            return Err(message);
        }
        if opts.explain {
            super::explain::agrees(node, &checks).map_err(|m| format!("{label}: {m}"))?;
        }
    }
    Ok(())
}

fn act(node: &mut Node, action: &Action) -> Result<(), String> {
    let lab = |e: NodeError| e.to_string();
    match action {
        Action::Apply(objects) => {
            let mut objects = objects.clone();
            let lookup = |p: &PodRef| match node.pod_ip(p, Family::IPv4) {
                Ok(IpAddr::V4(ip)) => Ok(ip),
                Ok(other) => Err(format!("pod {p} has no IPv4 address ({other})")),
                Err(e) => Err(e.to_string()),
            };
            for o in &mut objects {
                placeholder::resolve(o, &lookup).map_err(|e| e.to_string())?;
            }
            node.apply(&objects).map(drop).map_err(lab)
        }
        Action::UpdatePodLabels { pod, labels } => node.update_pod_labels(pod, labels).map_err(lab),
        Action::UpdateNamespaceLabels { namespace, labels } => {
            node.update_namespace_labels(namespace, labels).map_err(lab)
        }
        Action::DeletePolicy { namespace, name } => {
            let kinds: Vec<String> = node
                .objects()
                .filter(|o| case::SUPPORTED_OBJECTS.iter().any(|(_, k)| *k == o.kind))
                .filter(|o| &o.namespace == namespace && &o.name == name)
                .map(|o| o.kind.clone())
                .collect();
            if kinds.is_empty() {
                return Err(format!("no policy {namespace}/{name} to delete"));
            }
            for kind in kinds {
                node.delete_object(&kind, namespace, name).map_err(lab)?;
            }
            Ok(())
        }
        Action::CreatePod(spec) => node.create_pod(spec).map(drop).map_err(lab),
        Action::DeletePod(pod) => node.delete_pod(pod).map_err(lab),
    }
}

/// Probes every check, retrying wrong ones, then a final full pass; `Err` lists what differs.
fn verify(node: &Node, ext: &mut Extension, checks: &[Check], opts: &RunOptions) -> Result<(), String> {
    if checks.is_empty() {
        return Ok(());
    }
    let probes: Vec<dns::Planned> = checks.iter().map(|c| ext.plan(node, c)).collect::<Result<_, _>>()?;
    let start = Instant::now();
    let mut pending: Vec<usize> = (0..checks.len()).collect();
    loop {
        let round = Instant::now();
        let batch: Vec<dns::Planned> = pending.iter().map(|&i| probes[i].clone()).collect();
        let outcomes = dns::run_all(&batch, opts.parallelism);
        pending = pending
            .into_iter()
            .zip(outcomes)
            .filter(|(i, o)| o.connected() != checks[*i].allow)
            .map(|(i, _)| i)
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= opts.budget {
            break;
        }
        thread::sleep(opts.retry_every.saturating_sub(round.elapsed()));
    }
    // Upstream probes the whole matrix a second time before declaring failure.
    let outcomes = dns::run_all(&probes, opts.parallelism);
    let wrong: Vec<usize> = (0..checks.len()).filter(|&i| outcomes[i].connected() != checks[i].allow).collect();
    if wrong.is_empty() {
        return Ok(());
    }
    Err(describe_failure(checks, &outcomes, &wrong, opts.budget))
}

/// Observed cells of a matrix, `None` where not probed.
type Cells = Vec<Vec<Option<bool>>>;

fn describe_failure(checks: &[Check], outcomes: &[Outcome], wrong: &[usize], budget: Duration) -> String {
    let mut s = format!(
        "{} of {} checks differ (after retrying for {}s and probing everything once more):",
        wrong.len(),
        checks.len(),
        budget.as_secs()
    );
    for &i in wrong {
        let c = &checks[i];
        let got = outcomes[i].connected();
        s.push_str(&format!("\n  {c}: expected {}, got {}", c.word(c.allow), c.word(got)));
        if let Outcome::Failed(why) = &outcomes[i] {
            s.push_str(&format!(" ({why})"));
        }
    }
    // Whole observed matrices, for cases written as matrices.
    let pods = model::pods();
    let index = |p: &PodRef| pods.iter().position(|q| q == p);
    let mut tables: BTreeMap<(Protocol, u16, bool), Cells> = BTreeMap::new();
    for (c, o) in checks.iter().zip(outcomes) {
        if c.notation != Notation::Matrix {
            continue;
        }
        let (Some(i), Some(j)) = (index(&c.from), c.to.pod().and_then(index)) else {
            continue;
        };
        let t = tables
            .entry((c.protocol, c.port, c.family == Family::IPv6))
            .or_insert_with(|| vec![vec![None; pods.len()]; pods.len()]);
        t[i][j] = Some(o.connected());
    }
    for ((protocol, port, v6), cells) in tables {
        let family = if v6 { " IPv6" } else { "" };
        s.push_str(&format!("\n  observed {protocol}/{port}{family} (diagonal not probed):\n"));
        s.push_str(Matrix::render(&cells).trim_end());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_counts_passes_and_failures() {
        let r = |passed| CaseResult { file: "f".into(), passed, elapsed: Duration::ZERO, message: String::new() };
        let s = Summary { results: vec![r(true), r(false), r(true)] };
        assert_eq!(s.line(), "2 passed, 1 failed");
    }

    #[test]
    fn discover_finds_yaml_recursively_in_order() {
        let dir = std::env::temp_dir().join(crate::netns::unique_name("discover"));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        for f in ["b/2.yaml", "a.yml", "README.md", "c.yaml"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let found: Vec<String> =
            discover(&dir).unwrap().iter().map(|p| p.strip_prefix(&dir).unwrap().display().to_string()).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, ["a.yml", "b/2.yaml", "c.yaml"]);
    }

    #[test]
    fn failures_name_each_differing_cell_and_show_the_observed_matrix() {
        let set =
            ProbeSet::Matrix { protocol: Protocol::Tcp, port: 80, family: Family::IPv4, matrix: Matrix::all_allowed() };
        let checks = set.checks();
        let mut outcomes = vec![Outcome::Connected("b".into()); checks.len()];
        outcomes[0] = Outcome::Failed("timed out".into());
        let s = describe_failure(&checks, &outcomes, &[0], Duration::from_secs(10));
        assert!(s.contains("\n  from x/a to x/b TCP/80: expected ., got X (timed out)"), "{s}");
        assert!(s.contains("1 of 72 checks differ"), "{s}");
        assert!(s.contains("\" X.......\"  # from x/a"), "{s}");
    }

    #[test]
    fn readiness_covers_each_probed_port_once() {
        let text = std::fs::read_to_string(
            crate::bins::workspace_root()
                .join("../shared/conformance/netpol/068-pa-ingress-named-port-wrong-protocol.yaml"),
        );
        let Ok(text) = text else { return };
        let case = case::parse(&text).unwrap();
        let checks = model_readiness(&case);
        assert_eq!(checks.len() % 72, 0);
        assert!(checks.iter().all(|c| c.allow));
    }

    #[test]
    fn scenario_readiness_probes_every_served_port_from_another_pod() {
        let cluster: ClusterSpec = serde_yaml::from_str(
            "{namespaces: [{name: n}], pods: [{namespace: n, name: a, serves: [{port: 1, protocol: TCP}, {port: 2, protocol: UDP}]}, {namespace: n, name: b}]}",
        )
        .unwrap();
        let checks = scenario_readiness(&cluster);
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| c.from.name == "b" && c.to.pod().is_some_and(|p| p.name == "a")));
    }
}
