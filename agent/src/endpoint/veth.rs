//! The pod's veth pair, through rtnetlink: creation with the peer placed straight into the
//! pod's namespace, the pod side's addresses, routes and gateway neighbour, the host side's
//! activation (link up, routes and neighbours towards the pod) and removal.
//!
//! Addressing model (the same for both families): the pod gets a host address (/32, /128) and
//! reaches everything through a link-local gateway (169.254.1.1, fe80::1) that is answered by
//! a permanent neighbour entry pointing at the host side's fixed MAC, so no ARP/ND proxy is
//! needed and every packet the pod sends lands on the host veth, where Ward's programs sit.
//!
//! [`Netlink`] is a synchronous facade over one rtnetlink connection driven by a
//! current-thread runtime: the CNI plugin is a short-lived process that does one thing at a
//! time and needs the steps in order, with rollback in between.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::netns::NetNs;

/// The host side's MAC on every pod veth; the pod's gateway neighbour entries point at it.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The pod's IPv4 gateway: link-local, never on the wire, answered by a static neighbour.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const HOST_IFNAME_PREFIX: &str = "wd";
/// Hex digits of the hash in the host name: "wd" + 11 = 13 bytes, within IFNAMSIZ-1 = 15.
const HOST_IFNAME_HASH_DIGITS: u32 = 11;

/// The host side's name for an attachment: stable, so DEL finds it without any state.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut key = Vec::with_capacity(container_id.len() + 1 + ifname.len());
    key.extend_from_slice(container_id.as_bytes());
    key.push(0);
    key.extend_from_slice(ifname.as_bytes());
    let hash = ward_common::hash::fnv1a64(&key) >> (64 - 4 * HOST_IFNAME_HASH_DIGITS);
    format!("{HOST_IFNAME_PREFIX}{hash:0width$x}", width = HOST_IFNAME_HASH_DIGITS as usize)
}

/// The gateway the pod uses for `ip`'s family.
pub fn gateway_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY_V6),
    }
}

/// Prefix length of a single-address route or address in `ip`'s family.
pub fn host_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// What a netlink request was doing, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    CreateVeth,
    FindLink,
    SetLinkUp,
    DeleteLink,
    AddAddress,
    ListAddresses,
    AddRoute,
    AddNeighbour,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CreateVeth => "creating veth",
            Self::FindLink => "looking up interface",
            Self::SetLinkUp => "setting up interface",
            Self::DeleteLink => "deleting interface",
            Self::AddAddress => "adding address",
            Self::ListAddresses => "listing addresses of",
            Self::AddRoute => "adding route",
            Self::AddNeighbour => "adding neighbour",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VethError {
    #[error("cannot start the netlink runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{op} {object}: {source}")]
    Netlink {
        op: Op,
        object: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface {name} does not exist")]
    NoSuchLink { name: String },
}

impl VethError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { source: rtnetlink::Error::NetlinkError(m), .. } => m.code.map(|c| -c.get()),
            _ => None,
        }
    }

    pub fn already_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

/// An interface as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: Vec<u8>,
    pub up: bool,
}

impl Link {
    fn from_message(name: &str, msg: &LinkMessage) -> Self {
        let mac = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => Some(mac.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Self { name: name.to_owned(), index: msg.header.index, mac, up: msg.header.flags.contains(LinkFlags::Up) }
    }
}

/// Formats a MAC the way CNI results and `ip` do.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The veth pair to create.
#[derive(Clone, Copy, Debug)]
pub struct VethSpec<'a> {
    pub host_ifname: &'a str,
    pub pod_ifname: &'a str,
    pub mtu: u32,
}

