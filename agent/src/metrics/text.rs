//! The Prometheus text exposition format (version 0.0.4) of a metrics [`Report`]: each
//! family's `# HELP` and `# TYPE` once, then its samples; label values escaped (`\`, `"`,
//! newline); counters named `*_total`; histograms as cumulative `_bucket{le=...}` ending in
//! `+Inf`, then `_sum` and `_count`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ward_common::{Direction, Reason, Verdict};

use super::{LATENCY_BOUNDS_US, Report};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value, escaped as the text format wants.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes families one at a time: the header once, then samples with labels in order.
struct Out {
    text: String,
    node: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; the node label comes first on every sample.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.text, "{name}{{node=\"{}\"", self.node);
        for (k, v) in labels {
            let _ = write!(self.text, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(self.text, "}} {value}");
    }
}

/// Hubble's verdict names, so dashboards written for it read these series. What passes only
/// because the policies that would deny it are audited is AUDIT, not FORWARDED.
fn verdict_name(r: Reason) -> &'static str {
    match (r, r.verdict()) {
        (Reason::Audit, _) => "AUDIT",
        (_, Verdict::Allow) => "FORWARDED",
        (_, Verdict::Drop) => "DROPPED",
    }
}

/// How a reason relates to policy, for `ward_policy_verdicts_total`: `None` for verdicts
/// that are not a policy decision (conntrack hits, parse errors, spoofing, ...).
pub fn policy_match(r: Reason) -> Option<(&'static str, &'static str)> {
    match r {
        Reason::PolicyAllow => Some(("rule", "allowed")),
        Reason::NotIsolated => Some(("not_isolated", "allowed")),
        Reason::FromHost => Some(("from_host", "allowed")),
        Reason::PolicyDenied => Some(("none", "denied")),
        Reason::PolicyRevoked => Some(("revoked", "denied")),
        Reason::FqdnExpired => Some(("fqdn_expired", "denied")),
        // No rule allows, and the peer is a pod this node does not know yet.
        Reason::IdentityUnknown => Some(("identity_unknown", "denied")),
        // No audited rule matched: audited policies would deny it (it passed).
        Reason::Audit => Some(("none", "audit")),
        _ => None,
    }
}

