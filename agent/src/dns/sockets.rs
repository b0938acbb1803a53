//! The proxy's listening sockets and the keeper that holds them across agent restarts.
//!
//! The sockets (UDP and TCP, IPv4 and IPv6, on the proxy port of the agent's network
//! namespace) are transparent (`IP_TRANSPARENT`): they receive packets the datapath assigned
//! to them whatever their destination, and answer from the resolver's address the pod asked.
//!
//! A SIGKILLed agent cannot hand anything over, so the sockets live in a second, tiny process:
//! the keeper (`ward-agent dns-keeper`, started by the first agent with the sockets inherited,
//! in its own session). It never reads them; it only holds them open, so while no agent runs
//! the kernel keeps queueing queries (UDP receive buffer, TCP accept backlog) instead of the
//! datapath finding no socket. Each agent connects to the keeper's unix socket
//! (`<state dir>/dns-keeper.sock`) at start, receives the sockets (SCM_RIGHTS) and keeps the
//! connection open; the queued queries are then answered by the new agent, and clients with
//! ordinary retries see no failed resolution. The keeper exits when told (`exit`), or when no
//! agent has been connected for the grace period: then the sockets close and DNS of proxied
//! pods fails closed (`dns_proxy_down`).

use std::io::{IoSlice, IoSliceMut, Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    bind, listen, recvmsg, sendmsg, socket,
};

