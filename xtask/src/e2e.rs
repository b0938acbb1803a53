//! `cargo xtask e2e`: the upstream Kubernetes e2e NetworkPolicy suite (`e2e.test` 1.20.2,
//! built by setup) against a lab cluster (`ward_lab::cluster`) with the chosen CNI, printing
//! ginkgo's own output and summary; the exit status is e2e.test's.
//!
//! e2e.test runs inside the control plane's network namespace (the API server is reachable
//! from the lab's namespaces only), with the cluster's kubectl for the few specs that shell
//! out to it. Its JUnit report and full log go to the report directory.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use ward_lab::cluster::{BridgeCni, Cluster, ClusterConfig, Cni, WardCni, cache};

/// The pod network the cluster gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CniChoice {
    /// Ward: `ward-cni` and a `ward-agent` per node following the API server with the RBAC
    /// of `manifests/`.
    Ward,
    /// Debian's reference `bridge` + `host-local` plugins: connectivity, no NetworkPolicy
    /// enforcement (the baseline: 26 of the 29 specs fail).
    Bridge,
}

impl CniChoice {
    fn cni(self) -> anyhow::Result<Arc<dyn Cni>> {
        Ok(match self {
            CniChoice::Ward => Arc::new(WardCni::locate()?),
            CniChoice::Bridge => Arc::new(BridgeCni::default()),
        })
    }
}

/// The specs `cargo xtask e2e` and `cargo xtask test` run: every NetworkPolicy spec but
/// SCTP's (the kernel here has no SCTP sockets).
pub const DEFAULT_FOCUS: &str = "NetworkPolicy";
pub const DEFAULT_SKIP: &str = "SCTP";

/// The default specs in three disjoint shards run side by side against the one cluster
/// (most of a spec's time is spent waiting out the probes a policy must block: 29 specs one
/// after the other take about an hour here). Each spec's name has one "should <verb>": the
/// first two shards take some verbs, the third every other spec, so the three together are
/// exactly the default set. e2e.test cannot split itself without ginkgo's CLI runner (its
/// SynchronizedBeforeSuite needs ginkgo's sync server), so each shard is its own e2e.test.
pub const DEFAULT_SHARDS: [&str; 2] = ["should (allow|deny|work with|stop)", "should enforce (polic|updated)"];

/// (focus, skip) of each shard of the default specs.
pub fn default_shards() -> Vec<(String, String)> {
    let mut shards: Vec<(String, String)> =
        DEFAULT_SHARDS.iter().map(|p| (format!("{DEFAULT_FOCUS}.*{p}"), DEFAULT_SKIP.to_owned())).collect();
    shards.push((DEFAULT_FOCUS.to_owned(), format!("{DEFAULT_SKIP}|{}", DEFAULT_SHARDS.join("|"))));
    shards
}

#[derive(Debug)]
pub struct E2eOptions {
    pub cni: CniChoice,
    pub nodes: u8,
    /// (focus, skip) per e2e.test run; the runs go side by side against the one cluster.
    pub shards: Vec<(String, String)>,
    pub report_dir: Option<PathBuf>,
}

impl Summary {
    fn add(&mut self, o: &Summary) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.pending += o.pending;
        // Every shard skips what the others run and all the suite's other specs: not summed.
        self.skipped = self.skipped.max(o.skipped);
    }
}

/// ginkgo's closing line: `SUCCESS! -- 2 Passed | 0 Failed | 0 Pending | 5665 Skipped` or
/// `FAIL! -- 3 Passed | 26 Failed | ...`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: u64,
    pub failed: u64,
    pub pending: u64,
    pub skipped: u64,
}

pub fn parse_summary(line: &str) -> Option<Summary> {
    let (_, counts) = line.split_once(" -- ")?;
    if !(line.starts_with("SUCCESS!") || line.starts_with("FAIL!")) {
        return None;
    }
    let mut s = Summary::default();
    for part in counts.split('|') {
        let (n, what) = part.trim().split_once(' ')?;
        let n: u64 = n.parse().ok()?;
        match what.trim() {
            "Passed" => s.passed = n,
            "Failed" => s.failed = n,
            "Pending" => s.pending = n,
            "Skipped" => s.skipped = n,
            _ => {}
        }
    }
    Some(s)
}

