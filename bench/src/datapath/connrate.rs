//! New-connection rate: short TCP connections (connect, a 1-byte request, a 1-byte reply, the
//! server closes first so the client's ports never sit in TIME_WAIT), one after another from
//! a thread inside the client pod to a small accept server inside the server pod. Every
//! connection is a new flow, so this is where conntrack setup and a per-flow policy decision
//! show. The same exchange is the reachability check of the configurations.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ward_lab::NetNs;

/// How long one exchange may take before it counts as failed.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);
/// A run stops after this many failed connections: the configuration is broken.
const MAX_FAILURES: usize = 20;

/// The accept server inside one pod; stopped and joined on drop.
pub struct ConnServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnServer {
    /// Listens on `addr` inside `ns` (the socket stays there; the accept loop runs on an
    /// ordinary thread).
    pub fn start(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<ConnServer> {
        let listener = ns
            .run_in(|| TcpListener::bind(addr))
            .with_context(|| format!("entering {}", ns.name()))?
            .with_context(|| format!("connection server on {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true).context("connection server: non-blocking listener")?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name(format!("conn-server-{addr}"))
                .spawn(move || serve(&listener, &stop))
                .context("connection server thread")?
        };
        Ok(ConnServer { stop, thread: Some(thread) })
    }
}

impl Drop for ConnServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long the accept loop blocks before looking at its stop flag.
const STOP_POLL_MS: i32 = 50;

/// Waits until `listener` has a connection to accept or [`STOP_POLL_MS`] pass. Blocking in
/// poll (rather than sleeping between non-blocking accepts) keeps a sleep out of every
/// measured connection.
fn wait_readable(listener: &TcpListener) {
    let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let _ = unsafe { libc::poll(&mut pfd, 1, STOP_POLL_MS) };
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    let mut buf = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        wait_readable(listener);
        match listener.accept() {
            Ok((mut c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(EXCHANGE_TIMEOUT));
                if matches!(c.read(&mut buf), Ok(1)) {
                    let _ = c.write_all(&buf);
                }
                // Dropping closes: the server sends the first FIN and keeps the TIME_WAIT.
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// One exchange: connect, send a byte, read it back, read the server's close.
fn exchange(to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    // Wait for the server's FIN so our close is the second one (no TIME_WAIT on this side).
    let _ = s.read(&mut b);
    Ok(())
}

/// Whether `from` can complete one exchange with the server at `to` within `timeout`.
pub fn reachable(from: &NetNs, to: SocketAddr, timeout: Duration) -> anyhow::Result<Result<(), String>> {
    from.run_in(|| exchange(to, timeout).map_err(|e| e.to_string()))
        .with_context(|| format!("entering {}", from.name()))
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub struct ConnRate {
    pub connections: u64,
    pub secs: f64,
}

impl ConnRate {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 { self.connections as f64 / self.secs } else { 0.0 }
    }
}

/// Opens short connections one after another from inside `from` for `duration` or until
/// `max` connections; fails when connections keep failing.
pub fn measure(from: &NetNs, to: SocketAddr, duration: Duration, max: u64) -> anyhow::Result<ConnRate> {
    from.run_in(|| {
        let started = Instant::now();
        let (mut ok, mut failed) = (0u64, 0usize);
        while ok < max && started.elapsed() < duration {
            match exchange(to, EXCHANGE_TIMEOUT) {
                Ok(()) => ok += 1,
                Err(e) => {
                    failed += 1;
                    if failed >= MAX_FAILURES {
                        bail!("{failed} connections to {to} failed (last: {e}) after {ok} succeeded");
                    }
                }
            }
        }
        Ok(ConnRate { connections: ok, secs: started.elapsed().as_secs_f64() })
    })
    .with_context(|| format!("entering {}", from.name()))?
}
