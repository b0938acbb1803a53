//! `ward observe`: flow records of this node, recent (`--last`, `--since`, `--until`) or live
//! (`--follow`), from the agent or from an exported JSON-lines file (`--input-file`), with
//! hubble's filter flags. The filters are `crate::flows::filter`, the same code the agent
//! runs on its history. Output is one compact line per flow, an aligned table, or JSON
//! lines; verdicts are coloured only on a terminal (`--color auto`, the default), never in a
//! pipe or a file, and never in JSON.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::api::client::Responses;
use crate::api::proto::{Request, Response};
use crate::flows::export::LostLine;
use crate::flows::filter::{Cond, FilterError};
use crate::flows::history::{LostSource, Query};
use crate::flows::record::{Endpoint, Flow, FlowTime, FlowVerdict, L4};
use ward_policy::explain::miss::flow_text;

/// Flows shown when neither `--last`, `--since` nor `--follow` is given (as hubble).
pub const DEFAULT_LAST: usize = 20;

pub const USAGE: &str = "\
Usage: ward observe [OPTIONS] [FILTERS]

Flow records of this node, oldest first.

Options:
  --last N               the N most recent matching flows (default 20 without --since/--follow)
  --follow, -f           keep printing matching flows as they happen
  --since T, --until T   an RFC 3339 time (2026-01-02T15:04:05Z) or an age (30s, 5m, 2h, 1d)
  -o, --output FORMAT    compact (default), table (aligned columns under a header) or json
                         (one flow record per line)
  --color WHEN           auto (default: colour verdicts only when stdout is a terminal and
                         NO_COLOR is unset), always or never
  --input-file FILE      read flows from a JSON-lines file instead of the agent

Filters (different kinds must all match; repeats of one kind are alternatives):
  --pod NS/NAME  --from-pod NS/NAME  --to-pod NS/NAME
  --namespace NS  --from-namespace NS  --to-namespace NS
  --label K=V  --from-label K=V  --to-label K=V   (K alone: the label is present)
  --ip ADDR  --from-ip ADDR  --to-ip ADDR
  --port N  --protocol tcp|udp|sctp|icmp|icmpv4|icmpv6
  --verdict FORWARDED|DROPPED|AUDIT|ERROR  --traffic-direction ingress|egress
  --policy NS/NAME|NAME
  --type TYPE[:SUBTYPE]  drop (dropped, any reason), drop:REASON (one reason: drop:policy_denied),
                         trace (passed: FORWARDED or AUDIT), trace:to-endpoint (passed into the
                         pod, INGRESS), trace:from-endpoint (passed out of it, EGRESS),
                         policy-verdict (a new flow the policy lookup decided: a rule allowed,
                         default deny dropped, a learned DNS address expired, or AUDIT)
  --not                  the next filter excludes instead
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Compact,
    Table,
    Json,
}

/// `--color`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour: `always` and `never` say so; `auto` colours a terminal only, and
    /// not when `NO_COLOR` is set (no-color.org). JSON is never coloured: it is for programs.
    pub fn decide(self, output: Output, stdout_is_terminal: bool, no_color_set: bool) -> bool {
        output != Output::Json
            && match self {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => stdout_is_terminal && !no_color_set,
            }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserveArgs {
    pub query: Query,
    pub follow: bool,
    pub output: Output,
    pub color: ColorChoice,
    pub input_file: Option<PathBuf>,
    pub help: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObserveError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("{flag} needs a value")]
    MissingValue { flag: String },
    #[error("{flag}: {why} (got {value:?})")]
    BadValue { flag: String, value: String, why: String },
    #[error("--not must be followed by a filter")]
    DanglingNot,
    #[error("unexpected argument {0:?}")]
    Unexpected(String),
}

