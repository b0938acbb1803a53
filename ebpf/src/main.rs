//! Ward's datapath: two TC programs on the host side of every pod veth, attached with TCX,
//! and one on the node's uplinks (`to_netdev`: Service traffic leaving the node).
//!
//! `from_pod` (TCX ingress of the host veth) sees packets leaving the pod and applies the
//! pod's egress policy; `to_pod` (TCX egress of the host veth) sees packets entering the pod
//! and applies its ingress policy. Both share one pipeline (`datapath::process`): parse →
//! endpoint → conntrack → policy (`ward_common::lookup`, the order written once) → counters
//! and flow event. The entry points stay thin; the logic lives in the modules below. An
//! allowed TCP packet entering a pod with HTTP rules continues in `ward_http` (a tail call,
//! so the verifier budget of the two main programs is untouched).
#![no_std]
#![no_main]
// `core::intrinsics::atomic_xadd`: see `ct::count`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod ct;
mod datapath;
mod deliver;
mod dns;
mod event;
mod frag;
mod http;
mod maps;
mod nd;
mod parse;
mod service;
mod trace;

use aya_ebpf::{macros::classifier, programs::TcContext};
use ward_common::Direction;

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    datapath::process(&ctx, Direction::Egress)
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    datapath::process(&ctx, Direction::Ingress)
}

/// TCX egress of the node's uplinks: decides Service traffic whose backend is elsewhere
/// (`datapath::leave_node`); passes everything else.
#[classifier]
pub fn to_netdev(ctx: TcContext) -> i32 {
    datapath::leave_node(&ctx)
}

/// A same-node packet's ingress decision at its receiver and its delivery into the
/// receiver's namespace, reached from `from_pod` by a tail call (`deliver`).
#[classifier]
pub fn to_peer(ctx: TcContext) -> i32 {
    deliver::to_receiver(&ctx)
}

/// The HTTP request check, reached from `to_pod` by a tail call (`http::after_l4`).
#[classifier]
pub fn ward_http(ctx: TcContext) -> i32 {
    let verdict = http::judge(&ctx);
    trace::after_http(&ctx, verdict);
    verdict
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
