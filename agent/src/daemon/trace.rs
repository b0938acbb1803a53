//! `ward trace`: one real probe from a local pod, and what each program did to it.
//!
//! The owner task resolves the request (the source must be a pod of this node: the probe is
//! sent from inside its network namespace) and hands a [`TracePlan`] to a task of its own, so
//! the owner never waits for packets. That task, one trace at a time, arms `WARD_TRACE` with
//! the probe's marker (`ward_common::trace::TraceConfig`), sends the crafted probe through a
//! raw socket opened in the pod's namespace (so it leaves through the pod's own routes and
//! veth, as Antrea's Traceflow injects its packet), reads the programs' `TraceStep` records
//! from `WARD_TRACE_EVT` until the probe's path ends, disarms, and names each step exactly as
//! flow records are named (`flows::record::View::enrich` over the step's flow event).

use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Mutex, oneshot, watch};
use ward_common::addr::addr16;
use ward_common::trace::{
    MAP_TRACE, MAP_TRACE_COUNT, MAP_TRACE_EVENTS, PROBE_MAX, PROBE_PORT_FIRST, PROBE_PORT_LAST, STEP_HTTP_POLICED,
    STEP_NEW_FLOW, Stage, TraceConfig, TraceProgram, TraceStep,
};
use ward_common::{Reason, Verdict};

use super::Agent;
use crate::api::proto::Response;
use crate::datapath::Datapath;
use crate::endpoint::netns::{NetNs, NetnsError};
use crate::flows::record::{Flow, FlowTime, View};
use crate::plan::pod_key;

/// The longest a trace waits for its probe's steps.
const TRACE_DEADLINE: Duration = Duration::from_secs(2);
/// After the step that ends the probe's path here, how long later steps (the HTTP program's,
/// a reordered one) may still arrive.
const TRACE_GRACE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("map {map} missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: Box<aya::maps::MapError> },
    #[error("watching {map}: {source}")]
    Register { map: &'static str, source: std::io::Error },
    #[error("the probe {what} could not be crafted")]
    Craft { what: String },
    #[error("sending the probe from {pod}: {source}")]
    Netns { pod: String, source: NetnsError },
    #[error("sending the probe from {pod} (raw socket in its network namespace): {source}")]
    Send { pod: String, source: nix::errno::Errno },
}

/// The trace maps, owned by the trace task.
pub struct Tracer {
    config: Array<MapData, TraceConfig>,
    ring: AsyncFd<RingBuf<MapData>>,
    count: PerCpuArray<MapData, u64>,
    next_id: u32,
    next_port: u16,
}

pub type SharedTracer = Arc<Mutex<Tracer>>;

impl Tracer {
    /// Takes the trace maps out of the loaded object.
    pub fn take(dp: &mut Datapath) -> Result<SharedTracer, TraceError> {
        let map = |name: &'static str, dp: &mut Datapath| dp.take_map(name).ok_or(TraceError::MissingMap { map: name });
        let err = |map: &'static str| move |e| TraceError::Map { map, source: Box::new(e) };
        let config = Array::try_from(map(MAP_TRACE, dp)?).map_err(err(MAP_TRACE))?;
        let ring = RingBuf::try_from(map(MAP_TRACE_EVENTS, dp)?).map_err(err(MAP_TRACE_EVENTS))?;
        let count = PerCpuArray::try_from(map(MAP_TRACE_COUNT, dp)?).map_err(err(MAP_TRACE_COUNT))?;
        // SAFETY: the RingBuf owns its map's fd, which stays open for as long as it lives, and
        // the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| TraceError::Register { map: MAP_TRACE_EVENTS, source: e.into() })?;
        // Start ids and ports somewhere different each run: a probe of the last run may still
        // be tracked (an unanswered flow lives 60 s) and would be taken for a later packet of it.
        let seed = (FlowTime::now().0 as u64 ^ u64::from(std::process::id())) as u32;
        let ports = u32::from(PROBE_PORT_LAST - PROBE_PORT_FIRST) + 1;
        Ok(Arc::new(Mutex::new(Tracer {
            config,
            ring,
            count,
            next_id: seed % 0xFFFF + 1,
            next_port: PROBE_PORT_FIRST + (seed / 7 % ports) as u16,
        })))
    }

    /// Step records the programs wrote (or lost), summed over CPUs.
    fn records(&self) -> Result<u64, TraceError> {
        let per_cpu =
            self.count.get(&0, 0).map_err(|e| TraceError::Map { map: MAP_TRACE_COUNT, source: Box::new(e) })?;
        Ok(per_cpu.iter().sum())
    }

    fn set(&mut self, cfg: &TraceConfig) -> Result<(), TraceError> {
        self.config.set(0, cfg, 0).map_err(|e| TraceError::Map { map: MAP_TRACE, source: Box::new(e) })
    }

    /// The next probe's id (1..=65535) and source port: each trace its own five-tuple, so no
    /// probe meets the conntrack entry an earlier one left.
    fn next_probe(&mut self) -> (u32, u16) {
        let (id, port) = (self.next_id, self.next_port);
        self.next_id = if id >= 0xFFFF { 1 } else { id + 1 };
        self.next_port = if port == PROBE_PORT_LAST { PROBE_PORT_FIRST } else { port + 1 };
        (id, port)
    }

    /// Reads what the ring holds now (without waiting).
    fn drain(&mut self, into: &mut Vec<TraceStep>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            match TraceStep::from_bytes(&item) {
                Some(step) => into.push(step),
                None => tracing::warn!(map = MAP_TRACE_EVENTS, len = item.len(), "short trace step record"),
            }
        }
    }
}