/// Reads a time flag: RFC 3339, or an age before `now` (`90s`, `5m`, `2h`, `1d`, `250ms`).
pub fn parse_time(value: &str, now: FlowTime) -> Result<FlowTime, String> {
    if let Ok(t) = value.parse::<FlowTime>() {
        return Ok(t);
    }
    let digits = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (n, unit) = value.split_at(digits);
    let n: i128 = n.parse().map_err(|_| "expected an RFC 3339 time or an age like 5m".to_owned())?;
    let scale: i128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        "d" => 86_400 * 1_000_000_000,
        _ => return Err("expected an RFC 3339 time or an age like 5m (units ms, s, m, h, d)".to_owned()),
    };
    Ok(FlowTime(now.0 - n * scale))
}

/// The query flags `ward observe` and `ward map` share: `--last`, `--since`, `--until`,
/// `--follow`, `--input-file`, `--help` and the filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryArgs {
    pub query: Query,
    pub follow: bool,
    pub input_file: Option<PathBuf>,
    pub help: bool,
}

/// Reads the shared flags of `args` in order (`--not` applies to the filter after it).
/// `extra(flag, value)` gets each other flag first and says whether it took it (`value`
/// reads the flag's value); `default_last` is `--last` when neither `--last`, `--since` nor
/// `--follow` is given.
pub fn parse_query_args(
    args: &[String],
    now: FlowTime,
    default_last: Option<usize>,
    mut extra: impl FnMut(&str, &mut dyn FnMut() -> Result<String, ObserveError>) -> Result<bool, ObserveError>,
) -> Result<QueryArgs, ObserveError> {
    let mut out = QueryArgs { query: Query::default(), follow: false, input_file: None, help: false };
    let mut negate = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let terms_before = out.query.filter.terms.len();
        // `--flag=value` and `--flag value` alike.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, ObserveError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().cloned().ok_or_else(|| ObserveError::MissingValue { flag: flag.to_owned() }),
            }
        };
        let bad =
            |value: &str, why: String| ObserveError::BadValue { flag: flag.to_owned(), value: value.to_owned(), why };
        match flag {
            "-h" | "--help" => out.help = true,
            "-f" | "--follow" => out.follow = true,
            "--not" => {
                negate = true;
                continue;
            }
            "--last" => {
                let v = value()?;
                out.query.last = Some(v.parse().map_err(|_| bad(&v, "expected a number".into()))?);
            }
            "--since" | "--until" => {
                let v = value()?;
                let t = parse_time(&v, now).map_err(|why| bad(&v, why))?;
                if flag == "--since" {
                    out.query.since = Some(t);
                } else {
                    out.query.until = Some(t);
                }
            }
            "--input-file" => out.input_file = Some(PathBuf::from(value()?)),
            f => {
                if extra(f, &mut value)? {
                } else if let Some(kind) = f.strip_prefix("--") {
                    let v = value()?;
                    out.query.filter.push(Cond::from_flag(kind, &v)?, negate);
                } else {
                    return Err(ObserveError::Unexpected(arg.clone()));
                }
            }
        }
        if negate && out.query.filter.terms.len() == terms_before {
            return Err(ObserveError::DanglingNot);
        }
        negate = false;
    }
    if negate {
        return Err(ObserveError::DanglingNot);
    }
    if out.query.last.is_none() && out.query.since.is_none() && !out.follow {
        out.query.last = default_last;
    }
    // Following without --last shows only what happens from now on.
    if out.follow && out.query.last.is_none() && out.query.since.is_none() {
        out.query.last = Some(0);
    }
    Ok(out)
}

