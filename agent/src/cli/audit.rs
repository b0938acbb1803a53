//! `ward policy audit-report`: what the audited policies would break if they were enforced,
//! per policy, from the recorded AUDIT flows (the agent's history through `observe::fetch`,
//! or an exported JSON-lines file). Each AUDIT record names, in `*_denied_by`, the audited
//! policies that isolate its pod in its direction; the report folds them into distinct
//! (direction, source, destination, port, protocol) rows with a count and the newest time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::cli::observe;
use crate::flows::filter::{Cond, FilterError};
use crate::flows::history::Query;
use crate::flows::record::{Endpoint, Flow, FlowTime, FlowVerdict, TrafficDirection};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditArgs {
    /// Only flows from this time on (default: 7 days back).
    pub since: FlowTime,
    pub until: Option<FlowTime>,
    /// Only these policies (`namespace/name` or `name`); every audited policy when empty.
    pub policies: Vec<String>,
    pub input_file: Option<PathBuf>,
    pub json: bool,
}

impl AuditArgs {
    /// AUDIT flows of the window (and of the named policies), filtered where they are read.
    pub fn query(&self) -> Result<Query, FilterError> {
        let mut q = Query { since: Some(self.since), until: self.until, ..Query::default() };
        q.filter.push(Cond::from_flag("verdict", FlowVerdict::Audit.as_str())?, false);
        for p in &self.policies {
            q.filter.push(Cond::from_flag("policy", p)?, false);
        }
        Ok(q)
    }
}

/// One audited policy and what it would deny.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyReport {
    /// `namespace/name`.
    pub policy: String,
    pub kind: String,
    pub flows: Vec<WouldDeny>,
}

/// Distinct traffic one audited policy would deny: how often it was seen and when last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WouldDeny {
    pub direction: TrafficDirection,
    /// `namespace/pod`, or the address.
    pub source: String,
    pub destination: String,
    /// 0 for protocols without ports.
    pub port: u16,
    pub protocol: String,
    pub count: u64,
    pub newest: FlowTime,
}

fn end(e: &Endpoint, ip: std::net::IpAddr) -> String {
    if e.is_pod() { format!("{}/{}", e.namespace, e.pod_name) } else { ip.to_string() }
}

/// Folds AUDIT flows into one report per audited policy, policies and rows sorted (rows by
/// count, most first, then by what they are), so the output is deterministic.
pub fn report(flows: &[Flow], only: &[String]) -> Vec<PolicyReport> {
    type Row = (TrafficDirection, String, String, u16, String);
    let mut by_policy: BTreeMap<(String, String), BTreeMap<Row, (u64, FlowTime)>> = BTreeMap::new();
    for f in flows.iter().filter(|f| f.verdict == FlowVerdict::Audit) {
        let (protocol, _, port) = f.l4.parts();
        let row: Row = (
            f.traffic_direction,
            end(&f.source, f.ip.source),
            end(&f.destination, f.ip.destination),
            port,
            protocol.to_owned(),
        );
        let deniers = match f.traffic_direction {
            TrafficDirection::Ingress => &f.ingress_denied_by,
            TrafficDirection::Egress => &f.egress_denied_by,
            TrafficDirection::Unknown => continue,
        };
        for p in deniers {
            let name = format!("{}/{}", p.namespace, p.name);
            if !only.is_empty() && !only.iter().any(|o| *o == name || *o == p.name) {
                continue;
            }
            let seen = by_policy.entry((name, p.kind.clone())).or_default().entry(row.clone()).or_insert((0, f.time));
            seen.0 += 1;
            seen.1 = seen.1.max(f.time);
        }
    }
    by_policy
        .into_iter()
        .map(|((policy, kind), rows)| {
            let mut flows: Vec<WouldDeny> = rows
                .into_iter()
                .map(|((direction, source, destination, port, protocol), (count, newest))| WouldDeny {
                    direction,
                    source,
                    destination,
                    port,
                    protocol,
                    count,
                    newest,
                })
                .collect();
            flows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| row_key(a).cmp(&row_key(b))));
            PolicyReport { policy, kind, flows }
        })
        .collect()
}

fn row_key(w: &WouldDeny) -> (TrafficDirection, &str, &str, u16, &str) {
    (w.direction, &w.source, &w.destination, w.port, &w.protocol)
}