/// Disarms on every way out of a trace, a panic or a cancelled task included.
struct Armed<'a>(&'a mut Tracer);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.set(&TraceConfig::default()) {
            tracing::error!(error = %e, "disarming the trace");
        }
    }
}

/// What the owner task resolved: everything the trace task needs.
#[derive(Clone, Debug)]
pub struct TracePlan {
    pub from: String,
    pub to: String,
    pub netns: PathBuf,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub proto: u8,
    pub port: u16,
    /// The destination's host veth when it is a pod of this node: the probe's path ends at
    /// its `to_pod`.
    pub local_destination: Option<u32>,
}

/// A trace's outcome, as `ward trace` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TraceVerdict {
    /// Every program let the probe through: into the destination pod, or out of this node's
    /// programs towards an address no local pod holds.
    Forwarded,
    Dropped,
    /// The steps stop short of where the probe was going (no step at all, or none at the
    /// destination's `to_pod`).
    Incomplete,
}

/// One program's step, named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStepReport {
    /// `from_pod`, `to_pod` or `ward_http`.
    pub program: String,
    /// Where its pipeline reached the verdict (`ward_common::trace::Stage`); `http` for the
    /// HTTP program.
    pub stage: String,
    /// Allowed as a new flow and now tracked.
    #[serde(default)]
    pub new_flow: bool,
    /// `ward_http` only: only HTTP rules admit the connection, so each request is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_policed: Option<bool>,
    /// The step as a flow record: verdict, reason, both ends named, identities, the allowing
    /// rule or the isolating policies, as `ward observe` shows them.
    pub flow: Flow,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    pub trace_id: u32,
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub source: IpAddr,
    pub source_port: u16,
    pub destination: IpAddr,
    pub destination_port: u16,
    pub steps: Vec<TraceStepReport>,
    pub verdict: TraceVerdict,
    /// Where and why, in words (`dropped by to_pod at shop/db: policy_denied`).
    pub summary: String,
    /// The programs' step-record count before this trace was armed and after it was
    /// disarmed: with no trace armed it does not move, whatever the traffic.
    pub kernel_records_before: u64,
    pub kernel_records_after: u64,
}

impl Agent {
    /// `Request::Trace`: resolves it here and answers from a task of its own.
    pub(super) fn start_trace(
        &mut self,
        from: &str,
        to: &str,
        protocol: &str,
        port: u16,
        reply: oneshot::Sender<Response>,
    ) {
        let Some(tracer) = self.tracer.clone() else {
            let why = self.tracer_error.clone().unwrap_or_else(|| "no trace maps".into());
            let _ = reply.send(Response::Error { message: format!("tracing is unavailable: {why}") });
            return;
        };
        let plan = match self.trace_plan(from, to, protocol, port) {
            Ok(p) => p,
            Err(message) => {
                let _ = reply.send(Response::Error { message });
                return;
            }
        };
        let view = self.flow_view.subscribe();
        tokio::spawn(async move {
            let resp = match trace(&tracer, &plan, &view).await {
                Ok(r) => Response::Trace(Box::new(r)),
                Err(e) => Response::Error { message: e.to_string() },
            };
            let _ = reply.send(resp);
        });
    }