impl ObserveArgs {
    /// Reads `ward observe`'s arguments, in order (`--not` applies to the filter after it).
    pub fn parse(args: &[String], now: FlowTime) -> Result<ObserveArgs, ObserveError> {
        let mut output = Output::Compact;
        let mut color = ColorChoice::Auto;
        let q = parse_query_args(args, now, Some(DEFAULT_LAST), |flag, value| {
            let bad =
                |v: String, why: &str| ObserveError::BadValue { flag: flag.to_owned(), value: v, why: why.into() };
            match flag {
                "-o" | "--output" => {
                    let v = value()?;
                    output = match v.as_str() {
                        "compact" => Output::Compact,
                        "table" => Output::Table,
                        "json" | "jsonpb" => Output::Json,
                        _ => return Err(bad(v, "expected compact, table or json")),
                    };
                }
                "--color" => {
                    let v = value()?;
                    color = match v.as_str() {
                        "auto" => ColorChoice::Auto,
                        "always" => ColorChoice::Always,
                        "never" => ColorChoice::Never,
                        _ => return Err(bad(v, "expected auto, always or never")),
                    };
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(ObserveArgs { query: q.query, follow: q.follow, output, color, input_file: q.input_file, help: q.help })
    }
}

/// One end as `namespace/pod:port`, or `address:port` when it is no pod.
fn end(e: &Endpoint, ip: std::net::IpAddr, port: Option<u16>) -> String {
    let who = if e.is_pod() {
        format!("{}/{}", e.namespace, e.pod_name)
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    match port {
        Some(p) => format!("{who}:{p}"),
        None => who,
    }
}

/// The flow's protocol and port as a closest miss names them (`port 5432/TCP`, `ICMPv4`).
fn flow_port(f: &Flow) -> String {
    let number = match &f.l4 {
        L4::Tcp(_) => 6,
        L4::Udp(_) => 17,
        L4::Sctp(_) => 132,
        L4::Icmpv4(_) => 1,
        L4::Icmpv6(_) => 58,
        L4::Other { protocol } => *protocol,
    };
    flow_text(number, f.l4.parts().2)
}

/// What decided the flow: the allowing policy and rule, or "default deny (isolated by …;
/// closest: …)", or the reason.
pub fn summary(f: &Flow) -> String {
    let allowed: Vec<String> =
        f.ingress_allowed_by.iter().chain(&f.egress_allowed_by).map(ToString::to_string).collect();
    let denied: Vec<String> = f.ingress_denied_by.iter().chain(&f.egress_denied_by).map(ToString::to_string).collect();
    let miss = f.ingress_closest_miss.iter().chain(&f.egress_closest_miss).next();
    if !allowed.is_empty() {
        format!("allowed by {}", allowed.join(", "))
    } else if f.reason == "policy_denied" && !denied.is_empty() {
        match miss {
            Some(m) => format!("default deny (isolated by {}; closest: {})", denied.join(", "), m.text(&flow_port(f))),
            None => format!("default deny (isolated by {})", denied.join(", ")),
        }
    } else if !denied.is_empty() {
        format!("{} (isolated by {})", f.reason, denied.join(", "))
    } else {
        f.reason.clone()
    }
}

/// The two ends as `compact` and `table` show them.
fn ends(f: &Flow) -> (String, String) {
    let (proto, sport, dport) = f.l4.parts();
    let has_ports = matches!(proto, "TCP" | "UDP" | "SCTP");
    let (sport, dport) = if has_ports { (Some(sport), Some(dport)) } else { (None, None) };
    (end(&f.source, f.ip.source, sport), end(&f.destination, f.ip.destination, dport))
}

/// ANSI SGR colour of a verdict: green passed, red dropped, yellow audited, magenta error.
fn verdict_color(v: FlowVerdict) -> &'static str {
    match v {
        FlowVerdict::Forwarded => "32",
        FlowVerdict::Dropped => "31",
        FlowVerdict::Audit => "33",
        FlowVerdict::Error => "35",
    }
}

/// `text` in the verdict's colour, or as it is.
fn paint(text: &str, v: FlowVerdict, color: bool) -> String {
    if color { format!("\x1b[{}m{text}\x1b[0m", verdict_color(v)) } else { text.to_owned() }
}

/// One line per flow: time, source -> destination, protocol, verdict and direction, and
/// what decided it.
pub fn compact(f: &Flow) -> String {
    compact_colored(f, false)
}

/// [`compact`], the verdict coloured when `color`.
pub fn compact_colored(f: &Flow, color: bool) -> String {
    let (source, destination) = ends(f);
    format!(
        "{} {} -> {} {} {} {} {}",
        f.time,
        source,
        destination,
        f.l4.parts().0,
        paint(f.verdict.as_str(), f.verdict, color),
        f.traffic_direction.as_str(),
        summary(f)
    )
}

/// The table's columns.
const COLUMNS: [&str; 7] = ["TIME", "SOURCE", "DESTINATION", "PROTOCOL", "VERDICT", "DIRECTION", "SUMMARY"];

/// Widths a followed table starts from (it cannot see the rows to come): an RFC 3339 time
/// with nanoseconds, `namespace/pod:port` of common lengths, the longest fixed words.
pub const FOLLOW_WIDTHS: [usize; 6] = [30, 28, 28, 8, 9, 9];

/// A flow's table cells, in [`COLUMNS`] order.
fn cells(f: &Flow) -> [String; 7] {
    let (source, destination) = ends(f);
    [
        f.time.to_string(),
        source,
        destination,
        f.l4.parts().0.to_owned(),
        f.verdict.as_str().to_owned(),
        f.traffic_direction.as_str().to_owned(),
        summary(f),
    ]
}

/// Aligned columns: every column but the last padded to `widths` (or to its cell, when
/// longer), two spaces apart; the verdict coloured when `color`. Padding is counted on the
/// plain text, so colour never shifts a column.
pub struct Table {
    widths: [usize; 6],
    color: bool,
}

impl Table {
    /// A table sized for `flows`: each column as wide as its header and widest cell.
    pub fn fit(flows: &[Flow], color: bool) -> Table {
        let mut widths = [0; 6];
        for (w, h) in widths.iter_mut().zip(COLUMNS) {
            *w = h.len();
        }
        for f in flows {
            for (w, c) in widths.iter_mut().zip(cells(f)) {
                *w = (*w).max(c.chars().count());
            }
        }
        Table { widths, color }
    }

    /// A table for a stream, from [`FOLLOW_WIDTHS`].
    pub fn follow(color: bool) -> Table {
        Table { widths: FOLLOW_WIDTHS, color }
    }

    pub fn header(&self) -> String {
        self.line(COLUMNS.map(str::to_owned), None)
    }

    pub fn row(&self, f: &Flow) -> String {
        self.line(cells(f), Some(f.verdict))
    }

    fn line(&self, cells: [String; 7], verdict: Option<FlowVerdict>) -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let Some(width) = self.widths.get(i) else {
                out.push_str(cell);
                break;
            };
            let pad = " ".repeat(width.saturating_sub(cell.chars().count()) + 2);
            match verdict {
                Some(v) if i == 4 => out.push_str(&paint(cell, v, self.color)),
                _ => out.push_str(cell),
            }
            out.push_str(&pad);
        }
        out
    }
}

/// What went wrong reading an input file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: not a flow record: {source}")]
    Decode { path: PathBuf, line: usize, source: serde_json::Error },
}

/// The flows of a JSON-lines file that `q` wants (its `last` applied to what matches), and
/// how many flows the file's `lost_events` lines say its writer missed.
pub fn read_input(path: &Path, q: &Query) -> Result<(Vec<Flow>, u64), InputError> {
    let io = |source| InputError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    let mut lost = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        if let Ok(l) = serde_json::from_str::<LostLine>(&line) {
            lost += l.lost_events.num_events_lost;
            continue;
        }
        let flow: Flow = serde_json::from_str(&line).map_err(|source| InputError::Decode {
            path: path.to_owned(),
            line: i + 1,
            source,
        })?;
        if q.wants(&flow) {
            out.push(flow);
        }
    }
    if let Some(n) = q.last {
        out.drain(..out.len().saturating_sub(n));
    }
    Ok((out, lost))
}

