//! Serving steered DNS: UDP datagrams and TCP connections from proxied pods, each query
//! through [`resolve`]: parse (malformed: dropped and counted), find the pod by its source
//! address, check its `dns` rules against the resolver it asked (REFUSED), forward the query
//! unchanged to that resolver (over the transport the pod used, so truncation and the TCP
//! retry, EDNS0 and large answers pass as they are), check the answer is for this question,
//! learn the addresses at the end of its CNAME chain if an `fqdn` rule selects the name, and
//! only then release the answer (SERVFAIL if learning failed). There is no path that releases
//! an answer before its addresses are written.

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::flow::{self, DnsFlow, DnsVerdict, inc};
use super::message::{self, Answer, Question};
use super::{DnsError, Shared, monotonic_ns};
use ward_policy::fqdn_policy::{FqdnPolicy, QueryVerdict};

/// Largest DNS message (UDP datagram or TCP frame).
const MAX_MESSAGE: usize = 65535;
/// How long a client's TCP connection may sit idle between queries.
const TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn proto(self) -> u8 {
        match self {
            Transport::Udp => 17,
            Transport::Tcp => 6,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

fn io_err(e: std::io::Error) -> DnsError {
    DnsError::Route(super::route::RouteError::Socket(e))
}

/// Serves one UDP socket (IPv4 or IPv6) until the runtime stops.
pub fn spawn_udp(shared: Arc<Shared>, fd: OwnedFd) -> Result<(), DnsError> {
    // SAFETY: an OwnedFd always returns the one descriptor it owns, open until it drops.
    let afd = unsafe { AsyncFd::register(fd) }.map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    let afd = Arc::new(afd);
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let Ok(mut guard) = afd.readable().await else { return };
            match guard.try_io(|inner| recv_udp(inner.get_ref(), &mut buf)) {
                Ok(Ok((n, client, resolver))) => {
                    inc(&shared.stats.queries_udp);
                    let query = buf[..n].to_vec();
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Some(reply) = resolve(&shared, client, resolver, Transport::Udp, &query, &mut None).await
                        {
                            send_udp(&shared, &reply, client, resolver).await;
                        }
                    });
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "receiving a steered DNS datagram"),
                Err(_would_block) => continue,
            }
        }
    });
    Ok(())
}

/// One datagram: its length, sender, and original destination (the resolver the pod asked).
fn recv_udp(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, SocketAddr)> {
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in6);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let client = msg.address.as_ref().and_then(sockaddr).ok_or_else(|| std::io::Error::other("no sender address"))?;
    let mut orig = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        match c {
            ControlMessageOwned::Ipv4OrigDstAddr(a) => {
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                orig = Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)));
            }
            ControlMessageOwned::Ipv6OrigDstAddr(a) => {
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                orig = Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)));
            }
            _ => {}
        }
    }
    let orig = orig.ok_or_else(|| std::io::Error::other("no original destination"))?;
    Ok((msg.bytes, client, orig))
}

fn sockaddr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::new(IpAddr::V4(v4.ip()), v4.port()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::new(IpAddr::V6(v6.ip()), v6.port()))
}

/// Sends `reply` to `client` from `source`, the resolver's address and port the pod asked:
/// a connected client socket accepts nothing else. The proxy's own socket has another port,
/// so the answer leaves through a transparent socket bound to `source` (kept per resolver,
/// at most [`REPLY_SOCKETS`]; `SO_REUSEADDR` lets several agents' sockets share it).
async fn send_udp(shared: &Shared, reply: &[u8], client: SocketAddr, source: SocketAddr) {
    let sock = match reply_socket(shared, source) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%source, error = %e, "no socket to answer from");
            return;
        }
    };
    if let Err(e) = sock.send_to(reply, client).await {
        tracing::debug!(%client, error = %e, "sending a DNS answer");
    }
}

/// Reply sockets kept (one per resolver address); past this, the oldest is closed.
const REPLY_SOCKETS: usize = 256;

