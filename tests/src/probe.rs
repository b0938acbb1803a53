//! Connection probes from inside a pod, the lab's only measure of reachability: TCP counts
//! once the handshake completes and the server's hostname line arrives, UDP once a datagram
//! goes out and a reply comes back, each within a timeout (upstream `agnhost connect` uses
//! 1 s). Many probes run in parallel on a bounded set of threads, each thread switching into
//! the from-pod's network namespace per probe.

use std::fmt;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::HttpRequest;
use crate::netns;
use crate::spec::Protocol;

/// Upstream's `--timeout=1s`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of probe threads: enough for a whole 9x9 matrix in one wave.
pub const DEFAULT_PARALLELISM: usize = 64;

/// One connection attempt from inside a network namespace.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Name of the from-pod's namespace (for messages) and its `/run/netns` path.
    pub from_netns: String,
    pub from_path: PathBuf,
    pub to: SocketAddr,
    pub protocol: Protocol,
    pub timeout: Duration,
    /// Send this request and count only its `200` (TCP only).
    pub http: Option<HttpRequest>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with this (trimmed) line.
    Connected(String),
    /// Why not: refused, timed out, unreachable, ...
    Failed(String),
}

impl Outcome {
    pub fn connected(&self) -> bool {
        matches!(self, Outcome::Connected(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Connected(reply) => write!(f, "connected ({reply})"),
            Outcome::Failed(why) => write!(f, "failed ({why})"),
        }
    }
}

/// Runs one probe on a new thread.
pub fn probe(p: &Probe) -> Outcome {
    probe_all(std::slice::from_ref(p), 1).pop().unwrap_or(Outcome::Failed("probe thread lost".into()))
}

/// Runs every probe, at most `parallelism` at once; results in input order.
pub fn probe_all(probes: &[Probe], parallelism: usize) -> Vec<Outcome> {
    let results: Vec<Mutex<Option<Outcome>>> = probes.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = parallelism.clamp(1, probes.len().max(1));
    thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = probes.get(i) else { break };
                    let outcome = match netns::enter(&p.from_netns, &p.from_path) {
                        Ok(()) => match &p.http {
                            Some(req) => http_probe(p.to, req, p.timeout),
                            None => connect(p.to, p.protocol, p.timeout),
                        },
                        Err(e) => Outcome::Failed(e.to_string()),
                    };
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(outcome);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().ok().flatten().unwrap_or_else(|| Outcome::Failed("probe thread panicked".into())))
        .collect()
}

/// Connects from the calling thread's network namespace.
pub fn connect(to: SocketAddr, protocol: Protocol, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let result = match protocol {
        Protocol::Tcp => tcp(to, timeout, deadline),
        Protocol::Udp => udp(to, deadline),
    };
    match result {
        Ok(reply) if !reply.is_empty() => Outcome::Connected(reply),
        Ok(_) => Outcome::Failed("connected but no reply".into()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Outcome::Failed("timed out".into())
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// An HTTP probe: connected only when the request's `200` arrives.
pub fn http_probe(to: SocketAddr, req: &HttpRequest, timeout: Duration) -> Outcome {
    match crate::http::request(to, req, timeout) {
        Ok(status) if crate::http::is_ok(&status) => Outcome::Connected(status),
        Ok(status) if status.is_empty() => Outcome::Failed("no response".into()),
        Ok(status) => Outcome::Failed(format!("answered {status:?}")),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Outcome::Failed("timed out".into())
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { Err(ErrorKind::TimedOut.into()) } else { Ok(left) }
}

fn tcp(to: SocketAddr, timeout: Duration, deadline: Instant) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&to, timeout)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    // Read the hostname line (or until the server closes).
    while !reply.contains(&b'\n') && reply.len() < 4096 {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        match stream.read(&mut buf)? {
            0 => break,
            n => reply.extend_from_slice(&buf[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_owned())
}

fn udp(to: SocketAddr, deadline: Instant) -> std::io::Result<String> {
    let local: IpAddr = match to {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = UdpSocket::bind((local, 0))?;
    // Connected, so an ICMP port unreachable surfaces as ECONNREFUSED right away.
    sock.connect(to)?;
    sock.send(b"hostname\n")?;
    let mut buf = [0u8; 512];
    sock.set_read_timeout(Some(remaining(deadline)?))?;
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}