/// One rtnetlink connection in the namespace of the thread that opened it.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace.
    pub fn open() -> Result<Self, VethError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(VethError::Runtime)?;
        let (connection, handle, _) = {
            let _context = rt.enter();
            rtnetlink::new_connection().map_err(VethError::Socket)?
        };
        rt.spawn(connection);
        Ok(Self { rt, handle })
    }

    fn netlink(op: Op, object: impl fmt::Display) -> impl FnOnce(rtnetlink::Error) -> VethError {
        let object = object.to_string();
        move |source| VethError::Netlink { op, object, source }
    }

    /// The interface called `name`, if any.
    pub fn link(&self, name: &str) -> Result<Option<Link>, VethError> {
        let request = self.handle.link().get().match_name(name.to_owned()).execute();
        match self.rt.block_on(async {
            futures::pin_mut!(request);
            request.try_next().await
        }) {
            Ok(msg) => Ok(msg.map(|m| Link::from_message(name, &m))),
            Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| -c.get()) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Self::netlink(Op::FindLink, name)(e)),
        }
    }

    /// The names of every interface in this namespace (one dump, for sweeps over many pods).
    pub fn link_names(&self) -> Result<std::collections::BTreeSet<String>, VethError> {
        let request = self.handle.link().get().execute();
        let messages: Vec<LinkMessage> =
            self.rt.block_on(request.try_collect()).map_err(Self::netlink(Op::FindLink, "(all)"))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
            })
            .collect())
    }

    fn existing_link(&self, name: &str) -> Result<Link, VethError> {
        self.link(name)?.ok_or_else(|| VethError::NoSuchLink { name: name.to_owned() })
    }

    /// Creates the pair with the peer directly in `pod_netns` under its final name, both ends
    /// down; returns the host side.
    pub fn create_veth(&self, spec: VethSpec<'_>, pod_netns: &NetNs) -> Result<Link, VethError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.pod_ifname.to_owned())
            .mtu(spec.mtu)
            .setns_by_fd(pod_netns.raw_fd())
            .build();
        let message = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_ifname.to_owned())
            .mtu(spec.mtu)
            .address(HOST_MAC.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        let object = format_args!("{} (peer {} in {})", spec.host_ifname, spec.pod_ifname, pod_netns.path().display())
            .to_string();
        self.rt.block_on(self.handle.link().add(message).execute()).map_err(Self::netlink(Op::CreateVeth, object))?;
        self.existing_link(spec.host_ifname)
    }

    fn set_up(&self, link: &Link) -> Result<(), VethError> {
        let message = LinkUnspec::new_with_index(link.index).up().build();
        self.rt.block_on(self.handle.link().set(message).execute()).map_err(Self::netlink(Op::SetLinkUp, &link.name))
    }

    /// Deletes `link` (and with a veth, its peer); a link already gone is not an error.
    pub fn delete(&self, link: &Link) -> Result<(), VethError> {
        match self.rt.block_on(self.handle.link().del(link.index).execute()) {
            Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| -c.get()) == Some(libc::ENODEV) => Ok(()),
            other => other.map_err(Self::netlink(Op::DeleteLink, &link.name)),
        }
    }

    /// Deletes the interface called `name` if it exists; returns whether it did.
    pub fn delete_by_name(&self, name: &str) -> Result<bool, VethError> {
        match self.link(name)? {
            Some(link) => self.delete(&link).map(|()| true),
            None => Ok(false),
        }
    }

    fn add_address(&self, link: &Link, ip: IpAddr) -> Result<(), VethError> {
        let prefix = host_prefix(ip);
        let mut request = self.handle.address().add(link.index, ip, prefix);
        let message = request.message_mut();
        // rtnetlink sets the broadcast to the address itself for a /32, which would make the
        // kernel install a broadcast route for the pod's own address.
        message.attributes.retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        if ip.is_ipv6() {
            // The address is unique by allocation; DAD would only delay the pod by a second.
            message.header.flags |= AddressHeaderFlags::Nodad;
            message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.rt
            .block_on(request.execute())
            .map_err(Self::netlink(Op::AddAddress, format_args!("{ip}/{prefix} on {}", link.name)))
    }

    fn add_route(&self, link: &Link, dst: IpAddr, prefix: u8, gateway: Option<IpAddr>) -> Result<(), VethError> {
        let mut builder = RouteMessageBuilder::<IpAddr>::new().output_interface(link.index).scope(
            // IPv4 distinguishes on-link routes; IPv6 routes are always universe scope.
            if gateway.is_none() && dst.is_ipv4() { RouteScope::Link } else { RouteScope::Universe },
        );
        let message: &mut RouteMessage = builder.get_mut();
        message.header.address_family = if dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        message.header.destination_prefix_length = prefix;
        message.attributes.push(RouteAttribute::Destination(dst.into()));
        if let Some(gw) = gateway {
            message.attributes.push(RouteAttribute::Gateway(gw.into()));
        }
        let object = match gateway {
            Some(gw) => format!("{dst}/{prefix} via {gw} dev {}", link.name),
            None => format!("{dst}/{prefix} dev {}", link.name),
        };
        self.rt
            .block_on(self.handle.route().add(builder.build()).execute())
            .map_err(Self::netlink(Op::AddRoute, object))
    }

    fn add_neighbour(&self, link: &Link, ip: IpAddr, mac: &[u8]) -> Result<(), VethError> {
        let request = self.handle.neighbours().add(link.index, ip).link_local_address(mac);
        self.rt
            .block_on(request.execute())
            .map_err(Self::netlink(Op::AddNeighbour, format_args!("{ip} lladdr {} dev {}", format_mac(mac), link.name)))
    }

    /// Inside the pod's namespace: loopback and `ifname` up, the pod's addresses, the gateway
    /// routes and the gateway's permanent neighbour entry, per family present in `ips`.
    /// Returns the pod side. The host side is still down, so nothing flows yet.
    pub fn configure_pod_side(&self, ifname: &str, ips: &[IpAddr]) -> Result<Link, VethError> {
        self.set_up(&self.existing_link("lo")?)?;
        let link = self.existing_link(ifname)?;
        self.set_up(&link)?;
        for &ip in ips {
            self.add_address(&link, ip)?;
        }
        for &ip in ips {
            let gateway = gateway_for(ip);
            if ip.is_ipv4() {
                // IPv6 needs no such route: a link-local gateway is on-link on the named device.
                self.add_route(&link, gateway, host_prefix(gateway), None)?;
            }
            self.add_route(&link, unspecified_like(ip), 0, Some(gateway))?;
            self.add_neighbour(&link, gateway, &HOST_MAC)?;
        }
        Ok(link)
    }

    /// On the node, once the agent protects the pod: host side up, then a route and a
    /// permanent neighbour entry per pod address. The neighbour entries spare an ARP/ND round
    /// trip and do not depend on the host side's IPv6 link-local address, which stays
    /// tentative (unusable for ND) for a second after the link comes up.
    pub fn activate_host_side(&self, host: &Link, pod_mac: &[u8], ips: &[IpAddr]) -> Result<(), VethError> {
        self.set_up(host)?;
        for &ip in ips {
            self.add_route(host, ip, host_prefix(ip), None)?;
            self.add_neighbour(host, ip, pod_mac)?;
        }
        Ok(())
    }

    /// The addresses on `link`.
    pub fn addresses(&self, link: &Link) -> Result<Vec<IpAddr>, VethError> {
        let request = self.handle.address().get().set_link_index_filter(link.index).execute();
        let messages: Vec<_> =
            self.rt.block_on(request.try_collect()).map_err(Self::netlink(Op::ListAddresses, &link.name))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let address = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                local.or(address)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("wd") && a[2..].chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, host_ifname("0123456789abcdef", "eth1"));
        assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
    }

    #[test]
    fn macs_format_like_ip_link() {
        assert_eq!(format_mac(&HOST_MAC), "ee:ee:ee:ee:ee:ee");
        assert_eq!(format_mac(&[0, 1, 0xab, 2, 3, 4]), "00:01:ab:02:03:04");
    }
}
