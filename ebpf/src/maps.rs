//! The maps, pinned by name so a restarted agent (and the programs of links it left behind)
//! keep using the same state. Names and sizes come from `ward_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use ward_common::{
    Addr16,
    fqdn::{DnsConfig, FQDN_MAX, LearnedKeyData, LearnedValue},
    maps::{
        CT_COUNT_MAX, CT_MAX, ConfigValue, Counter, CtCountKey, CtKey, CtValue, ENDPOINTS_MAX, EVENTS_BYTES,
        EndpointInfo, EndpointKey, FRAGS_MAX, FragKey, FragValue, IPCACHE_MAX, IpcacheValue, POLICY_MAX, PolicyKeyData,
        PolicyValue, REASON_DIR_MAX, RULE_CNT_MAX,
    },
    reason::Reason,
    service::{Pending, SLOTS},
};

#[map(name = "WARD_ENDPOINTS")]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> = HashMap::pinned(ENDPOINTS_MAX, 0);

#[map(name = "WARD_IPCACHE")]
pub static IPCACHE: LpmTrie<Addr16, IpcacheValue> = LpmTrie::pinned(IPCACHE_MAX, 0);

#[map(name = "WARD_POLICY")]
pub static POLICY: LpmTrie<PolicyKeyData, PolicyValue> = LpmTrie::pinned(POLICY_MAX, 0);

/// A plain hash, not an LRU: nothing is ever evicted to make room (see `ct`).
#[map(name = "WARD_CT")]
pub static CT: HashMap<CtKey, CtValue> = HashMap::pinned(CT_MAX, 0);

#[map(name = "WARD_CT_COUNT")]
pub static CT_COUNT: HashMap<CtCountKey, i64> = HashMap::pinned(CT_COUNT_MAX, 0);

/// An LRU: losing an entry only drops the later fragments of that datagram.
#[map(name = "WARD_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAGS_MAX, 0);

#[map(name = "WARD_CONFIG")]
pub static CONFIG: Array<ConfigValue> = Array::pinned(1, 0);

#[map(name = "WARD_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// Flow events lost because `EVENTS` was full, per reason (emitted = delivered + lost).
#[map(name = "WARD_EVT_LOST")]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::pinned(Reason::COUNT, 0);

#[map(name = "WARD_REASON_DIR")]
pub static REASON_CNT: PerCpuArray<Counter> = PerCpuArray::pinned(REASON_DIR_MAX, 0);

/// Per-packet working memory (not pinned: it holds nothing between packets).
#[map(name = "WARD_SCRATCH")]
pub static SCRATCH: PerCpuArray<crate::datapath::Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "WARD_RULE_CNT")]
pub static RULE_CNT: PerCpuHashMap<u32, Counter> = PerCpuHashMap::pinned(RULE_CNT_MAX, 0);

/// Addresses the DNS proxy learned, per endpoint (`ward_common::fqdn`).
#[map(name = "WARD_FQDN")]
pub static FQDN: LpmTrie<LearnedKeyData, LearnedValue> = LpmTrie::pinned(FQDN_MAX, 0);

/// Where the DNS proxy listens (`ward_common::fqdn::DnsConfig`).
#[map(name = "WARD_DNS_CFG")]
pub static DNS_CFG: Array<DnsConfig> = Array::pinned(1, 0);

/// Packets deferred to Service translation (`ward_common::service`). Not pinned: an entry
/// lives for one packet's way through the node.
#[map(name = "WARD_SVC_PEND")]
pub static SVC_PEND: Array<Pending> = Array::with_max_entries(SLOTS, 0);
