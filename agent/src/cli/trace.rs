//! `ward trace --from ns/pod --to ns/pod|address --port 80/TCP [-o json]`: asks the agent to
//! send one real probe from a local pod and prints what each program did to it, one line per
//! step in `ward observe`'s form (`observe::compact`), with the stage each program's decision
//! was reached at, and the verdict.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::api::client;
use crate::api::proto::{Request, Response};
use crate::daemon::trace::{TraceReport, TraceStepReport};

/// What `ward trace` was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceArgs {
    pub from: String,
    pub to: String,
    /// `80/TCP`, `53/UDP`, or a bare number (TCP).
    pub port: String,
    pub json: bool,
}

/// `PORT[/PROTOCOL]` into (protocol, port).
pub fn parse_port(s: &str) -> Result<(String, u16), String> {
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_uppercase()),
        None => (s, "TCP".to_owned()),
    };
    let port: u16 = port.parse().map_err(|_| format!("--port: expected PORT[/TCP|UDP], got {s:?}"))?;
    if port == 0 {
        return Err(format!("--port: 0 is no destination port ({s:?})"));
    }
    if !matches!(proto.as_str(), "TCP" | "UDP") {
        return Err(format!("--port: protocol {proto:?} cannot be traced (TCP or UDP)"));
    }
    Ok((proto, port))
}

pub fn run(socket: &Path, args: &TraceArgs) -> ExitCode {
    let (protocol, port) = match parse_port(&args.port) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ward trace: {e}");
            return ExitCode::from(2);
        }
    };
    let req = Request::Trace { from: args.from.clone(), to: args.to.clone(), protocol, port };
    // A trace waits up to two seconds for its steps, and for a trace already running.
    let resp = match client::call(socket, &req, Duration::from_secs(30)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ward: {e}");
            return ExitCode::from(2);
        }
    };
    match resp {
        Response::Trace(report) if args.json => match serde_json::to_string(&report) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ward trace: {e}");
                ExitCode::FAILURE
            }
        },
        Response::Trace(report) => {
            print!("{}", render(&report));
            ExitCode::SUCCESS
        }
        Response::Error { message } => {
            eprintln!("ward trace: {message}");
            ExitCode::FAILURE
        }
        other => {
            eprintln!("ward trace: unexpected answer: {other:?}");
            ExitCode::FAILURE
        }
    }
}

/// What the program's stage means, with the identities and rule the step carries.
fn stage(s: &TraceStepReport) -> String {
    let f = &s.flow;
    let (subject, peer) = match f.traffic_direction {
        crate::flows::record::TrafficDirection::Ingress => (&f.destination, &f.source),
        _ => (&f.source, &f.destination),
    };
    let mut o = s.stage.clone();
    if s.stage == "policy_lookup" || s.stage == "http" {
        let _ = write!(o, ": identity {} -> peer identity {}", subject.identity, peer.identity);
        if let Some(rule) = f.rule_id {
            let _ = write!(o, ", rule id {rule}");
        }
    }
    if s.new_flow {
        o.push_str("; new flow tracked");
    }
    match s.http_policed {
        Some(true) => o.push_str("; only HTTP rules admit it: each request is judged"),
        Some(false) => o.push_str("; an L4 rule admits it: requests are not judged"),
        None => {}
    }
    o
}

pub fn render(r: &TraceReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "trace {}: {} -> {} {}/{} (probe {} port {} -> {})",
        r.trace_id, r.from, r.to, r.destination_port, r.protocol, r.source, r.source_port, r.destination
    );
    for (i, s) in r.steps.iter().enumerate() {
        let _ = writeln!(o, "  {}. {:<9} [{}]", i + 1, s.program, stage(s));
        let _ = writeln!(o, "     {}", crate::cli::observe::compact(&s.flow));
    }
    let _ = writeln!(o, "verdict: {} ({})", serde_plain(&r.verdict), r.summary);
    o
}

fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::daemon::trace::TraceVerdict;
    use crate::flows::record::{FlowTime, View};
    use ward_common::addr::v4_mapped;
    use ward_common::maps::FlowEvent;
    use ward_common::{Direction, Reason};

    fn step(
        program: &str,
        stage: &str,
        dir: Direction,
        reason: Reason,
        rule_id: u32,
        new_flow: bool,
    ) -> TraceStepReport {
        let ev = FlowEvent {
            ts_ns: 0,
            ifindex: 4,
            ep_id: 1,
            peer_cidr_identity: 2,
            tcp_flags: 0x02,
            icmp_type: 0,
            icmp_code: 0,
            _pad: [0; 5],
            saddr: v4_mapped([10, 1, 0, 2]),
            daddr: v4_mapped([10, 1, 0, 3]),
            sport_be: 61000u16.to_be_bytes(),
            dport_be: 5432u16.to_be_bytes(),
            proto: 6,
            dir: dir as u8,
            verdict: reason.verdict() as u8,
            reason: reason as u8,
            subject_identity: if dir == Direction::Egress { 300 } else { 301 },
            peer_identity: if dir == Direction::Egress { 301 } else { 300 },
            rule_id,
        };
        TraceStepReport {
            program: program.into(),
            stage: stage.into(),
            new_flow,
            http_policed: None,
            flow: View::default().enrich(&ev, FlowTime(0), "u".into()),
        }
    }

    #[test]
    fn the_text_form_shows_each_step_as_an_observe_line_with_its_stage_and_the_verdict() {
        let report = TraceReport {
            trace_id: 9,
            from: "shop/api".into(),
            to: "shop/db".into(),
            protocol: "TCP".into(),
            source: "10.1.0.2".parse().expect("ip"),
            source_port: 61000,
            destination: "10.1.0.3".parse().expect("ip"),
            destination_port: 5432,
            steps: vec![
                step("from_pod", "policy_lookup", Direction::Egress, Reason::PolicyAllow, 7, true),
                step("to_pod", "policy_lookup", Direction::Ingress, Reason::PolicyDenied, 0, false),
            ],
            verdict: TraceVerdict::Dropped,
            summary: "dropped by to_pod at shop/db (ingress): policy_denied".into(),
            kernel_records_before: 0,
            kernel_records_after: 2,
        };
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "trace 9: shop/api -> shop/db 5432/TCP (probe 10.1.0.2 port 61000 -> 10.1.0.3)");
        assert_eq!(
            lines[1],
            "  1. from_pod  [policy_lookup: identity 300 -> peer identity 301, rule id 7; new flow tracked]"
        );
        assert!(lines[2].ends_with("10.1.0.2:61000 -> 10.1.0.3:5432 TCP FORWARDED EGRESS policy_allow"), "{text}");
        assert_eq!(lines[3], "  2. to_pod    [policy_lookup: identity 301 -> peer identity 300]");
        assert!(lines[4].ends_with("TCP DROPPED INGRESS policy_denied"), "{text}");
        assert_eq!(lines[5], "verdict: DROPPED (dropped by to_pod at shop/db (ingress): policy_denied)");
    }

    #[test]
    fn ports_name_their_protocol_or_default_to_tcp_and_bad_ones_are_refused() {
        assert_eq!(parse_port("80/TCP"), Ok(("TCP".into(), 80)));
        assert_eq!(parse_port("53/udp"), Ok(("UDP".into(), 53)));
        assert_eq!(parse_port("8080"), Ok(("TCP".into(), 8080)));
        assert!(parse_port("80/SCTP").unwrap_err().contains("cannot be traced"));
        assert!(parse_port("http").unwrap_err().contains("expected PORT"));
        assert!(parse_port("0/TCP").unwrap_err().contains("0 is no destination port"));
        assert!(parse_port("70000").is_err());
    }
}