/// The keeper's socket, in the state directory.
pub const KEEPER_SOCKET: &str = "dns-keeper.sock";
/// The header the keeper sends with the sockets.
const HELLO: &str = "ward-dns-keeper v1";
/// Receive buffer of the UDP sockets: what queues while no agent reads (about 4k queries).
const UDP_RCVBUF: libc::c_int = 2 * 1024 * 1024;
/// Accept backlog of the TCP sockets.
const TCP_BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("DNS proxy socket {what} on port {port}: {source}")]
    Create { what: &'static str, port: u16, source: nix::Error },
    #[error("DNS keeper at {path}: {what}: {source}")]
    Keeper { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("DNS keeper at {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// The proxy's sockets, in this process.
#[derive(Debug)]
pub struct ProxySockets {
    pub port: u16,
    pub udp4: OwnedFd,
    pub tcp4: OwnedFd,
    /// `None` where the namespace has no IPv6.
    pub udp6: Option<OwnedFd>,
    pub tcp6: Option<OwnedFd>,
    /// True when they came from a keeper (a restart), false when made now.
    pub adopted: bool,
    /// The connection to the keeper, held for the agent's life: its end tells the keeper the
    /// agent is gone.
    pub keeper: Option<UnixStream>,
}

const KINDS: [&str; 4] = ["udp4", "tcp4", "udp6", "tcp6"];

impl ProxySockets {
    fn fds(&self) -> Vec<(&'static str, RawFd)> {
        let mut out = vec![("udp4", self.udp4.as_raw_fd()), ("tcp4", self.tcp4.as_raw_fd())];
        if let Some(f) = &self.udp6 {
            out.push(("udp6", f.as_raw_fd()));
        }
        if let Some(f) = &self.tcp6 {
            out.push(("tcp6", f.as_raw_fd()));
        }
        out
    }
}

fn setopt(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> Result<(), nix::Error> {
    // SAFETY: a valid fd and a pointer to an int that lives for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(nix::Error::last()) }
}

/// One transparent socket bound to the wildcard address of its family on `port`.
fn make(ty: SockType, v6: bool, port: u16) -> Result<OwnedFd, nix::Error> {
    let family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let fd = socket(family, ty, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    setopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if v6 {
        setopt(&fd, libc::SOL_IPV6, libc::IPV6_V6ONLY, 1)?;
        setopt(&fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?;
        if ty == SockType::Datagram {
            setopt(&fd, libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR, 1)?;
        }
        bind(
            fd.as_raw_fd(),
            &SockaddrIn6::from(std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, port, 0, 0)),
        )?;
    } else {
        setopt(&fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
        if ty == SockType::Datagram {
            setopt(&fd, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)?;
        }
        bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port))?;
    }
    if ty == SockType::Datagram {
        setopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, UDP_RCVBUF)?;
    } else {
        listen(&fd, Backlog::new(TCP_BACKLOG)?)?;
    }
    Ok(fd)
}

/// A transparent UDP socket bound to `source` (another host's address), to answer from it.
pub fn transparent_udp(source: std::net::SocketAddr) -> Result<OwnedFd, nix::Error> {
    let v6 = source.is_ipv6();
    let family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    setopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    match source {
        std::net::SocketAddr::V6(a) => {
            setopt(&fd, libc::SOL_IPV6, libc::IPV6_V6ONLY, 1)?;
            setopt(&fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?;
            bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?;
        }
        std::net::SocketAddr::V4(a) => {
            setopt(&fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
            bind(fd.as_raw_fd(), &SockaddrIn::from(a))?;
        }
    }
    Ok(fd)
}

/// Creates the four sockets (IPv6 ones only where IPv6 works).
pub fn create(port: u16) -> Result<ProxySockets, SocketError> {
    let err = |what| move |source| SocketError::Create { what, port, source };
    let udp4 = make(SockType::Datagram, false, port).map_err(err("udp4"))?;
    let tcp4 = make(SockType::Stream, false, port).map_err(err("tcp4"))?;
    let v6 = |ty, what| match make(ty, true, port) {
        Ok(fd) => Ok(Some(fd)),
        Err(nix::Error::EAFNOSUPPORT | nix::Error::EADDRNOTAVAIL) => Ok(None),
        Err(e) => Err(err(what)(e)),
    };
    let udp6 = v6(SockType::Datagram, "udp6")?;
    let tcp6 = v6(SockType::Stream, "tcp6")?;
    Ok(ProxySockets { port, udp4, tcp4, udp6, tcp6, adopted: false, keeper: None })
}

/// The sockets for `port`: from the keeper if one runs (a restart), else new ones, with a
/// keeper started to hold them (see the module docs).
pub fn acquire(state_dir: &Path, port: u16, grace: Duration, node: &str) -> Result<ProxySockets, SocketError> {
    let path = state_dir.join(KEEPER_SOCKET);
    if let Ok(conn) = UnixStream::connect(&path) {
        match receive(&path, conn) {
            Ok(s) if s.port == port => {
                tracing::info!(port, "DNS proxy sockets handed over by the keeper");
                return Ok(s);
            }
            Ok(mut s) => {
                tracing::warn!(had = s.port, want = port, "the keeper holds sockets of another port; replacing it");
                if let Some(c) = s.keeper.as_mut() {
                    let _ = c.write_all(b"exit\n");
                }
            }
            Err(e) => tracing::warn!(error = %e, "the DNS keeper did not hand over its sockets; starting a new one"),
        }
    }
    let mut sockets = create(port)?;
    let keeper_err = |what: &'static str| {
        let path = path.clone();
        move |source| SocketError::Keeper { path, what, source }
    };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(keeper_err("binding"))?;
    spawn_keeper(&sockets, &listener, grace, node).map_err(keeper_err("starting"))?;
    drop(listener);
    // Connect as every agent does; the keeper answers with duplicates of what we hold.
    let conn = UnixStream::connect(&path).map_err(keeper_err("connecting"))?;
    let dup = receive(&path, conn)?;
    sockets.keeper = dup.keeper;
    tracing::info!(port, "DNS proxy sockets created; the keeper holds them across restarts");
    Ok(sockets)
}

fn spawn_keeper(s: &ProxySockets, listener: &UnixListener, grace: Duration, node: &str) -> std::io::Result<()> {
    let fds = s.fds();
    let listen_fd = listener.as_raw_fd();
    let list: Vec<String> = fds.iter().map(|(k, fd)| format!("{k}={fd}")).collect();
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["dns-keeper", "--node-name", node, "--listen-fd", &listen_fd.to_string()])
        .args(["--fds", &list.join(","), "--port", &s.port.to_string()])
        .args(["--grace-ms", &grace.as_millis().to_string()])
        .stdin(std::process::Stdio::null());
    let inherit: Vec<RawFd> = fds.iter().map(|(_, fd)| *fd).chain([listen_fd]).collect();
    // SAFETY: runs between fork and exec; fcntl and setsid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &inherit {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Its own session: a signal to the agent's process group does not reach it.
            libc::setsid();
            Ok(())
        });
    }
    // The keeper is detached on purpose; it is never waited for (it outlives us).
    let child = cmd.spawn()?;
    tracing::info!(pid = child.id(), "DNS keeper started");
    std::mem::forget(child);
    Ok(())
}

