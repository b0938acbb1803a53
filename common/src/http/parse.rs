//! The HTTP/1.x request parser: a byte-at-a-time state machine over a connection's client
//! bytes, so a request line or a header split across any number of TCP segments is parsed
//! exactly as if it arrived whole, and pipelined requests follow one another on one state.
//! Bodies are not fed byte by byte: [`Parser::skip`] steps over them by count, with the
//! framing tracked exactly (Content-Length, or chunked transfer coding with its chunk-size
//! lines parsed), so body bytes are never read as a request.
//!
//! Strict where request smuggling lives (RFC 9112 §6, §7): a request with both
//! Content-Length and Transfer-Encoding, a repeated or malformed Content-Length, any
//! Transfer-Encoding but exactly `chunked`, a tab in it, obs-fold, whitespace before a
//! colon, a bare CR or LF, chunk extensions, an Upgrade, is refused. The bounds
//! ([`HEAD_MAX`], [`TARGET_MAX`], [`METHOD_MAX`], [`crate::http::path::PATH_MAX`]) are
//! refusals too: past them nothing is guessed.
//!
//! The kernel keeps a [`Parser`] per connection in its state map; user space drives it with
//! [`drive`]. Same code, same answers.

use super::path::{Error, PathNorm};

/// Longest method compared (and accepted).
pub const METHOD_MAX: usize = 16;
/// Bytes of the raw path (as the client sent it, without the query) kept for flow records.
pub const SEEN_MAX: usize = 128;
/// Longest request head (request line and header fields, also a trailer section) accepted.
pub const HEAD_MAX: u32 = 8192;
/// Longest request target (path and query) accepted.
pub const TARGET_MAX: u32 = 4096;

const _: () = assert!(METHOD_MAX.is_power_of_two() && SEEN_MAX.is_power_of_two());

/// What a byte completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    More,
    /// The request line is complete: [`Parser::method`] and [`Parser::path`] are final.
    /// The caller decides the request now.
    Line,
    /// The request head is complete and its framing known.
    Head,
}

// Phases (`Parser::phase`).
const LINE_START: u8 = 0;
const LEAD_LF: u8 = 1;
const METHOD: u8 = 2;
const TARGET: u8 = 3;
const PATH: u8 = 4;
const QUERY: u8 = 5;
const VERSION: u8 = 6;
const LINE_LF: u8 = 7;
const FIELD_START: u8 = 8;
const FIELD_NAME: u8 = 9;
const FIELD_OWS: u8 = 10;
const FIELD_VALUE: u8 = 11;
const FIELD_LF: u8 = 12;
const HEAD_LF: u8 = 13;
const BODY: u8 = 14;
const CHUNK_SIZE: u8 = 15;
const CHUNK_SIZE_LF: u8 = 16;
const CHUNK_DATA: u8 = 17;
const CHUNK_DATA_CR: u8 = 18;
const CHUNK_DATA_LF: u8 = 19;

// Request flags (`Parser::flags`).
const F_CONTENT_LENGTH: u8 = 1;
const F_CHUNKED: u8 = 2;
const F_HOST: u8 = 4;
const F_UPGRADE: u8 = 8;
const F_HTTP10: u8 = 16;
const F_TRAILER: u8 = 32;
/// `seen` holds only the first [`SEEN_MAX`] bytes of the path.
pub const F_SEEN_CUT: u8 = 64;

// Header fields the parser cares about (`Parser::field`), and their names.
const FIELD_OTHER: u8 = 0;
const FIELD_CONTENT_LENGTH: u8 = 1;
const FIELD_TRANSFER_ENCODING: u8 = 2;
const FIELD_HOST: u8 = 3;
const FIELD_UPGRADE: u8 = 4;
const NAMES: [&[u8]; 4] = [b"content-length", b"transfer-encoding", b"host", b"upgrade"];
const CHUNKED: &[u8; 7] = b"chunked";
const VERSION_PREFIX: &[u8; 7] = b"HTTP/1.";
/// More digits than this in a Content-Length is refused (it would not fit the counters).
const MAX_DECIMAL_DIGITS: u8 = 18;
const MAX_HEX_DIGITS: u8 = 15;

/// RFC 9110 `tchar`.
#[inline(always)]
pub const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

