//! A long-lived TCP connection between two pods: a line-echo server in one pod and one
//! connection to it from another, opened once and kept. What tests use to show that an
//! established flow survives (or is cut) while policy changes. Bounded in time: the server
//! lives at most `ECHO_LIFETIME`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::NetNs;

/// A line-echo server inside one pod and one connection to it from another pod, opened once
/// and kept: what an established flow is. Sockets stay in the namespace they were made in,
/// so only their creation runs on a thread inside the pod.
pub struct Echo {
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
    client: TcpStream,
    seq: u32,
}

/// Longest the echo server waits for its one connection, and its whole life: bounded.
const ECHO_LIFETIME: Duration = Duration::from_secs(300);

impl Echo {
    pub fn open(server_ns: &NetNs, client_ns: &NetNs, to: SocketAddr) -> Echo {
        let listener = server_ns
            .run_in(|| TcpListener::bind(to))
            .unwrap_or_else(|e| panic!("entering the server pod: {e}"))
            .unwrap_or_else(|e| panic!("echo server on {to}: {e}"));
        listener.set_nonblocking(true).unwrap_or_else(|e| panic!("echo listener: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = stop.clone();
            thread::spawn(move || echo_serve(&listener, &stop))
        };
        let client = client_ns
            .run_in(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("entering the client pod: {e}"))
            .unwrap_or_else(|e| panic!("connecting to the echo server {to}: {e}"));
        client.set_read_timeout(Some(Duration::from_secs(1))).unwrap_or_else(|e| panic!("{e}"));
        Echo { stop, server: Some(server), client, seq: 0 }
    }

    /// Sends a line and reads its echo within the client's 1 s read timeout.
    pub fn exchange(&mut self) -> Result<Duration, String> {
        self.seq += 1;
        let line = format!("ping {}\n", self.seq);
        let started = Instant::now();
        self.client.write_all(line.as_bytes()).map_err(|e| format!("write: {e}"))?;
        let mut reply = String::new();
        let mut reader = BufReader::new(&self.client);
        match reader.read_line(&mut reply) {
            Ok(_) if reply == line => Ok(started.elapsed()),
            Ok(_) => Err(format!("echoed {reply:?}, sent {line:?}")),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(format!("no echo within 1 s ({e})"))
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

fn echo_serve(listener: &TcpListener, stop: &AtomicBool) {
    let end = Instant::now() + ECHO_LIFETIME;
    let mut conn = loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= end {
            return;
        }
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(10)),
            Err(_) => return,
        }
    };
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        match std::io::Read::read(&mut conn, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
