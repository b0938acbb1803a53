//! The measuring tools: sockperf (TCP request/response rate and latency) and iperf3 (TCP
//! throughput, UDP packet rate), their exact command lines, running them inside a pod's
//! network namespace with a deadline, servers kept alive by a guard that kills them on drop,
//! and parsers for what they print.

use std::fmt::Display;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One sockperf ping-pong run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RrResult {
    /// Round trips per second over sockperf's valid measuring window.
    pub rate: f64,
    /// Latency percentiles, seconds, as sockperf's ping-pong reports them: half the round
    /// trip (so `1 / (2 × p50)` is about the round-trip rate).
    pub p50: f64,
    pub p99: f64,
    pub observations: u64,
}

pub fn sockperf_server(ip: impl Display, port: u16) -> Vec<String> {
    args(&["sockperf", "server", "--tcp", "-i", &ip.to_string(), "-p", &port.to_string()])
}

/// TCP ping-pong for `secs` seconds. sockperf leaves the first 400 ms of those out of its
/// figures; `--dontwarmup` skips the separate two-second warm-up exchange before them, which
/// would cost more time than the measurement (the neighbours are permanent, nothing to learn).
pub fn sockperf_ping_pong(ip: impl Display, port: u16, secs: u32) -> Vec<String> {
    let (ip, port, secs) = (ip.to_string(), port.to_string(), secs.to_string());
    args(&["sockperf", "ping-pong", "--tcp", "--dontwarmup", "-i", &ip, "-p", &port, "-t", &secs])
}

pub fn iperf3_server(ip: impl Display, port: u16) -> Vec<String> {
    args(&["iperf3", "-s", "-B", &ip.to_string(), "-p", &port.to_string()])
}

/// One TCP stream for `secs` seconds, JSON summary only.
pub fn iperf3_tcp(ip: impl Display, port: u16, secs: u32) -> Vec<String> {
    args(&["iperf3", "-c", &ip.to_string(), "-p", &port.to_string(), "-t", &secs.to_string(), "-i", "0", "-J"])
}

/// UDP at full speed (`-b 0`) with 64-byte payloads: a packet-rate test.
pub fn iperf3_udp(ip: impl Display, port: u16, secs: u32) -> Vec<String> {
    let (ip, port, secs) = (ip.to_string(), port.to_string(), secs.to_string());
    args(&["iperf3", "-c", &ip, "-p", &port, "-t", &secs, "-i", "0", "-u", "-b", "0", "-l", "64", "-J"])
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// `ip netns exec <ns> <argv...>` as the report prints it, with the namespace named by role.
pub fn shown(ns_role: &str, argv: &[String]) -> String {
    format!("ip netns exec <{ns_role}> {}", argv.join(" "))
}

fn in_netns(netns: &str, argv: &[String]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns]).args(argv);
    c
}