    fn trace_plan(&self, from: &str, to: &str, protocol: &str, port: u16) -> Result<TracePlan, String> {
        let proto = match protocol.to_ascii_uppercase().as_str() {
            "TCP" => 6,
            "UDP" => 17,
            other => return Err(format!("protocol: {other:?} cannot be traced (TCP or UDP)")),
        };
        if port == 0 {
            return Err("port: 0 is no destination port".into());
        }
        let Some((ns, name)) = from.split_once('/') else {
            return Err(format!("from: expected namespace/pod of a pod on this node, got {from:?}"));
        };
        let Some(src) = self.registry.iter().find(|e| e.reg.pod_namespace == ns && e.reg.pod_name == name) else {
            return Err(format!(
                "from: {from} is not a pod of this node (the probe is sent from inside the source pod)"
            ));
        };
        let (to_ips, local_dst): (Vec<IpAddr>, Option<&super::registry::LocalEndpoint>) =
            if let Ok(ip) = to.parse::<IpAddr>() {
                let ip = ip.to_canonical();
                (vec![ip], self.registry.iter().find(|e| e.reg.ips.iter().any(|a| a.to_canonical() == ip)))
            } else {
                let Some((ns, name)) = to.split_once('/') else {
                    return Err(format!("to: expected namespace/pod or an IP address, got {to:?}"));
                };
                let local = self.registry.iter().find(|e| e.reg.pod_namespace == ns && e.reg.pod_name == name);
                let ips = match (local, self.cluster.pods.get(&pod_key(ns, name))) {
                    (Some(l), _) => l.reg.ips.clone(),
                    (None, Some(p)) => p.ips.clone(),
                    (None, None) => return Err(format!("to: no pod {to:?} in the datastore")),
                };
                (ips, local)
            };
        // The first destination address of a family the source has (IPv4 first, as listed).
        let pair = to_ips.iter().find_map(|d| {
            let d = d.to_canonical();
            src.reg.ips.iter().map(|s| s.to_canonical()).find(|s| s.is_ipv4() == d.is_ipv4()).map(|s| (s, d))
        });
        let Some((source, destination)) = pair else {
            return Err(format!("to: {to} has no address of a family {from} has ({:?} / {:?})", src.reg.ips, to_ips));
        };
        Ok(TracePlan {
            from: from.to_owned(),
            to: to.to_owned(),
            netns: PathBuf::from(&src.reg.netns),
            source,
            destination,
            proto,
            port,
            local_destination: local_dst.map(|e| e.reg.host_ifindex),
        })
    }
}

/// One trace, start to end (one at a time: the map holds one marker).
async fn trace(
    tracer: &SharedTracer,
    plan: &TracePlan,
    view: &watch::Receiver<Arc<View>>,
) -> Result<TraceReport, TraceError> {
    let mut t = tracer.lock().await;
    let kernel_records_before = t.records()?;
    // Steps an earlier, timed-out trace left behind are not this one's.
    t.drain(&mut Vec::new());
    let (id, sport) = t.next_probe();
    let cfg = TraceConfig {
        id,
        sport_be: sport.to_be_bytes(),
        dport_be: plan.port.to_be_bytes(),
        proto: plan.proto,
        v6: u8::from(plan.destination.is_ipv6()),
        _pad: [0; 6],
        saddr: addr16(plan.source),
        daddr: addr16(plan.destination),
    };
    let steps = {
        t.set(&cfg)?;
        let armed = Armed(&mut t);
        send_probe(plan, &cfg).await?;
        collect(&mut *armed.0, id, plan).await
    };
    let kernel_records_after = t.records()?;
    drop(t);
    let view = view.borrow().clone();
    let offset = crate::flows::monotonic_offset();
    let mut named: Vec<(TraceStep, TraceStepReport)> =
        steps.iter().enumerate().map(|(i, s)| (*s, name_step(&view, s, offset, id, i))).collect();
    named.sort_by_key(|(s, _)| s.ts_ns);
    let at: Vec<(TraceStep, String)> = named.iter().map(|(s, r)| (*s, where_(r))).collect();
    let (verdict, summary) = conclude(&at, plan.local_destination);
    let named = named.into_iter().map(|(_, r)| r).collect();
    Ok(TraceReport {
        trace_id: id,
        from: plan.from.clone(),
        to: plan.to.clone(),
        protocol: if plan.proto == 6 { "TCP" } else { "UDP" }.to_owned(),
        source: plan.source,
        source_port: sport,
        destination: plan.destination,
        destination_port: plan.port,
        steps: named,
        verdict,
        summary,
        kernel_records_before,
        kernel_records_after,
    })
}

