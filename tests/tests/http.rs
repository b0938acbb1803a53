//! HTTP method and path rules, enforced in the kernel, against a real nginx in a server pod
//! and real clients (curl, and a raw socket for what curl will not send) in other pods.
//!
//! The lab: namespace `store`; `store/inventory` runs nginx on 8080 (every method and path
//! answered `200`, access log kept) and the lab's serve-hostname on 9090; `store/frontend`
//! and `store/cron` are clients. The policy (`POLICY`) admits from frontend only
//! `GET /v1/items/*`, any method on `/healthz` and `POST /v1/orders` on 8080, and all of 9090.
//!
//! A denied request must fail fast at the client (a reset well within the 1 s read timeout,
//! never a timeout) and must never reach nginx (its access log is checked).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_yaml::Value;
use ward_lab::nginx::Nginx;
use ward_lab::{Family, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, require_root};

const POLICY: &str = r#"
apiVersion: policy.ward.dev/v1alpha1
kind: WardNetworkPolicy
metadata: {name: inventory-http, namespace: store}
spec:
  podSelector: {matchLabels: {app: inventory}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: frontend}}}]
      ports:
        - port: 8080
          protocol: TCP
          http:
            - {method: GET, pathPrefix: /v1/items/}
            - {path: /healthz}
            - {method: POST, path: /v1/orders}
        - {port: 9090, protocol: TCP}
"#;

fn pref(s: &str) -> PodRef {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn policy(yaml: &str) -> Value {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("policy: {e}"))
}

/// The lab of the module docs, with nginx running and, if `with_policy`, the policy in force.
fn lab(with_policy: bool) -> (Node, Nginx) {
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("starting a lab node: {e}"));
    node.set_namespace("store", &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let pod = |name: &str, serves: Vec<Serve>| PodSpec {
        namespace: "store".into(),
        name: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into(),
        serves,
    };
    node.create_pods(&[
        pod("frontend", vec![]),
        pod("cron", vec![]),
        pod("inventory", vec![Serve::new(9090, Protocol::Tcp, None)]),
    ])
    .unwrap_or_else(|e| panic!("pods: {e}"));
    let nginx = Nginx::start(node.pod(&pref("store/inventory")).unwrap().netns(), 8080)
        .unwrap_or_else(|e| panic!("nginx: {e}"));
    if with_policy {
        apply(&mut node, POLICY);
    }
    (node, nginx)
}

fn apply(node: &mut Node, yaml: &str) {
    if let Err(e) = node.apply(&[policy(yaml)]) {
        panic!("applying: {e}; rejections {:?}", node.rejections());
    }
}

/// A raw client connection from a pod, for exact bytes, keep-alive and pipelining.
struct Client {
    stream: TcpStream,
    what: String,
    /// Bytes read past the last answer (pipelined responses).
    pending: Vec<u8>,
}

/// What came back for one request.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A complete response with this status code.
    Status(u16),
    /// The connection was reset (how a denied request ends).
    Reset,
    Other(String),
}

impl Client {
    fn open(node: &Node, from: &str, port: u16, family: Family) -> Client {
        let ip = node.pod_ip(&pref("store/inventory"), family).unwrap_or_else(|e| panic!("{e}"));
        let to = SocketAddr::new(ip, port);
        let stream = node
            .pod(&pref(from))
            .unwrap_or_else(|e| panic!("{e}"))
            .netns()
            .run_in(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{from} connecting to {to}: {e}"));
        stream.set_nodelay(true).unwrap_or_else(|e| panic!("{e}"));
        // One second: a denied request must be reset well within it.
        stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap_or_else(|e| panic!("{e}"));
        Client { stream, what: format!("{from} -> {to}"), pending: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("{}: sending: {e}", self.what);
        }
    }

    /// Reads one response (head, and a Content-Length body).
    fn answer(&mut self) -> Answer {
        let mut got = std::mem::take(&mut self.pending);
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    got.drain(..end + 4 + len);
                    self.pending = got;
                    return Answer::Status(status);
                }
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Answer::Other(format!("closed after {} bytes", got.len())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Answer::Reset,
                Err(e) => return Answer::Other(format!("{e}")),
            }
        }
    }

    /// Sends one request and reads its answer.
    fn ask(&mut self, bytes: &[u8]) -> Answer {
        self.send(bytes);
        self.answer()
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: inventory\r\n\r\n").into_bytes()
}

