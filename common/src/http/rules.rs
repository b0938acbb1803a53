//! Compiled HTTP rules and the matcher: what a policed port admits, as the kernel stores it.
//!
//! A `WARD_POLICY` entry whose value carries [`POLICY_HTTP`] admits the connection at L4 but
//! only requests that match the rule set named in its low bits ([`HttpSet`] in
//! `WARD_HTTP_SETS`). A set holds every HTTP rule that applies to one (subject, peer, port)
//! entry, the union of all selecting policies, at most [`SET_RULES_MAX`] of them, and
//! [`match_request`] walks at most that many: one map lookup per set, then a bounded scan
//! with early exits, whatever the number of policies.

use super::parse::METHOD_MAX;
use super::path::PATH_MAX;

/// `PolicyValue.flags` bit: the entry admits requests matching an HTTP rule set, not the
/// whole connection.
pub const POLICY_HTTP: u32 = 1 << 31;
/// `PolicyValue.flags` bits holding the set id of an HTTP entry.
pub const POLICY_HTTP_SET_MASK: u32 = (1 << 24) - 1;
/// Largest set id.
pub const SET_ID_MAX: u32 = POLICY_HTTP_SET_MASK;
/// Rules one set holds at most (the compiler reports a port whose union of rules for one
/// peer is larger, and enforces only the first ones: fewer allows, never more).
pub const SET_RULES_MAX: usize = 16;
/// Longest rule path.
pub const RULE_PATH_MAX: usize = 128;

/// `EndpointInfo.flags` bit: some ingress port of this endpoint has HTTP rules, so its
/// allowed TCP packets go through the HTTP program. Beside the `EP_ISOLATED_*` bits.
pub const EP_HTTP_INGRESS: u32 = 1 << 8;
const _: () = assert!(EP_HTTP_INGRESS & (crate::maps::EP_ISOLATED_INGRESS | crate::maps::EP_ISOLATED_EGRESS) == 0);

/// The HTTP set of a policy entry's flags, if it is an HTTP entry.
#[inline(always)]
pub const fn policy_http_set(flags: u32) -> Option<u32> {
    if flags & POLICY_HTTP != 0 { Some(flags & POLICY_HTTP_SET_MASK) } else { None }
}

/// The flags of an HTTP entry for `set`.
pub const fn policy_http_flags(set: u32) -> u32 {
    POLICY_HTTP | (set & POLICY_HTTP_SET_MASK)
}

pub const KIND_EXACT: u8 = 1;
pub const KIND_PREFIX: u8 = 2;

/// One rule of a set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpRuleEntry {
    /// The policy rule (ingress rule of a policy) it comes from.
    pub rule_id: u32,
    /// Index of the port in that rule's `ports`, and of this entry in the port's `http`.
    pub port_index: u8,
    pub http_index: u8,
    /// `KIND_EXACT` or `KIND_PREFIX`.
    pub kind: u8,
    /// 0: any method.
    pub method_len: u8,
    pub path_len: u8,
    pub _pad: [u8; 7],
    pub method: [u8; METHOD_MAX],
    pub path: [u8; RULE_PATH_MAX],
}

/// `WARD_HTTP_SETS` value: the rules of one set, the first `len` entries used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HttpSet {
    pub len: u32,
    pub _pad: u32,
    pub rules: [HttpRuleEntry; SET_RULES_MAX],
}

const _: () = assert!(core::mem::size_of::<HttpRuleEntry>() == 16 + METHOD_MAX + RULE_PATH_MAX);
const _: () = assert!(core::mem::size_of::<HttpSet>() == 8 + SET_RULES_MAX * core::mem::size_of::<HttpRuleEntry>());

impl HttpRuleEntry {
    pub const EMPTY: HttpRuleEntry = HttpRuleEntry {
        rule_id: 0,
        port_index: 0,
        http_index: 0,
        kind: 0,
        method_len: 0,
        path_len: 0,
        _pad: [0; 7],
        method: [0; METHOD_MAX],
        path: [0; RULE_PATH_MAX],
    };

    /// An entry; `None` if the method or path is longer than the datapath compares.
    pub fn new(
        rule_id: u32,
        port_index: u8,
        http_index: u8,
        method: Option<&[u8]>,
        path: &[u8],
        prefix: bool,
    ) -> Option<Self> {
        let mut e = HttpRuleEntry::EMPTY;
        e.rule_id = rule_id;
        e.port_index = port_index;
        e.http_index = http_index;
        e.kind = if prefix { KIND_PREFIX } else { KIND_EXACT };
        if let Some(m) = method {
            if m.is_empty() || m.len() > METHOD_MAX {
                return None;
            }
            e.method[..m.len()].copy_from_slice(m);
            e.method_len = m.len() as u8;
        }
        if path.len() > RULE_PATH_MAX {
            return None;
        }
        e.path[..path.len()].copy_from_slice(path);
        e.path_len = path.len() as u8;
        Some(e)
    }

    pub fn method(&self) -> Option<&[u8]> {
        match self.method_len as usize {
            0 => None,
            n => Some(&self.method[..n.min(METHOD_MAX)]),
        }
    }

    pub fn path(&self) -> &[u8] {
        &self.path[..(self.path_len as usize).min(RULE_PATH_MAX)]
    }

