//! The agent's owner task: the one place that holds mutable state (the datastore's store,
//! local endpoints, identities, the kernel map mirror). Everything else talks to it through
//! channels: the API server sends requests, the datastore's source (a directory or the
//! Kubernetes API) sends [`Event`]s, a timer drives garbage collection. Each change ends in
//! `reconcile`, which plans the desired map contents (`crate::plan`) and applies the
//! difference to the kernel.

mod flows;
mod http;
mod metrics;
mod plugin;
pub mod reconcile;
pub mod registry;
pub mod state;
pub mod trace;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use ward_common::maps::{CFG_EVENTS_ALLOWED, CFG_EVENTS_DROPPED, CFG_LOCAL_PEER};
use ward_policy::identity::Identities;

use crate::api::proto::{EndpointRegistration, EndpointStatus, Request, Response, RuleCounter, StatusReport};
use crate::api::server;
use crate::datapath::{Datapath, MirrorContents};
use crate::datastore::directory::DirectoryStore;
use crate::datastore::kubernetes::KubeSettings;
use crate::datastore::{Event, Revision, Store};
use registry::{LocalEndpoint, Registry};

/// Where the cluster's objects come from.
#[derive(Clone, Debug)]
pub enum Datastore {
    /// Standalone: a directory of manifests.
    Directory(PathBuf),
    /// The Kubernetes API.
    Kubernetes(KubeSettings),
}

impl Datastore {
    fn describe(&self) -> String {
        match self {
            Datastore::Directory(dir) => format!("directory:{}", dir.display()),
            Datastore::Kubernetes(k) => format!("kubernetes:{}", k.describe()),
        }
    }
}

/// Which verdicts the datapath reports as flow events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowEvents {
    None,
    Drops,
    All,
}

impl FlowEvents {
    fn flags(self) -> u32 {
        match self {
            FlowEvents::None => 0,
            FlowEvents::Drops => CFG_EVENTS_DROPPED,
            FlowEvents::All => CFG_EVENTS_DROPPED | CFG_EVENTS_ALLOWED,
        }
    }
}

/// How a packet from one pod to another pod of this node gets there, once both decisions
/// allowed it (`ebpf/src/deliver.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalDelivery {
    /// The datapath puts it into the receiver's namespace (`bpf_redirect_peer`): the node's
    /// routing and netfilter never see it.
    Peer,
    /// The node's routing delivers it, as for any other destination.
    Route,
}