/// Seconds, from microseconds, without float noise (`0.0025`, `1`, `10`).
fn seconds(us: u64) -> String {
    let (whole, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// The whole report as exposition text.
pub fn render(r: &Report) -> String {
    let s = &r.status;
    let mut o = Out { text: String::new(), node: escape(&s.node) };

    o.family("ward_build_info", "gauge", "The agent's version and map layout; always 1.");
    let layout = r.layout_version.to_string();
    o.sample("ward_build_info", &[("version", &s.version), ("layout_version", &layout)], 1);

    // Per (reason, direction), both directions of every known reason, zeros included: a
    // series that appears only after its first packet makes `rate()` miss that packet.
    let mut by_reason: BTreeMap<Reason, u64> = BTreeMap::new();
    let mut slots: BTreeMap<(Reason, Direction), u64> = BTreeMap::new();
    for v in &r.verdicts {
        if let (Ok(reason), Ok(dir)) = (Reason::try_from(v.reason), Direction::try_from(v.direction)) {
            *slots.entry((reason, dir)).or_default() += v.packets;
            *by_reason.entry(reason).or_default() += v.packets;
        }
    }
    let dirs = [Direction::Ingress, Direction::Egress];

    o.family(
        "ward_drop_total",
        "counter",
        "Packets the datapath dropped, by reason and direction (exact, from the kernel's per-CPU counters).",
    );
    for reason in Reason::ALL.into_iter().filter(|x| x.verdict() == Verdict::Drop) {
        for d in dirs {
            let n = slots.get(&(reason, d)).copied().unwrap_or(0);
            o.sample("ward_drop_total", &[("reason", reason.as_str()), ("direction", d.as_str())], n);
        }
    }

    o.family(
        "ward_flows_processed_total",
        "counter",
        "Packets the L3/L4 datapath judged, by verdict (exact, from the kernel's per-CPU counters).",
    );
    for v in ["FORWARDED", "DROPPED", "AUDIT"] {
        let n: u64 = slots.iter().filter(|((x, _), _)| verdict_name(*x) == v).map(|(_, n)| n).sum();
        o.sample("ward_flows_processed_total", &[("type", "l3_l4"), ("verdict", v)], n);
    }

    o.family("ward_policy_verdicts_total", "counter", "Policy decisions on new flows, by direction, what matched (rule, not_isolated, from_host, none, revoked, fqdn_expired, identity_unknown) and action (allowed, denied, audit: passed, audited policies would deny).");
    for reason in Reason::ALL {
        let Some((matched, action)) = policy_match(reason) else { continue };
        for d in dirs {
            let n = slots.get(&(reason, d)).copied().unwrap_or(0);
            o.sample(
                "ward_policy_verdicts_total",
                &[("direction", d.as_str()), ("match", matched), ("action", action)],
                n,
            );
        }
    }

    o.family("ward_packets_total", "counter", "Packets the datapath decided, by reason (both directions).");
    for reason in Reason::ALL {
        let n = by_reason.get(&reason).copied().unwrap_or(0);
        o.sample("ward_packets_total", &[("reason", reason.as_str())], n);
    }

    // Summed per (policy, direction, index): two rule ids of one rule must not become two
    // series with the same labels, which Prometheus rejects.
    let mut rules: BTreeMap<(&str, &str, usize), u64> = BTreeMap::new();
    for h in &r.rules {
        *rules.entry((h.policy.as_str(), h.direction.as_str(), h.index)).or_default() += h.flows;
    }
    o.family("ward_rule_flows_total", "counter", "New flows each rule of the compiled policy allowed (exact, from the kernel's per-CPU counters); 0 for rules never hit.");
    for ((policy, direction, index), n) in &rules {
        let index = index.to_string();
        o.sample("ward_rule_flows_total", &[("policy", policy), ("direction", direction), ("rule", &index)], n);
    }
    o.family("ward_policy_rules", "gauge", "Rules of the compiled policy that have allowed a flow since the counters started (used) and that have not (unused).");
    let used = rules.values().filter(|n| **n > 0).count();
    o.sample("ward_policy_rules", &[("state", "used")], used);
    o.sample("ward_policy_rules", &[("state", "unused")], rules.len() - used);

    o.family("ward_map_entries", "gauge", "Entries in each BPF map.");
    for m in &r.maps {
        o.sample("ward_map_entries", &[("map", &m.map)], m.entries);
    }
    o.family("ward_map_max_entries", "gauge", "Capacity of each BPF map.");
    for m in &r.maps {
        if let Some(max) = m.max_entries {
            o.sample("ward_map_max_entries", &[("map", &m.map)], max);
        }
    }

    let h = &r.policy_update_latency;
    o.family(
        "ward_policy_update_latency_seconds",
        "histogram",
        "Time from the agent receiving a datastore change to the kernel maps holding it.",
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
        cumulative += h.counts.get(i).copied().unwrap_or(0);
        o.sample("ward_policy_update_latency_seconds_bucket", &[("le", &seconds(*bound))], cumulative);
    }
    o.sample("ward_policy_update_latency_seconds_bucket", &[("le", "+Inf")], h.count());
    o.sample("ward_policy_update_latency_seconds_sum", &[], seconds(h.sum_us));
    o.sample("ward_policy_update_latency_seconds_count", &[], h.count());

    let f = &r.flow_events;
    o.family(
        "ward_flow_events_total",
        "counter",
        "Flow records read from the kernel's ring buffer into the flow history (ward observe).",
    );
    o.sample("ward_flow_events_total", &[], f.delivered);
    o.family(
        "ward_lost_events_total",
        "counter",
        "Flow records lost: the kernel's ring buffer was full (kernel_ring_buffer), or the file exporter fell behind (export).",
    );
    o.sample("ward_lost_events_total", &[("source", "kernel_ring_buffer")], f.lost_kernel);
    o.sample("ward_lost_events_total", &[("source", "export")], f.lost_export);

    let gauges = [
        ("ward_endpoints", "Local pods protected.", s.endpoints),
        ("ward_pods", "Pods the datastore holds.", s.pods),
        ("ward_policies", "Policies in force.", s.policies),
        ("ward_identities", "Label identities allocated.", s.identities),
        ("ward_rejected_objects", "Objects rejected as invalid.", s.rejected.len()),
    ];
    for (name, help, v) in gauges {
        o.family(name, "gauge", help);
        o.sample(name, &[], v);
    }
    o.family("ward_datastore_synced", "gauge", "Whether the datastore has been listed in full.");
    o.sample("ward_datastore_synced", &[], u8::from(s.datastore_health.not_synced.is_none()));
    o.family("ward_datastore_reachable", "gauge", "Whether the datastore's source answers.");
    o.sample("ward_datastore_reachable", &[], u8::from(s.datastore_health.unreachable_since.is_none()));
    o.family("ward_datastore_listings_total", "counter", "Full listings per kind (relists after 410 Gone included).");
    for (kind, n) in &s.datastore_health.listings {
        o.sample("ward_datastore_listings_total", &[("kind", kind)], n);
    }
    o.text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::{MapFill, RuleHits, VerdictCount};
    use super::*;

    fn report() -> Report {
        let mut r = Report { layout_version: 2, ..Report::default() };
        r.status.node = "n\"1\\\n".into();
        r.status.version = "0.1.0".into();
        r.status.pods = 3;
        r.status.datastore_health.listings.insert("Pod".into(), 2);
        r.verdicts = vec![
            VerdictCount::new(Reason::PolicyDenied, Direction::Ingress, 7),
            VerdictCount::new(Reason::PolicyDenied, Direction::Egress, 1),
            VerdictCount::new(Reason::PolicyAllow, Direction::Egress, 4),
            VerdictCount::new(Reason::Established, Direction::Ingress, 10),
            VerdictCount::new(Reason::Audit, Direction::Ingress, 3),
        ];
        r.rules = vec![
            RuleHits { policy: "n/allow".into(), direction: "ingress".into(), index: 0, flows: 4 },
            RuleHits { policy: "n/allow".into(), direction: "ingress".into(), index: 1, flows: 0 },
        ];
        r.maps = vec![MapFill { map: "WARD_CT".into(), entries: 5, max_entries: Some(262_144) }];
        r.policy_update_latency.observe(std::time::Duration::from_micros(1_500));
        r.policy_update_latency.observe(std::time::Duration::from_micros(20_000_000));
        r
    }

    const NODE: &str = "node=\"n\\\"1\\\\\\n\"";

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "missing line {line:?} in:\n{text}");
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let text = render(&report());
        has(&text, &format!("ward_pods{{{NODE}}} 3"));
    }

    #[test]
    fn drops_verdicts_and_policy_decisions_come_from_the_reason_direction_counters() {
        let text = render(&report());
        has(&text, &format!("ward_drop_total{{{NODE},reason=\"policy_denied\",direction=\"ingress\"}} 7"));
        has(&text, &format!("ward_drop_total{{{NODE},reason=\"policy_denied\",direction=\"egress\"}} 1"));
        has(&text, &format!("ward_drop_total{{{NODE},reason=\"spoofed_source\",direction=\"egress\"}} 0"));
        assert!(
            !text.lines().any(|l| l.starts_with("ward_drop_total{") && l.contains("reason=\"established\"")),
            "allows are not drops"
        );
        has(&text, &format!("ward_flows_processed_total{{{NODE},type=\"l3_l4\",verdict=\"FORWARDED\"}} 14"));
        has(&text, &format!("ward_flows_processed_total{{{NODE},type=\"l3_l4\",verdict=\"DROPPED\"}} 8"));
        has(&text, &format!("ward_flows_processed_total{{{NODE},type=\"l3_l4\",verdict=\"AUDIT\"}} 3"));
        has(
            &text,
            &format!("ward_policy_verdicts_total{{{NODE},direction=\"ingress\",match=\"none\",action=\"audit\"}} 3"),
        );
        has(
            &text,
            &format!("ward_policy_verdicts_total{{{NODE},direction=\"egress\",match=\"none\",action=\"audit\"}} 0"),
        );
        has(
            &text,
            &format!("ward_policy_verdicts_total{{{NODE},direction=\"egress\",match=\"rule\",action=\"allowed\"}} 4"),
        );
        has(
            &text,
            &format!("ward_policy_verdicts_total{{{NODE},direction=\"ingress\",match=\"none\",action=\"denied\"}} 7"),
        );
        has(&text, &format!("ward_packets_total{{{NODE},reason=\"policy_denied\"}} 8"));
    }

    #[test]
    fn every_compiled_rule_is_exported_and_unused_ones_read_zero() {
        let text = render(&report());
        has(&text, &format!("ward_rule_flows_total{{{NODE},policy=\"n/allow\",direction=\"ingress\",rule=\"0\"}} 4"));
        has(&text, &format!("ward_rule_flows_total{{{NODE},policy=\"n/allow\",direction=\"ingress\",rule=\"1\"}} 0"));
        has(&text, &format!("ward_policy_rules{{{NODE},state=\"used\"}} 1"));
        has(&text, &format!("ward_policy_rules{{{NODE},state=\"unused\"}} 1"));
    }

    #[test]
    fn two_ids_of_one_rule_are_one_series() {
        let mut r = report();
        r.rules.push(RuleHits { policy: "n/allow".into(), direction: "ingress".into(), index: 0, flows: 2 });
        let text = render(&r);
        has(&text, &format!("ward_rule_flows_total{{{NODE},policy=\"n/allow\",direction=\"ingress\",rule=\"0\"}} 6"));
    }

    #[test]
    fn the_latency_histogram_is_cumulative_and_ends_in_inf_sum_and_count() {
        let text = render(&report());
        let b = "ward_policy_update_latency_seconds_bucket";
        has(&text, &format!("{b}{{{NODE},le=\"0.001\"}} 0"));
        has(&text, &format!("{b}{{{NODE},le=\"0.0025\"}} 1"));
        has(&text, &format!("{b}{{{NODE},le=\"10\"}} 1"));
        has(&text, &format!("{b}{{{NODE},le=\"+Inf\"}} 2"));
        has(&text, &format!("ward_policy_update_latency_seconds_sum{{{NODE}}} 20.0015"));
        has(&text, &format!("ward_policy_update_latency_seconds_count{{{NODE}}} 2"));
        let counts: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with(b))
            .map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a count"))
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "buckets never decrease: {counts:?}");
    }

    #[test]
    fn flow_records_delivered_and_lost_per_source() {
        let mut r = report();
        r.flow_events = crate::metrics::FlowEventCounts { delivered: 12, lost_kernel: 3, lost_export: 5 };
        let text = render(&r);
        has(&text, &format!("ward_flow_events_total{{{NODE}}} 12"));
        has(&text, &format!("ward_lost_events_total{{{NODE},source=\"kernel_ring_buffer\"}} 3"));
        has(&text, &format!("ward_lost_events_total{{{NODE},source=\"export\"}} 5"));
    }

    #[test]
    fn build_info_map_fill_and_gauges_are_there() {
        let text = render(&report());
        has(&text, &format!("ward_build_info{{{NODE},version=\"0.1.0\",layout_version=\"2\"}} 1"));
        has(&text, &format!("ward_map_entries{{{NODE},map=\"WARD_CT\"}} 5"));
        has(&text, &format!("ward_map_max_entries{{{NODE},map=\"WARD_CT\"}} 262144"));
        has(&text, &format!("ward_datastore_listings_total{{{NODE},kind=\"Pod\"}} 2"));
        has(&text, &format!("ward_datastore_synced{{{NODE}}} 1"));
    }

    /// The structure Prometheus's parser insists on: HELP then TYPE once per family before
    /// its samples, samples only of the family announced last (histogram suffixes
    /// included), counters ending `_total`, every value a number, no series twice.
    #[test]
    fn the_output_is_well_formed_exposition_text() {
        let text = render(&report());
        let mut families = BTreeSet::new();
        let mut series = BTreeSet::new();
        let (mut current, mut kind) = (String::new(), String::new());
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().expect("a name");
                assert!(families.insert(name.to_owned()), "family {name} announced twice");
                let ty = lines.next().expect("TYPE after HELP");
                let mut parts = ty.strip_prefix("# TYPE ").expect("TYPE after HELP").split(' ');
                assert_eq!(parts.next(), Some(name), "{ty}");
                kind = parts.next().expect("a type").to_owned();
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} must end in _total");
                }
                current = name.to_owned();
                continue;
            }
            assert!(!line.starts_with('#'), "stray comment {line}");
            let name = line.split(['{', ' ']).next().expect("a name");
            let ok = name == current
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"].iter().any(|s| *name == format!("{current}{s}")));
            assert!(ok, "{name} outside its family (current {current})");
            let (key, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.insert(key.to_owned()), "series {key} twice");
        }
        assert!(families.len() >= 15, "{families:?}");
    }
}