    /// Whether a request with this method (exact bytes, zero-padded) and normalised path
    /// (the first `path_len` bytes of `path`) matches. Compares eight bytes at a time: a
    /// rule costs at most 2 + 16 word comparisons, which keeps the verifier's work small.
    #[inline(always)]
    pub fn matches(&self, method: &[u8; METHOD_MAX], method_len: u8, path: &[u8; PATH_MAX], path_len: usize) -> bool {
        if self.method_len != 0
            && (self.method_len != method_len
                || word(&self.method, 0) != word(method, 0)
                || word(&self.method, 1) != word(method, 1))
        {
            return false;
        }
        let n = self.path_len as usize;
        let ok_len = if self.kind == KIND_EXACT { n == path_len } else { self.kind == KIND_PREFIX && n <= path_len };
        if !ok_len {
            return false;
        }
        let mut i = 0;
        // Bounded by RULE_PATH_MAX / 8 (verifier: constant trip count).
        while i < RULE_PATH_MAX / 8 {
            let done = i * 8;
            if done >= n {
                return true;
            }
            let left = n - done;
            let mask = if left >= 8 { u64::MAX } else { (1u64 << (left * 8)) - 1 };
            if (word(&self.path, i) ^ word(path, i)) & mask != 0 {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// The `i`-th eight bytes of `a`, little-endian (so byte 0 is the low byte: masks keep a
/// prefix). `i` past the array reads as zero.
#[inline(always)]
fn word<const N: usize>(a: &[u8; N], i: usize) -> u64 {
    let at = i * 8;
    if at + 8 > N {
        return 0;
    }
    let mut w = [0u8; 8];
    let mut k = 0;
    while k < 8 {
        w[k] = a[at + k];
        k += 1;
    }
    u64::from_le_bytes(w)
}

impl HttpSet {
    pub const EMPTY: HttpSet = HttpSet { len: 0, _pad: 0, rules: [HttpRuleEntry::EMPTY; SET_RULES_MAX] };

    pub fn entries(&self) -> &[HttpRuleEntry] {
        &self.rules[..(self.len as usize).min(SET_RULES_MAX)]
    }
}

/// The first rule of `set` that admits the request, if any. `method` is zero-padded past
/// `method_len` (as the parser keeps it), so a method compares as one 16-byte value.
#[inline(always)]
pub fn match_request<'s>(
    set: &'s HttpSet,
    method: &[u8; METHOD_MAX],
    method_len: u8,
    path: &[u8; PATH_MAX],
    path_len: usize,
) -> Option<&'s HttpRuleEntry> {
    let mut i = 0;
    // Bounded by SET_RULES_MAX (verifier: constant trip count).
    while i < SET_RULES_MAX {
        if i as u32 >= set.len {
            return None;
        }
        let r = &set.rules[i];
        if r.matches(method, method_len, path, path_len) {
            return Some(r);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(m: &[u8]) -> ([u8; METHOD_MAX], u8) {
        let mut a = [0u8; METHOD_MAX];
        a[..m.len()].copy_from_slice(m);
        (a, m.len() as u8)
    }

    fn set(rules: &[(Option<&str>, &str, bool)]) -> HttpSet {
        let mut s = HttpSet::EMPTY;
        for (i, (m, p, prefix)) in rules.iter().enumerate() {
            s.rules[i] = HttpRuleEntry::new(7, 0, i as u8, m.map(str::as_bytes), p.as_bytes(), *prefix).expect("fits");
        }
        s.len = rules.len() as u32;
        s
    }

    fn hit(s: &HttpSet, m: &str, p: &str) -> Option<u8> {
        let (mm, ml) = method(m.as_bytes());
        let mut path = [0xaau8; PATH_MAX];
        path[..p.len()].copy_from_slice(p.as_bytes());
        match_request(s, &mm, ml, &path, p.len()).map(|r| r.http_index)
    }

    #[test]
    fn methods_compare_exactly_and_paths_exactly_or_by_prefix() {
        let s = set(&[
            (Some("GET"), "/api/v1/products", false),
            (Some("POST"), "/api/v1/orders/", true),
            (None, "/healthz", false),
        ]);
        assert_eq!(hit(&s, "GET", "/api/v1/products"), Some(0));
        assert_eq!(hit(&s, "get", "/api/v1/products"), None, "methods are case-sensitive");
        assert_eq!(hit(&s, "GETX", "/api/v1/products"), None);
        assert_eq!(hit(&s, "GE", "/api/v1/products"), None);
        assert_eq!(hit(&s, "GET", "/api/v1/products/"), None, "exact means exact");
        assert_eq!(hit(&s, "GET", "/api/v1/product"), None);
        assert_eq!(hit(&s, "POST", "/api/v1/orders/"), Some(1));
        assert_eq!(hit(&s, "POST", "/api/v1/orders/42/items"), Some(1));
        assert_eq!(hit(&s, "POST", "/api/v1/orders"), None);
        assert_eq!(hit(&s, "PUT", "/api/v1/orders/42"), None);
        assert_eq!(hit(&s, "HEAD", "/healthz"), Some(2), "no method: any method");
        assert_eq!(hit(&s, "DELETE", "/healthz"), Some(2));
        assert_eq!(hit(&s, "DELETE", "/healthz/x"), None);
    }

    #[test]
    fn only_the_first_len_rules_count() {
        let mut s = set(&[(None, "/a", false), (None, "/b", false)]);
        s.len = 1;
        assert_eq!(hit(&s, "GET", "/a"), Some(0));
        assert_eq!(hit(&s, "GET", "/b"), None);
    }

    #[test]
    fn policy_flags_carry_the_set() {
        assert_eq!(policy_http_set(0), None);
        assert_eq!(policy_http_set(policy_http_flags(77)), Some(77));
        assert_eq!(policy_http_set(policy_http_flags(SET_ID_MAX)), Some(SET_ID_MAX));
        assert!(HttpRuleEntry::new(1, 0, 0, Some(&[b'A'; 17]), b"/", false).is_none());
        assert!(HttpRuleEntry::new(1, 0, 0, None, &[b'a'; 129], false).is_none());
    }
}
