//! `ward policy explain` agrees with real probes on every shared conformance case: each case
//! of `../shared/conformance` (the 9-pod model cases and the scenarios with clusters of their
//! own) runs through the real agent and datapath as `cargo xtask conformance` runs it, and
//! after each step's probes pass, explain is asked about every probed pod pair
//! (`ward_lab::conformance::explain`). Needs root and the workspace's binaries
//! (`cargo xtask build`). `WARD_EXPLAIN_CASES=substring` runs only the matching files.

use ward_lab::conformance::{RunOptions, run_dir};
use ward_lab::require_root;

#[test]
fn explain_agrees_with_the_probes_on_every_conformance_case() {
    if !require_root("explain_agrees_with_the_probes_on_every_conformance_case") {
        return;
    }
    let dir = ward_lab::bins::workspace_root().join("../shared/conformance");
    assert!(dir.is_dir(), "the shared conformance cases at {}", dir.display());
    let opts = RunOptions { explain: true, filter: std::env::var("WARD_EXPLAIN_CASES").ok(), ..RunOptions::default() };
    let summary = run_dir(&dir, &opts).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    assert!(!summary.results.is_empty(), "no case ran from {}", dir.display());
    let failed: Vec<String> =
        summary.results.iter().filter(|r| !r.passed).map(|r| format!("{}: {}", r.file, r.message)).collect();
    assert!(failed.is_empty(), "{}:\n{}", summary.line(), failed.join("\n"));
}