/// How flows are written: the format, the colour decision, and for a table its columns.
struct Printer {
    output: Output,
    color: bool,
    table: Option<Table>,
}

impl Printer {
    /// Writes the header once, before the first flow of a table.
    fn header(&mut self, out: &mut impl Write, table: Table) -> std::io::Result<()> {
        writeln!(out, "{}", table.header())?;
        self.table = Some(table);
        Ok(())
    }

    fn print(&self, out: &mut impl Write, f: &Flow) -> std::io::Result<()> {
        match (self.output, &self.table) {
            (Output::Table, Some(t)) => writeln!(out, "{}", t.row(f)),
            (Output::Compact | Output::Table, _) => writeln!(out, "{}", compact_colored(f, self.color)),
            (Output::Json, _) => {
                let line = serde_json::to_string(f).map_err(std::io::Error::other)?;
                writeln!(out, "{line}")
            }
        }
    }
}

/// Tells the operator, on stderr, what a history answer could not include.
fn warn_unseen(cmd: &str, lost_events: u64, not_seen: u64) {
    if lost_events > 0 {
        eprintln!(
            "ward {cmd}: the kernel could not deliver {lost_events} flow events since the agent started (ring buffer \
             full)"
        );
    }
    if not_seen > 0 {
        eprintln!(
            "ward {cmd}: {not_seen} older flows had already left this node's history and could not be searched (the \
             agent's --flow-history bounds it)"
        );
    }
}