/// Sends the crafted probe from a raw socket opened inside the source pod's namespace (the
/// socket stays in that namespace; the thread that opened it ends with its send).
async fn send_probe(plan: &TracePlan, cfg: &TraceConfig) -> Result<(), TraceError> {
    use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6};
    let mut buf = [0u8; PROBE_MAX];
    let len = cfg.probe(&mut buf).ok_or_else(|| TraceError::Craft { what: format!("{cfg:?}") })?;
    let (pod, netns, dst) = (plan.from.clone(), plan.netns.clone(), plan.destination);
    let sent = tokio::task::spawn_blocking(move || {
        let ns = NetNs::open(&netns).map_err(|source| TraceError::Netns { pod: pod.clone(), source })?;
        let r = ns.run(|| -> Result<(), nix::errno::Errno> {
            // IPPROTO_RAW: the probe's own IP header is sent as it is (IP_HDRINCL, and
            // IPV6_HDRINCL on IPv6), marker included.
            let family = if dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
            let fd = nix::sys::socket::socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::Raw)?;
            let _ = match dst {
                IpAddr::V4(a) => nix::sys::socket::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &buf[..len],
                    &SockaddrIn::from(SocketAddrV4::new(a, 0)),
                    MsgFlags::empty(),
                )?,
                IpAddr::V6(a) => nix::sys::socket::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &buf[..len],
                    &SockaddrIn6::from(SocketAddrV6::new(a, 0, 0, 0)),
                    MsgFlags::empty(),
                )?,
            };
            Ok(())
        });
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(TraceError::Send { pod, source }),
            Err(source) => Err(TraceError::Netns { pod, source }),
        }
    })
    .await;
    match sent {
        Ok(r) => r,
        Err(e) => Err(TraceError::Craft { what: format!("sender task: {e}") }),
    }
}

/// The probe's steps, until its path ends here (plus [`TRACE_GRACE`]) or [`TRACE_DEADLINE`].
async fn collect(t: &mut Tracer, id: u32, plan: &TracePlan) -> Vec<TraceStep> {
    let start = tokio::time::Instant::now();
    let mut deadline = start + TRACE_DEADLINE;
    let mut steps = Vec::new();
    let mut ended = false;
    loop {
        let mut got = Vec::new();
        t.drain(&mut got);
        steps.extend(got.into_iter().filter(|s| s.trace_id == id));
        if !ended && path_ended(&steps, plan.local_destination) {
            ended = true;
            deadline = deadline.min(tokio::time::Instant::now() + TRACE_GRACE);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return steps;
        }
        match tokio::time::timeout(deadline - now, t.ring.readable_mut()).await {
            Ok(Ok(mut guard)) => guard.clear_ready(),
            Ok(Err(e)) => {
                tracing::error!(map = MAP_TRACE_EVENTS, error = %e, "trace ring buffer");
                return steps;
            }
            Err(_) => {}
        }
    }
}

/// Whether no program here will see the probe after these steps: one dropped it, or it went
/// through the destination's `to_pod`, or (a destination not on this node) through `from_pod`.
fn path_ended(steps: &[TraceStep], local_destination: Option<u32>) -> bool {
    steps.iter().any(|s| {
        s.verdict == Verdict::Drop as u8
            || match local_destination {
                Some(ifindex) => s.program == TraceProgram::ToPod as u8 && s.ifindex == ifindex,
                None => s.program == TraceProgram::FromPod as u8,
            }
    })
}

/// Where a step was taken, in words: the pod whose veth it is, and the direction.
fn where_(r: &TraceStepReport) -> String {
    use crate::flows::record::TrafficDirection;
    let f = &r.flow;
    let (pod, dir) = match f.traffic_direction {
        TrafficDirection::Egress => (&f.source, "egress"),
        _ => (&f.destination, "ingress"),
    };
    let at = if pod.is_pod() {
        format!("{}/{}", pod.namespace, pod.pod_name)
    } else {
        format!("ifindex {}", f.interface.index)
    };
    format!("{at} ({dir})")
}

