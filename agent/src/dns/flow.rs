//! DNS flow records and counters. Every query the proxy handles ends in one [`DnsFlow`]: pod,
//! query name and type, rcode, answered addresses, TTL, verdict and latency. Until the flow
//! pipeline lands they go to the log (`ward::dns::flow` target, debug level), to a bounded
//! in-memory log of the latest records, and into the counters `ward status` shows; the record
//! is self-contained (serde), so moving it to the flow pipeline is a change of sink only.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Records kept in memory.
const FLOW_LOG_LEN: usize = 1024;

/// How the proxy ended a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsVerdict {
    /// Forwarded and answered (learned addresses written first, if the name opens any).
    Allowed,
    /// A `dns` rule does not allow the name (or the sender is not a proxied pod): REFUSED.
    RefusedByPolicy,
    /// No valid answer from the resolver in time: nothing sent, the client retries.
    UpstreamError,
    /// Writing the learned addresses failed: SERVFAIL instead of the answer.
    WriteFailed,
}

impl DnsVerdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            DnsVerdict::Allowed => "allowed",
            DnsVerdict::RefusedByPolicy => "refused_by_policy",
            DnsVerdict::UpstreamError => "upstream_error",
            DnsVerdict::WriteFailed => "write_failed",
        }
    }
}

/// One DNS flow record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsFlow {
    /// Unix time, milliseconds.
    pub time_ms: u64,
    /// `namespace/name`, or the client address for a sender that is no proxied pod.
    pub pod: String,
    pub client: SocketAddr,
    pub resolver: SocketAddr,
    pub transport: String,
    pub qname: String,
    pub qtype: String,
    /// The rcode sent to the client (`NOERROR`, `NXDOMAIN`, `REFUSED`, `SERVFAIL`), or empty
    /// when nothing was sent.
    pub rcode: String,
    pub answers: Vec<IpAddr>,
    /// The smallest TTL among the answered addresses.
    pub ttl: Option<u32>,
    pub verdict: DnsVerdict,
    /// Whether the answer opened egress (addresses written into `WARD_FQDN`).
    pub learned: bool,
    pub latency_us: u64,
}

/// The latest records.
#[derive(Debug, Default)]
pub struct FlowLog(Mutex<VecDeque<DnsFlow>>);

impl FlowLog {
    pub fn push(&self, f: DnsFlow) {
        tracing::debug!(
            target: "ward::dns::flow",
            pod = %f.pod,
            qname = %f.qname,
            qtype = %f.qtype,
            rcode = %f.rcode,
            answers = ?f.answers,
            ttl = ?f.ttl,
            verdict = f.verdict.as_str(),
            learned = f.learned,
            latency_us = f.latency_us,
            "dns flow"
        );
        if let Ok(mut q) = self.0.lock() {
            if q.len() == FLOW_LOG_LEN {
                q.pop_front();
            }
            q.push_back(f);
        }
    }

    pub fn recent(&self) -> Vec<DnsFlow> {
        self.0.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }
}

/// Counters (monotonic since the agent started).
#[derive(Debug, Default)]
pub struct DnsStats {
    pub queries_udp: AtomicU64,
    pub queries_tcp: AtomicU64,
    pub allowed: AtomicU64,
    pub refused: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub write_failures: AtomicU64,
    pub malformed_queries: AtomicU64,
    pub malformed_answers: AtomicU64,
    /// Answers that opened egress.
    pub learned_answers: AtomicU64,
    /// Answers trimmed to the per-name cap.
    pub trimmed_answers: AtomicU64,
}

/// A snapshot of [`DnsStats`] and the learner's counters, for `ward status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    pub port: u16,
    /// Why the proxy is not running, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub queries_udp: u64,
    pub queries_tcp: u64,
    pub allowed: u64,
    pub refused: u64,
    pub upstream_errors: u64,
    pub write_failures: u64,
    pub malformed_queries: u64,
    pub malformed_answers: u64,
    pub learned_answers: u64,
    pub trimmed_answers: u64,
    pub learned_addresses: usize,
    pub learned_entries: usize,
    pub evicted_per_name: u64,
    pub evicted_per_pod: u64,
    pub expired_removed: u64,
    pub kept_for_live_flows: u64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
