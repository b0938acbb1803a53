//! What `ward status` says about HTTP rules: the datapath's per-reason counters, its newest
//! flow records with the rule named, and the compiler's warnings about HTTP rules that do
//! not act as written.

use std::net::IpAddr;

use ward_common::http::conn::{EVT_SEEN_CUT, HttpEvent, HttpReason};
use ward_common::http::path::Error;
use ward_policy::compile::{Compiled, HttpWarning};

use crate::api::proto::{HttpDecision, StatusReport};

use super::Agent;

impl Agent {
    /// Fills the HTTP part of a status report.
    pub(super) fn http_status(&self, report: &mut StatusReport) {
        if let Ok(counters) = self.dp.http.counters() {
            report.http_counters = counters.into_iter().map(|(r, n)| (r.as_str().to_owned(), n)).collect();
        }
        let compiled = self.compiled.as_ref();
        report.http_recent = self.dp.http.recent().map(|e| decision(e, compiled)).collect();
        if let Some(c) = compiled {
            report.http_warnings = c.http_warnings.iter().map(|w| warning(w, c)).collect();
        }
    }
}

fn addr(a: [u8; 16], port_be: [u8; 2]) -> String {
    let ip = IpAddr::from(a).to_canonical();
    let port = u16::from_be_bytes(port_be);
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// One flow record, with the rule named from the compiled state.
pub fn decision(e: &HttpEvent, compiled: Option<&Compiled>) -> HttpDecision {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut path = text(&e.seen[..(e.seen_len as usize).min(e.seen.len())]);
    if e.flags & EVT_SEEN_CUT != 0 {
        path.push('…');
    }
    let reason = HttpReason::from_u8(e.reason);
    let rule = match (e.rule_id, compiled.and_then(|c| c.rules.get(&e.rule_id))) {
        (0, _) => String::new(),
        (id, Some(r)) => format!(
            "{} {} rule {} port {} http[{}] (rule id {id})",
            r.policy,
            r.direction.as_str(),
            r.index,
            e.rule_port,
            e.rule_http
        ),
        (id, None) => format!("rule id {id}"),
    };
    HttpDecision {
        from: addr(e.saddr, e.sport_be),
        to: addr(e.daddr, e.dport_be),
        method: text(&e.method[..(e.method_len as usize).min(e.method.len())]),
        path,
        normalized: text(&e.path[..(e.path_len as usize).min(e.path.len())]),
        verdict: if reason == Some(HttpReason::Allowed) { "allowed" } else { "denied" }.into(),
        reason: reason.map_or_else(|| format!("reason {}", e.reason), |r| r.as_str().to_owned()),
        detail: Error::from_u8(e.error).map(|e| e.as_str().to_owned()).unwrap_or_default(),
        rule,
    }
}

fn rule_name(c: &Compiled, id: u32) -> String {
    c.rules
        .get(&id)
        .map_or_else(|| format!("rule id {id}"), |r| format!("{} {} rule {}", r.policy, r.direction.as_str(), r.index))
}

/// A compiler warning in words.
pub fn warning(w: &HttpWarning, c: &Compiled) -> String {
    match w {
        HttpWarning::Moot { key, http_rules, by_rule } => {
            let rules: Vec<String> = http_rules.iter().map(|r| rule_name(c, *r)).collect();
            format!(
                "HTTP rules of {} are moot for peer identity {} on port {}: {} allows it at L4 (every request passes)",
                rules.join(", "),
                key.peer(),
                key.port(),
                rule_name(c, *by_rule)
            )
        }
        HttpWarning::TooMany { key, rules, kept } => format!(
            "{rules} HTTP rules apply to peer identity {} on port {} of identity {}: only {kept} are enforced, other requests are denied",
            key.peer(),
            key.port(),
            key.subject()
        ),
    }
}