/// The trace's verdict and its summary, from the steps in the order they were written, each
/// with where it was taken.
fn conclude(steps: &[(TraceStep, String)], local_destination: Option<u32>) -> (TraceVerdict, String) {
    let mut ordered: Vec<&(TraceStep, String)> = steps.iter().collect();
    ordered.sort_by_key(|(s, _)| s.ts_ns);
    let ordered: Vec<(&TraceStep, &str)> = ordered.into_iter().map(|(s, at)| (s, at.as_str())).collect();
    let program = |s: &TraceStep| s.program().map(TraceProgram::as_str).unwrap_or("an unknown program");
    if let Some((d, at)) = ordered.iter().find(|(s, _)| s.verdict != Verdict::Allow as u8) {
        let why = match (d.program(), d.reason()) {
            (Ok(TraceProgram::Http), _) => "the HTTP program refused the connection".to_owned(),
            (_, Ok(r)) => r.as_str().to_owned(),
            (_, Err(code)) => format!("unknown reason {code}"),
        };
        return (TraceVerdict::Dropped, format!("dropped by {} at {at}: {why}", program(d)));
    }
    let ordered: Vec<&TraceStep> = ordered.into_iter().map(|(s, _)| s).collect();
    let Some(last) = ordered.last() else {
        return (
            TraceVerdict::Incomplete,
            "no Ward program saw the probe (is the source's route through its veth?)".to_owned(),
        );
    };
    match local_destination {
        Some(ifindex) if ordered.iter().any(|s| s.program == TraceProgram::ToPod as u8 && s.ifindex == ifindex) => {
            (TraceVerdict::Forwarded, "delivered into the destination pod".to_owned())
        }
        Some(_) => (
            TraceVerdict::Incomplete,
            format!("allowed by {}, but the destination's to_pod never saw the probe", program(last)),
        ),
        None => (
            TraceVerdict::Forwarded,
            "allowed out of the source pod; the destination is not a pod of this node".to_owned(),
        ),
    }
}