/// The report as text: a heading per policy, one line per distinct flow.
pub fn render(reports: &[PolicyReport]) -> String {
    let mut o = String::new();
    if reports.is_empty() {
        o.push_str("no AUDIT flows: nothing the audited policies would deny was recorded in this window\n");
        return o;
    }
    for r in reports {
        let total: u64 = r.flows.iter().map(|f| f.count).sum();
        let kind = if r.kind == "NetworkPolicy" { String::new() } else { format!(" ({})", r.kind) };
        let _ = writeln!(o, "{}{kind}: would deny {} distinct flows ({total} records)", r.policy, r.flows.len());
        for f in &r.flows {
            let port = if f.port == 0 { String::new() } else { format!(":{}", f.port) };
            let _ = writeln!(
                o,
                "  {:<7} {} -> {}{port}/{}  {} x, newest {}",
                f.direction.as_str(),
                f.source,
                f.destination,
                f.protocol,
                f.count,
                f.newest
            );
        }
    }
    o
}

/// Runs `ward policy audit-report` against the agent at `socket` (or the input file).
pub fn run(socket: &Path, args: &AuditArgs) -> ExitCode {
    let q = match args.query() {
        Ok(q) => q,
        Err(e) => {
            eprintln!("ward policy audit-report: {e}");
            return ExitCode::from(2);
        }
    };
    let flows = match observe::fetch(socket, &q, args.input_file.as_deref(), "policy audit-report") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let reports = report(&flows, &args.policies);
    if args.json {
        match serde_json::to_string_pretty(&reports) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("ward policy audit-report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", render(&reports));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::filter::tests::flow;
    use crate::flows::record::PolicyAttribution;

    fn audited(from: &str, to: &str, port: u16, dir: TrafficDirection, by: &[&str], t: i128) -> Flow {
        let mut f = flow(from, to, port, FlowVerdict::Audit, dir);
        f.time = FlowTime(t);
        let by = by.iter().map(|p| {
            let (namespace, name) = p.split_once('/').expect("ns/name");
            PolicyAttribution {
                namespace: namespace.into(),
                name: name.into(),
                kind: "NetworkPolicy".into(),
                rule_index: None,
            }
        });
        match dir {
            TrafficDirection::Ingress => f.ingress_denied_by.extend(by),
            _ => f.egress_denied_by.extend(by),
        }
        f
    }

    #[test]
    fn each_audited_policy_lists_its_distinct_flows_with_counts_and_newest_time() {
        let flows = vec![
            audited("shop/web", "shop/db", 5432, TrafficDirection::Ingress, &["shop/db-lockdown"], 10),
            audited("shop/web", "shop/db", 5432, TrafficDirection::Ingress, &["shop/db-lockdown"], 30),
            audited("shop/api", "shop/db", 5432, TrafficDirection::Ingress, &["shop/db-lockdown", "shop/all"], 20),
            audited("shop/db", "shop/api", 8080, TrafficDirection::Egress, &["shop/all"], 5),
            // Not AUDIT: never counted.
            flow("shop/x", "shop/db", 5432, FlowVerdict::Forwarded, TrafficDirection::Ingress),
        ];
        let r = report(&flows, &[]);
        assert_eq!(r.iter().map(|p| p.policy.as_str()).collect::<Vec<_>>(), ["shop/all", "shop/db-lockdown"]);
        let lockdown = &r[1].flows;
        assert_eq!(lockdown.len(), 2);
        assert_eq!(
            (lockdown[0].source.as_str(), lockdown[0].destination.as_str(), lockdown[0].port, lockdown[0].count),
            ("shop/web", "shop/db", 5432, 2)
        );
        assert_eq!(lockdown[0].newest, FlowTime(30));
        assert_eq!((lockdown[1].source.as_str(), lockdown[1].count), ("shop/api", 1));
        let all = &r[0].flows;
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all.iter().any(|f| f.direction == TrafficDirection::Egress && f.destination == "shop/api"));

        let text = render(&r);
        assert!(text.contains("shop/db-lockdown: would deny 2 distinct flows (3 records)"), "{text}");
        assert!(text.contains("INGRESS shop/web -> shop/db:5432/TCP  2 x"), "{text}");

        let only = report(&flows, &["db-lockdown".to_owned()]);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].policy, "shop/db-lockdown");
        assert!(render(&[]).starts_with("no AUDIT flows"));
    }

    #[test]
    fn the_query_asks_for_audit_flows_of_the_window_only() {
        let a = AuditArgs { since: FlowTime(100), until: None, policies: vec![], input_file: None, json: false };
        let q = a.query().expect("query");
        let mut ok = audited("shop/web", "shop/db", 80, TrafficDirection::Ingress, &["shop/p"], 150);
        assert!(q.wants(&ok));
        ok.time = FlowTime(50);
        assert!(!q.wants(&ok), "older than --since");
        let mut fwd = flow("shop/web", "shop/db", 80, FlowVerdict::Forwarded, TrafficDirection::Ingress);
        fwd.time = FlowTime(150);
        assert!(!q.wants(&fwd), "only AUDIT");
    }
}