pub fn e2e(opts: E2eOptions) -> anyhow::Result<ExitCode> {
    Ok(if run(opts)?.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What a run of the suite came to.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// ginkgo's closing counts, if it printed them.
    pub summary: Option<Summary>,
    /// e2e.test succeeded, no spec failed and at least one passed.
    pub ok: bool,
    pub seconds: u64,
}

/// Brings up the cluster, runs the suite, tears the cluster down.
pub fn run(opts: E2eOptions) -> anyhow::Result<Outcome> {
    if !ward_lab::privileged::is_root() {
        bail!("the e2e suite needs root (network namespaces, kubelet, containerd)");
    }
    crate::clean_stale_labs();
    let report_dir = opts.report_dir.unwrap_or_else(|| ward_lab::bins::target_dir().join("e2e-report"));
    if report_dir.exists() {
        std::fs::remove_dir_all(&report_dir).with_context(|| format!("clearing {}", report_dir.display()))?;
    }
    std::fs::create_dir_all(&report_dir).with_context(|| format!("creating {}", report_dir.display()))?;

    let cni_name = format!("{:?}", opts.cni).to_lowercase();
    println!("e2e: starting a lab cluster ({} node(s), CNI {cni_name})", opts.nodes);
    let cluster = Cluster::start(ClusterConfig { nodes: opts.nodes, cni: opts.cni.cni()?, ..ClusterConfig::default() })
        .context("starting the lab cluster")?;
    println!(
        "e2e: cluster {} up in {:.1}s ({})",
        cluster.name(),
        cluster.startup_time().as_secs_f64(),
        cluster.dir().display()
    );

    let shards = opts.shards.len();
    let mut commands = Vec::new();
    for (i, (focus, skip)) in opts.shards.iter().enumerate() {
        commands.push(shard_command(&cluster, &report_dir, i, shards, focus, skip)?);
    }
    let started = Instant::now();
    let runs: Vec<anyhow::Result<(bool, Option<Summary>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = commands.into_iter().map(|shard| scope.spawn(move || run_shard(shard))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("an e2e shard panicked"))))
            .collect()
    });
    let ran_for = started.elapsed();
    drop(cluster);
    let mut all_ok = true;
    let mut summary: Option<Summary> = Some(Summary::default());
    for (i, r) in runs.iter().enumerate() {
        match r {
            Ok((ok, s)) => {
                all_ok &= *ok;
                match (summary.as_mut(), s) {
                    (Some(total), Some(s)) => total.add(s),
                    _ => summary = None,
                }
            }
            Err(e) => {
                println!("xtask e2e: shard {i}: {e:#}");
                all_ok = false;
                summary = None;
            }
        }
    }
    let verdict = match summary {
        Some(s) => format!("{} passed, {} failed, {} pending", s.passed, s.failed, s.pending),
        None => "no ginkgo summary from every shard".to_owned(),
    };
    println!(
        "xtask e2e: CNI {cni_name}: {verdict} ({} shard(s), {:.0}s); reports and logs in {}",
        opts.shards.len(),
        ran_for.as_secs_f64(),
        report_dir.display()
    );
    // A run that passed nothing (a focus that matched no spec) proves nothing either.
    let ok = all_ok && summary.is_some_and(|s| s.failed == 0 && s.passed > 0);
    Ok(Outcome { summary, ok, seconds: ran_for.as_secs() })
}

/// One shard's e2e.test, ready to run: the command, its report directory, its output prefix.
struct Shard {
    cmd: std::process::Command,
    dir: PathBuf,
    tag: String,
}