fn reply_socket(shared: &Shared, source: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
    let mut cache = shared.reply_sockets.lock().map_err(|_| std::io::Error::other("reply socket cache poisoned"))?;
    if let Some(s) = cache.get(&source) {
        return Ok(s.clone());
    }
    let fd = super::sockets::transparent_udp(source).map_err(std::io::Error::from)?;
    let std_sock = std::net::UdpSocket::from(fd);
    std_sock.set_nonblocking(true)?;
    let sock = Arc::new(UdpSocket::from_std(std_sock)?);
    if cache.len() >= REPLY_SOCKETS
        && let Some(k) = cache.keys().next().copied()
    {
        cache.remove(&k);
    }
    cache.insert(source, sock.clone());
    Ok(sock)
}

/// Serves one TCP listener (IPv4 or IPv6).
pub fn spawn_tcp(shared: Arc<Shared>, fd: OwnedFd) -> Result<(), DnsError> {
    let std_listener = std::net::TcpListener::from(fd);
    std_listener.set_nonblocking(true).map_err(io_err)?;
    let listener = TcpListener::from_std(std_listener).map_err(io_err)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, client)) => {
                    // Transparent: the accepted socket's own address is the resolver the pod
                    // connected to.
                    let Ok(resolver) = stream.local_addr() else { continue };
                    tokio::spawn(serve_tcp(shared.clone(), stream, client, resolver));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accepting a steered DNS connection");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
    Ok(())
}

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = s.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}

/// One client connection: queries in turn, each answered before the next is read.
async fn serve_tcp(shared: Arc<Shared>, mut stream: TcpStream, client: SocketAddr, resolver: SocketAddr) {
    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
    let resolver = SocketAddr::new(resolver.ip().to_canonical(), resolver.port());
    let mut upstream: Option<TcpStream> = None;
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, read_frame(&mut stream)).await {
            Ok(Ok(q)) => q,
            _ => return,
        };
        inc(&shared.stats.queries_tcp);
        match resolve(&shared, client, resolver, Transport::Tcp, &query, &mut upstream).await {
            Some(reply) => {
                if write_frame(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
            // Malformed or no answer: the connection ends (a TCP client then retries).
            None => return,
        }
    }
}

/// Exchanges the query with the resolver over `transport`; the first valid answer wins
/// (malformed or foreign datagrams are counted and waited past).
async fn exchange(
    shared: &Shared,
    resolver: SocketAddr,
    transport: Transport,
    query: &[u8],
    q: &Question,
    tcp: &mut Option<TcpStream>,
) -> Result<(Vec<u8>, hickory_proto::op::Message, Answer), String> {
    let deadline = tokio::time::Instant::now() + shared.settings.upstream_timeout;
    match transport {
        Transport::Udp => {
            let local: SocketAddr = if resolver.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
            sock.connect(resolver).await.map_err(|e| e.to_string())?;
            sock.send(query).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                match message::parse_answer(&buf[..n], q) {
                    Ok((m, a)) => return Ok((buf[..n].to_vec(), m, a)),
                    Err(e) => {
                        inc(&shared.stats.malformed_answers);
                        tracing::debug!(%resolver, error = %e, "dropping an invalid answer");
                    }
                }
            }
        }
        Transport::Tcp => {
            let work = async {
                if tcp.is_none() {
                    *tcp = Some(TcpStream::connect(resolver).await.map_err(|e| e.to_string())?);
                }
                let Some(s) = tcp.as_mut() else { return Err("no upstream connection".to_string()) };
                write_frame(s, query).await.map_err(|e| e.to_string())?;
                let bytes = read_frame(s).await.map_err(|e| e.to_string())?;
                match message::parse_answer(&bytes, q) {
                    Ok((m, a)) => Ok((bytes, m, a)),
                    Err(e) => {
                        inc(&shared.stats.malformed_answers);
                        Err(format!("invalid answer: {e}"))
                    }
                }
            };
            let r = tokio::time::timeout_at(deadline, work).await.map_err(|_| "timed out".to_string()).and_then(|r| r);
            if r.is_err() {
                *tcp = None;
            }
            r
        }
    }
}

