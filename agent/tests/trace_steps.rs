//! Kernel-logic tests of `ward trace`'s gate: the real programs, BPF_PROG_TEST_RUN, the trace
//! maps set by hand. Only the armed probe (its five-tuple and its marker) gets a step record,
//! carrying the program's own decision; disarmed, nothing is recorded. Root required.

mod support;

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use ward_common::{
    Direction, Reason, Verdict,
    addr::v4_mapped,
    maps::{EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS},
    trace::{
        ETHERTYPE_IPV4, ETHERTYPE_IPV6, MAP_TRACE, MAP_TRACE_COUNT, MAP_TRACE_EVENTS, PROBE_MAX, STEP_NEW_FLOW,
        TraceConfig, TraceProgram, TraceStep,
    },
};

use support::*;

struct Trace {
    config: Array<MapData, TraceConfig>,
    ring: RingBuf<MapData>,
    count: PerCpuArray<MapData, u64>,
}

impl Trace {
    fn take(t: &mut TestDatapath) -> Trace {
        let mut map = |name| t.dp.take_map(name).unwrap_or_else(|| panic!("{name} in the object"));
        Trace {
            config: map(MAP_TRACE).try_into().expect("WARD_TRACE is an array"),
            ring: map(MAP_TRACE_EVENTS).try_into().expect("WARD_TRACE_EVT is a ring buffer"),
            count: map(MAP_TRACE_COUNT).try_into().expect("WARD_TRACE_CNT is a per-CPU array"),
        }
    }

    fn arm(&mut self, cfg: &TraceConfig) {
        self.config.set(0, cfg, 0).expect("arm");
    }

    fn steps(&mut self) -> Vec<TraceStep> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.push(TraceStep::from_bytes(&item).expect("a whole step record"));
        }
        out
    }

    fn count(&self) -> u64 {
        self.count.get(&0, 0).expect("count").iter().sum()
    }
}

/// The probe `cfg` describes, as the Ethernet frame a program sees.
fn frame(cfg: &TraceConfig) -> Vec<u8> {
    let mut f = vec![0u8; 14 + PROBE_MAX];
    let et = if cfg.v6 != 0 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 };
    f[12..14].copy_from_slice(&et.to_be_bytes());
    let n = cfg.probe(&mut f[14..]).expect("a probe");
    f.truncate(14 + n);
    f
}

fn probe(id: u32, from: [u8; 16], to: [u8; 16], sport: u16, dport: u16, proto: u8, v6: bool) -> TraceConfig {
    TraceConfig {
        id,
        sport_be: sport.to_be_bytes(),
        dport_be: dport.to_be_bytes(),
        proto,
        v6: u8::from(v6),
        _pad: [0; 6],
        saddr: from,
        daddr: to,
    }
}

