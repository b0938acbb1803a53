//! Fuzz target: the HTTP/1.x request parser and path normaliser the kernel runs
//! (`ward_common::http`), against itself and against a reference parser (`httparse`).
//!
//! The first input byte picks where the rest is cut into segments. Whatever the bytes:
//! * parsing never panics and stays within its bounds;
//! * the segments give exactly the decisions the whole input gives (segmentation cannot
//!   change a verdict: the kernel sees whatever segments a client chooses);
//! * when the parser accepts a request head, httparse accepts the same bytes as a complete
//!   head with the same method, the same path as written (query cut off), the same version
//!   and the same header fields: Ward is never more lenient than the reference on the request
//!   line and headers;
//! * the normalised path is a fixed point of the normaliser (normalising it again gives it
//!   back), which is what rule paths are held to.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_common::http::parse::{Driven, Parser, drive};
use ward_common::http::path::{PathNorm, normalize};

/// What one request line and head looked like to Ward.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    method: Vec<u8>,
    seen: Vec<u8>,
    seen_cut: bool,
    path: Vec<u8>,
}

fn run(parts: &[&[u8]]) -> (Vec<Seen>, Vec<Seen>, Option<Driven>) {
    let mut p = Parser::NEW;
    let mut lines = Vec::new();
    let mut heads = Vec::new();
    let mut offset = 0;
    for part in parts {
        let d = drive(
            &mut p,
            part,
            |p| {
                lines.push(seen(p));
                true
            },
            |p| heads.push(seen(p)),
        );
        if let Driven::Denied { at, error } = d {
            return (lines, heads, Some(Driven::Denied { at: at + offset, error }));
        }
        offset += part.len();
    }
    (lines, heads, None)
}

fn seen(p: &Parser) -> Seen {
    Seen { method: p.method().to_vec(), seen: p.seen().to_vec(), seen_cut: p.seen_cut(), path: p.path().to_vec() }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else { return };
    // Cuts every `step` bytes, at least one segment.
    let step = (seed as usize % 17) + 1;
    let parts: Vec<&[u8]> = bytes.chunks(step).collect();
    let whole = run(&[bytes]);
    let cut = run(&parts);
    assert_eq!(whole, cut, "segments of {step} bytes changed the decisions");

    let (lines, heads, _) = &whole;
    for s in lines {
        let mut again = PathNorm::EMPTY;
        let n = normalize(&s.path, &mut again).expect("a normalised path normalises");
        assert_eq!(n, &s.path[..], "normalisation is idempotent");
    }

    // The first head Ward accepted, compared with httparse on the same bytes.
    let Some(first) = heads.first() else { return };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {
            assert_eq!(req.method.map(str::as_bytes), Some(&first.method[..]), "method");
            let path = req.path.expect("a complete request has a path");
            let raw = path.split('?').next().unwrap_or_default().as_bytes();
            if first.seen_cut {
                assert!(raw.starts_with(&first.seen), "path as seen");
            } else {
                assert_eq!(raw, &first.seen[..], "path as seen");
            }
            let mut norm = PathNorm::EMPTY;
            assert_eq!(normalize(raw, &mut norm).ok(), Some(&first.path[..]), "path normalised");
            assert!(matches!(req.version, Some(0 | 1)), "version");
        }
        // More header fields than the reference is given room for: nothing to compare.
        Err(httparse::Error::TooManyHeaders) => {}
        other => panic!("Ward accepted a request head httparse does not ({other:?}): {:?}", String::from_utf8_lossy(bytes)),
    }
});
