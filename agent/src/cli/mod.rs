//! Human-readable rendering of API responses for the `ward` CLI (JSON output is the
//! responses themselves).

pub mod audit;
pub mod map;
pub mod observe;
pub mod suggest;
pub mod trace;

use std::fmt::Write as _;

use crate::api::proto::{EndpointStatus, Response, StatusReport};

pub fn render(resp: &Response) -> String {
    match resp {
        Response::Status(s) => status(s),
        Response::Endpoints { endpoints } => endpoints_table(endpoints),
        Response::Explanation { text, .. } if text.ends_with('\n') => text.clone(),
        Response::Explanation { text, .. } => format!("{text}\n"),
        Response::Registered { endpoint_id, identity } => {
            format!("registered endpoint {endpoint_id} (identity {identity})\n")
        }
        Response::Deregistered { existed } => format!("deregistered (existed: {existed})\n"),
        Response::Readiness(r) => match &r.reason {
            None => "ready\n".to_owned(),
            Some(why) => format!("not ready: {why}\n"),
        },
        Response::Collected { forgotten } => format!("forgot {} stale endpoints\n", forgotten.len()),
        Response::DnsFlows { flows } => dns_flows(flows),
        Response::Datastore { snapshot } => format!(
            "{} namespaces, {} pods, {} policies, {} nodes\n",
            snapshot.namespaces.len(),
            snapshot.pods.len(),
            snapshot.policies.len(),
            snapshot.nodes.len()
        ),
        Response::Flows { flows, .. } => flows.iter().map(|f| format!("{}\n", observe::compact(f))).collect(),
        Response::Flow { flow } => format!("{}\n", observe::compact(flow)),
        Response::FlowsLost { missed, source } => format!("... {missed} flows lost ({})\n", source.as_str()),
        Response::Error { message } => format!("error: {message}\n"),
        Response::Metrics(r) => crate::metrics::text::render(r),
        Response::Trace(r) => trace::render(r),
    }
}

fn dns_flows(flows: &[crate::dns::flow::DnsFlow]) -> String {
    let mut o = String::new();
    for f in flows {
        let answers: Vec<String> = f.answers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            o,
            "{} {} {} {} {} -> {} [{}] ttl {} learned {} {}us",
            f.pod,
            f.transport,
            f.qname,
            f.qtype,
            f.verdict.as_str(),
            if f.rcode.is_empty() { "-" } else { &f.rcode },
            answers.join(","),
            f.ttl.map_or("-".into(), |t| t.to_string()),
            f.learned,
            f.latency_us
        );
    }
    o
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC), without a date library.
fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