/// The parse state of one connection's client-to-server bytes. `#[repr(C)]` with explicit
/// padding: it lives in the kernel's per-connection map value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parser {
    pub phase: u8,
    pub flags: u8,
    pub method_len: u8,
    /// Which known header the current field line is (`FIELD_*`).
    pub field: u8,
    /// Known names the current field name can still be (bit per entry of `NAMES`).
    pub cand: u8,
    pub name_len: u8,
    /// Position in the token being matched (`HTTP/1.x`, `chunked`).
    pub tok: u8,
    /// Percent-decoding state in the query (1 after `%`, 2 after one hex digit).
    pub qpct: u8,
    pub digits: u8,
    /// 0 before a known field's value, 1 inside it, 2 in whitespace after it.
    pub value_state: u8,
    pub seen_len: u8,
    pub _pad: [u8; 5],
    pub head_bytes: u32,
    pub target_bytes: u32,
    /// The Content-Length or chunk size being read.
    pub num: u64,
    /// Body (or chunk data) bytes still to step over.
    pub body_left: u64,
    pub method: [u8; METHOD_MAX],
    pub seen: [u8; SEEN_MAX],
    pub path: PathNorm,
}

const _: () = assert!(core::mem::size_of::<Parser>() == 40 + METHOD_MAX + SEEN_MAX + core::mem::size_of::<PathNorm>());

impl Parser {
    /// A connection before its first byte.
    pub const NEW: Parser = Parser {
        phase: LINE_START,
        flags: 0,
        method_len: 0,
        field: 0,
        cand: 0,
        name_len: 0,
        tok: 0,
        qpct: 0,
        digits: 0,
        value_state: 0,
        seen_len: 0,
        _pad: [0; 5],
        head_bytes: 0,
        target_bytes: 0,
        num: 0,
        body_left: 0,
        method: [0; METHOD_MAX],
        seen: [0; SEEN_MAX],
        path: PathNorm::EMPTY,
    };

    /// Back to [`Parser::NEW`]'s meaning without rewriting the byte arrays (whose contents
    /// count only up to their lengths, and `method` is cleared at each request): cheap in
    /// the kernel, where the state lives in a map value.
    #[inline(always)]
    pub fn reset(&mut self) {
        self.phase = LINE_START;
        self.flags = 0;
        self.method_len = 0;
        self.field = FIELD_OTHER;
        self.cand = 0;
        self.name_len = 0;
        self.tok = 0;
        self.qpct = 0;
        self.digits = 0;
        self.value_state = 0;
        self.seen_len = 0;
        self.head_bytes = 0;
        self.target_bytes = 0;
        self.num = 0;
        self.body_left = 0;
        self.path.len = 0;
        self.path.seg_start = 0;
    }

    /// The method of the current request (complete once [`Step::Line`] was returned).
    pub fn method(&self) -> &[u8] {
        &self.method[..(self.method_len as usize).min(METHOD_MAX)]
    }

    /// The normalised path of the current request (complete at [`Step::Line`]).
    pub fn path(&self) -> &[u8] {
        self.path.as_bytes()
    }

    /// The path as the client wrote it, without the query (at most [`SEEN_MAX`] bytes;
    /// [`Parser::seen_cut`] says whether it was longer).
    pub fn seen(&self) -> &[u8] {
        &self.seen[..(self.seen_len as usize).min(SEEN_MAX)]
    }

    pub fn seen_cut(&self) -> bool {
        self.flags & F_SEEN_CUT != 0
    }

    /// Between requests: no head, body or chunk is half read.
    pub fn at_boundary(&self) -> bool {
        self.phase == LINE_START
    }

    /// Inside a request line: its method and path are not decided yet.
    pub fn in_request_line(&self) -> bool {
        matches!(self.phase, METHOD | TARGET | PATH | QUERY | VERSION | LINE_LF)
    }

    /// In a body or chunk: the caller steps over bytes with [`Parser::skip`].
    #[inline(always)]
    pub fn in_body(&self) -> bool {
        self.phase == BODY || self.phase == CHUNK_DATA
    }

    /// Steps over up to `avail` body bytes; returns how many it took (0 unless in a body).
    #[inline(always)]
    pub fn skip(&mut self, avail: u64) -> u64 {
        if !self.in_body() {
            return 0;
        }
        let n = if avail < self.body_left { avail } else { self.body_left };
        self.body_left -= n;
        if self.body_left == 0 {
            self.phase = if self.phase == BODY { LINE_START } else { CHUNK_DATA_CR };
        }
        n
    }

    #[inline(always)]
    fn count_head(&mut self) -> Result<(), Error> {
        self.head_bytes += 1;
        if self.head_bytes > HEAD_MAX { Err(Error::HeadTooLong) } else { Ok(()) }
    }