/// The flows `q` wants, once (no following): from the JSON-lines file `input_file`, or from
/// the agent's history at `socket`. Losses are told on stderr, prefixed with `ward {cmd}`.
/// Errors are the message to print.
pub fn fetch(socket: &Path, q: &Query, input_file: Option<&Path>, cmd: &str) -> Result<Vec<Flow>, String> {
    if let Some(path) = input_file {
        let (flows, lost) = read_input(path, q).map_err(|e| format!("ward {cmd}: {e}"))?;
        if lost > 0 {
            eprintln!("ward {cmd}: the file's writer missed {lost} flows (lost_events lines)");
        }
        return Ok(flows);
    }
    let req = Request::Flows { last: q.last, follow: false, since: q.since, until: q.until, filter: q.filter.clone() };
    let mut stream = Responses::open(socket, &req, Duration::from_secs(10)).map_err(|e| format!("ward: {e}"))?;
    match stream.next_response() {
        Ok(Some(Response::Flows { flows, not_seen, lost_events })) => {
            warn_unseen(cmd, lost_events, not_seen);
            Ok(flows)
        }
        Ok(Some(Response::Error { message })) => Err(format!("ward: {message}")),
        Ok(Some(other)) => Err(format!("ward: unexpected answer {other:?}")),
        Ok(None) => Err("ward: the agent closed the connection without answering".to_owned()),
        Err(e) => Err(format!("ward: {e}")),
    }
}

