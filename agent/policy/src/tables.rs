//! The compiled maps as `ward_common::lookup::Tables`, so user space runs the kernel's own
//! lookup order (`decide_new_flow`) on them: `explain` and the property tests use it.
//!
//! Both maps are LPM tries in the kernel. The emulation is exact: it tries the prefix
//! lengths present in the map from longest to shortest, masking the key's data bits
//! big-endian, and returns the first stored entry that matches. Lengths absent from the map
//! are skipped (found by walking the map's key order, which sorts by `prefixlen` first),
//! which only saves time. Stored keys are canonical (bits past `prefixlen` are zero), as
//! the compiler writes them.

use std::collections::BTreeMap;

use ward_common::addr::Addr16;
use ward_common::fqdn::{LEARNED_KEY_BITS, LearnedKey, LearnedKeyData, LearnedValue};
use ward_common::lookup::Tables;
use ward_common::maps::{IpcacheKey, IpcacheValue, POLICY_KEY_BITS, PolicyKey, PolicyValue};

use crate::compile::Compiled;

/// Lookups over a `Compiled`, as the kernel does them over the loaded maps.
#[derive(Clone, Copy, Debug)]
pub struct CompiledTables<'a>(pub &'a Compiled);

/// Clears every bit of `data` past the first `bits` (big-endian bit order).
pub fn mask<const N: usize>(mut data: [u8; N], bits: u32) -> [u8; N] {
    for (i, byte) in data.iter_mut().enumerate() {
        let start = (i as u32) * 8;
        if bits <= start {
            *byte = 0;
        } else if bits < start + 8 {
            *byte &= 0xffu8 << (8 - (bits - start));
        }
    }
    data
}

fn policy_data(k: &PolicyKey) -> [u8; 12] {
    let mut d = [0u8; 12];
    d[0..4].copy_from_slice(&k.subject_be);
    d[4..8].copy_from_slice(&k.peer_be);
    d[8] = k.dir;
    d[9] = k.proto;
    d[10..12].copy_from_slice(&k.port_be);
    d
}

fn policy_key(prefixlen: u32, d: [u8; 12]) -> PolicyKey {
    PolicyKey {
        prefixlen,
        subject_be: [d[0], d[1], d[2], d[3]],
        peer_be: [d[4], d[5], d[6], d[7]],
        dir: d[8],
        proto: d[9],
        port_be: [d[10], d[11]],
    }
}

/// `key` with every data bit past the first `len` cleared and `len` as its prefix length: the
/// entry of that length that would cover `key`.
pub fn masked_policy_key(key: &PolicyKey, len: u32) -> PolicyKey {
    policy_key(len, mask(policy_data(key), len))
}

/// Longest-prefix match in a map whose keys order by prefix length first: `probe(len)` builds
/// the masked lookup key of one length, `len_of` reads a stored key's length, and
/// `lowest(len)` is the smallest possible key of that length (the walk's bound).
fn lpm<K: Ord, V: Copy>(
    map: &BTreeMap<K, V>,
    max_len: u32,
    probe: impl Fn(u32) -> K,
    len_of: impl Fn(&K) -> u32,
    lowest: impl Fn(u32) -> K,
) -> Option<V> {
    // Every key below `lowest(len + 1)` has a length of at most `len`.
    let mut next = map.range(..lowest(max_len.saturating_add(1))).next_back().map(|(k, _)| len_of(k));
    while let Some(len) = next {
        if let Some(v) = map.get(&probe(len)) {
            return Some(*v);
        }
        next = map.range(..lowest(len)).next_back().map(|(k, _)| len_of(k));
    }
    None
}

/// The longest entry of an ipcache map that covers the whole prefix `key` (the prefix
/// itself included): what every address of `key` resolves to when no longer entry holds it.
pub fn ipcache_covering(map: &BTreeMap<IpcacheKey, IpcacheValue>, key: &IpcacheKey) -> Option<IpcacheValue> {
    let addr = key.addr;
    lpm(
        map,
        key.prefixlen.min(128),
        |len| IpcacheKey { prefixlen: len, addr: mask(addr, len) },
        |k| k.prefixlen,
        |len| IpcacheKey { prefixlen: len, addr: [0; 16] },
    )
}

/// Lookups over a `Compiled` plus the learned addresses the DNS proxy wrote (as it writes
/// them into `WARD_FQDN`), at the time `now_ns`.
#[derive(Clone, Copy, Debug)]
pub struct LearnedTables<'a> {
    pub compiled: &'a Compiled,
    pub learned: &'a BTreeMap<LearnedKey, LearnedValue>,
    pub now_ns: u64,
}

fn learned_data(d: &LearnedKeyData) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[0..4].copy_from_slice(&d.ep_id_be);
    out[4..20].copy_from_slice(&d.addr);
    out[20] = d.proto;
    out[21..23].copy_from_slice(&d.port_be);
    out
}

fn learned_key(prefixlen: u32, d: [u8; 24]) -> LearnedKey {
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&d[4..20]);
    LearnedKey {
        prefixlen,
        data: LearnedKeyData {
            ep_id_be: [d[0], d[1], d[2], d[3]],
            addr,
            proto: d[20],
            port_be: [d[21], d[22]],
            _pad: 0,
        },
    }
}

/// Longest-prefix match in a learned map, as the kernel's `WARD_FQDN` trie answers it.
pub fn learned_lookup(map: &BTreeMap<LearnedKey, LearnedValue>, key: &LearnedKey) -> Option<LearnedValue> {
    let data = learned_data(&key.data);
    lpm(
        map,
        key.prefixlen.min(LEARNED_KEY_BITS),
        |len| learned_key(len, mask(data, len)),
        |k| k.prefixlen,
        |len| learned_key(len, [0; 24]),
    )
}

