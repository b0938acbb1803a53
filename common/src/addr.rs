//! One address type for both families, so the IPv4 and IPv6 paths are the same code.
//!
//! IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) and their prefixes are offset by
//! 96 bits, which lets one LPM trie and one conntrack table serve both families.

/// A 16-byte address in network order; IPv4 is IPv4-mapped.
pub type Addr16 = [u8; 16];

/// Prefix length (in bits) of the IPv4-mapped block `::ffff:0:0/96`.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// Maps an IPv4 address (network-order bytes) into the 16-byte form.
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> Addr16 {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]
}

/// Any address in the 16-byte form (IPv4, and IPv4-mapped IPv6 written as IPv4, both mapped):
/// the one conversion from `IpAddr` user space uses.
pub fn addr16(ip: core::net::IpAddr) -> Addr16 {
    match ip.to_canonical() {
        core::net::IpAddr::V4(v4) => v4_mapped(v4.octets()),
        core::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// True if the address is IPv4-mapped.
#[inline(always)]
pub fn is_v4_mapped(a: &Addr16) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_round_trips_and_is_recognised() {
        let a = v4_mapped([10, 1, 2, 3]);
        assert!(is_v4_mapped(&a));
        assert_eq!(&a[12..], &[10, 1, 2, 3]);
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        assert!(!is_v4_mapped(&v6));
    }
}