fn status(s: &StatusReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Node:            {}", s.node);
    let _ = writeln!(o, "Version:         {}", s.version);
    let _ = writeln!(o, "Datastore:       {}", s.datastore);
    let h = &s.datastore_health;
    match (&h.not_synced, h.unreachable_since) {
        (Some(why), _) => {
            let _ = writeln!(o, "  not synced:    {why}");
        }
        (None, None) => {
            let _ = writeln!(o, "  synced");
        }
        (None, Some(_)) => {
            let _ = writeln!(o, "  synced, enforcing the last known state");
        }
    }
    if let Some(since) = h.unreachable_since {
        let ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(since))
            .unwrap_or(0);
        let _ = writeln!(
            o,
            "  unreachable:   since {} UTC ({ago} s ago): {}",
            utc(since),
            h.last_error.as_deref().unwrap_or("no answer")
        );
    }
    if !h.listings.is_empty() {
        let l: Vec<String> = h.listings.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(o, "  listings:      {}", l.join(", "));
    }
    if !s.service_cidrs.is_empty() {
        let _ = writeln!(o, "Service ranges:  {}", s.service_cidrs.join(", "));
        let uplinks = if s.uplinks.is_empty() { "none".to_owned() } else { s.uplinks.join(", ") };
        let _ = writeln!(o, "Uplinks:         {uplinks} (Service traffic leaving the node is decided there)");
        let delivery = match s.local_delivery.as_str() {
            "peer" => "peer (the datapath puts it into the receiver's namespace; the node's netfilter does not see it)",
            "route" => "route (the node's routing and netfilter)",
            other => other,
        };
        let _ = writeln!(o, "Same-node pods:  {delivery}");
    }
    if !s.pod_cidrs.is_empty() {
        let _ =
            writeln!(o, "Pod ranges:      {} (unknown addresses in them: identity_unknown)", s.pod_cidrs.join(", "));
    }
    let _ = writeln!(o, "Policy revision: {}", s.policy_revision);
    let _ = writeln!(o, "Objects:         {} namespaces, {} pods, {} policies", s.namespaces, s.pods, s.policies);
    let _ = writeln!(o, "Endpoints:       {} local, {} identities", s.endpoints, s.identities);
    let _ = writeln!(o, "Map entries:");
    for (m, n) in &s.map_entries {
        let _ = writeln!(o, "  {m:<16} {n}");
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(o, "Last error:      {e}");
    }
    if let Some(d) = &s.dns {
        let _ = writeln!(
            o,
            "DNS proxy:       port {}: {} UDP + {} TCP queries, {} allowed, {} refused, {} upstream errors, \
             {} write failures, {} malformed queries, {} malformed answers",
            d.port,
            d.queries_udp,
            d.queries_tcp,
            d.allowed,
            d.refused,
            d.upstream_errors,
            d.write_failures,
            d.malformed_queries,
            d.malformed_answers
        );
        let _ = writeln!(
            o,
            "Learned:         {} addresses in {} entries; evicted {} (per name) {} (per pod); {} expired, \
             {} kept for live flows",
            d.learned_addresses,
            d.learned_entries,
            d.evicted_per_name,
            d.evicted_per_pod,
            d.expired_removed,
            d.kept_for_live_flows
        );
    }
    if s.rejected.is_empty() {
        let _ = writeln!(o, "Rejected:        none");
    } else {
        let _ = writeln!(o, "Rejected ({}): the last valid version of each stays in force", s.rejected.len());
        for r in &s.rejected {
            let _ = writeln!(o, "  {}: {}: {}: {}", r.file, r.object, r.field, r.message);
        }
    }
    if !s.address_conflicts.is_empty() {
        let _ = writeln!(o, "Address conflicts ({}): refused claims are not in force", s.address_conflicts.len());
        for c in &s.address_conflicts {
            let _ = writeln!(o, "  {c}");
        }
    }
    if !s.duplicates.is_empty() {
        let _ = writeln!(
            o,
            "Duplicates ({}): declared more than once; the last valid declaration in file name order is in force",
            s.duplicates.len()
        );
        for d in &s.duplicates {
            let in_force = d.in_force.as_deref().unwrap_or("none (no valid version)");
            let _ = writeln!(o, "  {}: {} (in force: {in_force})", d.object, d.files.join(", "));
        }
    }
    if !s.notices.is_empty() {
        let _ = writeln!(o, "Notices ({}):", s.notices.len());
        for n in &s.notices {
            let _ = writeln!(o, "  {}: {}: {}: {}", n.file, n.object, n.field, n.message);
        }
    }
    let _ = writeln!(o, "Packets by reason:");
    for (r, n) in &s.reason_counters {
        if *n > 0 {
            let _ = writeln!(o, "  {r:<18} {n}");
        }
    }
    if s.http_counters.values().any(|n| *n > 0) {
        let _ = writeln!(o, "HTTP requests by reason:");
        for (r, n) in s.http_counters.iter().filter(|(_, n)| **n > 0) {
            let _ = writeln!(o, "  {r:<18} {n}");
        }
    }
    for w in &s.http_warnings {
        let _ = writeln!(o, "Warning: {w}");
    }
    if !s.http_recent.is_empty() {
        let _ = writeln!(o, "Recent HTTP decisions:");
        for d in &s.http_recent {
            let why = if d.detail.is_empty() { d.reason.clone() } else { format!("{} ({})", d.reason, d.detail) };
            let _ = writeln!(
                o,
                "  {} -> {} {} {} [{}] {} {why} {}",
                d.from, d.to, d.method, d.path, d.normalized, d.verdict, d.rule
            );
        }
    }
    if !s.rule_counters.is_empty() {
        let _ = writeln!(o, "New flows allowed, by rule:");
        for r in &s.rule_counters {
            let rule = format!("{} {} rule {}", r.policy, r.direction, r.index);
            let _ = writeln!(o, "  {rule:<40} {}", r.flows);
        }
    }
    o
}

