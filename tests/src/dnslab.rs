//! Outside-the-cluster pieces of a lab node, for DNS-based egress: external hosts (network
//! namespaces reached from pods through the node, addressed in 198.18.<node>.0/24 and
//! fd77:eee0:0:<node>::/64, outside every pod CIDR, with serve-hostname servers), a real DNS
//! server (dnsmasq in its own such host, answering only the lab's records: no upstream, no
//! hosts file, unknown names under `.example` are NXDOMAIN), pods resolving through it as
//! their normal resolver (`/etc/netns/<pod netns>/resolv.conf`, which `ip netns exec` mounts
//! over `/etc/resolv.conf`), and small clients: glibc through `getent`, and an in-process stub
//! resolver (hickory-proto) that connects the instant the answer arrives.
//!
//! Everything is removed by its guard's `Drop`, also on panic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::netns::{self, NetNs, unique_name};
use crate::node::Node;
use crate::serve::Servers;
use crate::spec::Serve;

/// Where `ip netns exec` finds per-namespace configuration files.
pub const NETNS_ETC: &str = "/etc/netns";
/// The node side's MAC on external-host veths (the hosts' gateway neighbour points at it).
const NODE_MAC: &str = "ee:ee:ee:ee:ee:01";

#[derive(Debug, thiserror::Error)]
pub enum DnsLabError {
    #[error("external host {host}: {what}: {message}")]
    Host { host: String, what: String, message: String },
    #[error("DNS server: {0}")]
    Server(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn host_err(host: &str, what: &str, e: impl std::fmt::Display) -> DnsLabError {
    DnsLabError::Host { host: host.to_owned(), what: what.to_owned(), message: e.to_string() }
}

/// One external host: a namespace with a veth to the node and its own servers.
#[derive(Debug)]
pub struct ExternalHost {
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The veth's name on the node.
    node_if: String,
    // Servers stop before their namespace goes.
    servers: Option<Servers>,
    netns: NetNs,
}

impl ExternalHost {
    /// Host number `n` (1..=250) of `node`, serving `serves`.
    pub fn create(node: &Node, name: &str, n: u8, serves: &[Serve]) -> Result<ExternalHost, DnsLabError> {
        let k = node.config().index;
        let v4 = Ipv4Addr::new(198, 18, k, n);
        let v6 = Ipv6Addr::new(0xfd77, 0xeee0, 0, k.into(), 0, 0, 0, n.into());
        let netns = NetNs::create(unique_name(&format!("ext-{name}"))).map_err(|e| host_err(name, "namespace", e))?;
        // Interface names are at most 15 bytes: `wx` and the host's address bytes.
        let node_if = format!("wx{k}x{n}");
        let node_ns = node.netns();
        let run = |ns: &NetNs, args: &[&str]| ns.ip(args).map(drop).map_err(|e| host_err(name, &args.join(" "), e));
        run(node_ns, &["link", "add", &node_if, "type", "veth", "peer", "name", "eth0", "netns", netns.name()])?;
        // No duplicate address detection on either end: link-local addresses usable at once.
        let no_dad = |ns: &NetNs, ifname: &str| {
            ns.sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0").map_err(|e| host_err(name, "sysctl", e))
        };
        no_dad(node_ns, &node_if)?;
        no_dad(&netns, "eth0")?;
        run(node_ns, &["link", "set", &node_if, "address", NODE_MAC, "up"])?;
        run(&netns, &["link", "set", "eth0", "up"])?;
        run(&netns, &["addr", "add", &format!("{v4}/32"), "dev", "eth0"])?;
        run(&netns, &["addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"])?;
        run(&netns, &["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
        run(&netns, &["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
        run(&netns, &["neigh", "add", "169.254.1.1", "lladdr", NODE_MAC, "dev", "eth0", "nud", "permanent"])?;
        run(&netns, &["-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"])?;
        run(&netns, &["-6", "neigh", "add", "fe80::1", "lladdr", NODE_MAC, "dev", "eth0", "nud", "permanent"])?;
        run(node_ns, &["route", "add", &format!("{v4}/32"), "dev", &node_if])?;
        run(node_ns, &["-6", "route", "add", &format!("{v6}/128"), "dev", &node_if])?;
        let servers = Servers::start(netns.name(), netns.path().to_owned(), name, serves)
            .map_err(|e| host_err(name, "servers", e))?;
        Ok(ExternalHost { name: name.to_owned(), v4, v6, node_if, servers: Some(servers), netns })
    }

    /// Makes every address of `range` (an IPv4 prefix, e.g. `100.72.0.0/22`) this host's, as
    /// seen from the pods: many distinct addresses behind one set of servers.
    pub fn add_range(&self, node: &Node, range: &str) -> Result<(), DnsLabError> {
        let err = |what: &str, e: crate::netns::NetnsError| host_err(&self.name, what, e);
        self.netns.ip(&["route", "add", "local", range, "dev", "lo"]).map_err(|e| err("local route", e))?;
        node.netns().ip(&["route", "add", range, "dev", &self.node_if]).map_err(|e| err("node route", e))?;
        Ok(())
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(self.v6) } else { IpAddr::V4(self.v4) }
    }
}

impl Drop for ExternalHost {
    fn drop(&mut self) {
        if let Some(s) = self.servers.take() {
            s.stop();
        }
    }
}

/// One record set the DNS server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Addresses (A and AAAA) with a TTL.
    Addrs {
        name: String,
        addrs: Vec<IpAddr>,
        ttl: u32,
    },
    Cname {
        name: String,
        target: String,
        ttl: u32,
    },
}

/// dnsmasq in its own external host, answering only `records`.
#[derive(Debug)]
pub struct DnsServer {
    child: Option<Child>,
    conf: PathBuf,
    host: ExternalHost,
}

/// The DNS server's host number (its address ends in .53).
pub const DNS_HOST: u8 = 53;

impl DnsServer {
    /// Starts dnsmasq and waits until it answers.
    pub fn start(node: &Node, records: &[Record]) -> Result<DnsServer, DnsLabError> {
        let host = ExternalHost::create(node, "dns", DNS_HOST, &[])?;
        let mut conf = String::from(
            "no-resolv\nno-hosts\nno-poll\nbind-interfaces\nlocal=/example/\nedns-packet-max=4096\nlog-queries=extra\n",
        );
        let _ = writeln!(conf, "listen-address={}\nlisten-address={}", host.v4, host.v6);
        for r in records {
            match r {
                // One line per address: dnsmasq answers them all, in this order.
                Record::Addrs { name, addrs, ttl } => {
                    for a in addrs {
                        let _ = match a {
                            IpAddr::V4(v4) => writeln!(conf, "host-record={name},{v4},{ttl}"),
                            IpAddr::V6(v6) => writeln!(conf, "host-record={name},{v6},{ttl}"),
                        };
                    }
                }
                Record::Cname { name, target, ttl } => {
                    let _ = writeln!(conf, "cname={name},{target},{ttl}");
                }
            }
        }
        let path = node.dir().join(format!("{}.dnsmasq.conf", unique_name("dns")));
        std::fs::write(&path, conf).map_err(|source| DnsLabError::Io { path: path.clone(), source })?;
        let log = node.dir().join("dnsmasq.log");
        let log = std::fs::File::create(&log).map_err(|source| DnsLabError::Io { path: log.clone(), source })?;
        let child = Command::new("ip")
            .args(["netns", "exec", host.netns().name(), "dnsmasq", "--keep-in-foreground", "--user=root"])
            .arg(format!("--conf-file={}", path.display()))
            .arg("--pid-file=")
            .arg("--log-facility=-")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| {
                DnsLabError::Server(format!("starting dnsmasq (is it installed? `cargo xtask setup`): {e}"))
            })?;
        let server = DnsServer { child: Some(child), conf: path, host };
        // Ready once it answers a name it does not know (NXDOMAIN) from its own namespace.
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::new(IpAddr::V4(server.host.v4), 53);
        loop {
            let r = server
                .host
                .netns()
                .run_in(|| query(addr, "ready.example", RecordType::A, false, Duration::from_millis(200)));
            if matches!(r, Ok(Ok(_))) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(DnsLabError::Server(format!("dnsmasq did not answer within 10 s: {r:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self, v6: bool) -> SocketAddr {
        SocketAddr::new(self.host.ip(v6), 53)
    }

    pub fn host(&self) -> &ExternalHost {
        &self.host
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.conf);
    }
}

/// `/etc/netns/<netns>/resolv.conf` pointing at a lab DNS server; removed on drop.
#[derive(Debug)]
pub struct ResolvConf {
    dir: PathBuf,
}

impl ResolvConf {
    /// Ordinary resolver retries, short enough for probes: 1 s per try, 3 tries.
    pub fn write(netns: &str, server: IpAddr) -> Result<ResolvConf, DnsLabError> {
        let dir = Path::new(NETNS_ETC).join(netns);
        std::fs::create_dir_all(&dir).map_err(|source| DnsLabError::Io { path: dir.clone(), source })?;
        let path = dir.join("resolv.conf");
        let text = format!("nameserver {server}\noptions timeout:1 attempts:3\n");
        std::fs::write(&path, text).map_err(|source| DnsLabError::Io { path: path.clone(), source })?;
        Ok(ResolvConf { dir })
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Resolves `name` with glibc inside `netns` (`getent ahostsv4|ahostsv6`), bounded in time.
pub fn getent(netns: &str, name: &str, v6: bool, timeout: Duration) -> Result<Vec<IpAddr>, String> {
    let db = if v6 { "ahostsv6" } else { "ahostsv4" };
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "getent", db, name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running getent: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("resolving {name}: timed out"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for getent: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!("{name} did not resolve (getent exit {status})"));
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for line in out.lines() {
        if let Some(ip) = line.split_whitespace().next().and_then(|w| w.parse::<IpAddr>().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// The answer of a stub query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub rcode: String,
    pub truncated: bool,
    pub addrs: Vec<IpAddr>,
    pub ttl: Option<u32>,
}

fn build_query(name: &str, qtype: RecordType, edns: bool) -> Result<(u16, Vec<u8>), String> {
    let id = rand_u16();
    let mut m = Message::new();
    m.set_id(id).set_message_type(MessageType::Query).set_op_code(OpCode::Query).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_str(name).map_err(|e| e.to_string())?, qtype));
    if edns {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    Ok((id, m.to_vec().map_err(|e| e.to_string())?))
}

/// A fresh query id (RandomState is seeded per instance).
fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish() as u16
}

fn parse_reply(id: u16, bytes: &[u8]) -> Result<Reply, String> {
    let m = Message::from_vec(bytes).map_err(|e| format!("malformed answer: {e}"))?;
    if m.id() != id {
        return Err(format!("answer id {} for query {id}", m.id()));
    }
    let mut addrs = Vec::new();
    let mut ttl: Option<u32> = None;
    for r in m.answers() {
        let ip = match r.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        addrs.push(ip);
        ttl = Some(ttl.map_or(r.ttl(), |t| t.min(r.ttl())));
    }
    Ok(Reply { rcode: m.response_code().to_str().to_owned(), truncated: m.truncated(), addrs, ttl })
}

/// One query from the calling thread's namespace, over UDP (no EDNS0, as a plain stub
/// resolver sends it) or TCP.
pub fn query(server: SocketAddr, name: &str, qtype: RecordType, tcp: bool, timeout: Duration) -> Result<Reply, String> {
    query_with(server, name, qtype, tcp, false, timeout)
}

/// [`query`] with the choice of an EDNS0 OPT record (4096-byte UDP payload).
pub fn query_with(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    tcp: bool,
    edns: bool,
    timeout: Duration,
) -> Result<Reply, String> {
    let (id, q) = build_query(name, qtype, edns)?;
    if tcp {
        let mut s = TcpStream::connect_timeout(&server, timeout).map_err(|e| format!("connecting: {e}"))?;
        s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).map_err(|e| format!("sending: {e}"))?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(|e| format!("reading: {e}"))?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).map_err(|e| format!("reading: {e}"))?;
        return parse_reply(id, &buf);
    }
    let local: SocketAddr =
        if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = UdpSocket::bind(local).map_err(|e| e.to_string())?;
    sock.connect(server).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    sock.send(&q).map_err(|e| format!("sending: {e}"))?;
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).map_err(|e| format!("no answer: {e}"))?;
    parse_reply(id, &buf[..n])
}

/// What a resolve-then-connect attempt saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Connected(IpAddr),
    /// The name resolved but the connection failed.
    ConnectFailed(IpAddr, String),
    ResolveFailed(String),
}

/// Resolves `name` (UDP, retrying like a stub resolver: `tries` times, `per_try` each) and
/// connects to the first address at once, from the calling thread's namespace.
pub fn resolve_and_connect(
    server: SocketAddr,
    name: &str,
    port: u16,
    tries: u32,
    per_try: Duration,
    connect_timeout: Duration,
) -> Attempt {
    let mut last = String::new();
    for _ in 0..tries.max(1) {
        match query(server, name, RecordType::A, false, per_try) {
            Ok(r) if r.addrs.is_empty() => return Attempt::ResolveFailed(format!("{} with no address", r.rcode)),
            Ok(r) => {
                let ip = r.addrs[0];
                return match TcpStream::connect_timeout(&SocketAddr::new(ip, port), connect_timeout) {
                    Ok(_) => Attempt::Connected(ip),
                    Err(e) => Attempt::ConnectFailed(ip, e.to_string()),
                };
            }
            Err(e) => last = e,
        }
    }
    Attempt::ResolveFailed(last)
}

/// Runs `f` on a thread inside the namespace at `path` (`name` for messages).
pub fn in_netns<T: Send>(name: &str, path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            netns::enter(name, path).map_err(|e| e.to_string())?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err("thread panicked".into()))
    })
}

/// Tells the DNS keeper of an agent's state directory to exit (it would hold the proxy's
/// sockets for its grace period otherwise), speaking its protocol
/// (`ward_agent::dns::sockets`: a line `exit`). False if none listened.
pub fn stop_dns_keeper(state_dir: &Path) -> bool {
    match std::os::unix::net::UnixStream::connect(state_dir.join("dns-keeper.sock")) {
        Ok(mut c) => {
            if c.write_all(b"exit\n").is_err() {
                return false;
            }
            // Returns once the keeper has closed its end (it has exited).
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
            true
        }
        Err(_) => false,
    }
}

/// The external hosts and DNS server of one lab, by name.
#[derive(Debug, Default)]
pub struct Outside {
    pub hosts: BTreeMap<String, ExternalHost>,
    pub dns: Option<DnsServer>,
    resolv: BTreeMap<String, ResolvConf>,
}

impl Outside {
    /// Makes sure `netns` resolves through the lab's DNS server (when there is one).
    pub fn resolv_conf(&mut self, netns: &str) -> Result<(), DnsLabError> {
        let Some(dns) = &self.dns else { return Ok(()) };
        if !self.resolv.contains_key(netns) {
            let r = ResolvConf::write(netns, dns.addr(false).ip())?;
            self.resolv.insert(netns.to_owned(), r);
        }
        Ok(())
    }
}
