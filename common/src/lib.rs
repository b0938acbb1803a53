//! Everything Ward's kernel programs and its user space must agree on, defined once.
//!
//! The eBPF crate (`ebpf/`) and the agent (`agent/`) both import these types: map keys and
//! values, the flow event record, verdict and reason codes, identity numbering, map names and
//! sizes, and the policy lookup order itself (`lookup`), so that `ward policy explain` and the
//! unit tests run the very logic the kernel runs.
//!
//! Rules for every type here: `#[repr(C)]`, fixed-width integers or byte arrays only, explicit
//! padding so no byte is undefined, and a compile-time size assertion. Network-order fields are
//! byte arrays named `*_be`; conversion happens in the constructors below, nowhere else.
#![no_std]

pub mod addr;
pub mod fqdn;
pub mod hash;
pub mod http;
pub mod identity;
pub mod lookup;
pub mod maps;
pub mod ports;
pub mod reason;
pub mod service;
pub mod trace;

pub use addr::Addr16;
pub use reason::{Direction, Reason, Verdict};
