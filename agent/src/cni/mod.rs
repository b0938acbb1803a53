//! The CNI plugin (`ward-cni`, spec 1.1.0): the container runtime runs it to attach a pod to
//! the node's network, and it asks the agent to protect the pod before any packet can flow.
//!
//! - `env`: the `CNI_*` environment variables (command, container, netns, interface, pod);
//! - `netconf`: the network configuration on stdin (Ward's IPAM or a delegated `ipam`);
//! - `result` and `error`: what goes back on stdout, in the spec's shapes, and `prevResult`;
//! - `command`: dispatch, error codes and what the verbs share; one file per verb: `add`,
//!   `del`, `check`, `status`, `gc` (VERSION is answered in `command`);
//! - `delegate`: running a delegated IPAM plugin (host-local, ...);
//! - `records` and `sweep`: the plugin's records of attachments, the queue of deregistrations
//!   the agent has not confirmed, and the clean-up of pods removed without a DEL;
//! - `install`: the plugin binary and the node's conflist (used by `ward-agent`).
//!
//! Everything but the netlink, socket and process calls is pure and unit-tested without root.

mod add;
mod check;
pub mod command;
mod del;
pub mod delegate;
pub mod env;
pub mod error;
mod gc;
pub mod install;
pub mod netconf;
pub mod records;
pub mod result;
mod status;
mod sweep;

pub use command::{Outcome, run};