fn request(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: inventory\r\n\r\n").into_bytes()
}

/// `curl` from a pod: the HTTP status code, or curl's exit code when there was none.
fn curl(node: &Node, from: &str, method: &str, path: &str, family: Family) -> Result<u16, i32> {
    let ip = node.pod_ip(&pref("store/inventory"), family).unwrap_or_else(|e| panic!("{e}"));
    let url = match ip {
        std::net::IpAddr::V4(a) => format!("http://{a}:8080{path}"),
        std::net::IpAddr::V6(a) => format!("http://[{a}]:8080{path}"),
    };
    let ns = node.pod(&pref(from)).unwrap_or_else(|e| panic!("{e}")).netns().name().to_owned();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "curl", "-sS", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--max-time", "2"])
        // curl waits for a body after `-X HEAD`; `--head` is how it sends HEAD.
        .args(if method == "HEAD" { vec!["--head"] } else { vec!["-X", method] })
        .arg(&url)
        .output()
        .unwrap_or_else(|e| panic!("running curl (is it installed?): {e}"));
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)),
        Some(code) => Err(code),
        None => Err(-1),
    }
}

/// curl's exit code for "connection reset" (CURLE_RECV_ERROR).
const CURL_RECV_ERROR: i32 = 56;

fn logged(nginx: &Nginx, needle: &str) -> bool {
    nginx.access_log().lines().any(|l| l.contains(needle))
}

