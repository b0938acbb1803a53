//! serve-hostname servers inside a pod's network namespace, like upstream's
//! `agnhost serve-hostname`: every TCP connection and every UDP datagram is answered with the
//! pod's name. One thread per served port; each polls with a short timeout so a stop flag
//! ends it promptly when the pod is deleted.

use std::io::{ErrorKind, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, bind, listen, setsockopt, socket, sockopt,
};

use crate::netns::{self, NetnsError};
use crate::spec::{Protocol, Serve};

/// How often a server thread looks at its stop flag when idle.
const STOP_POLL: u16 = 50;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("server {port}/{protocol} in {netns}: {source}")]
    Netns { port: u16, protocol: Protocol, netns: String, source: NetnsError },
    #[error("server {port}/{protocol} in {netns}: cannot listen: {source}")]
    Listen { port: u16, protocol: Protocol, netns: String, source: nix::Error },
    #[error("server {port}/{protocol} in {netns}: the thread ended before listening")]
    Vanished { port: u16, protocol: Protocol, netns: String },
}

/// The running servers of one pod; stopped (and joined) on [`Servers::stop`] or drop.
#[derive(Debug)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts one server per entry of `serves` inside the namespace at `netns_path`, each
    /// answering with `hostname`. Returns once every socket listens.
    pub fn start(netns_name: &str, netns_path: PathBuf, hostname: &str, serves: &[Serve]) -> Result<Self, ServeError> {
        let mut servers = Servers { stop: Arc::new(AtomicBool::new(false)), threads: Vec::new() };
        for s in serves {
            let (port, protocol, http) = (s.port, s.protocol, s.http);
            let (ready_tx, ready_rx) = mpsc::channel();
            let stop = servers.stop.clone();
            let (name, path) = (netns_name.to_owned(), netns_path.clone());
            let reply = format!("{hostname}\n").into_bytes();
            let handle = thread::Builder::new()
                .name(format!("serve-{port}-{}", protocol.lower()))
                .spawn(move || {
                    let sock = netns::enter(&name, &path)
                        .map_err(|source| ServeError::Netns { port, protocol, netns: name.clone(), source })
                        .and_then(|()| {
                            dual_stack_socket(port, protocol).map_err(|source| ServeError::Listen {
                                port,
                                protocol,
                                netns: name.clone(),
                                source,
                            })
                        });
                    let sock = match sock {
                        Ok(sock) => {
                            let _ = ready_tx.send(Ok(()));
                            sock
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    match protocol {
                        Protocol::Tcp if http => crate::http::serve(TcpListener::from(sock), &reply, &stop),
                        Protocol::Tcp => serve_tcp(TcpListener::from(sock), &reply, &stop),
                        Protocol::Udp => serve_udp(UdpSocket::from(sock), &reply, &stop),
                    }
                })
                .map_err(|_| ServeError::Vanished { port, protocol, netns: netns_name.to_owned() })?;
            servers.threads.push(handle);
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(ServeError::Vanished { port, protocol, netns: netns_name.to_owned() });
                }
            }
        }
        Ok(servers)
    }

    /// Stops every server and waits for its thread to end (at most one poll interval).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A non-blocking `[::]:port` socket that also accepts IPv4 (V6ONLY off), or `0.0.0.0:port`
/// where the namespace has no IPv6.
fn dual_stack_socket(port: u16, protocol: Protocol) -> Result<OwnedFd, nix::Error> {
    let ty = match protocol {
        Protocol::Tcp => SockType::Stream,
        Protocol::Udp => SockType::Datagram,
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = match socket(AddressFamily::Inet6, ty, flags, None) {
        Ok(fd) => {
            setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
            fd
        }
        Err(nix::Error::EAFNOSUPPORT) => {
            let fd = socket(AddressFamily::Inet, ty, flags, None)?;
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            let addr = nix::sys::socket::SockaddrIn::new(0, 0, 0, 0, port);
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
            fd
        }
        Err(e) => return Err(e),
    };
    if protocol == Protocol::Tcp {
        listen(&fd, Backlog::new(128)?)?;
    }
    Ok(fd)
}

/// Waits until `fd` is readable or the poll interval passes; false once stopped.
fn wait_readable(fd: impl AsFd, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(STOP_POLL)) {
            Ok(n) if n > 0 => return true,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(_) => return !stop.load(Ordering::Relaxed),
        }
    }
}

fn serve_tcp(listener: TcpListener, reply: &[u8], stop: &AtomicBool) {
    while wait_readable(&listener, stop) {
        loop {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    // A fresh socket's send buffer takes a hostname without blocking.
                    let _ = conn.set_write_timeout(Some(Duration::from_millis(200)));
                    let _ = conn.write_all(reply);
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }
}

fn serve_udp(sock: UdpSocket, reply: &[u8], stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while wait_readable(&sock, stop) {
        loop {
            match sock.recv_from(&mut buf) {
                Ok((_, from)) => {
                    let _ = sock.send_to(reply, from);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }
}
