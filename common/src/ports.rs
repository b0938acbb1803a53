//! Port ranges as prefixes, so `endPort` ranges cost one LPM lookup, not a scan.
//!
//! A range `[first, last]` of 16-bit ports is covered exactly by at most 30 aligned blocks of
//! the form `base/len` (the top `len` bits fixed). The policy map stores one entry per block.

/// One aligned block of ports: the ports whose top `prefix_len` bits equal `base`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortBlock {
    pub base: u16,
    /// 0..=16 bits; 16 is a single port, 0 every port.
    pub prefix_len: u8,
}

impl PortBlock {
    pub const fn first(self) -> u16 {
        self.base
    }
    pub const fn last(self) -> u16 {
        let span = if self.prefix_len == 0 { u16::MAX } else { (1u32 << (16 - self.prefix_len as u32)) as u16 - 1 };
        self.base | span
    }
    pub const fn contains(self, port: u16) -> bool {
        port >= self.first() && port <= self.last()
    }
}

/// The most blocks one range can need.
pub const MAX_BLOCKS: usize = 32;

/// Splits `[first, last]` into the minimal list of aligned blocks, in ascending order.
/// Writes into `out` and returns how many were written; an empty range (`first > last`)
/// gives none.
pub fn range_to_blocks(first: u16, last: u16, out: &mut [PortBlock; MAX_BLOCKS]) -> usize {
    let mut n = 0;
    if first > last {
        return 0;
    }
    let mut lo = first as u32;
    let hi = last as u32;
    while lo <= hi {
        // Largest block starting at `lo` (alignment) that stays within `hi`.
        let mut size_bits = if lo == 0 { 16 } else { lo.trailing_zeros().min(16) };
        while size_bits > 0 && lo + (1u32 << size_bits) - 1 > hi {
            size_bits -= 1;
        }
        out[n] = PortBlock { base: lo as u16, prefix_len: (16 - size_bits) as u8 };
        n += 1;
        lo += 1u32 << size_bits;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(first: u16, last: u16) -> ([PortBlock; MAX_BLOCKS], usize) {
        let mut out = [PortBlock { base: 0, prefix_len: 0 }; MAX_BLOCKS];
        let n = range_to_blocks(first, last, &mut out);
        (out, n)
    }

    #[test]
    fn blocks_cover_exactly_the_range() {
        for (first, last) in
            [(0, 65535), (53, 84), (53, 80), (1, 65535), (80, 80), (1000, 1999), (65535, 65535), (0, 0)]
        {
            let (out, n) = blocks(first, last);
            assert!(n <= 30, "{first}-{last} needs {n} blocks");
            for p in 0..=u16::MAX {
                let inside = p >= first && p <= last;
                let hits = out[..n].iter().filter(|b| b.contains(p)).count();
                assert_eq!(hits, inside as usize, "port {p} in {first}-{last}");
            }
        }
    }

    #[test]
    fn full_range_is_one_block_and_empty_range_none() {
        let (out, n) = blocks(0, 65535);
        assert_eq!(n, 1);
        assert_eq!(out[0].prefix_len, 0);
        assert_eq!(blocks(9, 8).1, 0);
    }
}
