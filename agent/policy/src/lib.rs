//! Ward's pure policy core: the Kubernetes object model, validation, label selectors,
//! identities, the NetworkPolicy compiler, its reference evaluator and `explain`.
//!
//! Data flow: manifests or watch events → [`model`] → [`validate`] → [`cluster::Cluster`] →
//! [`compile::compile`] (with [`identity::Identities`]) → [`compile::Compiled`] map
//! contents → [`compile::diff`] → the agent writes the maps. [`tables`] runs the kernel's
//! lookup order on compiled maps; [`reference`] answers the same question from the spec;
//! [`explain`] tells a user why. Nothing here touches the kernel or the network.

pub mod budget;
pub mod cluster;
pub mod compile;
pub mod explain;
pub mod fqdn;
pub mod fqdn_policy;
pub mod http;
pub mod identity;
pub mod model;
pub mod reference;
pub mod selector;
pub mod tables;
pub mod validate;

#[cfg(test)]
mod testkit;

pub use cluster::{Cluster, PodKey, PolicyRef};
pub use compile::{Compiled, Delta, RuleInfo, compile, diff};
pub use explain::{Explanation, explain};
pub use identity::Identities;
pub use model::{Object, parse_documents};
pub use selector::{Labels, Selector};
pub use tables::{CompiledTables, LearnedTables};
pub use validate::{ObjectError, PodInfo, Policy, Protocol};
