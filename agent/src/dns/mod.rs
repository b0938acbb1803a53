//! The DNS proxy behind `fqdn` egress (WardNetworkPolicy).
//!
//! Data flow: the owner task compiles policy and publishes a [`DnsView`] (which local pod
//! addresses are behind the proxy, and each identity's `FqdnPolicy`) on a watch channel and in
//! `<state dir>/dns-view.json`; the proxy reads it without waiting on the owner, and at start
//! from the file, before the datastore is read. A pod's DNS packet is steered to the proxy's
//! sockets by the datapath (`ebpf/src/dns.rs`, routing in [`route`]); [`proxy`] checks the
//! query (`dns` rules: REFUSED), forwards it to the resolver the pod asked, and for an answer
//! to a name an `fqdn` rule selects writes the learned addresses into `WARD_FQDN`
//! ([`learn`]) before it releases the answer (SERVFAIL if the write fails). Every query is a
//! flow record ([`flow`]). The sockets outlive the agent in the keeper ([`sockets`]); learned
//! entries outlive it in the pinned map, their names in `<state dir>/dns-learned.json`.

pub mod flow;
pub mod fuzz;
pub mod learn;
pub mod message;
pub mod proxy;
pub mod route;
pub mod sockets;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use ward_common::fqdn::{DnsConfig, LearnedKey, LearnedKeyData, LearnedValue, MAP_DNS_CFG, MAP_FQDN};
use ward_common::maps::{CtKey, CtValue, IpcacheValue, MAP_CT, MAP_IPCACHE};
use ward_common::{Addr16, Direction};
use ward_policy::fqdn_policy::FqdnPolicy;

use crate::daemon::registry::write_atomic;
use flow::{DnsStats, FlowLog};
use learn::{LearnedStore, Learner, Limits, Names};

const VIEW_FILE: &str = "dns-view.json";
const NAMES_FILE: &str = "dns-learned.json";
/// How often expired addresses are collected and learned names persisted.
const GC_PERIOD: Duration = Duration::from_secs(1);

/// The proxy's settings (`ward-agent --dns-*`).
#[derive(Clone, Debug)]
pub struct DnsSettings {
    /// UDP and TCP port of the proxy in the agent's network namespace (0: no proxy; DNS of
    /// pods behind it then fails closed).
    pub port: u16,
    pub limits: Limits,
    /// How long the keeper holds the sockets with no agent connected.
    pub handover_grace: Duration,
    /// How long the proxy waits for the resolver; then the client gets nothing and retries.
    pub upstream_timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            port: 10053,
            limits: Limits::default(),
            handover_grace: Duration::from_secs(60),
            upstream_timeout: Duration::from_secs(3),
        }
    }
}

/// A local endpoint behind the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDns {
    pub ep_id: u32,
    pub identity: u32,
    /// `namespace/name`, for flow records.
    pub pod: String,
}

/// What the proxy enforces, published by the owner task after every compile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsView {
    /// Each address of a local pod behind the proxy.
    pub endpoints: BTreeMap<IpAddr, EndpointDns>,
    /// The proxy's rules by subject identity.
    pub policies: BTreeMap<u32, FqdnPolicy>,
}

impl DnsView {
    pub fn policy_of_endpoint(&self, ep_id: u32) -> Option<&FqdnPolicy> {
        let e = self.endpoints.values().find(|e| e.ep_id == ep_id)?;
        self.policies.get(&e.identity)
    }

