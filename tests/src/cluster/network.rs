//! The lab cluster's own network: an underlay bridge in a network namespace of its own, with
//! the control plane's namespace and each node's namespace joined to it by a veth (named
//! `eth0` inside the member). Addresses are fixed (every cluster has its own namespaces, so
//! two clusters never meet); nothing is created in, or routed to, the machine's own namespace.
//!
//! ```text
//!   [<c>-cp] eth0 10.250.0.1 ── cp ┐
//!                                   ├─ ul0 (bridge, no address) in [<c>-ul]
//!   [<c>-n1] eth0 10.250.0.11 ─ n1 ┘        ... n2, n3 for more nodes
//!     └ pods 10.244.1.0/24 on the CNI's bridge; Services 10.96.0.0/16 via kube-proxy
//! ```
//! Every member routes each node's pod CIDR to that node's underlay address, so pods reach
//! other nodes, and the API server answers pods that come through the `kubernetes` Service.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::netns::{NetNs, NetnsError};

/// The underlay's subnet prefix length.
pub const UNDERLAY_PREFIX: u8 = 24;
/// The control plane's underlay address (the API server's advertise address).
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// Node `i` (1-based) is `10.250.0.<NODE_IP_BASE + i>`.
const NODE_IP_BASE: u8 = 10;
/// The pod network of the whole cluster; node `i` gets `10.244.<i>.0/24`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
const NODE_POD_PREFIX: u8 = 24;
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's ClusterIP (the first address of [`SERVICE_CIDR`]).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const API_PORT: u16 = 6443;
/// The most nodes one cluster has addresses and identities for.
pub const MAX_NODES: u8 = 16;
const BRIDGE: &str = "ul0";
/// The member's end of its veth.
pub const MEMBER_IFNAME: &str = "eth0";

/// Node `index`'s (1-based) underlay address.
pub fn node_ip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, 0, NODE_IP_BASE + index)
}

/// Node `index`'s pod CIDR.
pub fn node_pod_cidr(index: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, index, 0), NODE_POD_PREFIX).unwrap_or_default()
}

/// `https://10.250.0.1:6443`.
pub fn api_server_url() -> String {
    format!("https://{CONTROL_PLANE_IP}:{API_PORT}")
}

/// The underlay: a bridge alone in its namespace.
#[derive(Debug)]
pub struct Underlay {
    netns: NetNs,
}

impl Underlay {
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        let netns = NetNs::create(name)?;
        netns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        netns.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(Underlay { netns })
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// Joins `member` to the bridge with a veth (`port` on the bridge side, [`MEMBER_IFNAME`]
    /// inside the member) and gives it `addr` on the underlay subnet. Created inside the
    /// underlay namespace, so no name can clash with the machine's links.
    pub fn attach(&self, member: &NetNs, port: &str, addr: Ipv4Addr) -> Result<(), NetnsError> {
        self.netns.ip(&["link", "add", port, "type", "veth", "peer", "name", MEMBER_IFNAME, "netns", member.name()])?;
        self.netns.ip(&["link", "set", port, "master", BRIDGE])?;
        self.netns.ip(&["link", "set", port, "up"])?;
        member.ip(&["addr", "add", &format!("{addr}/{UNDERLAY_PREFIX}"), "dev", MEMBER_IFNAME])?;
        member.ip(&["link", "set", MEMBER_IFNAME, "up"])?;
        Ok(())
    }
}

/// Routes `pod_cidr` to the node at `via` from inside `member`.
pub fn route_pods(member: &NetNs, pod_cidr: Ipv4Net, via: Ipv4Addr) -> Result<(), NetnsError> {
    member.ip(&["route", "replace", &pod_cidr.to_string(), "via", &via.to_string(), "dev", MEMBER_IFNAME])?;
    Ok(())
}

/// A route for the Service range inside a node: a connection from the node itself to a
/// ClusterIP needs one to get past the routing decision that comes before kube-proxy's DNAT
/// in OUTPUT (the lab has no default route). Traffic to a ClusterIP without endpoints goes to
/// the underlay, where nobody forwards it.
pub fn route_services(node: &NetNs) -> Result<(), NetnsError> {
    node.ip(&["route", "replace", SERVICE_CIDR, "dev", MEMBER_IFNAME])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_and_pod_cidrs_are_distinct_and_inside_their_ranges() {
        let cluster: Ipv4Net = CLUSTER_CIDR.parse().unwrap();
        let underlay = Ipv4Net::new(CONTROL_PLANE_IP, UNDERLAY_PREFIX).unwrap().trunc();
        for i in 1..=MAX_NODES {
            assert!(cluster.contains(&node_pod_cidr(i)), "{}", node_pod_cidr(i));
            assert!(underlay.contains(&node_ip(i)));
            assert_ne!(node_ip(i), CONTROL_PLANE_IP);
        }
        assert_ne!(node_pod_cidr(1), node_pod_cidr(2));
        let services: Ipv4Net = SERVICE_CIDR.parse().unwrap();
        assert!(services.contains(&KUBERNETES_SERVICE_IP));
        assert!(!services.contains(&cluster.network()) && !cluster.contains(&services.network()));
    }
}
