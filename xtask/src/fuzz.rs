//! `cargo xtask fuzz`: runs the cargo-fuzz (libFuzzer) targets of `tests/fuzz/` for a bounded
//! time each; `cargo xtask test` runs every target this way too.
//!
//! Inputs: the hand-written seeds committed under `tests/fuzz/seeds/<target>/`. Everything the
//! runs generate lives outside the tree, under [`fuzz_home`] (`/var/cache/ward/fuzz` unless
//! `WARD_FUZZ_DIR` says otherwise): the sanitizer builds (`target*/`), the growing corpus
//! (`corpus/<target>/`, so each run starts where the last one stopped) and the crash
//! artefacts (`artifacts/<target>/`). A crash, leak, timeout or memory-limit breach fails the
//! run, and the input that caused it is printed with the command that replays it.
//!
//! Adding a target is one entry in [`TARGETS`] (plus its `[[bin]]` in tests/fuzz/Cargo.toml).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, bail};

use crate::run;

/// One fuzz target and how it runs.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The `[[bin]]` name in tests/fuzz/Cargo.toml.
    pub name: &'static str,
    /// It needs root (e.g. BPF_PROG_TEST_RUN): under CI=true it fails without, elsewhere it
    /// is skipped with a warning.
    pub needs_root: bool,
    /// libFuzzer's `-max_len`.
    pub max_len: usize,
    /// libFuzzer's `-rss_limit_mb` (and `-malloc_limit_mb`): past it the run fails.
    pub rss_limit_mb: usize,
}

impl Target {
    const DEFAULT: Target = Target { name: "", needs_root: false, max_len: 4096, rss_limit_mb: 2048 };
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    // The manifest parser's budget must keep any input far below this.
    Target { name: "manifest", max_len: 64 * 1024, rss_limit_mb: 1024, ..Target::DEFAULT },
    Target { name: "cni", ..Target::DEFAULT },
    Target { name: "api", max_len: 80 * 1024, ..Target::DEFAULT },
    // Frames through the loaded kernel programs: one selector byte plus a jumbo-free frame.
    Target { name: "packet", needs_root: true, max_len: 1600, ..Target::DEFAULT },
    // Requests past the head bound (8 KiB) must be refused, so inputs go a little beyond it.
    Target { name: "http", max_len: 10 * 1024, ..Target::DEFAULT },
    // A query or an answer: the proxy's EDNS0 buffer (4096 bytes) bounds what it reads.
    Target { name: "dns", ..Target::DEFAULT },
];

/// How long `cargo xtask test` runs each target.
pub const TEST_SECONDS: u64 = 20;
/// libFuzzer's `-timeout`: one input taking longer is a failure.
const INPUT_TIMEOUT_SECONDS: u64 = 10;

/// Where builds, corpora and artefacts live.
pub fn fuzz_home() -> PathBuf {
    std::env::var_os("WARD_FUZZ_DIR").map_or_else(|| PathBuf::from("/var/cache/ward/fuzz"), PathBuf::from)
}

/// The outcome of one target's run.
#[derive(Debug)]
pub enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

/// Looks up targets by name (all of them for `None`).
pub fn select(name: Option<&str>) -> anyhow::Result<Vec<Target>> {
    match name {
        None => Ok(TARGETS.to_vec()),
        Some(n) => match TARGETS.iter().find(|t| t.name == n) {
            Some(t) => Ok(vec![*t]),
            None => {
                let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                bail!("no fuzz target {n:?} (targets: {})", names.join(", "))
            }
        },
    }
}

/// Runs each target for `seconds`; returns each one's outcome, in order.
pub fn run_targets(targets: &[Target], seconds: u64) -> Vec<(Target, Outcome)> {
    targets
        .iter()
        .map(|t| {
            let outcome = run_target(t, seconds).unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
            match &outcome {
                Outcome::Passed => println!("fuzz {}: PASS ({seconds} s without a finding)", t.name),
                Outcome::Skipped(why) => println!("fuzz {}: SKIPPED: {why}", t.name),
                Outcome::Failed(why) => println!("fuzz {}: FAIL: {why}", t.name),
            }
            (*t, outcome)
        })
        .collect()
}

