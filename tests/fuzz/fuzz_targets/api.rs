//! Fuzz target: the local API's messages and the server's framing.
//!
//! Any bytes, as a request line or a response: decoding gives a value or an error, never a
//! panic; a decoded value encodes and decodes back to itself (nothing changes on its way
//! between the CLI, the plugin and the agent). The server's framing, run on the same bytes as
//! a connection's stream, reads at most one line of at most `MAX_REQUEST_BYTES` and decodes
//! exactly that line.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ward_agent::api::proto::Response;
use ward_agent::api::server::{MAX_REQUEST_BYTES, RequestError, decode_request, read_request};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("a tokio runtime: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data) {
        let bytes = serde_json::to_vec(&req).unwrap_or_else(|e| panic!("encoding {req:?}: {e}"));
        let back = decode_request(&bytes).unwrap_or_else(|e| panic!("{req:?} encodes to what it cannot decode: {e}"));
        assert_eq!(back, req);
    }
    if let Ok(resp) = serde_json::from_slice::<Response>(data) {
        let bytes = serde_json::to_vec(&resp).unwrap_or_else(|e| panic!("encoding {resp:?}: {e}"));
        let back: Response =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{resp:?} encodes to what it cannot decode: {e}"));
        assert_eq!(back, resp);
    }

    // The framing: the first line (newline included), or everything up to EOF.
    let framed = runtime().block_on(read_request(data));
    let line = match data.iter().position(|b| *b == b'\n') {
        Some(i) => &data[..=i],
        None => data,
    };
    if line.len() as u64 > MAX_REQUEST_BYTES {
        assert!(matches!(framed, Err(RequestError::TooLarge)), "{} bytes: {framed:?}", line.len());
        return;
    }
    match (framed, decode_request(line)) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(RequestError::Decode(_)), Err(RequestError::Decode(_))) => {}
        (a, b) => panic!("the framing read {a:?}, the line decodes to {b:?}"),
    }
});
