//! The NetworkPolicy conformance harness: reads case files (the 9-pod model cases and
//! scenario files with their own `cluster:`; format in shared/conformance/README.md), runs
//! them against lab nodes with a real agent, and reports `PASS`/`FAIL` per file.
//!
//! Pure parts (`case`, `placeholder`, `matrix`, `model`) are unit-tested without root; the
//! `runner` drives a [`crate::node::Node`].

pub mod case;
pub mod dns;
pub mod explain;
pub mod matrix;
pub mod model;
pub mod placeholder;
pub mod runner;

pub use case::{Action, Case, CaseError, ClusterSpec, Step};
pub use runner::{CaseResult, RunOptions, Summary, discover, run_dir, run_dirs, run_files};
