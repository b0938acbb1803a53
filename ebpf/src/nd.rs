//! The one policy exemption inside IP: IPv6 neighbour discovery and MLD, exactly as far as a
//! pod and its node need them to keep the link working (RFC 4861, RFC 3810), and nothing
//! more. Anything else with these ICMPv6 types is policed like any ICMPv6 packet.
//!
//! The conditions, all of them required:
//! * Hop limit 255 for neighbour discovery (RFC 4861 requires it, and a forwarded packet can
//!   never have it) and 1 for MLD (so it never leaves the link).
//! * Types by direction: a pod may send router solicitations, neighbour solicitations and
//!   advertisements and MLD reports; it may receive router advertisements, redirects,
//!   solicitations, advertisements and MLD queries. A pod never advertises itself as a
//!   router, redirects or queries.
//! * Sources: link-local (fe80::/10), the unspecified address where the protocol uses it
//!   (duplicate address detection, MLD reports before an address exists), or, from the pod,
//!   its own address.
//! * Destinations: link-local unicast, the neighbour discovery multicast groups (all-nodes,
//!   all-routers, solicited-node), the pod's own address (ingress), and for MLD any
//!   multicast group (hop limit 1 keeps it on the link).
//! * A pod's advertisement names only itself: target link-local or its own address.

use ward_common::{Addr16, Direction, maps::EndpointInfo};

use crate::parse::{
    ICMPV6_MLD_DONE, ICMPV6_MLD_QUERY, ICMPV6_MLD_REPORT, ICMPV6_MLD2_REPORT, ICMPV6_NEIGH_ADVERT,
    ICMPV6_NEIGH_SOLICIT, ICMPV6_REDIRECT, ICMPV6_ROUTER_ADVERT, ICMPV6_ROUTER_SOLICIT, Packet,
};

#[inline(always)]
fn is_link_local(a: &Addr16) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

#[inline(always)]
fn is_unspecified(a: &Addr16) -> bool {
    u128::from_ne_bytes(*a) == 0
}

#[inline(always)]
fn is_multicast(a: &Addr16) -> bool {
    a[0] == 0xff
}

/// ff02::1 (all nodes), ff02::2 (all routers), ff02::1:ffXX:XXXX (solicited-node).
#[inline(always)]
fn is_nd_group(a: &Addr16) -> bool {
    let link_scope = a[0] == 0xff && a[1] == 0x02 && a[2..11].iter().all(|b| *b == 0);
    link_scope
        && ((a[11] == 0 && a[12..15].iter().all(|b| *b == 0) && (a[15] == 1 || a[15] == 2))
            || (a[11] == 1 && a[12] == 0xff))
}

#[inline(always)]
fn is_pod_v6(ep: &EndpointInfo, a: &Addr16) -> bool {
    !is_unspecified(&ep.addr_v6) && u128::from_ne_bytes(*a) == u128::from_ne_bytes(ep.addr_v6)
}

/// Whether a neighbour discovery / MLD packet is within what the protocol needs.
#[inline(always)]
pub fn exempt(ep: &EndpointInfo, dir: Direction, p: &Packet) -> bool {
    let ty = p.icmp_type;
    let mld = matches!(ty, ICMPV6_MLD_QUERY | ICMPV6_MLD_REPORT | ICMPV6_MLD_DONE | ICMPV6_MLD2_REPORT);
    if p.hop_limit != if mld { 1 } else { 255 } {
        return false;
    }
    let s = &p.tuple.saddr;
    let d = &p.tuple.daddr;
    let unspecified_ok = matches!(
        ty,
        ICMPV6_NEIGH_SOLICIT | ICMPV6_ROUTER_SOLICIT | ICMPV6_MLD_REPORT | ICMPV6_MLD_DONE | ICMPV6_MLD2_REPORT
    );
    let dst_ok = if mld { is_multicast(d) } else { is_link_local(d) || is_nd_group(d) };
    match dir {
        Direction::Egress => {
            let type_ok = matches!(
                ty,
                ICMPV6_ROUTER_SOLICIT
                    | ICMPV6_NEIGH_SOLICIT
                    | ICMPV6_NEIGH_ADVERT
                    | ICMPV6_MLD_REPORT
                    | ICMPV6_MLD_DONE
                    | ICMPV6_MLD2_REPORT
            );
            let src_ok = is_link_local(s) || is_pod_v6(ep, s) || (unspecified_ok && is_unspecified(s));
            let target_ok = ty != ICMPV6_NEIGH_ADVERT || is_link_local(&p.nd_target) || is_pod_v6(ep, &p.nd_target);
            type_ok && src_ok && dst_ok && target_ok
        }
        Direction::Ingress => {
            let type_ok = matches!(
                ty,
                ICMPV6_ROUTER_ADVERT | ICMPV6_NEIGH_SOLICIT | ICMPV6_NEIGH_ADVERT | ICMPV6_REDIRECT | ICMPV6_MLD_QUERY
            );
            let src_ok = is_link_local(s) || (ty == ICMPV6_NEIGH_SOLICIT && is_unspecified(s));
            type_ok && src_ok && (dst_ok || (!mld && is_pod_v6(ep, d)))
        }
    }
}