/// The whole pipeline for one query (see the module docs); `Some` is what to send back.
pub async fn resolve(
    shared: &Shared,
    client: SocketAddr,
    resolver: SocketAddr,
    transport: Transport,
    query: &[u8],
    tcp: &mut Option<TcpStream>,
) -> Option<Vec<u8>> {
    let started = Instant::now();
    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
    let resolver = SocketAddr::new(resolver.ip().to_canonical(), resolver.port());
    let (msg, q) = match message::parse_query(query) {
        Ok(x) => x,
        Err(e) => {
            inc(&shared.stats.malformed_queries);
            tracing::debug!(%client, error = %e, "dropping a malformed query");
            return None;
        }
    };
    let view = shared.view.borrow().clone();
    let endpoint = view.endpoints.get(&client.ip()).cloned();
    let record = |verdict, rcode: &str, answer: Option<&Answer>, learned| DnsFlow {
        time_ms: flow::now_ms(),
        pod: endpoint.as_ref().map_or_else(|| client.ip().to_string(), |e| e.pod.clone()),
        client,
        resolver,
        transport: transport.as_str().to_owned(),
        qname: q.name.clone(),
        qtype: q.type_name(),
        rcode: rcode.to_owned(),
        answers: answer.map(|a| a.addrs.iter().map(|(ip, _)| *ip).collect()).unwrap_or_default(),
        ttl: answer.and_then(|a| a.addrs.iter().map(|(_, t)| *t).min()),
        verdict,
        learned,
        latency_us: started.elapsed().as_micros() as u64,
    };
    let refuse = |why: &str| {
        inc(&shared.stats.refused);
        tracing::debug!(%client, qname = %q.name, why, "refusing a query");
        shared.flows.push(record(DnsVerdict::RefusedByPolicy, "REFUSED", None, false));
        Some(message::error_response(&msg, ResponseCode::Refused))
    };
    // Only steered packets of known pods, to a resolver's DNS port, are proxied.
    let Some(endpoint) = endpoint.clone() else { return refuse("not a pod behind the proxy") };
    if resolver.port() != ward_common::fqdn::DNS_PORT {
        return refuse("not addressed to a DNS port");
    }
    let empty = FqdnPolicy::default();
    let policy = view.policies.get(&endpoint.identity).unwrap_or(&empty);
    if !policy.dns.is_empty()
        && policy.query_allowed(shared.identities_of(resolver.ip()), transport.proto(), &q.name)
            == QueryVerdict::Refused
    {
        return refuse("no dns rule allows the name");
    }
    let (mut reply, amsg, answer) = match exchange(shared, resolver, transport, query, &q, tcp).await {
        Ok(x) => x,
        Err(e) => {
            inc(&shared.stats.upstream_errors);
            tracing::debug!(%resolver, qname = %q.name, error = %e, "no answer from the resolver");
            shared.flows.push(record(DnsVerdict::UpstreamError, "", None, false));
            return None;
        }
    };
    let mut learned = false;
    if !answer.addrs.is_empty() && policy.opens(&q.name) {
        let now = monotonic_ns();
        let result = match shared.learner.lock() {
            Ok(mut g) => {
                let (learner, map) = &mut *g;
                learner.learn(map, endpoint.ep_id, policy, &q.name, &answer.addrs, now).map_err(|e| e.to_string())
            }
            Err(_) => Err("learner lock poisoned".to_string()),
        };
        match result {
            Ok(outcome) => {
                learned = true;
                inc(&shared.stats.learned_answers);
                if outcome.kept < answer.addrs.len() {
                    inc(&shared.stats.trimmed_answers);
                    let end = answer.chain.last().cloned().unwrap_or_else(|| q.name.clone());
                    match message::trim_addresses(amsg, &end, outcome.kept) {
                        Some(t) => reply = t,
                        None => return Some(message::error_response(&msg, ResponseCode::ServFail)),
                    }
                }
            }
            Err(e) => {
                inc(&shared.stats.write_failures);
                tracing::warn!(pod = %endpoint.pod, qname = %q.name, error = %e, "learning failed: SERVFAIL");
                shared.flows.push(record(DnsVerdict::WriteFailed, "SERVFAIL", Some(&answer), false));
                return Some(message::error_response(&msg, ResponseCode::ServFail));
            }
        }
    }
    inc(&shared.stats.allowed);
    shared.flows.push(record(DnsVerdict::Allowed, &message::rcode_name(answer.rcode), Some(&answer), learned));
    Some(reply)
}
