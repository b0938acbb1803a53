//! Pod interfaces on the node: what the CNI plugin (`crate::cni`) builds before the agent
//! protects a pod and tears down after.
//!
//! - `ipam`: persistent pod address allocation from the node's pod CIDRs (pure choice of the
//!   next address, file-backed store with a lock);
//! - `netns`: opening a pod's network namespace and running code inside it on its own thread;
//! - `veth`: the veth pair, the pod side's addresses/routes/neighbours and the host side's
//!   activation, through rtnetlink.

pub mod ipam;
pub mod netns;
pub mod veth;