impl Tables for LearnedTables<'_> {
    fn ipcache(&self, addr: &Addr16) -> Option<IpcacheValue> {
        CompiledTables(self.compiled).ipcache(addr)
    }

    fn policy(&self, key: &PolicyKey) -> Option<PolicyValue> {
        CompiledTables(self.compiled).policy(key)
    }

    fn learned(&self, key: &LearnedKey) -> Option<LearnedValue> {
        learned_lookup(self.learned, key)
    }

    fn now_ns(&self) -> u64 {
        self.now_ns
    }
}

impl Tables for CompiledTables<'_> {
    /// The compiled maps alone hold no learned addresses (see [`LearnedTables`]).
    fn learned(&self, _key: &LearnedKey) -> Option<LearnedValue> {
        None
    }

    fn now_ns(&self) -> u64 {
        0
    }

    fn ipcache(&self, addr: &Addr16) -> Option<IpcacheValue> {
        lpm(
            &self.0.ipcache,
            128,
            |len| IpcacheKey { prefixlen: len, addr: mask(*addr, len) },
            |k| k.prefixlen,
            |len| IpcacheKey { prefixlen: len, addr: [0; 16] },
        )
    }

    fn policy(&self, key: &PolicyKey) -> Option<PolicyValue> {
        let data = policy_data(key);
        lpm(
            &self.0.policy,
            key.prefixlen.min(POLICY_KEY_BITS),
            |len| policy_key(len, mask(data, len)),
            |k| k.prefixlen,
            |len| policy_key(len, [0; 12]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_common::Direction;
    use ward_common::ports::PortBlock;

    #[test]
    fn mask_clears_bits_past_the_prefix() {
        assert_eq!(mask([0xff, 0xff], 0), [0, 0]);
        assert_eq!(mask([0xff, 0xff], 4), [0xf0, 0]);
        assert_eq!(mask([0xff, 0xff], 12), [0xff, 0xf0]);
        assert_eq!(mask([0xff, 0xff], 16), [0xff, 0xff]);
        assert_eq!(mask([0xff, 0xff], 99), [0xff, 0xff]);
    }

    #[test]
    fn ipcache_lookup_prefers_the_longest_prefix() {
        let mut c = Compiled::default();
        let wide = IpcacheKey { prefixlen: 96 + 8, addr: ward_common::addr::v4_mapped([10, 0, 0, 0]) };
        let narrow = IpcacheKey { prefixlen: 96 + 24, addr: ward_common::addr::v4_mapped([10, 1, 2, 0]) };
        c.ipcache.insert(wide, IpcacheValue { identity: 1, cidr_identity: 10 });
        c.ipcache.insert(narrow, IpcacheValue { identity: 1, cidr_identity: 20 });
        let t = CompiledTables(&c);
        let at = |a: [u8; 4]| t.ipcache(&ward_common::addr::v4_mapped(a)).map(|v| v.cidr_identity);
        assert_eq!(at([10, 1, 2, 3]), Some(20));
        assert_eq!(at([10, 1, 3, 3]), Some(10));
        assert_eq!(at([11, 1, 2, 3]), None);
    }

    #[test]
    fn policy_lookup_covers_port_blocks_and_any_protocol() {
        let mut c = Compiled::default();
        let dir = Direction::Ingress;
        c.policy.insert(
            PolicyKey::port_block(300, 400, dir, 6, PortBlock { base: 64, prefix_len: 12 }),
            PolicyValue { rule_id: 1, flags: 0 },
        );
        c.policy.insert(PolicyKey::any_proto(300, 500, dir), PolicyValue { rule_id: 2, flags: 0 });
        let t = CompiledTables(&c);
        let rule = |peer, proto, port| t.policy(&PolicyKey::lookup(300, peer, dir, proto, port)).map(|v| v.rule_id);
        assert_eq!(rule(400, 6, 64), Some(1));
        assert_eq!(rule(400, 6, 79), Some(1));
        assert_eq!(rule(400, 6, 80), None);
        assert_eq!(rule(400, 17, 70), None);
        assert_eq!(rule(500, 132, 9), Some(2));
        assert_eq!(rule(501, 6, 9), None);
        assert_eq!(t.policy(&PolicyKey::lookup(300, 400, Direction::Egress, 6, 70)), None);
    }
}

impl CompiledTables<'_> {
    /// The kernel's decision for a new flow of the local pod `subject` in `dir` with the peer
    /// at `peer`, or `None` when `subject` is not a local pod of this compile. `from_node` says
    /// the packet comes from the node's own stack (the node as a peer, not one of its
    /// addresses forwarded from elsewhere).
    pub fn decide_for(
        &self,
        subject: &crate::cluster::PodKey,
        dir: ward_common::Direction,
        peer: std::net::IpAddr,
        proto: crate::validate::Protocol,
        port: u16,
        from_node: bool,
    ) -> Option<ward_common::lookup::Decision> {
        let identity = *self.0.pod_identity.get(subject)?;
        let flags = *self.0.isolation.get(&identity)?;
        let ep =
            ward_common::maps::EndpointInfo { ep_id: 1, identity, flags, _pad: 0, addr_v4: [0; 16], addr_v6: [0; 16] };
        let flow = ward_common::lookup::Flow {
            peer: ward_common::addr::addr16(peer),
            proto: proto.number(),
            port,
            from_node_stack: from_node && dir == ward_common::Direction::Ingress,
        };
        Some(ward_common::lookup::decide_new_flow(self, &ep, dir, &flow))
    }
}
