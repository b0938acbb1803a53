//! What the kernel keeps per policed connection, and what it reports: the map keys and
//! values of the HTTP datapath (`ebpf/src/http.rs`), its verdict codes and flow record.
//! Kept apart from `crate::maps` so that the L7 fields move as one piece when the flow
//! pipeline gets its own record format.

use core::mem::size_of;

use crate::addr::Addr16;

use super::parse::{METHOD_MAX, Parser, SEEN_MAX};

pub const MAP_HTTP_PROG: &str = "WARD_HTTP_PROG";
pub const MAP_HTTP_CONN: &str = "WARD_HTTP_CONN";
pub const MAP_HTTP_SETS: &str = "WARD_HTTP_SETS";
pub const MAP_HTTP_EVENTS: &str = "WARD_HTTP_EVT";
pub const MAP_HTTP_CNT: &str = "WARD_HTTP_CNT";

/// The pinned HTTP maps (the per-CPU work area is not pinned).
pub const HTTP_MAPS: [&str; 5] = [MAP_HTTP_PROG, MAP_HTTP_CONN, MAP_HTTP_SETS, MAP_HTTP_EVENTS, MAP_HTTP_CNT];

/// Name of the HTTP program, reached by a tail call from `to_pod` through slot 0 of
/// `WARD_HTTP_PROG`.
pub const HTTP_PROGRAM: &str = "ward_http";

/// Tracked connections (LRU: the least recently used is evicted; its next data packet is
/// reset, as a connection whose framing is unknown).
pub const HTTP_CONN_MAX: u32 = 16 * 1024;
/// HTTP rule sets.
pub const HTTP_SETS_MAX: u32 = 16 * 1024;
/// HTTP flow records ring buffer, bytes.
pub const HTTP_EVENTS_BYTES: u32 = 1024 * 1024;

/// `WARD_HTTP_CONN` key: a connection at the server endpoint, as the client opened it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HttpConnKey {
    pub ep_id: u32,
    pub saddr: Addr16,
    pub daddr: Addr16,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
}

/// `HttpConn::mode`: connection not subject to HTTP rules (another rule allows it at L4).
pub const MODE_PLAIN: u8 = 1;
/// Requests are judged.
pub const MODE_POLICED: u8 = 2;
/// A request was denied: both ends were reset and whatever else arrives is dropped.
pub const MODE_DENIED: u8 = 3;

/// Retransmissions of already judged bytes dropped in a row before the connection is reset
/// (the server's copy may have been lost after the datapath saw it).
pub const RETRANSMIT_RESET: u8 = 3;

/// `WARD_HTTP_CONN` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConn {
    /// The next client byte (TCP sequence number) to judge; bytes are judged once, in order.
    pub next_seq: u32,
    /// `WARD_CONFIG.policy_rev` the sets were taken under; stale sets are looked up again
    /// before the next byte is judged.
    pub rev: u32,
    /// The HTTP rule sets that apply (for the peer's label identity, CIDR identity and any
    /// peer); 0 = none. A request is allowed when one of them admits it.
    pub sets: [u32; 3],
    pub peer_identity: u32,
    pub mode: u8,
    /// Retransmissions of judged bytes dropped in a row.
    pub retransmits: u8,
    pub _pad: [u8; 2],
    /// Requests decided on this connection.
    pub requests: u32,
    /// The rule that allowed the current request (for its flow record).
    pub rule_id: u32,
    pub rule_port: u8,
    pub rule_http: u8,
    pub _pad2: [u8; 6],
    pub parser: Parser,
}

