//! `ward-bench`: Ward's benchmark suite. `cargo xtask bench` builds the release binaries and
//! runs `ward-bench run`, which measures each part in lab namespaces and writes
//! `bench/RESULTS.md` with SVG plots beside it.
//!
//! Parts: the datapath against no program, iptables and nftables ([`datapath`]); policy
//! compilation and incremental updates ([`control`]); policy-change-to-enforcement, CNI
//! ADD/DEL and agent memory in a lab node ([`lab`]); HTTP rules against L4 and no policy
//! with wrk and nginx ([`http`]); identity propagation across a real lab cluster
//! ([`propagation`]); and places for parts whose features are still to come
//! ([`later`]). The parts live in the library (`lib.rs`) so tests reach them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use ward_bench::report::{Report, Section};
use ward_bench::{Ctx, PartResult, control, datapath, dns, events, http, lab, later, machine, propagation};

#[derive(Parser)]
#[command(about = "Ward's benchmark suite (run it through `cargo xtask bench`)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the suite and writes the report (root: network namespaces, eBPF, iptables).
    Run {
        /// A reduced matrix that runs in a few minutes: checks that the harness works.
        #[arg(long)]
        quick: bool,
        /// Only these parts (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<Part>,
        /// Where RESULTS.md and the plots go.
        #[arg(long, default_value = "bench")]
        out: PathBuf,
        /// The command line to print in the report (what the user typed).
        #[arg(long, default_value = "ward-bench run")]
        command_line: String,
    },
    /// Internal: compiles one synthetic cluster in this process and prints its time and peak
    /// memory as JSON (a child process per size, so peak memory is that compile's alone).
    CompileOne {
        #[arg(long)]
        pods: usize,
        #[arg(long)]
        policies: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    Datapath,
    Control,
    Lab,
    Dns,
    Http,
    Events,
    Propagation,
    Later,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::CompileOne { pods, policies } => control::compile_one(pods, policies),
        Cmd::Run { quick, only, out, command_line } => {
            let bins = ward_lab::bins::Binaries::locate().context("Ward's binaries (cargo xtask bench builds them)")?;
            let ctx = Ctx {
                quick,
                bins,
                self_exe: std::env::current_exe().context("locating ward-bench itself")?,
                command_line,
            };
            run(&ctx, &only, &out)
        }
    }
}

fn run(ctx: &Ctx, only: &[Part], out: &std::path::Path) -> anyhow::Result<()> {
    if !ward_lab::privileged::is_root() {
        anyhow::bail!("the benchmarks need root (network namespaces, eBPF, iptables)");
    }
    let started = Instant::now();
    let mut report = Report {
        command: ctx.command_line.clone(),
        started: machine::now_utc(),
        machine: machine::facts(),
        ..Report::default()
    };
    let wanted = |p: Part| only.is_empty() || only.contains(&p);
    type PartFn = fn(&Ctx) -> anyhow::Result<PartResult>;
    let parts: [(Part, &str, PartFn); 8] = [
        (Part::Datapath, "datapath", datapath::run),
        (Part::Control, "control plane", control::run),
        (Part::Lab, "lab (enforcement latency, CNI, agent memory)", lab::run),
        (Part::Dns, "DNS proxy", dns::run),
        (Part::Http, "HTTP rules", http::run),
        (Part::Events, "flow events", events::run),
        (Part::Propagation, "identity propagation", propagation::run),
        (Part::Later, "later parts", later::run),
    ];
    let mut failures = Vec::new();
    for (part, name, f) in parts {
        if !wanted(part) {
            continue;
        }
        eprintln!("ward-bench: === {name} ===");
        let t = Instant::now();
        match f(ctx) {
            Ok(r) => {
                report.sections.push(r.section);
                report.targets.extend(r.targets);
            }
            Err(e) => {
                // One broken part must not lose the others' figures: record it and go on.
                eprintln!("ward-bench: {name} failed: {e:#}");
                report.sections.push(Section {
                    title: format!("{name}: failed"),
                    intro: format!("This part failed in this run: {e:#}"),
                    ..Section::default()
                });
                failures.push(name);
            }
        }
        eprintln!("ward-bench: {name} took {:.0} s", t.elapsed().as_secs_f64());
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    report.write(out, !only.is_empty()).with_context(|| format!("writing the report into {}", out.display()))?;
    eprintln!("ward-bench: wrote {}", out.join("RESULTS.md").display());
    if !failures.is_empty() {
        anyhow::bail!("parts failed: {}", failures.join(", "));
    }
    Ok(())
}
