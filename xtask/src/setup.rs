//! `cargo xtask setup`: makes a fresh machine able to build and test Ward, installing only
//! what is missing and saying what it installs (recipe: shared/TOOLCHAIN.md), and building the
//! lab cluster's Kubernetes once per machine ([`crate::kubernetes`]).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::run;

/// Debian packages, each with a program that proves it present when it has one.
const APT_PACKAGES: [(&str, Option<&str>); 22] = [
    ("llvm-22-dev", None),
    ("libpolly-22-dev", None),
    ("clang-22", Some("clang-22")),
    ("libclang-22-dev", None),
    ("libzstd-dev", None),
    ("zlib1g-dev", None),
    ("bpftool", Some("bpftool")),
    ("iproute2", Some("ip")),
    ("curl", Some("curl")),
    ("socat", Some("socat")),
    // A real container runtime calling ward-cni (tests/tests/podman.rs).
    ("podman", Some("podman")),
    ("runc", Some("runc")),
    ("busybox-static", Some("busybox")),
    // The baselines the benchmark compares Ward with; bench/tests checks that each of them
    // enforces the same policy.
    ("iptables", Some("iptables")),
    ("nftables", Some("nft")),
    // libfuzzer-sys compiles libFuzzer's C++ (cargo xtask fuzz, and test).
    ("g++", Some("c++")),
    // The lab's real DNS server for FQDN egress tests (the binary only, no system service),
    // and dig for looking at it by hand.
    ("dnsmasq-base", Some("dnsmasq")),
    ("bind9-dnsutils", Some("dig")),
    // The real HTTP server of the HTTP-rule tests (tests/tests/http.rs) and the benchmark.
    ("nginx-light", Some("nginx")),
    // The real Prometheus server that scrapes the agent in tests/tests/metrics.rs (the
    // binary only, run by the test with its own config; the system service is not used).
    ("prometheus", Some("prometheus")),
    // Headless Chromium renders `ward map`'s HTML page to a screenshot and a DOM dump in
    // tests/tests/map.rs (run by the test, network off, a fresh profile each time).
    ("chromium", Some("chromium")),
    // The real log shipper of tests/tests/siem.rs: rsyslogd run by the test with its own
    // config, pid file and work dir (imfile -> omfwd -> imtcp); the system service is not used.
    ("rsyslog", Some("rsyslogd")),
];

/// What `cargo xtask bench` needs beyond building and testing: the load generators, and perf
/// for profiling missed targets.
const BENCH_PACKAGES: [(&str, Option<&str>); 5] = [
    ("sockperf", Some("sockperf")),
    ("iperf3", Some("iperf3")),
    ("linux-perf", Some("perf")),
    // DNS load through the proxy and directly (bench/src/dns.rs).
    ("dnsperf", Some("dnsperf")),
    // HTTP load against nginx (bench/src/http.rs).
    ("wrk", Some("wrk")),
];

/// bpf-linker must link against Debian's LLVM 22 (its llvm-config first in PATH).
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPFFS: &str = "/sys/fs/bpf";

pub fn setup() -> anyhow::Result<()> {
    cargo_bin_on_path()?;
    let mut did = false;
    did |= apt(&APT_PACKAGES)?;
    did |= rust_toolchain()?;
    did |= bpf_linker()?;
    did |= cargo_fuzz()?;
    did |= bpffs()?;
    did |= crate::kubernetes::ensure()?;
    if !did {
        println!("setup: everything present");
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    run::stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg])).contains("install ok installed")
}

/// Setup, plus the benchmark tools.
pub fn setup_bench() -> anyhow::Result<()> {
    setup()?;
    if apt(&BENCH_PACKAGES)? {
        println!("setup: benchmark tools installed");
    }
    Ok(())
}

/// Installs the packages of `packages` that are missing; true if it installed any.
pub(crate) fn apt(packages: &[(&str, Option<&str>)]) -> anyhow::Result<bool> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(pkg, program)| !(dpkg_installed(pkg) || program.is_some_and(run::on_path)))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    if !ward_lab::privileged::is_root() {
        bail!("missing Debian packages {missing:?}; run `cargo xtask setup` as root to install them");
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    run::status(apt_get(&["update"]))?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    run::status(apt_get(&args))?;
    Ok(true)
}

fn apt_get(args: &[&str]) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn rust_toolchain() -> anyhow::Result<bool> {
    let mut did = false;
    let toolchains = run::stdout(Command::new("rustup").args(["toolchain", "list"]));
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly Rust toolchain (the eBPF crate builds with build-std)");
        run::status(rustup(&["toolchain", "install", "nightly"]))?;
        did = true;
    }
    let components =
        run::stdout(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]));
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: adding rust-src to nightly");
        run::status(rustup(&["component", "add", "rust-src", "--toolchain", "nightly"]))?;
        did = true;
    }
    Ok(did)
}

fn rustup(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(args);
    cmd
}

/// `cargo install` puts bpf-linker in `$CARGO_HOME/bin`, and the eBPF build finds it through
/// PATH: make sure that directory is on it for every command xtask runs, whatever PATH the
/// caller had.
fn cargo_bin_on_path() -> anyhow::Result<()> {
    let bin = cargo_home_bin();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d == bin) {
        return Ok(());
    }
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push(bin);
    let joined = std::env::join_paths(dirs).context("building PATH")?;
    // SAFETY: setup runs first thing in xtask's main, before any thread is started.
    unsafe { std::env::set_var("PATH", joined) };
    Ok(())
}

fn cargo_home_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bpf_linker() -> anyhow::Result<bool> {
    if run::on_path("bpf-linker") || run::is_executable(&cargo_home_bin().join("bpf-linker")) {
        return Ok(false);
    }
    println!("setup: building bpf-linker against LLVM 22 (about 2 minutes)");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![PathBuf::from(LLVM_BIN)];
    dirs.extend(std::env::split_paths(&path));
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["install", "bpf-linker", "--no-default-features", "--features", "llvm-22"])
        .env("PATH", std::env::join_paths(dirs).context("building PATH")?);
    run::status(cmd)?;
    Ok(true)
}

/// cargo-fuzz drives the fuzz targets of tests/fuzz (it runs under nightly, which
/// `rust_toolchain` installs with the rust-src that its build-std needs).
fn cargo_fuzz() -> anyhow::Result<bool> {
    if run::on_path("cargo-fuzz") || run::is_executable(&cargo_home_bin().join("cargo-fuzz")) {
        return Ok(false);
    }
    println!("setup: installing cargo-fuzz from crates.io (about 3 minutes)");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["install", "cargo-fuzz", "--locked"]);
    run::status(cmd)?;
    Ok(true)
}

fn bpffs() -> anyhow::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf"))
    {
        return Ok(false);
    }
    if !ward_lab::privileged::is_root() {
        // Building does not need it; running the agent does (and runs as root).
        println!("setup: warning: bpffs is not mounted at {BPFFS}; `cargo xtask setup` as root mounts it");
        return Ok(false);
    }
    println!("setup: mounting bpffs at {BPFFS}");
    ward_lab::node::ensure_bpffs("setup", BPFFS.as_ref()).context("mounting bpffs")?;
    Ok(true)
}