fn run_target(t: &Target, seconds: u64) -> anyhow::Result<Outcome> {
    if t.needs_root && !ward_lab::privileged::is_root() {
        let why = "needs root".to_owned();
        if std::env::var("CI").as_deref() == Ok("true") {
            return Ok(Outcome::Failed(format!("{why} (CI=true: a privileged target must run)")));
        }
        return Ok(Outcome::Skipped(why));
    }
    let root = ward_lab::bins::workspace_root();
    let fuzz_dir = root.join("tests/fuzz");
    let home = fuzz_home();
    let corpus = home.join("corpus").join(t.name);
    let artifacts = home.join("artifacts").join(t.name);
    let seeds = fuzz_dir.join("seeds").join(t.name);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let target_dir = fuzz_target_dir();

    // Built first on its own, so the time limit below is spent fuzzing, not compiling.
    let started = Instant::now();
    run::status(cargo_fuzz(t, "build", &fuzz_dir, &target_dir))?;
    println!("fuzz {}: built in {:.0} s", t.name, started.elapsed().as_secs_f64());

    let before = SystemTime::now();
    let mut cmd = cargo_fuzz(t, "run", &fuzz_dir, &target_dir);
    cmd.arg(&corpus);
    if seeds.is_dir() {
        // A second corpus directory is only read: libFuzzer writes into the first.
        cmd.arg(&seeds);
    }
    cmd.arg("--").args([
        format!("-max_total_time={seconds}"),
        format!("-max_len={}", t.max_len),
        format!("-rss_limit_mb={}", t.rss_limit_mb),
        format!("-malloc_limit_mb={}", t.rss_limit_mb),
        format!("-timeout={INPUT_TIMEOUT_SECONDS}"),
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".to_owned(),
    ]);
    if run::status(cmd).is_ok() {
        return Ok(Outcome::Passed);
    }
    let found = new_artifacts(&artifacts, before);
    if found.is_empty() {
        return Ok(Outcome::Failed("libFuzzer failed without writing an input (see its output above)".into()));
    }
    for path in &found {
        print_input(t, path);
    }
    Ok(Outcome::Failed(format!("{} input(s) found, shown above", found.len())))
}

/// `rustup run nightly cargo fuzz <verb> <target> ...`: cargo-fuzz needs nightly (sanitizer
/// flags, build-std), whatever toolchain runs xtask.
fn cargo_fuzz(t: &Target, verb: &str, fuzz_dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz", verb, t.name])
        .arg("--fuzz-dir")
        .arg(fuzz_dir)
        .arg("--target-dir")
        .arg(target_dir)
        // Parallel codegen: the first sanitizer build of the agent's dependencies takes
        // minutes less, for a little fuzzing speed.
        .args(["--codegen-units", "16"])
        .current_dir(ward_lab::bins::workspace_root());
    // What the outer cargo set for xtask must not steer the nightly build.
    for var in ["RUSTC", "RUSTC_WRAPPER", "RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    cmd
}

/// One target directory for every target, all built with the agent's eBPF object (the packet
/// target loads it): a second directory would compile every dependency twice on a fresh
/// machine, and switching `AYA_BUILD_SKIP` within one would rebuild the agent each time.
fn fuzz_target_dir() -> PathBuf {
    fuzz_home().join("target")
}

/// Crash, leak, timeout and OOM inputs written since `since`.
fn new_artifacts(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|m| m >= since))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Shows an input: as text when it is mostly printable, else in hex; and how to replay it.
fn print_input(t: &Target, path: &Path) {
    const SHOWN: usize = 4096;
    let bytes = std::fs::read(path).unwrap_or_default();
    println!("fuzz {}: input {} ({} bytes):", t.name, path.display(), bytes.len());
    let shown = &bytes[..bytes.len().min(SHOWN)];
    match std::str::from_utf8(shown) {
        Ok(text) => println!("{text:?}"),
        Err(_) => {
            let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
            for line in hex.chunks(32) {
                println!("  {}", line.join(" "));
            }
        }
    }
    if bytes.len() > SHOWN {
        println!("  ... ({} more bytes)", bytes.len() - SHOWN);
    }
    println!(
        "replay: rustup run nightly cargo fuzz run --fuzz-dir tests/fuzz --target-dir {} {} {}",
        fuzz_target_dir().display(),
        t.name,
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each target in the list has its source and its `[[bin]]`, and each source a target.
    #[test]
    fn the_target_list_matches_the_fuzz_crate() {
        let root = ward_lab::bins::workspace_root().join("tests/fuzz");
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("tests/fuzz/Cargo.toml");
        let mut sources: Vec<String> = std::fs::read_dir(root.join("fuzz_targets"))
            .expect("fuzz_targets/")
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
            .collect();
        sources.sort();
        let mut names: Vec<String> = TARGETS.iter().map(|t| t.name.to_owned()).collect();
        names.sort();
        assert_eq!(names, sources);
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{}\"\npath = \"fuzz_targets/{}.rs\"", t.name, t.name)),
                "{}",
                t.name
            );
        }
        assert!(select(Some("nope")).is_err());
        assert_eq!(select(None).map(|v| v.len()).ok(), Some(TARGETS.len()));
    }
}
