//! Plain data describing what a lab holds: namespaces, pods, and what each pod serves. The
//! conformance scenario files use these shapes verbatim under `cluster:`, the demo reads them
//! from Kubernetes YAML, and a [`crate::node::Node`] turns them into manifests, network
//! namespaces and servers. Pure: nothing here touches the kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

/// The label the API server puts on every namespace; the lab sets it the same way.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// `tcp` / `udp`, as in upstream's container and port names.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// Which of a pod's addresses a probe uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    #[default]
    IPv4,
    IPv6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::IPv4 => "IPv4",
            Family::IPv6 => "IPv6",
        })
    }
}

/// One port a pod listens on; `name` is its containerPort name (what named-port policies
/// resolve).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An HTTP/1.1 keep-alive server answering every request with `200` (TCP only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http: bool,
}

impl Serve {
    pub fn new(port: u16, protocol: Protocol, name: Option<&str>) -> Self {
        Serve { port, protocol, name: name.map(str::to_owned), http: false }
    }

    /// A TCP port served by the lab's HTTP server.
    pub fn http(port: u16, name: Option<&str>) -> Self {
        Serve { http: true, ..Serve::new(port, Protocol::Tcp, name) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    /// Without the implied `kubernetes.io/metadata.name`, which the lab adds.
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub serves: Vec<Serve>,
}

impl PodSpec {
    pub fn pod_ref(&self) -> PodRef {
        PodRef { namespace: self.namespace.clone(), name: self.name.clone() }
    }
}

/// `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        PodRef { namespace: namespace.to_owned(), name: name.to_owned() }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a pod reference of the form namespace/name")]
pub struct BadPodRef(pub String);

impl FromStr for PodRef {
    type Err = BadPodRef;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(PodRef::new(ns, name)),
            _ => Err(BadPodRef(s.to_owned())),
        }
    }
}

impl<'de> Deserialize<'de> for PodRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_refs_parse_namespace_slash_name_only() {
        assert_eq!("x/a".parse::<PodRef>(), Ok(PodRef::new("x", "a")));
        assert!("x".parse::<PodRef>().is_err());
        assert!("x/".parse::<PodRef>().is_err());
        assert!("/a".parse::<PodRef>().is_err());
        assert!("x/a/b".parse::<PodRef>().is_err());
    }

    #[test]
    fn serves_reject_unknown_keys_and_protocols_by_name() {
        let e = serde_yaml::from_str::<Serve>("{port: 8080, protocol: TCP, grpc: true}").unwrap_err();
        assert!(e.to_string().contains("grpc"), "{e}");
        let s = serde_yaml::from_str::<Serve>("{port: 8080, protocol: TCP, http: true}").unwrap();
        assert_eq!(s, Serve::http(8080, None));
        let e = serde_yaml::from_str::<Serve>("{port: 80, protocol: SCTP}").unwrap_err();
        assert!(e.to_string().contains("SCTP"), "{e}");
    }
}
