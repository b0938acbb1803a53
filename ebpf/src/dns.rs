//! Steering a proxied pod's DNS to the agent's DNS proxy (`ward_common::fqdn`), without
//! changing the packet: `from_pod` marks it (the agent routes marked packets to the local
//! stack) and assigns it to the proxy's socket with `bpf_sk_assign`, as TPROXY would. The
//! proxy thus sees the pod's own source and the resolver the pod asked, and answers from that
//! resolver's address; the reply crosses `to_pod` as the reply of the tracked flow.
//!
//! Only traffic the policy already allowed is steered (the decision runs first), so a pod
//! reaches through the proxy exactly the resolvers it may reach. No proxy socket means the
//! packet is dropped (`DnsProxyDown`): DNS fails closed, egress never opens.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, bpf_sock, bpf_sock_tuple},
    helpers::generated::{bpf_sk_assign, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    programs::TcContext,
};
use ward_common::{
    Reason,
    addr::is_v4_mapped,
    fqdn::{DNS_PORT, DNS_PROXY_MARK, DNS_PROXY_MARK_MASK, EP_DNS_PROXY},
};

use crate::datapath::Outcome;
use crate::maps::DNS_CFG;
use crate::parse::{PROTO_TCP, PROTO_UDP, Tuple};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Steers an allowed egress packet if it is DNS of a proxied pod; returns the reason to
/// record (`reason` unchanged, or `DnsProxyDown`).
#[inline(always)]
pub fn steer(ctx: &TcContext, o: &Outcome, reason: Reason) -> Reason {
    let t = &o.tuple;
    if o.ep_flags & EP_DNS_PROXY == 0 || t.dport != DNS_PORT || (t.proto != PROTO_UDP && t.proto != PROTO_TCP) {
        return reason;
    }
    // Flows the pod starts (new or tracked); replies and unpoliced packets stay as they are.
    if !matches!(reason, Reason::PolicyAllow | Reason::Established) {
        return reason;
    }
    // SAFETY: `skb` is the context pointer the kernel handed us; `mark` is writable from TC.
    // Volatile, whole-word accesses: the verifier refuses the byte-wide store LLVM would
    // otherwise emit for the masked update.
    unsafe {
        let mark = core::ptr::addr_of_mut!((*ctx.skb.skb).mark);
        let old = core::ptr::read_volatile(mark);
        core::ptr::write_volatile(mark, (old & !DNS_PROXY_MARK_MASK) | DNS_PROXY_MARK);
    }
    // TCP segments after the SYN reach their socket (the accepted connection, or the
    // handshake's request) by the ordinary lookup once routed locally.
    if t.proto == PROTO_TCP && o.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return reason;
    }
    let port = match DNS_CFG.get(0) {
        Some(c) => c.port,
        None => 0,
    };
    if port == 0 || !assign(ctx, t, port) {
        return Reason::DnsProxyDown;
    }
    reason
}

/// Finds the proxy's socket for this packet (UDP socket, or TCP listener) and assigns it.
#[inline(always)]
fn assign(ctx: &TcContext, t: &Tuple, port: u16) -> bool {
    // SAFETY: a plain C struct of integers; all-zero is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if is_v4_mapped(&t.saddr) {
        // SAFETY: writing the union's IPv4 member, the one the size below selects.
        unsafe {
            let v4 = &mut tuple.__bindgen_anon_1.ipv4;
            v4.saddr = u32::from_ne_bytes([t.saddr[12], t.saddr[13], t.saddr[14], t.saddr[15]]);
            v4.daddr = u32::from_ne_bytes([t.daddr[12], t.daddr[13], t.daddr[14], t.daddr[15]]);
            v4.sport = t.sport.to_be();
            v4.dport = port.to_be();
        }
        12
    } else {
        // SAFETY: writing the union's IPv6 member, the one the size below selects.
        unsafe {
            let v6 = &mut tuple.__bindgen_anon_1.ipv6;
            for i in 0..4 {
                let j = i * 4;
                v6.saddr[i] = u32::from_ne_bytes([t.saddr[j], t.saddr[j + 1], t.saddr[j + 2], t.saddr[j + 3]]);
                v6.daddr[i] = u32::from_ne_bytes([t.daddr[j], t.daddr[j + 1], t.daddr[j + 2], t.daddr[j + 3]]);
            }
            v6.sport = t.sport.to_be();
            v6.dport = port.to_be();
        }
        36
    };
    let skb = ctx.skb.skb.cast();
    // SAFETY: the helpers take the context, a tuple on our stack and its size; the socket
    // they return is released on every path below (the verifier checks that too).
    unsafe {
        let sk: *mut bpf_sock = if t.proto == PROTO_UDP {
            bpf_sk_lookup_udp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0)
        } else {
            bpf_sk_lookup_tcp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0)
        };
        if sk.is_null() {
            return false;
        }
        // A SYN only to a listener (an established socket with this tuple cannot exist).
        let ok = (t.proto == PROTO_UDP || (*sk).state == BPF_TCP_LISTEN) && bpf_sk_assign(skb, sk.cast(), 0) == 0;
        bpf_sk_release(sk.cast());
        ok
    }
}