fn endpoints_table(eps: &[EndpointStatus]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<6} {:<32} {:<16} {:<9} {:<8} {:<7} ADDRESSES",
        "ID", "POD", "INTERFACE", "IDENTITY", "INGRESS", "EGRESS"
    );
    for e in eps {
        let ips: Vec<String> = e.ips.iter().map(|i| i.to_string()).collect();
        let iso = |b: bool| if b { "deny" } else { "open" };
        let _ = writeln!(
            o,
            "{:<6} {:<32} {:<16} {:<9} {:<8} {:<7} {}",
            e.endpoint_id,
            e.pod,
            e.host_ifname,
            e.identity,
            iso(e.ingress_isolated),
            iso(e.egress_isolated),
            ips.join(",")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::{Duplicate, Health, Notice};

    #[test]
    fn status_says_since_when_the_datastore_is_unreachable() {
        let report = StatusReport {
            datastore: "kubernetes:in-cluster".into(),
            datastore_health: Health {
                unreachable_since: Some(1_796_130_000),
                last_error: Some("connection refused".into()),
                listings: [("Pod".to_owned(), 2)].into(),
                ..Health::default()
            },
            ..StatusReport::default()
        };
        let text = render(&Response::Status(Box::new(report)));
        assert!(text.contains("synced, enforcing the last known state"), "{text}");
        assert!(text.contains("unreachable:   since 2026-12-01 13:00:00 UTC"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.contains("listings:      Pod 2"), "{text}");
        assert!(!text.contains("Pod ranges"), "none known, none shown: {text}");
        let ranged =
            StatusReport { pod_cidrs: vec!["10.244.1.0/24".into(), "10.244.2.0/24".into()], ..StatusReport::default() };
        let text = render(&Response::Status(Box::new(ranged)));
        assert!(
            text.contains(
                "Pod ranges:      10.244.1.0/24, 10.244.2.0/24 (unknown addresses in them: identity_unknown)"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_lists_duplicates_with_both_files_and_notices() {
        let report = StatusReport {
            duplicates: vec![Duplicate {
                object: "NetworkPolicy shop/web".into(),
                files: vec!["policy.yaml".into(), "zz-copy.yaml".into()],
                in_force: Some("zz-copy.yaml".into()),
            }],
            notices: vec![Notice {
                file: "deny.yaml".into(),
                object: "NetworkPolicy default/deny".into(),
                field: "metadata.namespace".into(),
                message: "not set: namespace defaulted to default (as kubectl does)".into(),
            }],
            ..StatusReport::default()
        };
        let text = render(&Response::Status(Box::new(report)));
        assert!(text.contains("Duplicates (1): declared more than once"), "{text}");
        assert!(
            text.contains("  NetworkPolicy shop/web: policy.yaml, zz-copy.yaml (in force: zz-copy.yaml)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  deny.yaml: NetworkPolicy default/deny: metadata.namespace: not set: namespace defaulted to default"
            ),
            "{text}"
        );
        let empty = render(&Response::Status(Box::default()));
        assert!(!empty.contains("Duplicates") && !empty.contains("Notices"), "{empty}");
    }
}
