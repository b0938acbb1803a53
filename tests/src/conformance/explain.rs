//! `ward policy explain` held to the probes: after a step's probes have all come out as the
//! case expects, every probed pod-to-pod check is asked of the agent too, and its verdict
//! must be the one the packets got. (Explain runs the kernel's lookup order on the compiled
//! maps for local pods; this checks that those maps, and explain's reading of them, are what
//! the datapath enforces.)
//!
//! Asked: IPv4 checks between pods without an HTTP request. External and DNS targets and
//! HTTP checks are judged per request or by learned addresses, which the connection-level
//! question does not cover.

use crate::node::Node;
use crate::spec::Family;

use super::case::Check;

/// The checks explain is asked about (see the module's documentation).
pub fn askable(c: &Check) -> bool {
    c.family == Family::IPv4 && c.http.is_none() && c.to.pod().is_some()
}

/// The verdict in explain's first line (`TCP x/a -> x/b port 80: ALLOWED`), `None` when the
/// text has no verdict there.
pub fn verdict_of(text: &str) -> Option<bool> {
    match text.lines().next()?.rsplit_once(": ")?.1.trim() {
        "ALLOWED" => Some(true),
        "DENIED" => Some(false),
        _ => None,
    }
}

/// Asks explain about every askable check, whose `allow` is what the probes observed (the
/// step passed); `Err` lists each disagreement with explain's full answer.
pub fn agrees(node: &Node, checks: &[Check]) -> Result<usize, String> {
    let mut wrong = Vec::new();
    let mut asked = 0;
    for c in checks.iter().filter(|c| askable(c)) {
        let Some(to) = c.to.pod() else { continue };
        let (from, to, port, proto) = (c.from.to_string(), to.to_string(), c.port.to_string(), c.protocol.to_string());
        let out =
            node.ward(&["policy", "explain", "--from", &from, "--to", &to, "--protocol", &proto, "--port", &port]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        asked += 1;
        match verdict_of(&text) {
            Some(v) if v == c.allow => {}
            Some(v) => wrong.push(format!(
                "from {from} to {to} {proto}/{port}: probed {}, explain says {}:\n    {}",
                word(c.allow),
                word(v),
                text.trim_end().replace('\n', "\n    ")
            )),
            None => wrong.push(format!(
                "from {from} to {to} {proto}/{port}: explain gave no verdict (exit {}): {}{}",
                out.status,
                text.trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            )),
        }
    }
    if wrong.is_empty() {
        Ok(asked)
    } else {
        Err(format!(
            "explain disagrees with the probes on {} of {asked} checks:\n  {}",
            wrong.len(),
            wrong.join("\n  ")
        ))
    }
}

fn word(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_is_read_from_the_first_line_only() {
        assert_eq!(verdict_of("TCP x/a -> x/b port 80: ALLOWED\n  egress at x/a: denied: ..."), Some(true));
        assert_eq!(verdict_of("UDP x/a -> y/b port 81: DENIED\n  WARNING: ALLOWED"), Some(false));
        assert_eq!(verdict_of("ward: no pod \"x/q\" in the datastore"), None);
        assert_eq!(verdict_of(""), None);
    }
}
