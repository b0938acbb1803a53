//! The CNI plugin (`ward-cni`): the container runtime runs it to attach a pod to the node's
//! network, and it asks the agent to protect the pod before any packet can flow.
//!
//! - `env`: the `CNI_*` environment variables (command, container, netns, interface, pod);
//! - `netconf`: the network configuration on stdin;
//! - `result` and `error`: what goes back on stdout, in the spec's shapes;
//! - `command`: ADD / DEL / CHECK / VERSION over `crate::endpoint` (interfaces, addresses) and
//!   `crate::api` (registration with the agent).
//!
//! Everything but `command`'s netlink and socket calls is pure and unit-tested without root.

pub mod command;
pub mod env;
pub mod error;
pub mod netconf;
pub mod result;

pub use command::{Outcome, run};
