//! HTTP for the lab: the keep-alive server a pod runs on a port served with `http: true`
//! (every method and path answered `200` with the pod's name, as the conformance format's
//! HTTP extension says), and the client side of an HTTP probe (one request, byte for byte
//! as written, allowed when the `200` arrives).
//!
//! The server is deliberately simple and honest about framing (Content-Length and chunked
//! bodies are read, not guessed), so pipelined and kept-alive requests work; the tests that
//! need a real production server use nginx (`tests/tests/http.rs`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Longest request head the lab server reads.
const HEAD_MAX: usize = 64 * 1024;
/// How often an idle connection looks at the stop flag.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Longest an idle kept-alive connection stays open (bounded, like every lab server).
const IDLE_MAX: Duration = Duration::from_secs(120);

/// The request a probe sends: `method` and `path` (the request target, query included)
/// exactly as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
}

impl HttpRequest {
    pub fn new(method: &str, path: &str) -> Self {
        HttpRequest { method: method.into(), path: path.into() }
    }

    /// The request's bytes: request line as written, a Host header, no body.
    pub fn bytes(&self, host: &str) -> Vec<u8> {
        format!("{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ward-lab\r\n\r\n", self.method, self.path).into_bytes()
    }
}

/// Sends `req` on a new connection to `to` and returns the response's status line (or the
/// error: refused, reset, timed out). Used by probes from inside a pod.
pub fn request(to: SocketAddr, req: &HttpRequest, timeout: Duration) -> std::io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.write_all(&req.bytes(&to.ip().to_string()))?;
    let head = read_head(&mut stream, deadline)?;
    let text = String::from_utf8_lossy(&head);
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// Whether a status line is a `200`.
pub fn is_ok(status: &str) -> bool {
    let mut parts = status.split(' ');
    matches!(parts.next(), Some("HTTP/1.1" | "HTTP/1.0")) && parts.next() == Some("200")
}

/// Reads up to the end of a response head, within the deadline.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf)? {
            0 if head.is_empty() => {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed without a response"));
            }
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > HEAD_MAX {
            break;
        }
    }
    Ok(head)
}

/// Serves HTTP/1.1 on `listener` (non-blocking) until `stop`: one thread per connection,
/// each answering every request with `200` and `reply` as the body.
pub fn serve(listener: TcpListener, reply: &[u8], stop: &Arc<AtomicBool>) {
    let mut workers: Vec<thread::JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let (stop, reply) = (stop.clone(), reply.to_vec());
                if let Ok(h) =
                    thread::Builder::new().name("http-conn".into()).spawn(move || connection(conn, &reply, &stop))
                {
                    workers.push(h);
                }
                workers.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
    for h in workers {
        let _ = h.join();
    }
}

/// One kept-alive connection: requests in, `200`s out, until the client closes, asks to
/// close, sends what is not HTTP, or stays idle too long.
fn connection(mut conn: TcpStream, reply: &[u8], stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(IDLE_POLL));
    let _ = conn.set_nodelay(true);
    let mut pending: Vec<u8> = Vec::new();
    let mut idle_since = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        // Answer every complete request already received (pipelining).
        loop {
            match take_request(&mut pending) {
                Some(Ok(req)) => {
                    let body: &[u8] = if req.head { b"" } else { reply };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
                        reply.len(),
                        if req.close { "Connection: close\r\n" } else { "" }
                    );
                    if conn.write_all(resp.as_bytes()).and_then(|()| conn.write_all(body)).is_err() || req.close {
                        return;
                    }
                    idle_since = Instant::now();
                }
                Some(Err(())) => {
                    let _ =
                        conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                }
                None => break,
            }
        }
        if stop.load(Ordering::Relaxed) || idle_since.elapsed() > IDLE_MAX {
            return;
        }
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        if pending.len() > HEAD_MAX * 4 {
            return;
        }
    }
}

struct Received {
    head: bool,
    close: bool,
}

/// Removes one complete request (head and body) from the front of `pending`; `None` if it is
/// not all there yet, `Err` if it is not HTTP this server understands.
fn take_request(pending: &mut Vec<u8>) -> Option<Result<Received, ()>> {
    let end = pending.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let method = line.split(' ').next().unwrap_or_default();
    let mut length = 0usize;
    let mut chunked = false;
    let mut close = line.ends_with("HTTP/1.0");
    for l in lines {
        let Some((name, value)) = l.split_once(':') else { continue };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => match value.parse() {
                Ok(n) => length = n,
                Err(_) => return Some(Err(())),
            },
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body_end = if chunked {
        end + chunked_len(&pending[end..])?
    } else {
        if pending.len() < end + length {
            return None;
        }
        end + length
    };
    pending.drain(..body_end);
    Some(Ok(Received { head: method == "HEAD", close }))
}

/// Bytes of a complete chunked body (through its trailer section) at the start of `b`.
fn chunked_len(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[at..line_end]).trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let e = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
                let empty = e == at;
                at = e + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if b.len() < at {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_taken_whole_with_their_bodies_pipelined() {
        let mut p = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHEAD /x HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec();
        let mut got = Vec::new();
        while let Some(r) = take_request(&mut p) {
            let r = r.expect("valid");
            got.push((r.head, r.close));
        }
        assert_eq!(got, [(false, false), (false, false), (false, false), (true, true)]);
        assert!(p.is_empty());
        let mut partial = b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc".to_vec();
        assert!(take_request(&mut partial).is_none());
    }

    #[test]
    fn only_a_200_status_line_counts() {
        assert!(is_ok("HTTP/1.1 200 OK"));
        assert!(!is_ok("HTTP/1.1 403 Forbidden"));
        assert!(!is_ok("HTTP/1.1 2000"));
        assert!(!is_ok(""));
    }
}