/// Why a request (or a packet of a policed connection) got its verdict. Stable codes: they
/// index `WARD_HTTP_CNT` and appear in flow records.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HttpReason {
    /// A request an HTTP rule admits.
    Allowed = 1,
    /// A well-formed request no rule admits.
    NoRule = 2,
    /// Bytes that are not an acceptable HTTP/1.x request (the parser's error says which).
    Refused = 3,
    /// Data on a policed connection whose framing is unknown (opened before the rules
    /// applied, or its state was evicted): reset.
    Untracked = 4,
    /// A segment past a gap (an earlier one was lost before the datapath): dropped, the
    /// client retransmits.
    OutOfOrder = 5,
    /// A retransmission of bytes already judged: dropped (reset after [`RETRANSMIT_RESET`]).
    Retransmit = 6,
    /// The HTTP program could not run (not loaded): dropped.
    Unavailable = 7,
    /// More requests in one segment than one pass can judge, or a request line still split
    /// after the client's retransmissions: reset.
    Budget = 8,
    /// A segment that ends inside a request line: held back (dropped, state unchanged) until
    /// the client's retransmission carries the whole line.
    Held = 9,
}

impl HttpReason {
    pub const ALL: [HttpReason; 9] = [
        HttpReason::Allowed,
        HttpReason::NoRule,
        HttpReason::Refused,
        HttpReason::Untracked,
        HttpReason::OutOfOrder,
        HttpReason::Retransmit,
        HttpReason::Unavailable,
        HttpReason::Budget,
        HttpReason::Held,
    ];
    /// Size of `WARD_HTTP_CNT`.
    pub const COUNT: u32 = 16;

    pub const fn as_str(self) -> &'static str {
        match self {
            HttpReason::Allowed => "http_allowed",
            HttpReason::NoRule => "http_no_rule",
            HttpReason::Refused => "http_refused",
            HttpReason::Untracked => "http_untracked",
            HttpReason::OutOfOrder => "http_out_of_order",
            HttpReason::Retransmit => "http_retransmit",
            HttpReason::Unavailable => "http_unavailable",
            HttpReason::Budget => "http_budget",
            HttpReason::Held => "http_held",
        }
    }

    pub fn from_u8(v: u8) -> Option<HttpReason> {
        HttpReason::ALL.into_iter().find(|r| *r as u8 == v)
    }
}

/// `HttpEvent::flags`: the path as seen was longer than `seen`.
pub const EVT_SEEN_CUT: u8 = 1;

/// A flow record of one HTTP decision, written into `WARD_HTTP_EVT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpEvent {
    pub ts_ns: u64,
    pub saddr: Addr16,
    pub daddr: Addr16,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub ep_id: u32,
    pub subject_identity: u32,
    pub peer_identity: u32,
    /// The policy rule that allowed (0 when denied), and the port and `http` entry within it.
    pub rule_id: u32,
    pub rule_port: u8,
    pub rule_http: u8,
    /// `HttpReason`.
    pub reason: u8,
    /// `path::Error` when refused by the parser, else 0.
    pub error: u8,
    pub method_len: u8,
    pub seen_len: u8,
    pub flags: u8,
    pub _pad: u8,
    pub path_len: u16,
    pub _pad2: [u8; 2],
    pub method: [u8; METHOD_MAX],
    /// The path as the client wrote it, without the query.
    pub seen: [u8; SEEN_MAX],
    /// The normalised path (its first 128 bytes; `path_len` is the whole length).
    pub path: [u8; EVENT_PATH_MAX],
}

/// Bytes of the normalised path a flow record carries.
pub const EVENT_PATH_MAX: usize = 128;

const _: () = assert!(size_of::<HttpConnKey>() == 40);
const _: () = assert!(size_of::<HttpConn>() == 48 + size_of::<Parser>());
const _: () = assert!(size_of::<HttpEvent>() == 72 + METHOD_MAX + SEEN_MAX + EVENT_PATH_MAX);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    use crate::http::rules::HttpSet;
    // SAFETY: repr(C), integers and byte arrays with explicit padding only.
    unsafe impl aya::Pod for HttpConnKey {}
    unsafe impl aya::Pod for HttpConn {}
    unsafe impl aya::Pod for HttpEvent {}
    unsafe impl aya::Pod for HttpSet {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_within_the_counter_array() {
        for r in HttpReason::ALL {
            assert_eq!(HttpReason::from_u8(r as u8), Some(r));
            assert!((r as u32) < HttpReason::COUNT);
        }
        for m in HTTP_MAPS {
            assert!(m.len() <= 15 && m.starts_with("WARD_"), "{m}");
        }
    }
}