/// nginx writes its log line after it sent the response: wait (bounded) for `needles`, then
/// return the whole log.
fn log_with(nginx: &Nginx, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let log = nginx.access_log();
        if needles.iter().all(|n| log.contains(n)) || Instant::now() >= deadline {
            return log;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn curl_gets_200_for_allowed_requests_and_a_fast_reset_for_denied_ones_which_nginx_never_sees() {
    if !require_root("curl_gets_200_for_allowed_requests_and_a_fast_reset_for_denied_ones_which_nginx_never_sees") {
        return;
    }
    let (node, nginx) = lab(true);
    for (method, path) in [
        ("GET", "/v1/items/7"),
        ("GET", "/v1/items/7?fields=name"),
        ("HEAD", "/healthz"),
        ("DELETE", "/healthz"),
        ("POST", "/v1/orders"),
    ] {
        assert_eq!(curl(&node, "store/frontend", method, path, Family::IPv4), Ok(200), "{method} {path}");
    }
    for (method, path, why) in [
        ("GET", "/v1/admin", "no rule for the path"),
        ("PUT", "/v1/items/7", "method mismatch"),
        ("get", "/v1/items/7", "methods compare case-sensitively"),
        ("GET", "/v1/items", "prefix /v1/items/ needs the slash"),
        ("POST", "/v1/orders/1", "exact path"),
        ("GET", "/v1/items/../admin", "dot segments resolve before matching"),
    ] {
        let started = Instant::now();
        assert_eq!(
            curl(&node, "store/frontend", method, path, Family::IPv4),
            Err(CURL_RECV_ERROR),
            "{method} {path}: {why}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "{method} {path}: the reset took {:?}", started.elapsed());
    }
    // cron matches no peer of the HTTP rules: its connection is not even admitted.
    assert!(curl(&node, "store/cron", "GET", "/v1/items/7", Family::IPv4).is_err());
    let log = log_with(&nginx, &["GET /v1/items/7 HTTP/1.1", "POST /v1/orders HTTP/1.1"]);
    assert!(log.contains("GET /v1/items/7 HTTP/1.1"), "{log}");
    for never in ["/v1/admin", "PUT /v1/items/7", "get /v1/items/7", "/v1/items/../admin", "/v1/orders/1"] {
        assert!(!logged(&nginx, never), "nginx saw a denied request {never}:\n{}", nginx.access_log());
    }
    // Each decision is a flow record: method, path as seen and normalised, verdict, rule.
    let status = node.status().unwrap_or_else(|e| panic!("{e}"));
    let recent = status.raw["http_recent"].as_array().cloned().unwrap_or_default();
    let find =
        |path: &str, verdict: &str| recent.iter().find(|d| d["path"] == path && d["verdict"] == verdict).cloned();
    let allowed = find("/v1/items/7", "allowed").unwrap_or_else(|| panic!("no record of the allowed GET: {recent:?}"));
    assert_eq!(allowed["method"], "GET");
    assert_eq!(allowed["normalized"], "/v1/items/7");
    assert!(allowed["rule"].as_str().unwrap_or("").contains("store/inventory-http"), "{allowed}");
    let climbed =
        find("/v1/items/../admin", "denied").unwrap_or_else(|| panic!("no record of the dot request: {recent:?}"));
    assert_eq!((climbed["normalized"].as_str(), climbed["reason"].as_str()), (Some("/v1/admin"), Some("http_no_rule")));
    assert!(status.raw["http_counters"]["http_no_rule"].as_u64().unwrap_or(0) >= 6, "{}", status.raw["http_counters"]);
}

#[test]
fn keep_alive_and_pipelined_requests_are_each_judged() {
    if !require_root("keep_alive_and_pipelined_requests_are_each_judged") {
        return;
    }
    let (node, nginx) = lab(true);
    let mut c = Client::open(&node, "store/frontend", 8080, Family::IPv4);
    assert_eq!(c.ask(&get("/v1/items/1")), Answer::Status(200));
    assert_eq!(c.ask(&get("/healthz")), Answer::Status(200));
    // Two allowed requests in one write: two answers.
    c.send(&[get("/v1/items/2"), get("/v1/items/3")].concat());
    assert_eq!((c.answer(), c.answer()), (Answer::Status(200), Answer::Status(200)));
    // Then a denied one on the same kept-alive connection: reset.
    assert_eq!(c.ask(&get("/v1/admin/keepalive")), Answer::Reset);
    // A denied request pipelined behind an allowed one, in one segment: reset.
    let mut c = Client::open(&node, "store/frontend", 8080, Family::IPv4);
    c.send(&[get("/v1/items/4"), get("/v1/admin/pipelined")].concat());
    let first = c.answer();
    assert!(matches!(first, Answer::Reset | Answer::Status(200)), "{first:?}");
    if first == Answer::Status(200) {
        assert_eq!(c.answer(), Answer::Reset);
    }
    let log = log_with(&nginx, &["/v1/items/3", "/v1/items/4"]);
    assert!(log.contains("/v1/items/3"), "{log}");
    assert!(!log.contains("/v1/admin"), "nginx saw a denied request:\n{log}");
}

#[test]
fn bodies_that_look_like_requests_are_never_parsed_as_requests() {
    if !require_root("bodies_that_look_like_requests_are_never_parsed_as_requests") {
        return;
    }
    let (node, nginx) = lab(true);
    let smuggled = "GET /v1/admin/smuggled HTTP/1.1\r\nHost: inventory\r\n\r\n";
    let mut c = Client::open(&node, "store/frontend", 8080, Family::IPv4);
    let cl =
        format!("POST /v1/orders HTTP/1.1\r\nHost: inventory\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len());
    assert_eq!(c.ask(cl.as_bytes()), Answer::Status(200));
    let chunked = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: inventory\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    assert_eq!(c.ask(chunked.as_bytes()), Answer::Status(200));
    // The connection is still in step with the server: the next request is judged.
    assert_eq!(c.ask(&get("/v1/items/after-bodies")), Answer::Status(200));
    assert_eq!(c.ask(&get("/v1/admin/after-bodies")), Answer::Reset);
    let log = log_with(&nginx, &["/v1/items/after-bodies"]);
    assert_eq!(log.lines().filter(|l| l.contains("POST /v1/orders")).count(), 2, "{log}");
    assert!(!log.contains("/v1/admin"), "{log}");
}

#[test]
fn request_smuggling_shapes_are_reset_before_nginx_sees_them() {
    if !require_root("request_smuggling_shapes_are_reset_before_nginx_sees_them") {
        return;
    }
    let (node, nginx) = lab(true);
    let cases = [
        ("cl-and-te", "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"),
        ("two-cl", "Content-Length: 0\r\nContent-Length: 0\r\n"),
        ("cl-list", "Content-Length: 0, 0\r\n"),
        ("te-comma", "Transfer-Encoding: chunked,\r\n"),
        ("te-tab", "Transfer-Encoding:\tchunked\r\n"),
        ("te-case", "Transfer-Encoding: CHUNKED\r\n"),
        ("te-gzip", "Transfer-Encoding: gzip, chunked\r\n"),
        ("obs-fold", "X-Pad: a\r\n Transfer-Encoding: chunked\r\n"),
        ("space-colon", "Transfer-Encoding : chunked\r\n"),
        ("bare-lf", "X-Pad: a\nTransfer-Encoding: chunked\r\n"),
    ];
    for (name, headers) in cases {
        let mut c = Client::open(&node, "store/frontend", 8080, Family::IPv4);
        let req = format!("POST /v1/orders?case={name} HTTP/1.1\r\nHost: inventory\r\n{headers}\r\n0\r\n\r\n");
        assert_eq!(c.ask(req.as_bytes()), Answer::Reset, "{name}");
    }
    let log = nginx.access_log();
    assert!(!log.contains("case="), "nginx saw a smuggling shape:\n{log}");
}

#[test]
fn what_is_not_http1_on_the_port_is_reset() {
    if !require_root("what_is_not_http1_on_the_port_is_reset") {
        return;
    }
    let (node, nginx) = lab(true);
    let tls_hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec();
    let cases: [(&str, Vec<u8>); 6] = [
        ("tls", tls_hello),
        ("h2c-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        (
            "websocket",
            b"GET /v1/items/ws HTTP/1.1\r\nHost: inventory\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(),
        ),
        ("h2c-upgrade", b"GET /v1/items/h2c HTTP/1.1\r\nHost: inventory\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n".to_vec()),
        ("random", (0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect()),
        ("absolute-form", b"GET http://inventory/v1/items/7 HTTP/1.1\r\nHost: inventory\r\n\r\n".to_vec()),
    ];
    for (name, bytes) in &cases {
        let mut c = Client::open(&node, "store/frontend", 8080, Family::IPv4);
        assert_eq!(c.ask(bytes), Answer::Reset, "{name}");
    }
    assert!(nginx.access_log().is_empty(), "nginx saw:\n{}", nginx.access_log());
}

/// Every row of the normalisation table (README, "HTTP rules"), as nginx gets it or not. The
/// rule is `GET /v1/items/*`.
#[test]
fn every_normalisation_row_decides_as_the_table_says() {
    if !require_root("every_normalisation_row_decides_as_the_table_says") {
        return;
    }
    let (node, nginx) = lab(true);
    let rows: [(&str, bool); 22] = [
        ("/v1/items/%00x", false),
        ("/v1/items/%01x", false),
        ("/v1/items/%zz", false),
        ("/v1/items/%c0%ae%c0%ae/admin", false),
        ("/v1/items/caf%c3%a9", true),
        ("/v1/%69tems/7", true),
        ("/v1/items%2F7", false),
        ("/v1/items/..%2Fadmin", false),
        ("/v1/items/..%5Cadmin", false),
        ("/v1/items/..\\admin", false),
        ("/v1/items/%252e%252e/admin", true),
        ("/v1/items;x=1/7", false),
        ("/v1/items/7;jsessionid=1", false),
        ("//v1//items//7", true),
        ("/v1/items/./7", true),
        ("/v1/items/../admin", false),
        ("/v1/items/%2e%2e/admin", false),
        ("/v1/x/../items/7", true),
        ("/../v1/items/7", false),
        ("/v1/items/7?next=../../admin", true),
        ("/v1/items/7#frag", false),
        ("/v1/items/a\x01b", false),
    ];
    let mut wrong = Vec::new();
    let log_before = nginx.access_log();
    for (target, allowed) in rows {
        let mut c = Client::open(&node, "store/frontend", 8080, Family::IPv4);
        let got = c.ask(&get(target));
        let want = if allowed { Answer::Status(200) } else { Answer::Reset };
        if got != want {
            wrong.push(format!("{target:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "rows decided wrong:\n  {}\nnginx log:\n{}", wrong.join("\n  "), nginx.access_log());
    let log = log_with(&nginx, &["?next="]);
    assert!(log_before.is_empty());
    assert_eq!(
        log.lines().count(),
        rows.iter().filter(|(_, allowed)| *allowed).count(),
        "only the allowed rows reach nginx:\n{log}"
    );
}

#[test]
fn a_request_line_split_across_segments_is_judged_whole_up_to_the_head_bound() {
    if !require_root("a_request_line_split_across_segments_is_judged_whole_up_to_the_head_bound") {
        return;
    }
    let (node, nginx) = lab(true);
    let split = |parts: &[&[u8]]| {
        let mut c = Client::open(&node, "store/frontend", 8080, Family::IPv4);
        for p in parts {
            c.send(p);
            // TCP_NODELAY and a pause: each part leaves as its own segment.
            thread::sleep(Duration::from_millis(30));
        }
        c.answer()
    };
    assert_eq!(split(&[b"GET /v1/it", b"ems/split HTTP/1.1\r\nHo", b"st: inventory\r\n\r\n"]), Answer::Status(200));
    assert_eq!(split(&[b"GET /v1/it", b"ems/../admin/split HTTP/1.1\r\nHost: inventory\r\n\r\n"]), Answer::Reset);
    assert_eq!(split(&[b"G", b"E", b"T", b" ", b"/v1/admin/bytewise HTTP/1.1\r\n"]), Answer::Reset);
    // A head longer than the bound (8 KiB) is refused, whatever its segments. Its request line
    // was allowed and went on, so nginx saw an incomplete head (and logs a 400): it never
    // served the request.
    let pad = "a".repeat(9000);
    let long = format!("GET /v1/items/long HTTP/1.1\r\nHost: inventory\r\nX-Pad: {pad}\r\n\r\n");
    let (a, b) = long.as_bytes().split_at(4000);
    assert_eq!(split(&[a, b]), Answer::Reset);
    let log = log_with(&nginx, &["/v1/items/split"]);
    assert!(log.contains("\"GET /v1/items/split HTTP/1.1\" 200"), "{log}");
    assert!(!log.contains("admin") && !log.contains("/v1/items/long HTTP/1.1\" 200"), "{log}");
    let status = node.status().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.raw["http_counters"]["http_held"].as_u64().unwrap_or(0) >= 1, "{}", status.raw["http_counters"]);
}

#[test]
fn http_rules_on_one_port_leave_other_ports_to_l4_rules() {
    if !require_root("http_rules_on_one_port_leave_other_ports_to_l4_rules") {
        return;
    }
    let (node, _nginx) = lab(true);
    let probe =
        |from: &str, port: u16| node.probe(&pref(from), &pref("store/inventory"), port, Protocol::Tcp, Family::IPv4);
    // 9090 is plain L4: any bytes from frontend, nothing from cron (dropped at L4).
    assert_eq!(probe("store/frontend", 9090).map(|o| o.connected()).ok(), Some(true));
    let cron = probe("store/cron", 9090).unwrap_or_else(|e| panic!("{e}"));
    assert!(!cron.connected(), "{cron}");
    let mut c = Client::open(&node, "store/frontend", 9090, Family::IPv4);
    c.send(b"\x16\x03\x01 not http at all\n");
    let mut buf = [0u8; 64];
    let n = c.stream.read(&mut buf).unwrap_or_else(|e| panic!("9090 must answer anything: {e}"));
    assert_eq!(&buf[..n], b"inventory\n");
}

#[test]
fn rules_changed_under_a_live_connection_judge_its_next_request() {
    if !require_root("rules_changed_under_a_live_connection_judge_its_next_request") {
        return;
    }
    let (mut node, nginx) = lab(true);
    let mut kept = Client::open(&node, "store/frontend", 8080, Family::IPv4);
    assert_eq!(kept.ask(&get("/v1/items/before")), Answer::Status(200));
    assert_eq!(kept.ask(&request("PUT", "/v1/reports/before")), Answer::Reset);
    let mut live = Client::open(&node, "store/frontend", 8080, Family::IPv4);
    assert_eq!(live.ask(&get("/v1/items/before2")), Answer::Status(200));
    // New rules: items are gone, reports admitted.
    apply(
        &mut node,
        &POLICY.replace("{method: GET, pathPrefix: /v1/items/}", "{method: PUT, pathPrefix: /v1/reports/}"),
    );
    assert_eq!(
        live.ask(&request("PUT", "/v1/reports/after")),
        Answer::Status(200),
        "the new rule admits on the live connection"
    );
    assert_eq!(live.ask(&get("/v1/items/after")), Answer::Reset, "the old rule no longer admits");
    let log = log_with(&nginx, &["/v1/reports/after"]);
    assert!(log.contains("/v1/reports/after") && !log.contains("/v1/items/after"), "{log}");
}

#[test]
fn a_connection_opened_before_http_rules_applied_is_reset_on_its_next_request() {
    if !require_root("a_connection_opened_before_http_rules_applied_is_reset_on_its_next_request") {
        return;
    }
    let (mut node, nginx) = lab(false);
    let mut early = Client::open(&node, "store/frontend", 8080, Family::IPv4);
    assert_eq!(early.ask(&get("/v1/admin/before-rules")), Answer::Status(200), "no policy yet");
    apply(&mut node, POLICY);
    // Where its next request starts is unknown to the datapath (it saw none of the earlier
    // bytes), so even an allowed request is not trusted: reset.
    assert_eq!(early.ask(&get("/v1/items/after-rules")), Answer::Reset);
    let mut fresh = Client::open(&node, "store/frontend", 8080, Family::IPv4);
    assert_eq!(fresh.ask(&get("/v1/items/fresh")), Answer::Status(200));
    let status = node.status().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.raw["http_counters"]["http_untracked"].as_u64().unwrap_or(0) >= 1,
        "{}",
        status.raw["http_counters"]
    );
    assert!(!nginx.access_log().contains("/v1/items/after-rules"));
}

#[test]
fn a_plain_allow_for_the_same_peer_and_port_moots_the_http_rules_and_status_says_so() {
    if !require_root("a_plain_allow_for_the_same_peer_and_port_moots_the_http_rules_and_status_says_so") {
        return;
    }
    let (mut node, _nginx) = lab(true);
    apply(
        &mut node,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open-8080, namespace: store}\nspec:\n  podSelector: {matchLabels: {app: inventory}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: frontend}}}], ports: [{port: 8080}]}]\n",
    );
    assert_eq!(curl(&node, "store/frontend", "DELETE", "/v1/admin", Family::IPv4), Ok(200));
    let status = node.status().unwrap_or_else(|e| panic!("{e}"));
    let warnings = status.raw["http_warnings"].to_string();
    assert!(warnings.contains("moot") && warnings.contains("store/open-8080"), "{warnings}");
}

#[test]
fn http_rules_hold_over_ipv6() {
    if !require_root("http_rules_hold_over_ipv6") {
        return;
    }
    let (node, nginx) = lab(true);
    assert_eq!(curl(&node, "store/frontend", "GET", "/v1/items/v6", Family::IPv6), Ok(200));
    let mut c = Client::open(&node, "store/frontend", 8080, Family::IPv6);
    assert_eq!(c.ask(&get("/v1/items/v6-raw")), Answer::Status(200));
    assert_eq!(c.ask(&get("/v1/admin/v6")), Answer::Reset);
    let log = log_with(&nginx, &["/v1/items/v6-raw"]);
    assert!(log.contains("/v1/items/v6-raw") && !log.contains("/v1/admin"), "{log}");
}

#[test]
fn ward_policy_explain_judges_a_request_with_the_datapath_s_rules() {
    if !require_root("ward_policy_explain_judges_a_request_with_the_datapath_s_rules") {
        return;
    }
    let (node, _nginx) = lab(true);
    let explain = |method: &str, path: &str| {
        let out = Command::new(&node.binaries().cli)
            .arg("--socket")
            .arg(node.socket())
            .args(["policy", "explain", "--from", "store/frontend", "--to", "store/inventory", "--port", "8080"])
            .args(["--http-method", method, "--http-path", path])
            .output()
            .unwrap_or_else(|e| panic!("running ward: {e}"));
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, text) = explain("GET", "/v1/items/../admin");
    assert!(ok, "{text}");
    assert!(
        text.contains("DENIED") && text.contains("path as matched: /v1/admin") && text.contains("no HTTP rule matches"),
        "{text}"
    );
    let (_, text) = explain("GET", "/v1/items/7?x=1");
    assert!(text.contains("request GET /v1/items/7?x=1: ALLOWED") && text.contains("store/inventory-http"), "{text}");
    let (_, text) = explain("GET", "/v1/items%2F7");
    assert!(text.contains("refused before matching: encoded_slash_or_backslash"), "{text}");
}