/// The e2e.test run of `focus`/`skip` against `cluster`, reporting into
/// `<report_dir>/shard-<i>/` (or `report_dir` itself when it is the only shard).
fn shard_command(
    cluster: &Cluster,
    report_dir: &std::path::Path,
    i: usize,
    shards: usize,
    focus: &str,
    skip: &str,
) -> anyhow::Result<Shard> {
    let dir = if shards == 1 { report_dir.to_owned() } else { report_dir.join(format!("shard-{i}")) };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cache = cluster.cache();
    let mut cmd = cluster.control_plane_command(&cache.program(cache::E2E_TEST))?;
    cmd.arg(format!("--kubeconfig={}", cluster.admin_kubeconfig().display()))
        .arg("--provider=local")
        .arg(format!("--kubectl-path={}", cache.program(cache::KUBECTL).display()))
        .arg(format!("--ginkgo.focus={focus}"))
        .arg(format!("--ginkgo.skip={skip}"))
        .arg("--ginkgo.noColor")
        .arg(format!("--report-dir={}", dir.display()))
        // e2e.test and the kubectl it runs keep their caches under $HOME: the lab's, not root's.
        .env("HOME", cluster.dir())
        .current_dir(cluster.dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let tag = if shards == 1 { String::new() } else { format!("[{i}] ") };
    println!(
        "e2e: {tag}e2e.test --provider=local --ginkgo.focus={focus} --ginkgo.skip={skip} (report in {})",
        dir.display()
    );
    Ok(Shard { cmd, dir, tag })
}

/// Runs one shard; its output is printed with the shard's prefix and kept in its
/// `e2e.log`. Returns whether it passed and ginkgo's closing counts.
fn run_shard(shard: Shard) -> anyhow::Result<(bool, Option<Summary>)> {
    let Shard { mut cmd, dir, tag } = shard;
    let mut child = cmd.spawn().context("starting e2e.test")?;
    let log_path = dir.join("e2e.log");
    let log = std::sync::Mutex::new(
        std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?,
    );
    let mut summary = None;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    std::thread::scope(|scope| {
        let log = &log;
        let tag = &tag;
        if let Some(err) = err {
            scope.spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("{tag}{line}");
                    let _ = writeln!(log.lock().unwrap_or_else(|p| p.into_inner()), "{line}");
                }
            });
        }
        if let Some(out) = out {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("{tag}{line}");
                let _ = writeln!(log.lock().unwrap_or_else(|p| p.into_inner()), "{line}");
                summary = parse_summary(&line).or(summary);
            }
        }
    });
    let status = child.wait().context("waiting for e2e.test")?;
    println!("e2e: {tag}e2e.test {status}");
    Ok((status.success(), summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specs a (focus, skip) selects, from e2e.test's own dry run.
    fn selected(e2e_test: &std::path::Path, focus: &str, skip: &str) -> std::collections::BTreeSet<String> {
        let out = std::process::Command::new(e2e_test)
            .args(["--ginkgo.dryRun", "--ginkgo.noColor"])
            .arg(format!("--ginkgo.focus={focus}"))
            .arg(format!("--ginkgo.skip={skip}"))
            .output()
            .expect("run e2e.test --ginkgo.dryRun");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("\"msg\":\"PASSED ")
            .skip(1)
            .filter_map(|rest| rest.split("\",\"total\"").next())
            .map(str::to_owned)
            .collect()
    }

    /// The shards together are exactly the default specs, each in one shard only.
    #[test]
    fn the_default_shards_partition_the_default_specs() {
        let cache = match cache::KubeCache::locate() {
            Ok(c) => c,
            Err(e) if !ward_lab::privileged::in_ci() => {
                eprintln!("skipped: {e}");
                return;
            }
            Err(e) => panic!("{e}; CI=true, so this is a failure, not a skip"),
        };
        let e2e_test = cache.program(cache::E2E_TEST);
        let all = selected(&e2e_test, DEFAULT_FOCUS, DEFAULT_SKIP);
        assert_eq!(all.len(), 29, "the 1.20.2 suite's NetworkPolicy specs but SCTP's: {all:#?}");
        let mut seen = std::collections::BTreeSet::new();
        for (focus, skip) in default_shards() {
            let shard = selected(&e2e_test, &focus, &skip);
            assert!(shard.len() >= 5, "shard {focus} / {skip} holds {} specs", shard.len());
            for spec in shard {
                assert!(all.contains(&spec), "{spec} is not a default spec");
                assert!(seen.insert(spec.clone()), "{spec} is in two shards");
            }
        }
        assert_eq!(seen, all, "every default spec is in a shard");
    }

    #[test]
    fn ginkgo_summaries_are_read_from_both_outcomes() {
        assert_eq!(
            parse_summary("FAIL! -- 3 Passed | 26 Failed | 0 Pending | 5638 Skipped"),
            Some(Summary { passed: 3, failed: 26, pending: 0, skipped: 5638 })
        );
        assert_eq!(
            parse_summary("SUCCESS! -- 2 Passed | 0 Failed | 0 Pending | 5665 Skipped"),
            Some(Summary { passed: 2, failed: 0, pending: 0, skipped: 5665 })
        );
        assert_eq!(parse_summary("Ran 29 of 5667 Specs in 569.2 seconds"), None);
        assert_eq!(parse_summary("  should FAIL! -- nothing"), None);
    }
}