    #[inline(always)]
    fn begin_request(&mut self) {
        self.flags = 0;
        self.method_len = 0;
        // Zero-padded, so a method compares as one value (`rules::match_request`).
        self.method = [0; METHOD_MAX];
        self.field = FIELD_OTHER;
        self.seen_len = 0;
        self.head_bytes = 0;
        self.target_bytes = 0;
        self.body_left = 0;
        self.tok = 0;
    }

    #[inline(always)]
    fn is_connect(&self) -> bool {
        self.method_len == 7 && self.method[..7] == *b"CONNECT"
    }

    #[inline(always)]
    fn keep_seen(&mut self, b: u8) {
        let n = self.seen_len as usize;
        if n < SEEN_MAX {
            self.seen[n & (SEEN_MAX - 1)] = b;
            self.seen_len += 1;
        } else {
            self.flags |= F_SEEN_CUT;
        }
    }

    /// One client byte outside a body.
    #[inline(always)]
    pub fn feed(&mut self, b: u8) -> Result<Step, Error> {
        match self.phase {
            LINE_START => {
                // Empty lines before a request line are ignored (RFC 9112 §2.2).
                if b == b'\r' {
                    self.phase = LEAD_LF;
                    return Ok(Step::More);
                }
                if b == b'\n' {
                    return Err(Error::BareLf);
                }
                self.begin_request();
                self.phase = METHOD;
                self.count_head()?;
                self.method_byte(b)
            }
            LEAD_LF => {
                if b != b'\n' {
                    return Err(Error::BareCr);
                }
                self.phase = LINE_START;
                Ok(Step::More)
            }
            BODY | CHUNK_DATA => {
                self.skip(1);
                Ok(Step::More)
            }
            CHUNK_SIZE => self.chunk_size_byte(b),
            CHUNK_SIZE_LF => {
                if b != b'\n' {
                    return Err(Error::BareCr);
                }
                if self.num == 0 {
                    // The last chunk: a trailer section follows, parsed as header fields
                    // without meaning, up to its empty line.
                    self.flags |= F_TRAILER;
                    self.head_bytes = 0;
                    self.phase = FIELD_START;
                } else {
                    self.body_left = self.num;
                    self.phase = CHUNK_DATA;
                }
                Ok(Step::More)
            }
            CHUNK_DATA_CR => {
                if b != b'\r' {
                    return Err(Error::BadChunkEnd);
                }
                self.phase = CHUNK_DATA_LF;
                Ok(Step::More)
            }
            CHUNK_DATA_LF => {
                if b != b'\n' {
                    return Err(Error::BadChunkEnd);
                }
                self.phase = CHUNK_SIZE;
                self.digits = 0;
                self.num = 0;
                Ok(Step::More)
            }
            _ => {
                self.count_head()?;
                self.head_byte(b)
            }
        }
    }

    #[inline(always)]
    fn method_byte(&mut self, b: u8) -> Result<Step, Error> {
        if b == b' ' {
            if self.method_len == 0 {
                return Err(Error::BadMethod);
            }
            self.phase = TARGET;
            return Ok(Step::More);
        }
        if !is_tchar(b) {
            return Err(Error::BadMethod);
        }
        let n = self.method_len as usize;
        if n >= METHOD_MAX {
            return Err(Error::MethodTooLong);
        }
        self.method[n & (METHOD_MAX - 1)] = b;
        self.method_len += 1;
        Ok(Step::More)
    }

