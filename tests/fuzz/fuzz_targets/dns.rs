//! Any bytes as a DNS query from a pod and as a resolver's answer: the proxy's message
//! handling never panics and never opens egress it should not (see
//! `ward_agent::dns::fuzz::one_input` for the invariants checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ward_agent::dns::fuzz::one_input(data));