#[test]
fn only_the_armed_probe_gets_a_step_with_its_programs_decision() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("trace");
    let mut m = base(EP_ISOLATED_INGRESS);
    allow(&mut m, Direction::Ingress, PEER_ID, TCP, 80, 80, 11);
    t.apply(&m);
    let mut tr = Trace::take(&mut t);
    let (peer, pod) = (v4_mapped(PEER.octets()), v4_mapped(POD.octets()));

    // Disarmed: the probe itself passes through and leaves no record.
    let first = probe(41, peer, pod, 61000, 80, TCP, false);
    assert_eq!(t.run("to_pod", &frame(&first)), PASS);
    assert!(tr.steps().is_empty());
    assert_eq!(tr.count(), 0, "no record while no trace is armed");

    // Armed: the probe's step, with to_pod's decision (allowed by rule 11, tracked).
    let cfg = probe(42, peer, pod, 61001, 80, TCP, false);
    tr.arm(&cfg);
    assert_eq!(t.run("to_pod", &frame(&cfg)), PASS);
    let steps = tr.steps();
    assert_eq!(steps.len(), 1, "{steps:?}");
    let s = steps[0];
    assert_eq!((s.trace_id, s.program(), s.dir), (42, Ok(TraceProgram::ToPod), Direction::Ingress as u8));
    assert_eq!((s.reason(), s.verdict()), (Ok(Reason::PolicyAllow), Ok(Verdict::Allow)));
    assert_eq!((s.rule_id, s.subject_identity, s.peer_identity, s.ep_id), (11, SUBJECT, PEER_ID, EP_ID));
    assert_eq!((s.flags & STEP_NEW_FLOW, s.tcp_flags, s.ifindex), (STEP_NEW_FLOW, SYN, LO));
    assert_eq!((s.saddr, s.daddr, s.sport_be, s.dport_be), (peer, pod, cfg.sport_be, cfg.dport_be));

    // The same packet again is the tracked flow's: its step says so.
    assert_eq!(t.run("to_pod", &frame(&cfg)), PASS);
    let again = tr.steps();
    assert_eq!(again.iter().map(|s| s.reason()).collect::<Vec<_>>(), [Ok(Reason::Established)]);
    assert_eq!(again[0].flags & STEP_NEW_FLOW, 0);

    // Armed, but not the probe: another marker (the source kernel's own reset of the same
    // five-tuple carries its own IP id), another port, other traffic: no record.
    let other_id = probe(43, peer, pod, 61001, 80, TCP, false);
    assert_eq!(t.run("to_pod", &frame(&other_id)), PASS);
    let other_port = probe(42, peer, pod, 61001, 81, TCP, false);
    assert_eq!(t.run("to_pod", &frame(&other_port)), DROP);
    assert_eq!(t.run("to_pod", &packet(PEER, POD, TCP, 61001, 80, ACK)), PASS);
    assert!(tr.steps().is_empty(), "only the probe is recorded");

    // A denied probe: its drop and reason.
    let denied = probe(44, peer, pod, 61002, 81, TCP, false);
    tr.arm(&denied);
    assert_eq!(t.run("to_pod", &frame(&denied)), DROP);
    let s = tr.steps();
    assert_eq!(
        s.iter().map(|s| (s.reason(), s.verdict())).collect::<Vec<_>>(),
        [(Ok(Reason::PolicyDenied), Ok(Verdict::Drop))]
    );

    // from_pod and UDP: a pod not isolated for egress.
    let out = probe(45, pod, peer, 61003, 53, UDP, false);
    tr.arm(&out);
    assert_eq!(t.run("from_pod", &frame(&out)), PASS);
    let s = tr.steps();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!((s[0].program(), s[0].reason(), s[0].proto), (Ok(TraceProgram::FromPod), Ok(Reason::NotIsolated), UDP));

    // Disarmed again: nothing more, whatever runs.
    tr.arm(&TraceConfig::default());
    let before = tr.count();
    assert_eq!(t.run("from_pod", &frame(&out)), PASS);
    assert_eq!(t.run("to_pod", &frame(&cfg)), PASS);
    assert!(tr.steps().is_empty());
    assert_eq!(tr.count(), before, "disarmed: the count stands still");
    assert_eq!(before, 4, "one record per recorded step");
}

#[test]
fn an_ipv6_probe_is_matched_by_its_flow_label_and_egress_denial_is_recorded() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("trace6");
    t.apply(&base(EP_ISOLATED_EGRESS));
    let mut tr = Trace::take(&mut t);
    let cfg = probe(0x1_2345 & 0xFFFF, POD6.octets(), PEER6.octets(), 61010, 443, TCP, true);
    tr.arm(&cfg);
    assert_eq!(t.run("from_pod", &frame(&cfg)), DROP);
    let s = tr.steps();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (s[0].program(), s[0].reason(), s[0].dir),
        (Ok(TraceProgram::FromPod), Ok(Reason::PolicyDenied), Direction::Egress as u8)
    );
    assert_eq!((s[0].saddr, s[0].daddr), (cfg.saddr, cfg.daddr));
    // The same five-tuple with another flow label is not the probe.
    let other = TraceConfig { id: cfg.id + 1, ..cfg };
    assert_eq!(t.run("from_pod", &frame(&other)), DROP);
    assert!(tr.steps().is_empty());
}