    #[inline(always)]
    fn head_byte(&mut self, b: u8) -> Result<Step, Error> {
        match self.phase {
            METHOD => self.method_byte(b),
            TARGET => {
                self.target_bytes = 1;
                if self.is_connect() {
                    return Err(Error::AuthorityForm);
                }
                match b {
                    b'/' => {
                        self.path.start();
                        self.keep_seen(b);
                        self.phase = PATH;
                        Ok(Step::More)
                    }
                    b'*' => Err(Error::AsteriskForm),
                    _ if b.is_ascii_alphabetic() => Err(Error::AbsoluteForm),
                    _ => Err(Error::BadTarget),
                }
            }
            PATH | QUERY => {
                if b == b' ' {
                    if self.phase == PATH {
                        self.path.finish()?;
                    } else if self.qpct != 0 {
                        return Err(Error::BadPercent);
                    }
                    self.phase = VERSION;
                    self.tok = 0;
                    return Ok(Step::More);
                }
                self.target_bytes += 1;
                if self.target_bytes > TARGET_MAX {
                    return Err(Error::TargetTooLong);
                }
                if self.phase == PATH {
                    if b == b'?' {
                        self.path.finish()?;
                        self.phase = QUERY;
                        self.qpct = 0;
                        return Ok(Step::More);
                    }
                    self.keep_seen(b);
                    self.path.push(b)?;
                    return Ok(Step::More);
                }
                self.query_byte(b)
            }
            VERSION => {
                let t = self.tok as usize;
                if t < VERSION_PREFIX.len() {
                    if b != VERSION_PREFIX[t] {
                        return Err(Error::BadVersion);
                    }
                } else if t == VERSION_PREFIX.len() {
                    match b {
                        b'1' => {}
                        b'0' => self.flags |= F_HTTP10,
                        _ => return Err(Error::BadVersion),
                    }
                } else {
                    return match b {
                        b'\r' => {
                            self.phase = LINE_LF;
                            Ok(Step::More)
                        }
                        b'\n' => Err(Error::BareLf),
                        _ => Err(Error::BadVersion),
                    };
                }
                self.tok += 1;
                Ok(Step::More)
            }
            LINE_LF => {
                if b != b'\n' {
                    return Err(Error::BareCr);
                }
                self.phase = FIELD_START;
                Ok(Step::Line)
            }
            FIELD_START => match b {
                b'\r' => {
                    self.phase = HEAD_LF;
                    Ok(Step::More)
                }
                b'\n' => Err(Error::BareLf),
                b' ' | b'\t' => Err(Error::ObsFold),
                _ if is_tchar(b) => {
                    self.cand = if self.flags & F_TRAILER != 0 { 0 } else { 0b1111 };
                    self.name_len = 0;
                    self.phase = FIELD_NAME;
                    self.name_byte(b);
                    Ok(Step::More)
                }
                _ => Err(Error::BadHeaderName),
            },
            FIELD_NAME => match b {
                b':' => {
                    self.end_name()?;
                    self.phase = FIELD_OWS;
                    Ok(Step::More)
                }
                b' ' | b'\t' => Err(Error::SpaceBeforeColon),
                _ if is_tchar(b) => {
                    self.name_byte(b);
                    Ok(Step::More)
                }
                _ => Err(Error::BadHeaderName),
            },
            FIELD_OWS => match b {
                b' ' => Ok(Step::More),
                b'\t' if self.field == FIELD_TRANSFER_ENCODING => Err(Error::BadTransferEncoding),
                b'\t' => Ok(Step::More),
                _ => {
                    self.phase = FIELD_VALUE;
                    self.value_byte(b)
                }
            },
            FIELD_VALUE => self.value_byte(b),
            FIELD_LF => {
                if b != b'\n' {
                    return Err(Error::BareCr);
                }
                self.end_field()?;
                self.phase = FIELD_START;
                Ok(Step::More)
            }
            HEAD_LF => {
                if b != b'\n' {
                    return Err(Error::BareCr);
                }
                self.end_head()
            }
            _ => Err(Error::BadTarget),
        }
    }

    #[inline(always)]
    fn query_byte(&mut self, b: u8) -> Result<Step, Error> {
        if self.qpct != 0 {
            if super::path::hex_value(b).is_none() {
                return Err(Error::BadPercent);
            }
            self.qpct = if self.qpct == 1 { 2 } else { 0 };
            return Ok(Step::More);
        }
        match b {
            b'%' => {
                self.qpct = 1;
                Ok(Step::More)
            }
            b'#' => Err(Error::Fragment),
            0..=0x1f | 0x7f => Err(Error::ControlByte),
            0x80.. => Err(Error::NonAscii),
            _ => Ok(Step::More),
        }
    }

    #[inline(always)]
    fn name_byte(&mut self, b: u8) {
        let i = self.name_len as usize;
        let lower = b.to_ascii_lowercase();
        let mut k = 0;
        while k < NAMES.len() {
            let bit = 1u8 << k;
            if self.cand & bit != 0 && NAMES[k].get(i) != Some(&lower) {
                self.cand &= !bit;
            }
            k += 1;
        }
        self.name_len = self.name_len.saturating_add(1);
    }

