//! Ward's user space: the node agent, the CNI plugin and the operator CLI share this library.
//!
//! Data flow: `datastore` (a directory of manifests or the Kubernetes API, as events into one
//! store) feeds `plan`, the pure half of a pass around the compiler in the `ward-policy` crate; `datapath` writes the compiled contents into the pinned
//! BPF maps and attaches the programs; `endpoint` and `cni` wire pod interfaces and register
//! them through `api`; `flows` turns the datapath's flow events into named, attributed
//! records (`ward observe`); `cli` reads it all back.

pub mod api;
pub mod cli;
pub mod cni;
pub mod daemon;
pub mod datapath;
pub mod datastore;
pub mod dns;
pub mod endpoint;
pub mod flows;
pub mod metrics;
pub mod plan;
