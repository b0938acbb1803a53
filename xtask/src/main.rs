//! `cargo xtask <command>`: the project's one entry point for machine setup, building,
//! testing, fuzzing, the conformance suite and the demo (alias in .cargo/config.toml).

mod demo;
mod demo_cluster;
mod e2e;
mod fuzz;
mod kubernetes;
mod run;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use ward_lab::conformance::{self, RunOptions};

#[derive(Parser)]
#[command(about = "Ward's build, test and lab tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent; prints what it installs).
    Setup,
    /// Setup, then build every binary of the workspace.
    Build,
    /// Setup, build, `cargo test`, then the conformance suite. Run as root (CI does).
    Test {
        /// Cases directory for the conformance suite [default: ../shared/conformance and tests/cases].
        #[arg(long)]
        cases: Option<PathBuf>,
        /// How long each fuzz target runs.
        #[arg(long, default_value_t = fuzz::TEST_SECONDS)]
        fuzz_seconds: u64,
    },
    /// Setup, then run the cargo-fuzz targets of tests/fuzz (nightly, sanitizers) for a
    /// bounded time each; corpora and crash inputs live in /var/cache/ward/fuzz.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target [default: every one].
        #[arg(long)]
        target: Option<String>,
    },
    /// Setup, build, then run NetworkPolicy conformance cases against a lab node (root).
    Conformance {
        /// Directory of case files, searched recursively [default: ../shared/conformance and tests/cases].
        #[arg(long)]
        cases: Option<PathBuf>,
        /// Only cases whose path contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Probe through Services: every pod gets a Service address that netfilter translates
        /// to it as kube-proxy does, and the agent is given the Service range.
        #[arg(long)]
        services: bool,
        /// Spread the pods over this many lab nodes, each with its own agent, routed to each
        /// other over an underlay bridge (not with --services).
        #[arg(long, default_value_t = 1)]
        nodes: u8,
        /// Deliver same-node pod traffic by the node's routing (`--local-delivery route`)
        /// instead of the datapath's default redirect into the receiver's namespace.
        #[arg(long)]
        routed: bool,
        /// Use the binaries already built.
        #[arg(long)]
        no_build: bool,
    },
    /// A lab node with a sample shop app behind Ward: the measured reachability matrix.
    Demo {
        /// Leave the lab running and print how to inspect and remove it.
        #[arg(long)]
        keep: bool,
        /// Instead: a lab Kubernetes cluster with Ward as its CNI, the shop applied with
        /// kubectl (Deployments, Services, NetworkPolicies), probed directly and through
        /// Services (root; a few minutes).
        #[arg(long)]
        cluster: bool,
        /// Use the binaries already built.
        #[arg(long)]
        no_build: bool,
    },
    /// Remove what killed lab runs left behind (namespaces, agents, pins, scratch dirs, and
    /// lab clusters' processes, containers, mounts, cgroups and kubelet's sysctls).
    LabClean,
    /// Setup, then the upstream e2e NetworkPolicy suite (e2e.test 1.20.2) against a lab
    /// Kubernetes cluster (root). Exits non-zero when specs fail.
    E2e {
        /// The cluster's pod network.
        #[arg(long, value_enum, default_value = "ward")]
        cni: e2e::CniChoice,
        /// How many nodes.
        #[arg(long, default_value_t = 1)]
        nodes: u8,
        /// ginkgo's focus (a regular expression over spec names).
        #[arg(long, default_value = e2e::DEFAULT_FOCUS)]
        focus: String,
        /// ginkgo's skip; the kernel here has no SCTP sockets.
        #[arg(long, default_value = e2e::DEFAULT_SKIP)]
        skip: String,
        /// Run the default specs as one e2e.test, one after the other (about an hour with
        /// Ward), instead of in three shards side by side.
        #[arg(long)]
        serial: bool,
        /// Where the JUnit report and e2e.log go [default: <target>/e2e-report].
        #[arg(long)]
        report_dir: Option<PathBuf>,
    },
    /// Setup (with the benchmark tools), a release build, then the benchmark suite in lab
    /// namespaces (root): writes bench/RESULTS.md and its SVG plots.
    Bench {
        /// A reduced matrix (a few minutes): checks the harness, not for publishing.
        #[arg(long)]
        quick: bool,
        /// Only these parts, comma-separated: datapath, control, lab, dns, http, later.
        #[arg(long)]
        only: Option<String>,
        /// Where RESULTS.md and the plots go [default: bench/].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup()?,
        Cmd::Build => build()?,
        Cmd::Test { cases, fuzz_seconds } => return test(cases, fuzz_seconds),
        Cmd::Fuzz { seconds, target } => {
            let targets = fuzz::select(target.as_deref())?;
            setup::setup()?;
            let outcomes = fuzz::run_targets(&targets, seconds);
            let failed = outcomes.iter().filter(|(_, o)| matches!(o, fuzz::Outcome::Failed(_))).count();
            println!("xtask fuzz: {} passed, {failed} failed", outcomes.len() - failed);
            return Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Cmd::Conformance { cases, filter, services, nodes, routed, no_build } => {
            if !no_build {
                build()?;
            }
            let summary = run_conformance(cases, filter, Lab { services, nodes, routed })?;
            return Ok(if summary.failed() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Cmd::Demo { keep, cluster, no_build } => {
            if !no_build {
                build()?;
            }
            if cluster {
                return demo_cluster::demo(keep);
            }
            return demo::demo(keep);
        }
        Cmd::LabClean => {
            if clean_stale_labs() == 0 {
                println!("lab-clean: nothing left behind");
            }
        }
        Cmd::Bench { quick, only, out } => bench(quick, only, out)?,
        Cmd::E2e { cni, nodes, focus, skip, serial, report_dir } => {
            if cni == e2e::CniChoice::Ward {
                build()?;
            } else {
                setup::setup()?;
            }
            // The default specs run in shards side by side; a focus or skip of one's own runs as
            // one e2e.test.
            let shards = if focus == e2e::DEFAULT_FOCUS && skip == e2e::DEFAULT_SKIP && !serial {
                e2e::default_shards()
            } else {
                vec![(focus, skip)]
            };
            return e2e::e2e(e2e::E2eOptions { cni, nodes, shards, report_dir });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn build() -> anyhow::Result<()> {
    setup::setup()?;
    // --exclude ward-ebpf: that crate only builds for bpfel-unknown-none; agent/build.rs
    // builds it (aya-build), as default-members in Cargo.toml also says.
    run::cargo(&["build", "--workspace", "--exclude", "ward-ebpf", "--bins"])
}

fn test(cases: Option<PathBuf>, fuzz_seconds: u64) -> anyhow::Result<ExitCode> {
    build()?;
    if !ward_lab::privileged::is_root() {
        eprintln!(
            "warning: not root: privileged tests will be skipped (or fail under CI=true) and conformance will fail"
        );
    }
    // Privileged tests each build labs with their own agent; two at a time suits the
    // machines this runs on.
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    let (mut counts, mut unit) =
        run::cargo_test(&["--workspace", "--exclude", "ward-ebpf", "--no-fail-fast", "--", "--test-threads=2"]);
    if let Err(e) = &unit {
        eprintln!("error: {e:#}");
    }
    let flaky = rerun_failed(&mut counts, &mut unit);
    // The cases on one node, probed directly; the same probed through Services (kube-proxy's
    // translation, Ward's deferral); with the pods spread over three nodes, each with its own
    // agent (cross-node policy, remote pods' identities); and on one node with same-node
    // traffic delivered by the node's routing instead of the datapath (both delivery paths).
    let labs = [
        ("conformance", Lab::DIRECT),
        ("through Services", Lab { services: true, ..Lab::DIRECT }),
        ("on three nodes", Lab { nodes: 3, ..Lab::DIRECT }),
        ("routed", Lab { routed: true, ..Lab::DIRECT }),
    ];
    let confs: Vec<(&str, anyhow::Result<conformance::Summary>)> =
        labs.iter().map(|(name, lab)| (*name, run_conformance(cases.clone(), None, *lab))).collect();
    let conf_line = confs
        .iter()
        .map(|(name, c)| match c {
            Ok(s) => format!("{name} {}", s.line()),
            Err(e) => format!("{name} did not run: {e:#}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    // The upstream e2e NetworkPolicy suite, on a three-node lab cluster whose CNI is Ward (the
    // scheduler spreads the specs' pods over the nodes).
    let e2e_run = e2e::run(e2e::E2eOptions {
        cni: e2e::CniChoice::Ward,
        nodes: 3,
        shards: e2e::default_shards(),
        report_dir: None,
    });
    let (e2e_line, e2e_ok, e2e_passed, e2e_failed) = match &e2e_run {
        Ok(o) => {
            let s = o.summary.unwrap_or_default();
            let failed = if o.ok { 0 } else { s.failed.max(1) };
            (
                format!("e2e NetworkPolicy {} passed, {} failed ({} s)", s.passed, s.failed, o.seconds),
                o.ok,
                s.passed,
                failed,
            )
        }
        Err(e) => (format!("e2e did not run: {e:#}"), false, 0, 1),
    };
    // Every fuzz target, each for a bounded time; a finding fails the run.
    let fuzzed = fuzz::run_targets(fuzz::TARGETS, fuzz_seconds);
    let fuzz_failed = fuzzed.iter().filter(|(_, o)| matches!(o, fuzz::Outcome::Failed(_))).count() as u64;
    let fuzz_passed = fuzzed.iter().filter(|(_, o)| matches!(o, fuzz::Outcome::Passed)).count() as u64;
    let conf_ok = |c: &anyhow::Result<conformance::Summary>| c.as_ref().is_ok_and(|s| s.failed() == 0);
    let ok = unit.is_ok() && confs.iter().all(|(_, c)| conf_ok(c)) && e2e_ok && fuzz_failed == 0;
    // Repeated at the end, where a long run's log is read first.
    for f in &counts.failures {
        let verdict = if flaky.contains(&f.name) { "FLAKY (failed, then passed on its rerun)" } else { "FAILED" };
        println!("xtask test: {verdict} test {}:", f.name);
        for l in &f.excerpt {
            println!("    {l}");
        }
    }
    println!(
        "xtask test: {}: cargo test {} ({} passed, {} failed{}), {conf_line}, {e2e_line}, fuzz {fuzz_passed} passed, {fuzz_failed} failed ({fuzz_seconds} s each)",
        if ok { "PASSED" } else { "FAILED" },
        if unit.is_ok() { "passed" } else { "failed" },
        counts.passed,
        counts.failed,
        if flaky.is_empty() { String::new() } else { format!(", {} of them flaky: {}", flaky.len(), flaky.join(", ")) },
    );
    // The closing line: every test, conformance case and fuzz target, in the plain form.
    let counted = |c: &anyhow::Result<conformance::Summary>| match c {
        Ok(s) => (s.passed() as u64, s.failed() as u64),
        Err(_) => (0, 1),
    };
    let (conf_passed, conf_failed) =
        confs.iter().map(|(_, c)| counted(c)).fold((0, 0), |(p, f), (cp, cf)| (p + cp, f + cf));
    let unit_failed = counts.failed + u64::from(unit.is_err() && counts.failed == 0);
    println!(
        "xtask: {} passed, {} failed",
        counts.passed + conf_passed + e2e_passed + fuzz_passed,
        unit_failed + conf_failed + e2e_failed + fuzz_failed
    );
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// At most this many failed tests are run again; more than that is not flakiness.
const MAX_RERUNS: usize = 3;

/// Runs each failed test once more, alone. A test that passes then is counted as passed and
/// named as flaky at the end of the run (with its first failure), so that one timing fluke on
/// a loaded machine does not hide a run's results, while a behaviour that is broken fails
/// twice and fails the run. Returns the flaky tests' names.
fn rerun_failed(counts: &mut run::TestCounts, unit: &mut anyhow::Result<()>) -> Vec<String> {
    // Only when every failure is a test's own (a crashed test binary prints no failure
    // block, and is not rerun).
    let rerunnable = unit.is_err()
        && !counts.failures.is_empty()
        && counts.failures.len() <= MAX_RERUNS
        && counts.failed == counts.failures.len() as u64;
    if !rerunnable {
        return Vec::new();
    }
    let mut flaky = Vec::new();
    for f in &counts.failures {
        println!("xtask test: running {} again, alone", f.name);
        let args = ["--workspace", "--exclude", "ward-ebpf", "--", "--exact", &f.name, "--test-threads=1"];
        let (again, result) = run::cargo_test(&args);
        if result.is_ok() && again.passed >= 1 && again.failed == 0 {
            flaky.push(f.name.clone());
        }
    }
    if flaky.len() == counts.failures.len() {
        counts.passed += flaky.len() as u64;
        counts.failed -= flaky.len() as u64;
        *unit = Ok(());
    }
    flaky
}

/// `cargo xtask bench`: release binaries (what users run; debug builds would measure the
/// compiler's opt-level, not Ward), then `ward-bench run` with them.
fn bench(quick: bool, only: Option<String>, out: Option<PathBuf>) -> anyhow::Result<()> {
    setup::setup_bench()?;
    if !ward_lab::privileged::is_root() {
        bail!("the benchmarks need root (network namespaces, eBPF, iptables)");
    }
    run::cargo(&["build", "--release", "--workspace", "--exclude", "ward-ebpf", "--bins"])?;
    clean_stale_labs();
    let release = ward_lab::bins::target_dir().join("release");
    let root = ward_lab::bins::workspace_root();
    let mut line = String::from("cargo xtask bench");
    let mut cmd = std::process::Command::new(release.join("ward-bench"));
    cmd.arg("run").env("WARD_BIN_DIR", &release).current_dir(&root);
    if quick {
        cmd.arg("--quick");
        line.push_str(" --quick");
    }
    if let Some(only) = only {
        cmd.args(["--only", &only]);
        line.push_str(&format!(" --only {only}"));
    }
    let out = out.unwrap_or_else(|| root.join("bench"));
    cmd.arg("--out").arg(&out).args(["--command-line", &line]);
    run::status(cmd)
}

/// Runs the cases in `cases`, or by default the shared suite (`../shared/conformance`) and
/// the project's own cases (`tests/cases`), as one suite.
/// How the conformance lab is built.
#[derive(Clone, Copy, Debug)]
struct Lab {
    /// Probe through translated Service addresses.
    services: bool,
    /// Lab nodes the pods are spread over.
    nodes: u8,
    /// Same-node traffic by the node's routing, not the datapath's redirect.
    routed: bool,
}

impl Lab {
    const DIRECT: Lab = Lab { services: false, nodes: 1, routed: false };
}

fn run_conformance(cases: Option<PathBuf>, filter: Option<String>, lab: Lab) -> anyhow::Result<conformance::Summary> {
    let Lab { services, nodes, routed } = lab;
    if services && nodes > 1 {
        bail!("--services is for a one-node lab");
    }
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if !ward_lab::privileged::is_root() {
        bail!("the conformance suite needs root (network namespaces, eBPF)");
    }
    clean_stale_labs();
    let root = ward_lab::bins::workspace_root();
    let dirs = match cases {
        Some(dir) => vec![dir],
        None => {
            let shared = root.join("../shared/conformance");
            if !shared.is_dir() && std::env::var("CI").as_deref() == Ok("true") {
                bail!("the shared conformance cases are missing: {} is not a directory", shared.display());
            }
            [shared, root.join("tests/cases")].into_iter().filter(|d| d.is_dir()).collect()
        }
    };
    if dirs.is_empty() {
        bail!("no cases directory: neither ../shared/conformance nor tests/cases exists");
    }
    let mut canonical = Vec::new();
    for d in dirs {
        canonical.push(d.canonicalize().with_context(|| format!("cases directory {}", d.display()))?);
    }
    for d in &canonical {
        println!("conformance: cases from {}", d.display());
    }
    let mut opts = RunOptions { filter, ..RunOptions::default() };
    opts.node.services = services;
    opts.node.nodes = nodes;
    if services {
        println!("conformance: probing through Services (each pod behind a translated Service address)");
    }
    if nodes > 1 {
        println!("conformance: pods spread over {nodes} lab nodes, each with its own agent");
    }
    if routed {
        opts.node.agent_args.extend(["--local-delivery".to_owned(), "route".to_owned()]);
        println!("conformance: same-node traffic delivered by the node's routing (--local-delivery route)");
    }
    conformance::run_dirs(&canonical, &opts).context("reading the cases")
}

/// Removes leftovers of lab runs that were killed; returns how many things it removed.
fn clean_stale_labs() -> usize {
    let removed = ward_lab::cleanup::stale_labs("/sys/fs/bpf".as_ref());
    for line in &removed {
        println!("lab-clean: {line}");
    }
    removed.len()
}