    #[inline(always)]
    fn end_name(&mut self) -> Result<(), Error> {
        self.field = FIELD_OTHER;
        let mut k = 0;
        while k < NAMES.len() {
            if self.cand & (1u8 << k) != 0 && NAMES[k].len() == self.name_len as usize {
                self.field = k as u8 + 1;
            }
            k += 1;
        }
        self.value_state = 0;
        self.digits = 0;
        self.num = 0;
        self.tok = 0;
        let (bit, repeated) = match self.field {
            FIELD_CONTENT_LENGTH => (F_CONTENT_LENGTH, Error::RepeatedContentLength),
            FIELD_TRANSFER_ENCODING => (F_CHUNKED, Error::RepeatedTransferEncoding),
            FIELD_HOST => (F_HOST, Error::RepeatedHost),
            FIELD_UPGRADE => (F_UPGRADE, Error::Upgrade),
            _ => return Ok(()),
        };
        if self.flags & bit != 0 {
            return Err(repeated);
        }
        self.flags |= bit;
        Ok(())
    }

    #[inline(always)]
    fn value_byte(&mut self, b: u8) -> Result<Step, Error> {
        match b {
            b'\r' => {
                self.phase = FIELD_LF;
                return Ok(Step::More);
            }
            b'\n' => return Err(Error::BareLf),
            b'\t' if self.field == FIELD_TRANSFER_ENCODING => return Err(Error::BadTransferEncoding),
            b' ' | b'\t' => {
                if self.value_state == 1 {
                    self.value_state = 2;
                }
                return Ok(Step::More);
            }
            0..=0x1f | 0x7f => return Err(Error::BadHeaderValue),
            _ => {}
        }
        match self.field {
            FIELD_CONTENT_LENGTH => {
                if self.value_state == 2 || !b.is_ascii_digit() || self.digits >= MAX_DECIMAL_DIGITS {
                    return Err(Error::BadContentLength);
                }
                self.num = self.num * 10 + (b - b'0') as u64;
                self.digits += 1;
                self.value_state = 1;
            }
            FIELD_TRANSFER_ENCODING => {
                let t = self.tok as usize;
                if self.value_state == 2 || t >= CHUNKED.len() || CHUNKED[t] != b {
                    return Err(Error::BadTransferEncoding);
                }
                self.tok += 1;
                self.value_state = 1;
            }
            _ => {}
        }
        Ok(Step::More)
    }

    #[inline(always)]
    fn end_field(&mut self) -> Result<(), Error> {
        match self.field {
            FIELD_CONTENT_LENGTH if self.digits == 0 => Err(Error::BadContentLength),
            FIELD_CONTENT_LENGTH => {
                self.body_left = self.num;
                Ok(())
            }
            FIELD_TRANSFER_ENCODING if self.tok as usize != CHUNKED.len() => Err(Error::BadTransferEncoding),
            _ => Ok(()),
        }
    }

    #[inline(always)]
    fn end_head(&mut self) -> Result<Step, Error> {
        if self.flags & F_TRAILER != 0 {
            // The end of a chunked body's trailer section: the request is complete.
            self.phase = LINE_START;
            return Ok(Step::More);
        }
        let f = self.flags;
        if f & F_CONTENT_LENGTH != 0 && f & F_CHUNKED != 0 {
            return Err(Error::ContentLengthAndChunked);
        }
        if f & F_CHUNKED != 0 && f & F_HTTP10 != 0 {
            return Err(Error::ChunkedInHttp10);
        }
        if f & F_UPGRADE != 0 {
            return Err(Error::Upgrade);
        }
        if f & F_HOST == 0 && f & F_HTTP10 == 0 {
            return Err(Error::MissingHost);
        }
        self.phase = if f & F_CHUNKED != 0 {
            self.digits = 0;
            self.num = 0;
            CHUNK_SIZE
        } else if self.body_left > 0 {
            BODY
        } else {
            LINE_START
        };
        Ok(Step::Head)
    }

    #[inline(always)]
    fn chunk_size_byte(&mut self, b: u8) -> Result<Step, Error> {
        match b {
            b'\r' => {
                if self.digits == 0 {
                    return Err(Error::BadChunkSize);
                }
                self.phase = CHUNK_SIZE_LF;
                Ok(Step::More)
            }
            b';' => Err(Error::ChunkExtension),
            b'\n' => Err(Error::BareLf),
            _ => {
                let Some(h) = super::path::hex_value(b) else { return Err(Error::BadChunkSize) };
                if self.digits >= MAX_HEX_DIGITS {
                    return Err(Error::BadChunkSize);
                }
                self.num = (self.num << 4) | h as u64;
                self.digits += 1;
                Ok(Step::More)
            }
        }
    }
}

/// What [`drive`] saw: each request's decision, and where it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driven {
    /// Every byte was consumed and allowed.
    Passed,
    /// A request was refused: by the caller's decision (`None`) or by the parser.
    Denied { at: usize, error: Option<Error> },
}