/// Runs `ward observe` against the agent at `socket` (or the input file).
pub fn run(socket: &Path, raw: &[String]) -> ExitCode {
    let args = match ObserveArgs::parse(raw, FlowTime::now()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ward observe: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let stdout = std::io::stdout();
    let color = {
        use std::io::IsTerminal;
        args.color.decide(
            args.output,
            stdout.is_terminal(),
            std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        )
    };
    let mut printer = Printer { output: args.output, color, table: None };
    let mut out = stdout.lock();
    if args.input_file.is_some() || !args.follow {
        return match fetch(socket, &args.query, args.input_file.as_deref(), "observe") {
            Ok(flows) => {
                let header = match args.output {
                    Output::Table => printer.header(&mut out, Table::fit(&flows, color)),
                    Output::Compact | Output::Json => Ok(()),
                };
                // A closed pipe (`| head`) ends the command quietly.
                let _ = header
                    .and_then(|()| flows.iter().try_for_each(|f| printer.print(&mut out, f)))
                    .and_then(|()| out.flush());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                // A file that cannot be read is the command's failure; an agent that cannot
                // be reached is the usage-level failure it always was.
                if args.input_file.is_some() { ExitCode::FAILURE } else { ExitCode::from(2) }
            }
        };
    }
    let q = args.query;
    let req = Request::Flows { last: q.last, follow: true, since: q.since, until: q.until, filter: q.filter };
    let mut stream = match Responses::open(socket, &req, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ward: {e}");
            return ExitCode::from(2);
        }
    };
    if args.output == Output::Table && printer.header(&mut out, Table::follow(color)).is_err() {
        return ExitCode::SUCCESS;
    }
    let mut first = true;
    loop {
        let resp = match stream.next_response() {
            Ok(Some(r)) => r,
            Ok(None) if first => {
                eprintln!("ward: the agent closed the connection without answering");
                return ExitCode::from(2);
            }
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ward: {e}");
                return ExitCode::from(2);
            }
        };
        let written = match resp {
            Response::Flows { flows, not_seen, lost_events } => {
                warn_unseen("observe", lost_events, not_seen);
                flows.iter().try_for_each(|f| printer.print(&mut out, f))
            }
            Response::Flow { flow } => printer.print(&mut out, &flow),
            Response::FlowsLost { missed, source: LostSource::Reader } => {
                eprintln!("ward observe: fell behind the live stream; {missed} flows missed");
                Ok(())
            }
            Response::FlowsLost { missed, source: LostSource::Kernel } => {
                eprintln!("ward observe: the kernel's ring buffer was full; {missed} flow events lost");
                Ok(())
            }
            Response::Error { message } => {
                eprintln!("ward: {message}");
                return ExitCode::FAILURE;
            }
            other => {
                eprintln!("ward: unexpected answer {other:?}");
                return ExitCode::FAILURE;
            }
        };
        // A closed pipe (`| head`) ends the command quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
        if first {
            if let Err(e) = stream.wait_forever() {
                eprintln!("ward: {e}");
                return ExitCode::from(2);
            }
            first = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::filter::tests::{attribution, flow};
    use crate::flows::record::{FlowVerdict, TrafficDirection};

    fn args(s: &str) -> Result<ObserveArgs, ObserveError> {
        let v: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        ObserveArgs::parse(&v, FlowTime(1_000_000_000_000))
    }

    #[test]
    fn not_negates_only_the_next_filter_and_times_read_both_ways() {
        let a = args("--not --verdict DROPPED --to-pod shop/db --last 5 -o json").expect("parses");
        let t = &a.query.filter.terms;
        assert_eq!(t.len(), 2);
        assert!(t[0].negated && !t[1].negated, "{t:?}");
        assert_eq!((a.query.last, a.output), (Some(5), Output::Json));
        let a = args("--since 5m --until=2026-12-01T16:00:00Z").expect("parses");
        assert_eq!(a.query.since, Some(FlowTime(1_000_000_000_000 - 300 * 1_000_000_000)));
        assert_eq!(a.query.until, "2026-12-01T16:00:00Z".parse().ok());
        assert_eq!(a.query.last, None, "--since alone: everything since");
        assert_eq!(args("").expect("parses").query.last, Some(DEFAULT_LAST));
        assert_eq!(args("-f").expect("parses").query.last, Some(0), "follow alone: only new flows");
        assert_eq!(args("--verdict DROPPED --not"), Err(ObserveError::DanglingNot));
        assert_eq!(args("--not --last 3"), Err(ObserveError::DanglingNot));
        assert_eq!(args("--not --pod a/b --not --last 3"), Err(ObserveError::DanglingNot));
        assert_eq!(args("--last"), Err(ObserveError::MissingValue { flag: "--last".into() }));
        assert!(matches!(args("--since yesterday"), Err(ObserveError::BadValue { .. })));
        assert!(matches!(args("--port web"), Err(ObserveError::Filter(_))));
        assert_eq!(args("stray"), Err(ObserveError::Unexpected("stray".into())));
    }

    #[test]
    fn compact_lines_name_the_ends_the_verdict_and_what_decided() {
        let mut ok = flow("shop/api", "shop/db", 5432, FlowVerdict::Forwarded, TrafficDirection::Ingress);
        ok.ingress_allowed_by.push(attribution("shop", "db-from-api", "NetworkPolicy", Some(0)));
        assert_eq!(
            compact(&ok),
            "2023-11-14T22:13:20Z shop/api:40000 -> shop/db:5432 TCP FORWARDED INGRESS allowed by shop/db-from-api rule 0"
        );
        let mut drop = flow("shop/web", "192.0.2.7", 443, FlowVerdict::Dropped, TrafficDirection::Egress);
        drop.reason = "policy_denied".into();
        drop.egress_denied_by.push(attribution("shop", "lockdown", "WardNetworkPolicy", None));
        assert_eq!(
            compact(&drop),
            "2023-11-14T22:13:20Z shop/web:40000 -> 192.0.2.7:443 TCP DROPPED EGRESS default deny (isolated by \
             shop/lockdown (WardNetworkPolicy))"
        );
    }

    #[test]
    fn a_default_deny_line_names_its_closest_miss() {
        use crate::flows::record::MissAttribution;
        use ward_policy::explain::miss::Matched;
        let mut drop = flow("shop/stranger", "shop/db", 5432, FlowVerdict::Dropped, TrafficDirection::Ingress);
        drop.reason = "policy_denied".into();
        drop.ingress_denied_by.push(attribution("shop", "db", "NetworkPolicy", None));
        drop.ingress_closest_miss = Some(MissAttribution {
            policy: attribution("shop", "db", "NetworkPolicy", Some(0)),
            matched: Matched::Port,
            allows: vec!["5432/TCP".into()],
        });
        assert!(
            compact(&drop).ends_with(
                "DROPPED INGRESS default deny (isolated by shop/db; closest: shop/db rule 0 allows port 5432/TCP but not \
                 this peer)"
            ),
            "{}",
            compact(&drop)
        );
        let mut wrong_port = flow("shop/api", "shop/db", 80, FlowVerdict::Dropped, TrafficDirection::Ingress);
        wrong_port.reason = "policy_denied".into();
        wrong_port.ingress_denied_by.push(attribution("shop", "db", "NetworkPolicy", None));
        wrong_port.ingress_closest_miss = Some(MissAttribution {
            policy: attribution("shop", "db", "NetworkPolicy", Some(0)),
            matched: Matched::Peer,
            allows: vec!["5432/TCP".into()],
        });
        assert!(
            summary(&wrong_port)
                == "default deny (isolated by shop/db; closest: shop/db rule 0 allows this peer but not port 80/TCP \
                    (only 5432/TCP))",
            "{}",
            summary(&wrong_port)
        );
    }

    #[test]
    fn a_table_aligns_its_columns_under_a_header_and_colours_only_the_verdict() {
        let mut ok = flow("shop/api", "shop/db", 5432, FlowVerdict::Forwarded, TrafficDirection::Ingress);
        ok.ingress_allowed_by.push(attribution("shop", "db-from-api", "NetworkPolicy", Some(0)));
        let mut drop =
            flow("shop/a-much-longer-name", "192.0.2.7", 443, FlowVerdict::Dropped, TrafficDirection::Egress);
        drop.reason = "spoofed_source".into();
        let flows = [ok, drop];
        let t = Table::fit(&flows, false);
        let lines = [t.header(), t.row(&flows[0]), t.row(&flows[1])];
        // Every column starts at the same offset on every line.
        let starts = |line: &str| -> Vec<usize> {
            let mut v = vec![0];
            let b = line.as_bytes();
            for i in 2..b.len() {
                if b[i - 2] == b' ' && b[i - 1] == b' ' && b[i] != b' ' {
                    v.push(i);
                }
            }
            v
        };
        assert_eq!(starts(&lines[0]).len(), 7, "{lines:#?}");
        assert!(lines.iter().all(|l| starts(l) == starts(&lines[0])), "{lines:#?}");
        assert!(lines[0].starts_with("TIME  ") && lines[0].ends_with("SUMMARY"), "{lines:#?}");
        assert!(lines[1].contains("shop/api:40000") && lines[1].ends_with("allowed by shop/db-from-api rule 0"));
        assert!(lines[2].contains("shop/a-much-longer-name:40000  ") && lines[2].ends_with("spoofed_source"));
        assert!(lines.iter().all(|l| !l.contains('\x1b')), "no colour unless asked");
        // Coloured: the same columns once the escape codes are taken out, the verdict painted.
        let c = Table::fit(&flows, true);
        let painted = c.row(&flows[1]);
        assert!(painted.contains("\x1b[31mDROPPED\x1b[0m"), "{painted:?}");
        assert_eq!(painted.replace("\x1b[31m", "").replace("\x1b[0m", ""), lines[2]);
        assert!(compact_colored(&flows[0], true).contains(" \x1b[32mFORWARDED\x1b[0m "));
        // A followed table starts from fixed widths; a longer cell pushes, never truncates.
        let f = Table::follow(false);
        assert_eq!(f.header().find("SOURCE"), Some(FOLLOW_WIDTHS[0] + 2));
        assert!(f.row(&flows[1]).contains("shop/a-much-longer-name:40000"));
    }

    #[test]
    fn colour_only_on_a_terminal_unless_forced_and_never_in_json() {
        use ColorChoice::*;
        // (choice, output, terminal, NO_COLOR) -> colour
        let cases = [
            (Auto, Output::Compact, true, false, true),
            (Auto, Output::Compact, false, false, false),
            (Auto, Output::Table, true, true, false),
            (Auto, Output::Table, true, false, true),
            (Always, Output::Compact, false, true, true),
            (Always, Output::Json, true, false, false),
            (Never, Output::Table, true, false, false),
            (Auto, Output::Json, true, false, false),
        ];
        for (choice, output, tty, no_color, want) in cases {
            assert_eq!(
                choice.decide(output, tty, no_color),
                want,
                "{choice:?} {output:?} tty={tty} NO_COLOR={no_color}"
            );
        }
        assert_eq!(args("--color never -o table").map(|a| (a.color, a.output)), Ok((Never, Output::Table)));
        assert_eq!(args("--color=always").map(|a| a.color), Ok(Always));
        assert_eq!(args("").map(|a| a.color), Ok(Auto));
        assert!(matches!(args("--color sometimes"), Err(ObserveError::BadValue { .. })));
        assert!(matches!(args("-o wide"), Err(ObserveError::BadValue { .. })));
        let t = args("--type drop --not --type trace:from-endpoint").expect("parses");
        assert!(t.query.filter.terms[1].negated, "{:?}", t.query.filter);
    }

    #[test]
    fn an_input_file_is_filtered_like_the_agents_history() {
        let dir = std::env::temp_dir().join(format!("ward-observe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("flows.jsonl");
        let flows = [
            flow("shop/api", "shop/db", 5432, FlowVerdict::Forwarded, TrafficDirection::Ingress),
            flow("shop/web", "shop/db", 5432, FlowVerdict::Dropped, TrafficDirection::Ingress),
            flow("shop/web", "shop/db", 5433, FlowVerdict::Dropped, TrafficDirection::Ingress),
        ];
        let text: String = flows.iter().map(|f| serde_json::to_string(f).expect("encode") + "\n").collect();
        std::fs::write(&path, format!("{text}\n")).expect("write");
        let a = args("--verdict DROPPED --last 1").expect("parses");
        let got = read_input(&path, &a.query).expect("reads");
        assert_eq!(got, (vec![flows[2].clone()], 0), "the last matching flow, exactly as written");
        let lost = "{\"lost_events\":{\"source\":\"export\",\"num_events_lost\":7}}\n";
        std::fs::write(&path, format!("{text}{lost}{lost}")).expect("write");
        assert_eq!(read_input(&path, &a.query).expect("reads").1, 14, "lost_events lines are counted, not flows");
        std::fs::write(&path, format!("{text}{{\"time\":1}}\n")).expect("write");
        let e = read_input(&path, &a.query).expect_err("a bad line");
        assert!(e.to_string().contains("line 4"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
