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

#[derive(Debug)]
pub struct E2eOptions {
    pub cni: CniChoice,
    pub nodes: u8,
    pub focus: String,
    pub skip: String,
    pub report_dir: Option<PathBuf>,
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

    let cache = cluster.cache();
    let mut cmd = cluster.control_plane_command(&cache.program(cache::E2E_TEST))?;
    cmd.arg(format!("--kubeconfig={}", cluster.admin_kubeconfig().display()))
        .arg("--provider=local")
        .arg(format!("--kubectl-path={}", cache.program(cache::KUBECTL).display()))
        .arg(format!("--ginkgo.focus={}", opts.focus))
        .arg(format!("--ginkgo.skip={}", opts.skip))
        .arg("--ginkgo.noColor")
        .arg(format!("--report-dir={}", report_dir.display()))
        // e2e.test and the kubectl it runs keep their caches under $HOME: the lab's, not root's.
        .env("HOME", cluster.dir())
        .current_dir(cluster.dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!(
        "e2e: e2e.test --provider=local --ginkgo.focus={} --ginkgo.skip={} (report in {})",
        opts.focus,
        opts.skip,
        report_dir.display()
    );
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting e2e.test")?;
    let log_path = report_dir.join("e2e.log");
    let mut log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut summary = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            let _ = writeln!(log, "{line}");
            summary = parse_summary(&line).or(summary);
        }
    }
    let status = child.wait().context("waiting for e2e.test")?;
    let ran_for = started.elapsed();
    drop(cluster);
    let verdict = match summary {
        Some(s) => format!("{} passed, {} failed, {} pending", s.passed, s.failed, s.pending),
        None => "no ginkgo summary".to_owned(),
    };
    println!(
        "xtask e2e: CNI {cni_name}: {verdict} (e2e.test {status}, {:.0}s); report and log in {}",
        ran_for.as_secs_f64(),
        report_dir.display()
    );
    // A run that passed nothing (a focus that matched no spec) proves nothing either.
    let ok = status.success() && summary.is_some_and(|s| s.failed == 0 && s.passed > 0);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

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
