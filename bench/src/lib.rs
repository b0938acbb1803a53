//! Ward's benchmark suite as a library: the parts of the suite, the report and its plots.
//! The `ward-bench` binary runs them; tests in `bench/tests/` check the parts' setups (that
//! each compared configuration enforces what it claims) without timing anything.

pub mod control;
pub mod datapath;
pub mod dns;
pub mod events;
pub mod http;
pub mod lab;
pub mod later;
pub mod machine;
pub mod propagation;
pub mod report;
pub mod stats;
pub mod svg;
pub mod synth;

use std::path::PathBuf;

use report::{Section, Target};

/// What every part of the suite is given.
pub struct Ctx {
    pub quick: bool,
    /// Ward's release binaries (ward-agent, ward-cni, ward).
    pub bins: ward_lab::bins::Binaries,
    /// This executable, for child processes (`compile-one`).
    pub self_exe: PathBuf,
    /// The command line the report names.
    pub command_line: String,
}

impl Ctx {
    /// Rounds of alternating configurations: each figure is the median of this many runs.
    pub fn rounds(&self) -> usize {
        if self.quick { 2 } else { 5 }
    }
}

/// What one part contributes to the report.
pub struct PartResult {
    pub section: Section,
    pub targets: Vec<Target>,
}
