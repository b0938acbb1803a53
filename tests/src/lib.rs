//! The Ward lab: network namespaces as nodes and pods, wired by the real `ward-cni` and
//! enforced by a real `ward-agent`, with serve-hostname servers and connection probes inside
//! the pods. The conformance harness, `cargo xtask demo`, the privileged integration tests in
//! `tests/tests/` and the benchmarks build on it.
//!
//! Flow: a [`Node`] writes Kubernetes YAML into its agent's manifests directory and waits
//! until the agent reports exactly those file contents as enforced (the applied revision's `files`); pods
//! are made as a runtime makes them (Pod object, network namespace, CNI ADD, servers); a
//! [`probe`] from inside one pod to another measures what the datapath allows.
//!
//! [`cluster`] is the other lab: a real Kubernetes 1.20.2 cluster (kubelet, containerd,
//! kube-proxy) in network namespaces, for the upstream e2e suite and Ward as a real CNI.
//!
//! Everything the lab creates has a unique name (`ward-<pid>-<n>-...`) and is removed by a
//! guard's `Drop`, also when a test panics.

pub mod agent;
pub mod bins;
pub mod cleanup;
pub mod cluster;
mod cmd;
pub mod cni;
pub mod conformance;
pub mod dnslab;
pub mod echo;
pub mod flowscene;
pub mod http;
pub mod labdir;
pub mod manifest;
pub mod netns;
pub mod nginx;
pub mod node;
pub mod privileged;
pub mod probe;
pub mod prometheus;
pub mod rawframe;
pub mod rsyslog;
pub mod serve;
pub mod services;
pub mod spec;

pub use cmd::CmdError;
pub use netns::NetNs;
pub use node::{Node, NodeConfig, NodeError, Pod};
pub use privileged::require_root;
pub use probe::{Outcome, Probe};
pub use serve::Servers;
pub use spec::{Family, Labels, NamespaceSpec, PodRef, PodSpec, Protocol, Serve};