impl LocalDelivery {
    pub fn name(self) -> &'static str {
        match self {
            LocalDelivery::Peer => "peer",
            LocalDelivery::Route => "route",
        }
    }

    fn flags(self) -> u32 {
        match self {
            LocalDelivery::Peer => CFG_LOCAL_PEER,
            LocalDelivery::Route => 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub datastore: Datastore,
    /// The cluster's Service ranges (`--service-cidr`): traffic to them is decided after
    /// kube-proxy's translation.
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// This node's pod ranges given on the command line (`--pod-cidr`); with every Node's
    /// `spec.podCIDRs`, the cluster pod ranges (`Cluster::pod_cidrs`).
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// The node's uplinks (`--uplink`), which get `to_netdev` to decide Service traffic
    /// leaving the node; empty with Service ranges: every interface but loopback and the
    /// pods' veths.
    pub uplinks: Vec<String>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub host_addrs: Vec<IpAddr>,
    pub flow_events: FlowEvents,
    pub local_delivery: LocalDelivery,
    /// Flow records kept for `ward observe` (`crate::flows::history::DEFAULT_HISTORY`).
    pub flow_history: usize,
    /// Where flow records are also written (`--flow-export-file`), if anywhere.
    pub flow_export: Option<crate::flows::export::ExportSettings>,
    /// Most tracked flows one endpoint may hold (`ward_common::maps::CT_QUOTA_DEFAULT`).
    pub ct_quota: u32,
    /// The CNI conflist to write once ready (`--cni-conf-dir`), if any.
    pub conflist: Option<crate::cni::install::ConflistSpec>,
    pub dns: crate::dns::DnsSettings,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (`--metrics-addr`), if at all.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// How often vanished interfaces are garbage-collected and a pass that could not write
/// everything is retried.
const GC_PERIOD: Duration = Duration::from_secs(2);
/// Most datastore events applied before a pass (a relist of a big cluster is compiled in
/// a few passes rather than one per object, and API calls wait for at most one batch).
const EVENT_BATCH: usize = 4096;
/// How many events may wait for the owner task before a source waits.
const EVENT_QUEUE: usize = 8192;
/// How often expired conntrack entries are swept (the programs also drop expired entries on
/// sight; the sweep only gives their room, and their endpoint's quota, back).
const CT_SWEEP_PERIOD: Duration = Duration::from_secs(10);

pub struct Agent {
    cfg: Config,
    store: Store,
    registry: Registry,
    ids: Identities,
    dp: Datapath,
    mirror: MirrorContents,
    /// The last compile's outputs, for status, endpoints and explain.
    compiled: Option<reconcile::Compiled>,
    /// The cluster as the last compile saw it, updated in place by each pass.
    cluster: ward_policy::cluster::Cluster,
    /// The identity table's revision last written to the state directory.
    ids_saved: Option<u64>,
    /// The source revision the last pass applied.
    applied: Revision,
    /// The store generation last persisted (Kubernetes datastore only).
    snapshot_saved: Option<u64>,
    last_error: Option<String>,
    conflist: Option<plugin::Conflist>,
    /// The DNS proxy (`None` if it could not start: DNS of its pods then fails closed).
    dns: Option<crate::dns::DnsHandle>,
    /// Why the DNS proxy is not running.
    dns_error: Option<String>,
    /// Datastore change to maps written, per pass (`/metrics`).
    update_latency: crate::metrics::Histogram,
    /// The interfaces `to_netdev` is attached to (`attach_uplinks`).
    uplinks: Vec<String>,
    /// What the flow task names flows from, republished after each pass (`flows.rs`).
    flow_view: flows::ViewTx,
    /// The flow history, once started: its delivered and lost counts go to `/metrics`.
    flow_hub: Option<std::sync::Arc<crate::flows::history::Hub>>,
    /// `ward trace`'s maps (`None`, and why, when they could not be taken).
    tracer: Option<trace::SharedTracer>,
    tracer_error: Option<String>,
}

pub async fn run(mut cfg: Config) -> anyhow::Result<()> {
    enable_forwarding();
    for addr in node_addresses() {
        if !cfg.host_addrs.contains(&addr) {
            cfg.host_addrs.push(addr);
        }
    }
    tracing::info!(host_addrs = ?cfg.host_addrs, "node addresses (always allowed to reach local pods)");
    let (event_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
    let mut agent = Agent::start(cfg, event_tx).await?;
    let mut bumps = agent.dns.as_mut().and_then(|d| d.bumps.take());
    let flow_hub = agent.start_flows();
    let listener = server::bind(&agent.cfg.socket)?;
    let (call_tx, mut calls) = mpsc::channel::<server::Call>(64);
    if let Some(addr) = agent.cfg.metrics_addr {
        let http = crate::api::http::bind(addr).await?;
        tokio::spawn(crate::api::http::serve(http, call_tx.clone()));
    }
    tokio::spawn(server::serve(listener, call_tx, flow_hub));
    let mut gc = tokio::time::interval(GC_PERIOD);
    let mut ct_sweep = tokio::time::interval(CT_SWEEP_PERIOD);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tracing::info!(node = %agent.cfg.node_name, socket = %agent.cfg.socket.display(), "ward agent running");
    agent.publish_conflist();
    loop {
        tokio::select! {
            Some((req, reply)) = calls.recv() => match req {
                // Answered by a task of its own: a trace waits for its probe's records.
                Request::Trace { from, to, protocol, port } => agent.start_trace(&from, &to, &protocol, port, reply),
                req => {
                    let resp = agent.handle(req);
                    let _ = reply.send(resp);
                }
            },
            Some(event) = events.recv() => {
                let received = std::time::Instant::now();
                let mut changed = agent.store.apply(event);
                for _ in 0..EVENT_BATCH {
                    match events.try_recv() {
                        Ok(e) => changed |= agent.store.apply(e),
                        Err(_) => break,
                    }
                }
                // A new revision with nothing changed (an edit that only reformatted a file)
                // still takes a pass: the revision counts as applied only after one.
                if changed || agent.applied != agent.store.checkpoint().revision {
                    agent.reconcile();
                    agent.update_latency.observe(received.elapsed());
                }
                agent.publish_conflist();
            }
            Some(()) = async { match bumps.as_mut() { Some(b) => b.recv().await, None => std::future::pending().await } } => {
                // Learned entries narrowed: tracked flows are re-decided on their next packet.
                while bumps.as_mut().is_some_and(|b| b.try_recv().is_ok()) {}
                if let Err(e) = agent.dp.maps.bump_revision() {
                    tracing::error!(error = %e, "bumping the policy revision after a DNS policy change");
                }
            }
            _ = gc.tick() => {
                agent.dp.http.drain_events();
                agent.gc();
                // A pass that could not write everything (a full map, say) left fewer allows
                // in force; try again until it can.
                if agent.last_error.is_some() {
                    agent.reconcile();
                }
                agent.publish_conflist();
            }
            _ = ct_sweep.tick() => agent.sweep_ct(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Pins stay: enforcement goes on exactly as it is until an agent runs again.
    tracing::info!("ward agent stopping; enforcement continues from the pinned state");
    let _ = std::fs::remove_file(&agent.cfg.socket);
    Ok(())
}

/// The node's own addresses in the agent's network namespace, loopback and link-local left
/// out (host veths all share one link-local address; nothing routed comes from it).
fn node_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|sa| {
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| match ip {
            IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
            IpAddr::V6(a) => !a.is_loopback() && !a.is_unicast_link_local(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Pods are routed through the node: forwarding must be on in the agent's namespace.
fn enable_forwarding() {
    for (path, what) in [("/proc/sys/net/ipv4/ip_forward", "IPv4"), ("/proc/sys/net/ipv6/conf/all/forwarding", "IPv6")]
    {
        if let Err(e) = std::fs::write(path, "1") {
            tracing::warn!(error = %e, "could not enable {what} forwarding");
        }
    }
}

/// Starts the DNS proxy over the maps pinned in `pins`; a failure is reported, not fatal
/// (DNS of the pods behind the proxy then fails closed).
async fn start_dns(cfg: &Config, pins: &Path) -> (Option<crate::dns::DnsHandle>, Option<String>) {
    match crate::dns::start(cfg.dns.clone(), pins, &cfg.state_dir, &cfg.node_name).await {
        Ok(h) => (Some(h), None),
        Err(e) => {
            tracing::error!(error = %e, "the DNS proxy did not start; DNS of pods behind it fails closed");
            (None, Some(e.to_string()))
        }
    }
}

impl Agent {
    async fn start(cfg: Config, events: mpsc::Sender<Event>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
        // The proxy serves from its persisted view at once, before the datastore is read. On
        // a restart this layout's maps are pinned already, so it starts even before the
        // programs load (seconds under the verifier): DNS queries queued in the keeper's
        // sockets wait only for the agent's process start, well within a resolver's retries.
        let pins = crate::datapath::pin_dir(&cfg.bpffs, &cfg.node_name);
        let mut dns_started = None;
        if cfg.dns.port != 0 && pins.join(ward_common::fqdn::MAP_FQDN).exists() {
            dns_started = Some(start_dns(&cfg, &pins).await);
        }
        let mut dp = Datapath::open(&cfg.bpffs, &cfg.node_name)?;
        let (tracer, tracer_error) = match trace::Tracer::take(&mut dp) {
            Ok(t) => (Some(t), None),
            Err(e) => {
                tracing::error!(error = %e, "ward trace unavailable");
                (None, Some(e.to_string()))
            }
        };
        dp.maps.set_flags(cfg.flow_events.flags() | cfg.local_delivery.flags())?;
        dp.maps.set_ct_quota(cfg.ct_quota)?;
        let (dns, dns_error) = if cfg.dns.port == 0 {
            (None, Some("disabled (--dns-proxy-port 0)".to_owned()))
        } else {
            // An early start that failed (a pin missing, say) is tried again over the maps
            // just opened.
            match dns_started {
                Some(started @ (Some(_), _)) => started,
                _ => start_dns(&cfg, dp.pin_dir()).await,
            }
        };
        // Adopt what the kernel holds: the diff against it is what a restart changes.
        let mirror = dp.maps.read_all()?;
        let registry = Registry::load(&cfg.state_dir)?;
        let mut ids = state::load_identities(&cfg.state_dir)?;
        let store = match &cfg.datastore {
            Datastore::Directory(dir) => {
                // Read once before the first pass, so a restarted agent's first pass is
                // the directory's state (an empty diff against the pinned maps).
                let mut dir_store = DirectoryStore::new(dir.clone());
                dir_store.reload();
                let mut store = Store::new();
                for event in dir_store.take_events() {
                    store.apply(event);
                }
                tokio::spawn(crate::datastore::directory::run(dir_store, events));
                store
            }
            Datastore::Kubernetes(settings) => {
                // The last state this node knew, enforced at once (it is what the pinned maps
                // hold); the API's first listing replaces it. Without one, nothing is known:
                // the first pass then leaves pods of the pinned maps as unknown (no traffic)
                // rather than compiling an empty cluster into allows.
                let store = match state::load_snapshot(&cfg.state_dir) {
                    Some(snapshot) => {
                        tracing::info!(
                            pods = snapshot.pods.len(),
                            policies = snapshot.policies.len(),
                            "enforcing the persisted datastore snapshot until the API is listed"
                        );
                        Store::with_snapshot(snapshot)
                    }
                    None => Store::new(),
                };
                tokio::spawn(crate::datastore::kubernetes::run(settings.clone(), events));
                store
            }
        };
        let (seeded, reserved) = reconcile::adopt_numbers(&mut ids, &mirror, store.snapshot().into(), &registry);
        if seeded + reserved > 0 {
            tracing::info!(seeded, reserved, "identity numbers taken over from the pinned maps");
        }
        let conflist = cfg.conflist.clone().map(plugin::Conflist::new);
        let service_cidrs = cfg.service_cidrs.clone();
        let mut agent = Agent {
            cfg,
            store,
            registry,
            ids,
            dp,
            mirror,
            compiled: None,
            cluster: ward_policy::cluster::Cluster { service_cidrs, ..ward_policy::cluster::Cluster::default() },
            ids_saved: None,
            applied: Revision::None,
            snapshot_saved: None,
            last_error: None,
            conflist,
            dns,
            dns_error,
            update_latency: crate::metrics::Histogram::default(),
            uplinks: Vec::new(),
            flow_view: flows::ViewTx::default(),
            flow_hub: None,
            tracer,
            tracer_error,
        };
        tracing::info!(
            endpoints = agent.registry.len(),
            pinned_policy_entries = agent.mirror.policy.len(),
            "adopting pinned state"
        );
        // Maps first, then links: an adopted link keeps its old program until replaced.
        agent.reconcile();
        let eps: Vec<LocalEndpoint> = agent.registry.iter().cloned().collect();
        for ep in eps {
            // An interface that vanished while the agent was down is forgotten by `gc` below.
            if !reconcile::interface_is(&ep.reg.host_ifname, ep.reg.host_ifindex) {
                continue;
            }
            if let Err(e) = agent.dp.attach(&ep.reg.host_ifname, ep.reg.host_ifindex) {
                tracing::error!(endpoint = ep.ep_id, error = %e, "re-attaching");
            }
        }
        agent.attach_uplinks();
        // Links of an older layout that no endpoint claimed get the new programs too (they
        // then drop everything as an unknown endpoint, as any unclaimed link does).
        agent.dp.finish_migration();
        agent.gc();
        Ok(agent)
    }

    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Register(r) => self.register(r),
            Request::Deregister { container_id, ifname } => self.deregister(&container_id, &ifname),
            Request::Readiness => Response::Readiness(self.readiness()),
            Request::Gc { network, valid } => self.collect(&network, &valid),
            Request::Status => {
                self.dp.http.drain_events();
                Response::Status(Box::new(self.status()))
            }
            Request::Endpoints => Response::Endpoints { endpoints: self.endpoints() },
            Request::Explain { from, to, protocol, port, http_method, http_path } => {
                self.explain(&from, &to, &protocol, port, http_method.as_deref().zip(http_path.as_deref()))
            }
            Request::Datastore => Response::Datastore { snapshot: Box::new(self.store.snapshot().clone()) },
            Request::Metrics => {
                self.dp.http.drain_events();
                Response::Metrics(Box::new(self.metrics()))
            }
            // The event loop hands traces to `start_trace`.
            Request::Trace { .. } => Response::Error { message: "traces are answered by the trace task".into() },
            // The API server answers these from the flow hub, without the owner task.
            Request::Flows { .. } => Response::Error { message: "flows are served by the API server".into() },
            Request::DnsFlows => {
                Response::DnsFlows { flows: self.dns.as_ref().map(|d| d.shared.flows.recent()).unwrap_or_default() }
            }
        }
    }

    /// Persists the store's snapshot when it changed (Kubernetes datastore only: a
    /// directory is its own persistence).
    fn persist_snapshot(&mut self) {
        if !matches!(self.cfg.datastore, Datastore::Kubernetes(_)) || self.store.synced().is_err() {
            return;
        }
        let generation = self.store.generation();
        if self.snapshot_saved != Some(generation) && state::save_snapshot(&self.cfg.state_dir, self.store.snapshot()) {
            self.snapshot_saved = Some(generation);
        }
    }

    /// CNI ADD: record, write maps, attach. The answer goes out only when the pod is
    /// protected; on failure everything is undone and the plugin rolls back the veth.
    fn register(&mut self, r: EndpointRegistration) -> Response {
        let span = tracing::info_span!("register", pod = %format!("{}/{}", r.pod_namespace, r.pod_name), ifname = %r.host_ifname);
        let _g = span.enter();
        if !reconcile::interface_is(&r.host_ifname, r.host_ifindex) {
            return Response::Error {
                message: format!(
                    "interface {} (ifindex {}) does not exist in the agent's network namespace",
                    r.host_ifname, r.host_ifindex
                ),
            };
        }
        let ep = match self.registry.add(&r) {
            Ok(ep) => ep,
            Err(e) => return Response::Error { message: e.to_string() },
        };
        self.reconcile();
        // The pod is protected once its endpoint entry is in the kernel: anything else that
        // failed to load (a full policy map, say) can only leave it with fewer allows.
        if !self.mirror.endpoints.contains_key(&ep.reg.host_ifindex) {
            let why = self.last_error.clone().unwrap_or_else(|| "no endpoint entry was written".into());
            self.forget(std::slice::from_ref(&ep));
            return Response::Error { message: format!("writing the endpoint's maps: {why}") };
        }
        if let Err(e) = self.dp.attach(&ep.reg.host_ifname, ep.reg.host_ifindex) {
            self.forget(std::slice::from_ref(&ep));
            return Response::Error { message: e.to_string() };
        }
        let identity = self.mirror.endpoints.get(&ep.reg.host_ifindex).map(|i| i.identity).unwrap_or(0);
        tracing::info!(endpoint = ep.ep_id, identity, "endpoint protected");
        Response::Registered { endpoint_id: ep.ep_id, identity }
    }

    fn deregister(&mut self, container_id: &str, ifname: &str) -> Response {
        let ep = self.registry.iter().find(|e| e.reg.container_id == container_id && e.reg.ifname == ifname).cloned();
        match ep {
            Some(ep) => {
                self.forget(std::slice::from_ref(&ep));
                Response::Deregistered { existed: true }
            }
            None => Response::Deregistered { existed: false },
        }
    }

    /// Removes endpoints everywhere: registry, maps, their tracked flows, and their links once
    /// the interface is gone.
    fn forget(&mut self, eps: &[LocalEndpoint]) {
        for ep in eps {
            if let Err(e) = self.registry.remove(&ep.reg.container_id, &ep.reg.ifname) {
                tracing::error!(endpoint = ep.ep_id, error = %e, "persisting endpoint removal");
            }
        }
        // One reconcile and one conntrack sweep for the whole batch.
        self.reconcile();
        let ids: std::collections::BTreeSet<u32> = eps.iter().map(|e| e.ep_id).collect();
        self.dp.maps.flush_ct(&ids);
        // While the interface exists its programs stay: with the endpoint entry gone they drop
        // everything (the plugin deletes the veth right after). Detaching first would leave a
        // moment of unpoliced traffic. `gc` removes the pins once the interface is gone.
        for ep in eps {
            if !reconcile::interface_exists(ep.reg.host_ifindex) {
                self.dp.detach(ep.reg.host_ifindex);
            }
        }
    }

    /// Attaches `to_netdev` to the node's uplinks, so that a packet whose sender's egress was
    /// deferred to Service translation is decided wherever it leaves (`ward_common::service`).
    /// Only with Service ranges: nothing is deferred without them.
    fn attach_uplinks(&mut self) {
        if self.cfg.service_cidrs.is_empty() {
            return;
        }
        let pods: std::collections::BTreeSet<u32> = self.registry.iter().map(|e| e.reg.host_ifindex).collect();
        let links: Vec<(String, u32)> = match nix::net::if_::if_nameindex() {
            Ok(list) => list.iter().map(|i| (i.name().to_string_lossy().into_owned(), i.index())).collect(),
            Err(e) => {
                tracing::error!(error = %e, "listing interfaces for the uplinks");
                return;
            }
        };
        for (name, ifindex) in links {
            let wanted = if self.cfg.uplinks.is_empty() {
                name != "lo" && !pods.contains(&ifindex)
            } else {
                self.cfg.uplinks.contains(&name)
            };
            if !wanted {
                continue;
            }
            match self.dp.attach_uplink(&name, ifindex) {
                Ok(()) => {
                    tracing::info!(ifname = %name, ifindex, "uplink: Service traffic leaving the node is decided here");
                    self.uplinks.push(name);
                }
                Err(e) => tracing::error!(ifname = %name, ifindex, error = %e, "attaching to an uplink"),
            }
        }
        for name in &self.cfg.uplinks {
            if !self.uplinks.contains(name) {
                tracing::error!(ifname = %name, "an --uplink interface is missing: Service traffic through it would leave undecided");
            }
        }
    }

    /// Forgets endpoints whose interface is gone (a DEL that never reached us) and the links
    /// pinned for interfaces that no longer exist. A link on an interface that still exists
    /// stays even when no endpoint claims it (a lost registry, say): its programs then drop
    /// everything as an unknown endpoint, where detaching would let traffic flow unpoliced.
    fn gc(&mut self) {
        let gone: Vec<LocalEndpoint> = self
            .registry
            .iter()
            .filter(|e| !reconcile::interface_is(&e.reg.host_ifname, e.reg.host_ifindex))
            .cloned()
            .collect();
        if !gone.is_empty() {
            for ep in &gone {
                tracing::info!(endpoint = ep.ep_id, ifname = %ep.reg.host_ifname, "interface vanished; forgetting endpoint");
            }
            self.forget(&gone);
        }
        let live: std::collections::BTreeSet<u32> = self.registry.iter().map(|e| e.reg.host_ifindex).collect();
        for ifindex in self.dp.pinned_link_ifindexes() {
            if !live.contains(&ifindex) && !reconcile::interface_exists(ifindex) {
                self.dp.detach(ifindex);
            }
        }
    }

    /// Gives expired conntrack entries' room back.
    fn sweep_ct(&mut self) {
        let started = std::time::Instant::now();
        let stats = self.dp.maps.sweep_ct(crate::datapath::kernel_now_ns());
        if stats.expired > 0 {
            tracing::info!(
                scanned = stats.scanned,
                expired = stats.expired,
                micros = started.elapsed().as_micros() as u64,
                "conntrack sweep"
            );
        }
    }

    fn status(&self) -> StatusReport {
        let snap = self.store.snapshot();
        let mut map_entries = BTreeMap::new();
        map_entries.insert(ward_common::maps::MAP_ENDPOINTS.to_owned(), self.mirror.endpoints.len());
        map_entries.insert(ward_common::maps::MAP_IPCACHE.to_owned(), self.mirror.ipcache.len());
        map_entries.insert(ward_common::maps::MAP_POLICY.to_owned(), self.mirror.policy.len());
        map_entries.insert(ward_common::maps::MAP_CT.to_owned(), self.dp.maps.ct_entries());
        let reason_counters = self
            .dp
            .maps
            .reason_counters()
            .map(|m| {
                let mut per_reason = BTreeMap::new();
                for ((r, _), c) in m {
                    *per_reason.entry(r.as_str().to_owned()).or_default() += c.packets;
                }
                per_reason
            })
            .unwrap_or_default();
        let rule_counters = match (self.dp.maps.rule_counters(), &self.compiled) {
            (Ok(counts), Some(compiled)) => counts
                .into_iter()
                .filter_map(|(rule_id, c)| {
                    let info = compiled.rules.get(&rule_id)?;
                    Some(RuleCounter {
                        rule_id,
                        policy: info.policy.to_string(),
                        direction: info.direction.as_str().to_owned(),
                        index: info.index,
                        flows: c.packets,
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let checkpoint = self.store.checkpoint();
        let mut datastore_health = checkpoint.health.clone();
        if let Err(why) = self.store.synced() {
            datastore_health.not_synced = Some(why);
        }
        let mut report = StatusReport {
            node: self.cfg.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            datastore: self.cfg.datastore.describe(),
            policy_revision: self.dp.maps.revision().unwrap_or(0),
            applied: self.applied.clone(),
            datastore_health,
            service_cidrs: self.cfg.service_cidrs.iter().map(ToString::to_string).collect(),
            pod_cidrs: self.cluster.pod_cidrs.iter().map(ToString::to_string).collect(),
            uplinks: self.uplinks.clone(),
            local_delivery: self.cfg.local_delivery.name().to_owned(),
            namespaces: snap.namespaces.len(),
            pods: snap.pods.len(),
            policies: snap.policies.len(),
            endpoints: self.registry.len(),
            identities: self.ids.counts().0,
            map_entries,
            rejected: checkpoint.rejected.clone(),
            address_conflicts: self
                .compiled
                .as_ref()
                .map(|c| c.address_conflicts.iter().map(|a| a.to_string()).collect())
                .unwrap_or_default(),
            duplicates: checkpoint.duplicates.clone(),
            notices: checkpoint.notices.clone(),
            last_error: self.last_error.clone(),
            reason_counters,
            rule_counters,
            dns: self.dns_status(),
            ..StatusReport::default()
        };
        report.map_entries.insert(ward_common::http::conn::MAP_HTTP_CONN.to_owned(), self.dp.http.connections());
        report.map_entries.insert(ward_common::http::conn::MAP_HTTP_SETS.to_owned(), self.dp.http.loaded().len());
        self.http_status(&mut report);
        report
    }

    fn dns_status(&self) -> Option<crate::dns::flow::DnsStatus> {
        use crate::dns::flow::get;
        let d = self.dns.as_ref()?;
        let s = &d.shared.stats;
        let (addresses, entries, ls) = match d.shared.learner.lock() {
            Ok(g) => (g.0.address_count(), g.0.written().len(), g.0.stats),
            Err(_) => (0, 0, Default::default()),
        };
        Some(crate::dns::flow::DnsStatus {
            port: d.port,
            error: self.dns_error.clone(),
            queries_udp: get(&s.queries_udp),
            queries_tcp: get(&s.queries_tcp),
            allowed: get(&s.allowed),
            refused: get(&s.refused),
            upstream_errors: get(&s.upstream_errors),
            write_failures: get(&s.write_failures),
            malformed_queries: get(&s.malformed_queries),
            malformed_answers: get(&s.malformed_answers),
            learned_answers: get(&s.learned_answers),
            trimmed_answers: get(&s.trimmed_answers),
            learned_addresses: addresses,
            learned_entries: entries,
            evicted_per_name: ls.evicted_per_name,
            evicted_per_pod: ls.evicted_per_pod,
            expired_removed: ls.expired_removed,
            kept_for_live_flows: ls.kept_for_live_flows,
        })
    }

    fn endpoints(&self) -> Vec<EndpointStatus> {
        let snap = self.store.snapshot();
        let flows = self.dp.maps.ct_in_use();
        self.registry
            .iter()
            .map(|e| {
                let info = self.mirror.endpoints.get(&e.reg.host_ifindex);
                let flags = info.map(|i| i.flags).unwrap_or(0);
                let labels = snap
                    .pods
                    .get(&crate::plan::pod_key(&e.reg.pod_namespace, &e.reg.pod_name))
                    .map(|p| p.labels.clone())
                    .unwrap_or_default();
                EndpointStatus {
                    endpoint_id: e.ep_id,
                    container_id: e.reg.container_id.clone(),
                    pod: format!("{}/{}", e.reg.pod_namespace, e.reg.pod_name),
                    host_ifname: e.reg.host_ifname.clone(),
                    host_ifindex: e.reg.host_ifindex,
                    ips: e.reg.ips.clone(),
                    identity: info.map(|i| i.identity).unwrap_or(0),
                    labels,
                    ingress_isolated: flags & ward_common::maps::EP_ISOLATED_INGRESS != 0,
                    egress_isolated: flags & ward_common::maps::EP_ISOLATED_EGRESS != 0,
                    tracked_flows: flows.get(&e.ep_id).copied().unwrap_or(0),
                }
            })
            .collect()
    }
}