/// Runs the parser over `data` as the kernel does over a segment: bodies skipped by count,
/// `decide` asked at each complete request line (true = allowed), `head` told at each
/// complete head. Stops at the first refusal.
pub fn drive(
    p: &mut Parser,
    data: &[u8],
    mut decide: impl FnMut(&Parser) -> bool,
    mut head: impl FnMut(&Parser),
) -> Driven {
    let mut i = 0;
    while i < data.len() {
        if p.in_body() {
            i += p.skip((data.len() - i) as u64) as usize;
            continue;
        }
        match p.feed(data[i]) {
            Ok(Step::More) => {}
            Ok(Step::Line) => {
                if !decide(p) {
                    return Driven::Denied { at: i, error: None };
                }
            }
            Ok(Step::Head) => head(p),
            Err(e) => return Driven::Denied { at: i, error: Some(e) },
        }
        i += 1;
    }
    Driven::Passed
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String;
    use std::vec::Vec;
    use std::{format, vec};

    use super::*;

    /// The requests `data` makes, as (method, normalised path), and how it ended.
    fn run(data: &[u8]) -> (Vec<(String, String)>, Driven) {
        let mut p = Parser::NEW;
        let mut lines = Vec::new();
        let d = drive(
            &mut p,
            data,
            |p| {
                lines.push((String::from_utf8_lossy(p.method()).into(), String::from_utf8_lossy(p.path()).into()));
                true
            },
            |_| {},
        );
        (lines, d)
    }

    fn error(data: &[u8]) -> Option<Error> {
        match run(data).1 {
            Driven::Denied { error, .. } => error,
            Driven::Passed => None,
        }
    }

    const GET: &[u8] = b"GET /v1/items/7?fields=name HTTP/1.1\r\nHost: inventory\r\nAccept: */*\r\n\r\n";

    #[test]
    fn a_request_line_gives_method_and_normalised_path_without_the_query() {
        let (lines, d) = run(GET);
        assert_eq!(d, Driven::Passed);
        assert_eq!(lines, vec![("GET".into(), "/v1/items/7".into())]);
        let (lines, _) = run(b"DELETE /a/%2e%2e/b//c HTTP/1.0\r\n\r\n");
        assert_eq!(lines, vec![("DELETE".into(), "/b/c".into())]);
    }

    #[test]
    fn a_request_split_at_any_byte_parses_as_if_whole() {
        let whole = [GET, b"POST /o HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcde", GET].concat();
        let (want, d) = run(&whole);
        assert_eq!(d, Driven::Passed);
        assert_eq!(want.len(), 3);
        for cut in 0..whole.len() {
            for cut2 in [cut, (cut + 7).min(whole.len())] {
                let mut p = Parser::NEW;
                let mut got = Vec::new();
                for part in [&whole[..cut], &whole[cut..cut2], &whole[cut2..]] {
                    let d = drive(
                        &mut p,
                        part,
                        |p| {
                            got.push((
                                String::from_utf8_lossy(p.method()).into(),
                                String::from_utf8_lossy(p.path()).into(),
                            ));
                            true
                        },
                        |_| {},
                    );
                    assert_eq!(d, Driven::Passed, "cut at {cut}/{cut2}");
                }
                assert_eq!(got, want, "cut at {cut}/{cut2}");
                assert!(p.at_boundary());
            }
        }
    }

    #[test]
    fn pipelined_requests_are_each_decided_and_a_refusal_stops_there() {
        let data = [GET, GET, b"PUT /x HTTP/1.1\r\nHost: h\r\n\r\n"].concat();
        let (lines, d) = run(&data);
        assert_eq!(lines.len(), 3);
        assert_eq!(d, Driven::Passed);
        let mut p = Parser::NEW;
        let mut n = 0;
        let d = drive(
            &mut p,
            &data,
            |p| {
                n += 1;
                p.method() != b"PUT"
            },
            |_| {},
        );
        assert_eq!(n, 3);
        assert_eq!(d, Driven::Denied { at: 2 * GET.len() + "PUT /x HTTP/1.1\r".len(), error: None });
    }

    #[test]
    fn bodies_are_skipped_by_their_framing_never_parsed_as_requests() {
        let smuggled = b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n";
        let cl = [
            format!("POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", smuggled.len()).as_bytes(),
            smuggled,
            GET,
        ]
        .concat();
        let (lines, d) = run(&cl);
        assert_eq!(d, Driven::Passed);
        assert_eq!(lines, vec![("POST".into(), "/upload".into()), ("GET".into(), "/v1/items/7".into())]);
        let chunked = [
            b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
            format!("{:x}\r\n", smuggled.len()).as_bytes(),
            smuggled,
            b"\r\n3\r\nGET\r\n0\r\nX-Trailer: 1\r\n\r\n",
            GET,
        ]
        .concat();
        let (lines, d) = run(&chunked);
        assert_eq!(d, Driven::Passed);
        assert_eq!(lines, vec![("POST".into(), "/upload".into()), ("GET".into(), "/v1/items/7".into())]);
        // A chunk that says more than it carries swallows what follows: still body.
        let (lines, _) =
            run(b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nGET /admin HTTP/1.1\r\n");
        assert_eq!(lines.len(), 1);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let h = |headers: &str| format!("POST /a HTTP/1.1\r\nHost: h\r\n{headers}\r\n0\r\n\r\n");
        let cases: &[(&str, Error)] = &[
            ("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", Error::ContentLengthAndChunked),
            ("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", Error::ContentLengthAndChunked),
            ("Content-Length: 4\r\nContent-Length: 4\r\n", Error::RepeatedContentLength),
            ("content-length: 4\r\nCONTENT-LENGTH: 5\r\n", Error::RepeatedContentLength),
            ("Content-Length: 4, 4\r\n", Error::BadContentLength),
            ("Content-Length: +4\r\n", Error::BadContentLength),
            ("Content-Length: 4 4\r\n", Error::BadContentLength),
            ("Content-Length: 0x4\r\n", Error::BadContentLength),
            ("Content-Length: \r\n", Error::BadContentLength),
            ("Content-Length: 1234567890123456789\r\n", Error::BadContentLength),
            ("Transfer-Encoding: chunked,\r\n", Error::BadTransferEncoding),
            ("Transfer-Encoding: chunked, chunked\r\n", Error::BadTransferEncoding),
            ("Transfer-Encoding:\tchunked\r\n", Error::BadTransferEncoding),
            ("Transfer-Encoding: chunked\t\r\n", Error::BadTransferEncoding),
            ("Transfer-Encoding: Chunked\r\n", Error::BadTransferEncoding),
            ("Transfer-Encoding: CHUNKED\r\n", Error::BadTransferEncoding),
            ("Transfer-Encoding: xchunked\r\n", Error::BadTransferEncoding),
            ("Transfer-Encoding: gzip, chunked\r\n", Error::BadTransferEncoding),
            ("Transfer-Encoding: identity\r\n", Error::BadTransferEncoding),
            ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", Error::RepeatedTransferEncoding),
            ("Transfer-Encoding: \r\n", Error::BadTransferEncoding),
            ("Transfer-Encoding : chunked\r\n", Error::SpaceBeforeColon),
            ("X-Padding: a\r\n Transfer-Encoding: chunked\r\n", Error::ObsFold),
            ("X-Padding: a\r\n\tb\r\n", Error::ObsFold),
            ("Transfer-Encoding: chunked\n", Error::BareLf),
            ("X-A: b\rTransfer-Encoding: chunked\r\n", Error::BareCr),
            ("X-A: b\x00c\r\n", Error::BadHeaderValue),
            ("X A: b\r\n", Error::SpaceBeforeColon),
            ("X\"A: b\r\n", Error::BadHeaderName),
            (": b\r\n", Error::BadHeaderName),
            ("Host: other\r\n", Error::RepeatedHost),
            ("Upgrade: websocket\r\nConnection: Upgrade\r\n", Error::Upgrade),
            ("Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n", Error::Upgrade),
        ];
        for (headers, want) in cases {
            assert_eq!(error(h(headers).as_bytes()), Some(*want), "{headers:?}");
        }
        // Transfer-Encoding is accepted in exactly one spelling, with spaces around it.
        assert_eq!(error(h("Transfer-Encoding:  chunked  \r\n").as_bytes()), None);
        assert_eq!(error(h("transfer-encoding: chunked\r\n").as_bytes()), None);
        assert_eq!(
            error(b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Some(Error::ChunkedInHttp10)
        );
        assert_eq!(error(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length:  007 \r\n\r\n1234567"), None);
    }

    #[test]
    fn chunk_framing_is_exact() {
        let c = |body: &str| format!("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        assert_eq!(error(c("5;ext=1\r\nhello\r\n0\r\n\r\n").as_bytes()), Some(Error::ChunkExtension));
        assert_eq!(error(c("5 \r\nhello\r\n0\r\n\r\n").as_bytes()), Some(Error::BadChunkSize));
        assert_eq!(error(c("+5\r\nhello\r\n0\r\n\r\n").as_bytes()), Some(Error::BadChunkSize));
        assert_eq!(error(c("\r\n").as_bytes()), Some(Error::BadChunkSize));
        assert_eq!(error(c("5\r\nhelloX\r\n").as_bytes()), Some(Error::BadChunkEnd));
        assert_eq!(error(c("5\nhello").as_bytes()), Some(Error::BareLf));
        assert_eq!(error(c("1000000000000000\r\n").as_bytes()), Some(Error::BadChunkSize));
        assert_eq!(error(c("0005\r\nhello\r\n00\r\n\r\n").as_bytes()), None);
        assert_eq!(error(c("0\r\nX: 1\r\n Y\r\n\r\n").as_bytes()), Some(Error::ObsFold));
    }

    #[test]
    fn what_is_not_an_http1_origin_form_request_is_refused() {
        let cases: &[(&[u8], Error)] = &[
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Error::BadMethod),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Error::AsteriskForm),
            (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", Error::AsteriskForm),
            (b"CONNECT inventory:443 HTTP/1.1\r\nHost: inventory:443\r\n\r\n", Error::AuthorityForm),
            (b"CONNECT /x HTTP/1.1\r\n", Error::AuthorityForm),
            (b"GET http://inventory/v1/items HTTP/1.1\r\nHost: h\r\n\r\n", Error::AbsoluteForm),
            (b"GET /a HTTP/2.0\r\n", Error::BadVersion),
            (b"GET /a HTTP/1.2\r\n", Error::BadVersion),
            (b"GET /a http/1.1\r\n", Error::BadVersion),
            (b"GET /a HTTP/1.1 \r\n", Error::BadVersion),
            (b"GET  /a HTTP/1.1\r\n", Error::BadTarget),
            (b"GET /a HTTP/1.1\n", Error::BareLf),
            (b"GET /a HTTP/1.1\r\r\n", Error::BareCr),
            (b"GET /a HTTP/1.1\r\n\r\n", Error::MissingHost),
            (b"G@T /a HTTP/1.1\r\n", Error::BadMethod),
            (b" GET /a HTTP/1.1\r\n", Error::BadMethod),
            (b"\nGET /a HTTP/1.1\r\n", Error::BareLf),
            (b"ABCDEFGHIJKLMNOPQ /a HTTP/1.1\r\n", Error::MethodTooLong),
            (b"GET /a?b#c HTTP/1.1\r\n", Error::Fragment),
            (b"GET /a?b%zz HTTP/1.1\r\n", Error::BadPercent),
            (b"GET /a?b\x01 HTTP/1.1\r\n", Error::ControlByte),
            (b"GET /a%2fb HTTP/1.1\r\n", Error::EncodedSlash),
        ];
        for (data, want) in cases {
            assert_eq!(error(data), Some(*want), "{:?}", String::from_utf8_lossy(data));
        }
        // Empty lines before a request are allowed; a 1.0 request needs no Host.
        assert_eq!(error(b"\r\n\r\nGET /a HTTP/1.0\r\n\r\n"), None);
    }

    #[test]
    fn heads_and_targets_past_their_bounds_are_refused() {
        let long_header = format!("GET /a HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n", "a".repeat(HEAD_MAX as usize));
        assert_eq!(error(long_header.as_bytes()), Some(Error::HeadTooLong));
        let long_target = format!("GET /a?{} HTTP/1.1\r\n", "a".repeat(TARGET_MAX as usize));
        assert_eq!(error(long_target.as_bytes()), Some(Error::TargetTooLong));
        let (_, d) =
            run(format!("GET /a?{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(TARGET_MAX as usize - 3)).as_bytes());
        assert_eq!(d, Driven::Passed);
    }

    #[test]
    fn the_path_as_seen_is_kept_up_to_its_bound() {
        let mut p = Parser::NEW;
        let _ = drive(&mut p, b"GET /a/../%62?q=1 HTTP/1.1\r\n", |_| true, |_| {});
        assert_eq!(p.seen(), b"/a/../%62");
        assert_eq!(p.path(), b"/b");
        assert!(!p.seen_cut());
        let long = format!("GET /{} HTTP/1.1\r\n", "x".repeat(200));
        let mut p = Parser::NEW;
        let _ = drive(&mut p, long.as_bytes(), |_| true, |_| {});
        assert_eq!(p.seen().len(), SEEN_MAX);
        assert!(p.seen_cut());
    }
}