/// A step named from `view`, as flow records are.
fn name_step(view: &View, s: &TraceStep, offset: i128, id: u32, index: usize) -> TraceStepReport {
    let time = FlowTime(i128::from(s.ts_ns) + offset);
    let uuid = format!("trace-{id}-{index}");
    let program = s.program();
    if program == Ok(TraceProgram::Http) {
        // The HTTP program's step as the admitting rule's record: it names the same rule the
        // connection was admitted by, and says whether requests are judged.
        let mut ev = s.flow_event();
        let allowed = s.verdict == Verdict::Allow as u8;
        ev.reason = if allowed { Reason::PolicyAllow as u8 } else { Reason::PolicyDenied as u8 };
        let mut flow = view.enrich(&ev, time, uuid);
        let policed = s.flags & STEP_HTTP_POLICED != 0;
        flow.reason = match (allowed, policed) {
            (true, true) => "http_requests_judged",
            (true, false) => "http_not_policed",
            (false, _) => "http_refused",
        }
        .to_owned();
        if !allowed {
            flow.drop_reason_desc = Some("HTTP_REFUSED".into());
            flow.ingress_denied_by.clear();
        }
        return TraceStepReport {
            program: TraceProgram::Http.as_str().to_owned(),
            stage: "http".to_owned(),
            new_flow: false,
            http_policed: Some(policed),
            flow,
        };
    }
    let stage = match s.reason() {
        Ok(r) => Stage::of(r).as_str().to_owned(),
        Err(code) => format!("unknown_{code}"),
    };
    TraceStepReport {
        program: program.map(TraceProgram::as_str).map(str::to_owned).unwrap_or_else(|c| format!("unknown_{c}")),
        stage,
        new_flow: s.flags & STEP_NEW_FLOW != 0,
        http_policed: None,
        flow: view.enrich(&s.flow_event(), time, uuid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_common::Direction;
    use ward_common::addr::v4_mapped;

    fn step(program: TraceProgram, reason: Reason, ifindex: u32, ts_ns: u64) -> TraceStep {
        TraceStep {
            ts_ns,
            trace_id: 5,
            program: program as u8,
            dir: (if program == TraceProgram::FromPod { Direction::Egress } else { Direction::Ingress }) as u8,
            verdict: reason.verdict() as u8,
            reason: reason as u8,
            ifindex,
            ep_id: 1,
            saddr: v4_mapped([10, 1, 0, 2]),
            daddr: v4_mapped([10, 1, 0, 3]),
            sport_be: 61000u16.to_be_bytes(),
            dport_be: 80u16.to_be_bytes(),
            proto: 6,
            ..TraceStep::default()
        }
    }

    /// Steps with where they were taken (the ifindex stands in for the pod's name).
    fn at(steps: &[TraceStep]) -> Vec<(TraceStep, String)> {
        steps.iter().map(|s| (*s, format!("if{}", s.ifindex))).collect()
    }

    #[test]
    fn the_verdict_is_the_first_drop_else_delivery_at_the_destination() {
        let out = step(TraceProgram::FromPod, Reason::PolicyAllow, 11, 1);
        let at_db = step(TraceProgram::ToPod, Reason::PolicyAllow, 12, 2);
        let denied = step(TraceProgram::ToPod, Reason::PolicyDenied, 12, 2);
        assert_eq!(conclude(&at(&[at_db, out]), Some(12)).0, TraceVerdict::Forwarded);
        let (v, why) = conclude(&at(&[out, denied]), Some(12));
        assert_eq!(v, TraceVerdict::Dropped);
        assert_eq!(why, "dropped by to_pod at if12: policy_denied");
        let spoof = step(TraceProgram::FromPod, Reason::SpoofedSource, 11, 1);
        assert!(conclude(&at(&[spoof]), Some(12)).1.contains("from_pod at if11: spoofed_source"));
        // Allowed out but never seen at the destination's veth: not a delivery.
        assert_eq!(conclude(&at(&[out]), Some(12)).0, TraceVerdict::Incomplete);
        // Another pod's to_pod is not the destination's.
        assert_eq!(
            conclude(&at(&[out, step(TraceProgram::ToPod, Reason::PolicyAllow, 99, 2)]), Some(12)).0,
            TraceVerdict::Incomplete
        );
        assert_eq!(conclude(&at(&[]), Some(12)).0, TraceVerdict::Incomplete);
        // Leaving for an address no local pod holds: through from_pod is as far as Ward sees.
        assert_eq!(conclude(&at(&[out]), None).0, TraceVerdict::Forwarded);
        let mut http = step(TraceProgram::Http, Reason::PolicyAllow, 12, 3);
        http.reason = 0;
        http.verdict = Verdict::Drop as u8;
        let (v, why) = conclude(&at(&[out, at_db, http]), Some(12));
        assert_eq!(
            (v, why.as_str()),
            (TraceVerdict::Dropped, "dropped by ward_http at if12: the HTTP program refused the connection")
        );
    }

    #[test]
    fn the_path_ends_at_a_drop_or_the_destinations_to_pod() {
        let out = step(TraceProgram::FromPod, Reason::NotIsolated, 11, 1);
        assert!(!path_ended(&[out], Some(12)));
        assert!(path_ended(&[out], None));
        assert!(path_ended(&[out, step(TraceProgram::ToPod, Reason::Established, 12, 2)], Some(12)));
        assert!(path_ended(&[step(TraceProgram::FromPod, Reason::PolicyDenied, 11, 1)], Some(12)));
    }

    #[test]
    fn steps_are_named_as_flow_records_with_their_stage() {
        let view = View::default();
        let s = step(TraceProgram::ToPod, Reason::Established, 12, 2);
        let r = name_step(&view, &s, 0, 5, 0);
        assert_eq!((r.program.as_str(), r.stage.as_str(), r.new_flow), ("to_pod", "conntrack", false));
        assert_eq!(r.flow.reason, "established");
        assert_eq!(r.flow.l4.parts(), ("TCP", 61000, 80));
        let mut fresh = step(TraceProgram::FromPod, Reason::PolicyAllow, 11, 1);
        fresh.flags = STEP_NEW_FLOW;
        let r = name_step(&view, &fresh, 0, 5, 1);
        assert_eq!((r.stage.as_str(), r.new_flow, r.flow.reason.as_str()), ("policy_lookup", true, "policy_allow"));
        let mut http = step(TraceProgram::Http, Reason::PolicyAllow, 12, 3);
        (http.reason, http.flags) = (0, STEP_HTTP_POLICED);
        let r = name_step(&view, &http, 0, 5, 2);
        assert_eq!(
            (r.program.as_str(), r.http_policed, r.flow.reason.as_str()),
            ("ward_http", Some(true), "http_requests_judged")
        );
    }
}