/// Reads the keeper's hello and sockets from `conn`.
fn receive(path: &Path, conn: UnixStream) -> Result<ProxySockets, SocketError> {
    let proto = |message: String| SocketError::Protocol { path: path.to_owned(), message };
    conn.set_read_timeout(Some(Duration::from_secs(5))).map_err(|source| SocketError::Keeper {
        path: path.to_owned(),
        what: "setting a timeout",
        source,
    })?;
    let mut buf = [0u8; 256];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| proto(format!("receiving the sockets: {e}")))?;
    let mut fds: Vec<RawFd> = Vec::new();
    for c in msg.cmsgs().map_err(|e| proto(format!("reading control messages: {e}")))? {
        if let ControlMessageOwned::ScmRights(r) = c {
            fds.extend(r);
        }
    }
    let n = msg.bytes;
    // SAFETY: the kernel just installed these descriptors in this process for us alone.
    let mut owned: Vec<OwnedFd> = fds.iter().map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) }).collect();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let mut words = text.split_whitespace();
    let hello = format!("{} {}", words.next().unwrap_or(""), words.next().unwrap_or(""));
    if hello != HELLO {
        return Err(proto(format!("unexpected hello {text:?}")));
    }
    let mut port = None;
    let mut kinds: Vec<&str> = Vec::new();
    for w in words {
        if let Some(p) = w.strip_prefix("port=") {
            port = p.parse::<u16>().ok();
        } else if let Some(k) = w.strip_prefix("kinds=") {
            kinds = k.split(',').collect();
        }
    }
    let port = port.ok_or_else(|| proto(format!("no port in {text:?}")))?;
    if kinds.len() != owned.len() || kinds.iter().any(|k| !KINDS.contains(k)) {
        return Err(proto(format!("{} sockets for kinds {kinds:?}", owned.len())));
    }
    let mut by_kind: std::collections::BTreeMap<&str, OwnedFd> = kinds.iter().copied().zip(owned.drain(..)).collect();
    let (Some(udp4), Some(tcp4)) = (by_kind.remove("udp4"), by_kind.remove("tcp4")) else {
        return Err(proto("no IPv4 sockets".into()));
    };
    Ok(ProxySockets {
        port,
        udp4,
        tcp4,
        udp6: by_kind.remove("udp6"),
        tcp6: by_kind.remove("tcp6"),
        adopted: true,
        keeper: Some(conn),
    })
}

/// `ward-agent dns-keeper ...`: holds the sockets (see the module docs). Never returns.
pub fn keeper_main(args: &[String]) -> ! {
    let code = match keeper(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ward-agent dns-keeper: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn arg<'a>(args: &'a [String], name: &str) -> Result<&'a str, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .ok_or(format!("{name} missing"))
}

fn keeper(args: &[String]) -> Result<(), String> {
    let listen_fd: RawFd = arg(args, "--listen-fd")?.parse().map_err(|e| format!("--listen-fd: {e}"))?;
    let port: u16 = arg(args, "--port")?.parse().map_err(|e| format!("--port: {e}"))?;
    let grace = Duration::from_millis(arg(args, "--grace-ms")?.parse().map_err(|e| format!("--grace-ms: {e}"))?);
    let mut fds: Vec<(String, OwnedFd)> = Vec::new();
    for item in arg(args, "--fds")?.split(',') {
        let (kind, fd) = item.split_once('=').ok_or(format!("--fds: {item:?}"))?;
        let fd: RawFd = fd.parse().map_err(|e| format!("--fds {item}: {e}"))?;
        // SAFETY: inherited from the agent for this process, named on our command line.
        fds.push((kind.to_owned(), unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    // SAFETY: as above.
    let listener = unsafe { UnixListener::from_raw_fd(listen_fd) };
    let kinds: Vec<&str> = fds.iter().map(|(k, _)| k.as_str()).collect();
    let hello = format!("{HELLO} port={port} kinds={}\n", kinds.join(","));
    let raw: Vec<RawFd> = fds.iter().map(|(_, f)| f.as_raw_fd()).collect();
    let mut agents: Vec<UnixStream> = Vec::new();
    let mut alone_since: Option<Instant> = Some(Instant::now());
    loop {
        if let Some(t) = alone_since
            && t.elapsed() >= grace
        {
            eprintln!("ward-agent dns-keeper: no agent for {grace:?}; closing the DNS proxy sockets");
            return Ok(());
        }
        let mut polls = vec![libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        polls.extend(agents.iter().map(|a| libc::pollfd { fd: a.as_raw_fd(), events: libc::POLLIN, revents: 0 }));
        // SAFETY: `polls` is a valid array of pollfd for the call.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 200) };
        if n <= 0 {
            continue;
        }
        if polls[0].revents & libc::POLLIN != 0
            && let Ok((conn, _)) = listener.accept()
        {
            let cmsg = [ControlMessage::ScmRights(&raw)];
            match sendmsg::<()>(conn.as_raw_fd(), &[IoSlice::new(hello.as_bytes())], &cmsg, MsgFlags::empty(), None) {
                Ok(_) => alone_since = None,
                // A peer that only came to say `exit` may be gone already; what it wrote is
                // still read below.
                Err(e) => eprintln!("ward-agent dns-keeper: handing over the sockets: {e}"),
            }
            agents.push(conn);
        }
        let mut gone = Vec::new();
        for (i, p) in polls.iter().enumerate().skip(1) {
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
                continue;
            }
            let mut b = [0u8; 64];
            match agents[i - 1].read(&mut b) {
                Ok(0) | Err(_) => gone.push(i - 1),
                Ok(n) if String::from_utf8_lossy(&b[..n]).contains("exit") => {
                    eprintln!("ward-agent dns-keeper: told to exit; closing the DNS proxy sockets");
                    return Ok(());
                }
                Ok(_) => {}
            }
        }
        for i in gone.into_iter().rev() {
            agents.remove(i);
        }
        if agents.is_empty() && alone_since.is_none() {
            alone_since = Some(Instant::now());
        }
    }
}