    /// Reads the view persisted by the last agent (empty if none or unreadable).
    pub fn load(state_dir: &Path) -> DnsView {
        let path = state_dir.join(VIEW_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable DNS view");
                DnsView::default()
            }),
            Err(_) => DnsView::default(),
        }
    }

    pub fn save(&self, state_dir: &Path) {
        let path = state_dir.join(VIEW_FILE);
        match serde_json::to_vec(self) {
            Ok(b) => {
                if let Err(e) = write_atomic(&path, &b) {
                    tracing::error!(path = %path.display(), error = %e, "persisting the DNS view");
                }
            }
            Err(e) => tracing::error!(error = %e, "encoding the DNS view"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("map {map} (pinned at {path}): {message}")]
    Map { map: &'static str, path: PathBuf, message: String },
    #[error(transparent)]
    Sockets(#[from] sockets::SocketError),
    #[error(transparent)]
    Route(#[from] route::RouteError),
}

/// `WARD_FQDN` through its pin.
pub struct FqdnMap(LpmTrie<MapData, LearnedKeyData, LearnedValue>);

impl LearnedStore for FqdnMap {
    fn upsert(&mut self, key: &LearnedKey, value: &LearnedValue) -> Result<(), String> {
        self.0.insert(&Key::new(key.prefixlen, key.data), value, 0).map_err(|e| e.to_string())
    }
    fn remove(&mut self, key: &LearnedKey) -> Result<(), String> {
        match self.0.remove(&Key::new(key.prefixlen, key.data)) {
            Ok(()) => Ok(()),
            // Already gone is what we wanted.
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl FqdnMap {
    fn read_all(&self) -> BTreeMap<LearnedKey, LearnedValue> {
        self.0
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (LearnedKey { prefixlen: k.prefix_len(), data: k.data() }, v))
            .collect()
    }
}

/// What the proxy's tasks share.
pub struct Shared {
    pub settings: DnsSettings,
    pub view: watch::Receiver<Arc<DnsView>>,
    /// The learner and the map it writes: one lock, held only for the writes of one answer.
    pub learner: Mutex<(Learner, FqdnMap)>,
    ipcache: LpmTrie<MapData, Addr16, IpcacheValue>,
    ct: BpfHashMap<MapData, CtKey, CtValue>,
    pub stats: DnsStats,
    pub flows: FlowLog,
    /// Transparent sockets answers leave through, per resolver address (`proxy`).
    pub reply_sockets: Mutex<BTreeMap<std::net::SocketAddr, Arc<tokio::net::UdpSocket>>>,
}

impl Shared {
    /// The resolver's (label, CIDR) identities, as the datapath resolves them.
    pub fn identities_of(&self, ip: IpAddr) -> [u32; 2] {
        let addr = ward_policy::compile::addr16(ip);
        match self.ipcache.get(&Key::new(128, addr), 0) {
            Ok(v) => [v.identity, v.cidr_identity],
            Err(_) => [ward_common::identity::ID_WORLD, ward_common::identity::ID_WORLD],
        }
    }

    /// (endpoint, destination) of every tracked egress flow.
    fn live_flows(&self) -> std::collections::HashSet<(u32, Addr16)> {
        self.ct
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.dir == Direction::Egress as u8)
            .map(|k| (k.ep_id, k.daddr))
            .collect()
    }
}

/// The running proxy, as the owner task holds it.
pub struct DnsHandle {
    pub view_tx: watch::Sender<Arc<DnsView>>,
    pub shared: Arc<Shared>,
    /// Revision bumps the proxy asks for (learned entries narrowed by a policy change); the
    /// owner task takes it.
    pub bumps: Option<mpsc::UnboundedReceiver<()>>,
    pub port: u16,
    _sockets_keeper: Option<std::os::unix::net::UnixStream>,
}

fn open_map(pin_dir: &Path, name: &'static str) -> Result<MapData, DnsError> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).map_err(|e| DnsError::Map { map: name, path, message: e.to_string() })
}

/// Monotonic nanoseconds, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
        .unwrap_or(0)
}

/// Starts the proxy: sockets (from the keeper, or new), kernel config and routing, the
/// persisted view and names, then the serving tasks. Must run inside the tokio runtime.
pub async fn start(settings: DnsSettings, pin_dir: &Path, state_dir: &Path, node: &str) -> Result<DnsHandle, DnsError> {
    let map_err = |map: &'static str, path: PathBuf| {
        move |e: aya::maps::MapError| DnsError::Map { map, path: path.clone(), message: e.to_string() }
    };
    let fqdn = FqdnMap(
        LpmTrie::try_from(Map::LpmTrie(open_map(pin_dir, MAP_FQDN)?))
            .map_err(map_err(MAP_FQDN, pin_dir.join(MAP_FQDN)))?,
    );
    let mut cfg: Array<MapData, DnsConfig> = Array::try_from(Map::Array(open_map(pin_dir, MAP_DNS_CFG)?))
        .map_err(map_err(MAP_DNS_CFG, pin_dir.join(MAP_DNS_CFG)))?;
    let ipcache = LpmTrie::try_from(Map::LpmTrie(open_map(pin_dir, MAP_IPCACHE)?))
        .map_err(map_err(MAP_IPCACHE, pin_dir.join(MAP_IPCACHE)))?;
    let ct = BpfHashMap::try_from(Map::LruHashMap(open_map(pin_dir, MAP_CT)?))
        .map_err(map_err(MAP_CT, pin_dir.join(MAP_CT)))?;

    let sockets = {
        let (dir, node, port, grace) = (state_dir.to_owned(), node.to_owned(), settings.port, settings.handover_grace);
        tokio::task::spawn_blocking(move || sockets::acquire(&dir, port, grace, &node))
            .await
            .map_err(|e| DnsError::Route(route::RouteError::Socket(std::io::Error::other(e))))??
    };
    cfg.set(0, DnsConfig { port: settings.port, _pad: [0; 2], _pad2: 0 }, 0)
        .map_err(map_err(MAP_DNS_CFG, pin_dir.join(MAP_DNS_CFG)))?;
    route::install().await?;

    let view = Arc::new(DnsView::load(state_dir));
    let names: Names = std::fs::read(state_dir.join(NAMES_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let kernel = fqdn.read_all();
    let restored = kernel.len();
    let mut learner = Learner::restore(settings.limits, names, kernel);
    let mut fqdn = fqdn;
    if let Err(e) = learner.recompute(&mut fqdn, &view) {
        tracing::error!(error = %e, "restoring learned addresses");
    }
    tracing::info!(
        port = settings.port,
        adopted = sockets.adopted,
        learned_entries = restored,
        endpoints = view.endpoints.len(),
        "DNS proxy serving from the persisted view"
    );
    let (view_tx, view_rx) = watch::channel(view);
    let (bump_tx, bumps) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        view: view_rx,
        learner: Mutex::new((learner, fqdn)),
        ipcache,
        ct,
        stats: DnsStats::default(),
        flows: FlowLog::default(),
        reply_sockets: Mutex::new(BTreeMap::new()),
    });
    let sockets::ProxySockets { udp4, tcp4, udp6, tcp6, keeper, port, .. } = sockets;
    proxy::spawn_udp(shared.clone(), udp4)?;
    proxy::spawn_tcp(shared.clone(), tcp4)?;
    if let Some(fd) = udp6 {
        proxy::spawn_udp(shared.clone(), fd)?;
    }
    if let Some(fd) = tcp6 {
        proxy::spawn_tcp(shared.clone(), fd)?;
    }
    tokio::spawn(follow_view(shared.clone(), bump_tx));
    tokio::spawn(gc(shared.clone(), state_dir.to_owned()));
    Ok(DnsHandle { view_tx, shared, bumps: Some(bumps), port, _sockets_keeper: keeper })
}

/// Recomputes learned entries whenever the view changes.
async fn follow_view(shared: Arc<Shared>, bumps: mpsc::UnboundedSender<()>) {
    let mut rx = shared.view.clone();
    while rx.changed().await.is_ok() {
        let view = rx.borrow_and_update().clone();
        let narrowed = {
            let Ok(mut g) = shared.learner.lock() else { return };
            let (learner, map) = &mut *g;
            learner.recompute(map, &view)
        };
        match narrowed {
            Ok(true) => {
                let _ = bumps.send(());
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "updating learned addresses after a policy change");
                let _ = bumps.send(());
            }
        }
    }
}

/// Collects expired addresses (keeping those with tracked flows) and persists the names.
async fn gc(shared: Arc<Shared>, state_dir: PathBuf) {
    let mut tick = tokio::time::interval(GC_PERIOD);
    loop {
        tick.tick().await;
        let view = shared.view.borrow().clone();
        let now = monotonic_ns();
        let need_flows = {
            let Ok(g) = shared.learner.lock() else { return };
            g.0.names().values().flat_map(|n| n.values()).flat_map(|a| a.values()).any(|l| l.expires_ns <= now)
        };
        let live = if need_flows { shared.live_flows() } else { Default::default() };
        let names = {
            let Ok(mut g) = shared.learner.lock() else { return };
            let (learner, map) = &mut *g;
            learner.gc(map, &view, now, |ep, ip| live.contains(&(ep, ward_policy::compile::addr16(ip))));
            learner.take_dirty().then(|| serde_json::to_vec(learner.names()))
        };
        if let Some(Ok(bytes)) = names
            && let Err(e) = write_atomic(&state_dir.join(NAMES_FILE), &bytes)
        {
            tracing::error!(error = %e, "persisting learned DNS names");
        }
    }
}

/// The view for the current compile: local endpoints whose identity has an fqdn policy.
pub fn view_of(
    compiled: &ward_policy::compile::Compiled,
    endpoints: impl Iterator<Item = (u32, ward_policy::cluster::PodKey, Vec<IpAddr>)>,
) -> DnsView {
    let mut view = DnsView::default();
    for (ep_id, pod, ips) in endpoints {
        let Some(identity) = compiled.pod_identity.get(&pod).copied() else { continue };
        let Some(policy) = compiled.fqdn.get(&identity) else { continue };
        view.policies.entry(identity).or_insert_with(|| policy.clone());
        for ip in ips {
            view.endpoints.insert(ip.to_canonical(), EndpointDns { ep_id, identity, pod: pod.to_string() });
        }
    }
    view
}