/// Runs `argv` inside `netns` to completion within `timeout`; its stdout on success.
pub fn run_in(netns: &str, argv: &[String], timeout: Duration) -> anyhow::Result<String> {
    let what = argv.join(" ");
    let mut child = in_netns(netns, argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{what}`"))?;
    let read = |p: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = p {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().with_context(|| format!("waiting for `{what}`"))? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` in {netns} did not finish within {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if !status.success() {
        bail!("`{what}` in {netns} failed ({status}): {}{}", err.trim(), tail(&out));
    }
    Ok(out)
}

fn tail(s: &str) -> String {
    let t: Vec<&str> = s.lines().rev().take(5).collect();
    if t.is_empty() {
        String::new()
    } else {
        format!(" / stdout ends: {}", t.into_iter().rev().collect::<Vec<_>>().join(" | "))
    }
}

/// A long-running server process inside a namespace; killed (and reaped) on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    what: String,
}

impl Daemon {
    pub fn spawn(netns: &str, argv: &[String]) -> anyhow::Result<Daemon> {
        let what = format!("{} (in {netns})", argv.join(" "));
        let child = in_netns(netns, argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Daemon { child, what })
    }

    /// Fails if the process has exited (a server that could not bind, say).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => bail!("{} exited ({st})", self.what),
            Err(e) => bail!("{}: {e}", self.what),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes terminal colour sequences (`ESC [ ... m`), which sockperf prints even into a pipe.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value after `key=` up to the next `;` or space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    let end = rest.find([';', ' ']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Parses `sockperf ping-pong` output: the valid window's duration and received messages
/// give the rate; the percentile lines (microseconds) the latencies.
pub fn parse_sockperf(text: &str) -> anyhow::Result<RrResult> {
    let text = strip_ansi(text);
    let mut window: Option<(f64, u64)> = None;
    let (mut p50, mut p99, mut observations) = (None, None, None);
    for line in text.lines() {
        if line.contains("[Valid Duration]") {
            let secs = field(line, "RunTime=").and_then(|v| v.parse::<f64>().ok());
            let received = field(line, "ReceivedMessages=").and_then(|v| v.parse::<u64>().ok());
            if let (Some(s), Some(r)) = (secs, received) {
                window = Some((s, r));
            }
        } else if let Some(rest) = line.split("---> percentile ").nth(1) {
            let mut parts = rest.split('=');
            let (Some(p), Some(v)) = (parts.next(), parts.next()) else { continue };
            let (Ok(p), Ok(v)) = (p.trim().parse::<f64>(), v.trim().parse::<f64>()) else { continue };
            if p == 50.0 {
                p50 = Some(v * 1e-6);
            } else if p == 99.0 {
                p99 = Some(v * 1e-6);
            }
        } else if let Some(rest) = line.split("Total ").nth(1)
            && let Some(n) = rest.split(" observations").next()
            && let Ok(n) = n.trim().parse::<u64>()
        {
            observations = Some(n);
        }
    }
    let Some((secs, received)) = window else { bail!("sockperf printed no [Valid Duration] line:\n{text}") };
    if secs <= 0.0 || received == 0 {
        bail!("sockperf measured nothing ({received} messages in {secs} s):\n{text}");
    }
    let (Some(p50), Some(p99)) = (p50, p99) else { bail!("sockperf printed no 50th/99th percentile:\n{text}") };
    Ok(RrResult { rate: received as f64 / secs, p50, p99, observations: observations.unwrap_or(received) })
}

fn iperf3_json(text: &str) -> anyhow::Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(text).context("iperf3 -J printed no JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

fn num(v: &serde_json::Value, path: &[&str]) -> anyhow::Result<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p).with_context(|| format!("iperf3 JSON has no end.{}", path.join(".")))?;
    }
    cur.as_f64().with_context(|| format!("iperf3 JSON: {} is not a number", path.join(".")))
}

/// TCP throughput in bits per second, as the receiver counted it.
pub fn parse_iperf3_tcp(text: &str) -> anyhow::Result<f64> {
    let v = iperf3_json(text)?;
    num(&v, &["end", "sum_received", "bits_per_second"])
}

/// UDP packets per second that reached the receiver: (packets - lost) over the interval.
pub fn parse_iperf3_udp(text: &str) -> anyhow::Result<f64> {
    let v = iperf3_json(text)?;
    let packets = num(&v, &["end", "sum_received", "packets"])?;
    let lost = num(&v, &["end", "sum_received", "lost_packets"])?;
    let secs = num(&v, &["end", "sum_received", "seconds"])?;
    if secs <= 0.0 {
        bail!("iperf3 UDP ran for {secs} s");
    }
    Ok((packets - lost).max(0.0) / secs)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    // Captured on this machine from real runs of the commands above (sockperf 3.7 with
    // `--dontwarmup -t 1`, iperf3 3.12 with `-t 1`), against servers in a scratch namespace.
    const SOCKPERF: &str = include_str!("testdata/sockperf-ping-pong.txt");
    const IPERF_TCP: &str = include_str!("testdata/iperf3-tcp.json");
    const IPERF_UDP: &str = include_str!("testdata/iperf3-udp.json");

    #[test]
    fn sockperf_rate_and_percentiles() {
        let r = parse_sockperf(SOCKPERF).unwrap();
        assert_eq!(r.observations, 18178);
        assert!((r.rate - 18178.0 / 0.544).abs() < 1e-6, "{r:?}");
        assert!((r.p50 - 6.219e-6).abs() < 1e-12, "{r:?}");
        assert!((r.p99 - 8.763e-6).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn sockperf_without_a_window_or_percentiles_is_an_error() {
        assert!(parse_sockperf("sockperf: ERROR: connect failed").is_err());
        let no_pct: String = SOCKPERF.lines().filter(|l| !l.contains("percentile")).collect::<Vec<_>>().join("\n");
        assert!(parse_sockperf(&no_pct).is_err());
    }

    #[test]
    fn iperf3_tcp_receiver_bits() {
        assert_eq!(parse_iperf3_tcp(IPERF_TCP).unwrap(), 21067903609.606987);
    }

    #[test]
    fn iperf3_udp_received_packets_per_second() {
        let pps = parse_iperf3_udp(IPERF_UDP).unwrap();
        assert!((pps - (124310.0 - 75192.0) / 1.00009).abs() < 1e-6, "{pps}");
    }

    #[test]
    fn iperf3_errors_are_errors() {
        let e = parse_iperf3_tcp(r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server"}"#);
        assert!(e.unwrap_err().to_string().contains("unable to connect"));
        assert!(parse_iperf3_udp("iperf3: error").is_err());
    }

    #[test]
    fn colour_codes_are_removed() {
        assert_eq!(strip_ansi("a\u{1b}[2;35mb\u{1b}[0mc"), "abc");
    }

    #[test]
    fn commands_are_what_the_report_prints() {
        let ip = Ipv4Addr::new(10, 1, 0, 3);
        assert_eq!(
            shown("client pod", &sockperf_ping_pong(ip, 11111, 2)),
            "ip netns exec <client pod> sockperf ping-pong --tcp --dontwarmup -i 10.1.0.3 -p 11111 -t 2"
        );
        assert_eq!(iperf3_udp(ip, 5201, 1).join(" "), "iperf3 -c 10.1.0.3 -p 5201 -t 1 -i 0 -u -b 0 -l 64 -J");
    }
}
