//! The request-path normaliser: one byte at a time, so the kernel runs it on a request line
//! split across any number of TCP segments, and user space (rule validation, `ward policy
//! explain`, the tests and the fuzz target) runs the very same code on a whole string.
//!
//! The order, which is also the table in the README (section "HTTP rules"):
//!
//! | step | input | result |
//! | --- | --- | --- |
//! | 1 | a raw control byte, `%00`, an encoded control byte, a raw non-ASCII byte | denied |
//! | 1 | `%` not followed by two hex digits | denied |
//! | 1 | encoded bytes that are not well-formed UTF-8 (overlong `%C0%AE`, surrogates, truncated) | denied |
//! | 2 | `%41`, `%7e`, ... (encoded unreserved characters) | decoded: `A`, `~` |
//! | 2 | any other encoded byte (`%3f`, `%25`, `%e2%82%ac`) | kept encoded, hex in upper case |
//! | 3 | `%2F`, `%5C`, a raw `\` | denied |
//! | 4 | `%252e` | `%252e` (decoded once only: never a dot) |
//! | 5 | `;` (path parameters) | denied (rejected, not stripped) |
//! | 6 | `//` | merged into `/` |
//! | 7 | `.` and `..` segments (also as `%2e`) | resolved; climbing above `/` is denied |
//! | - | `?` and what follows | the query: checked for bad bytes, never part of the path |
//!
//! Rule paths must already be in this normal form (a rule path equals its own
//! normalisation), so matching a request is a plain byte comparison.

/// Longest normalised request path the datapath keeps; a longer one is denied.
pub const PATH_MAX: usize = 256;

/// Why a path (or a request) is refused. Stable codes: they appear in flow records.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Error {
    // Path normalisation.
    EncodedNul = 1,
    ControlByte = 2,
    BadPercent = 3,
    BadUtf8 = 4,
    EncodedSlash = 5,
    Backslash = 6,
    Semicolon = 7,
    AboveRoot = 8,
    PathTooLong = 9,
    BadPathByte = 10,
    NonAscii = 11,
    Fragment = 12,
    // Request line.
    BadMethod = 20,
    MethodTooLong = 21,
    BadTarget = 22,
    AbsoluteForm = 23,
    AsteriskForm = 24,
    AuthorityForm = 25,
    BadVersion = 26,
    BareCr = 27,
    BareLf = 28,
    HeadTooLong = 29,
    TargetTooLong = 30,
    // Header fields and framing.
    BadHeaderName = 40,
    SpaceBeforeColon = 41,
    ObsFold = 42,
    BadHeaderValue = 43,
    BadContentLength = 44,
    RepeatedContentLength = 45,
    BadTransferEncoding = 46,
    RepeatedTransferEncoding = 47,
    ContentLengthAndChunked = 48,
    ChunkedInHttp10 = 49,
    RepeatedHost = 50,
    MissingHost = 51,
    Upgrade = 52,
    BadChunkSize = 53,
    ChunkExtension = 54,
    BadChunkEnd = 55,
}

impl Error {
    pub const ALL: [Error; 39] = [
        Error::EncodedNul,
        Error::ControlByte,
        Error::BadPercent,
        Error::BadUtf8,
        Error::EncodedSlash,
        Error::Backslash,
        Error::Semicolon,
        Error::AboveRoot,
        Error::PathTooLong,
        Error::BadPathByte,
        Error::NonAscii,
        Error::Fragment,
        Error::BadMethod,
        Error::MethodTooLong,
        Error::BadTarget,
        Error::AbsoluteForm,
        Error::AsteriskForm,
        Error::AuthorityForm,
        Error::BadVersion,
        Error::BareCr,
        Error::BareLf,
        Error::HeadTooLong,
        Error::TargetTooLong,
        Error::BadHeaderName,
        Error::SpaceBeforeColon,
        Error::ObsFold,
        Error::BadHeaderValue,
        Error::BadContentLength,
        Error::RepeatedContentLength,
        Error::BadTransferEncoding,
        Error::RepeatedTransferEncoding,
        Error::ContentLengthAndChunked,
        Error::ChunkedInHttp10,
        Error::RepeatedHost,
        Error::MissingHost,
        Error::Upgrade,
        Error::BadChunkSize,
        Error::ChunkExtension,
        Error::BadChunkEnd,
    ];

    /// The error with this code.
    pub fn from_u8(v: u8) -> Option<Error> {
        Error::ALL.into_iter().find(|e| *e as u8 == v)
    }

    /// Stable snake_case name, for flow records, counters and messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Error::EncodedNul => "encoded_nul",
            Error::ControlByte => "control_byte",
            Error::BadPercent => "bad_percent_encoding",
            Error::BadUtf8 => "bad_utf8",
            Error::EncodedSlash => "encoded_slash_or_backslash",
            Error::Backslash => "backslash",
            Error::Semicolon => "path_parameter",
            Error::AboveRoot => "above_root",
            Error::PathTooLong => "path_too_long",
            Error::BadPathByte => "bad_path_byte",
            Error::NonAscii => "raw_non_ascii",
            Error::Fragment => "fragment",
            Error::BadMethod => "bad_method",
            Error::MethodTooLong => "method_too_long",
            Error::BadTarget => "bad_target",
            Error::AbsoluteForm => "absolute_form",
            Error::AsteriskForm => "asterisk_form",
            Error::AuthorityForm => "authority_form",
            Error::BadVersion => "bad_version",
            Error::BareCr => "bare_cr",
            Error::BareLf => "bare_lf",
            Error::HeadTooLong => "head_too_long",
            Error::TargetTooLong => "target_too_long",
            Error::BadHeaderName => "bad_header_name",
            Error::SpaceBeforeColon => "space_before_colon",
            Error::ObsFold => "obs_fold",
            Error::BadHeaderValue => "bad_header_value",
            Error::BadContentLength => "bad_content_length",
            Error::RepeatedContentLength => "repeated_content_length",
            Error::BadTransferEncoding => "bad_transfer_encoding",
            Error::RepeatedTransferEncoding => "repeated_transfer_encoding",
            Error::ContentLengthAndChunked => "content_length_and_chunked",
            Error::ChunkedInHttp10 => "chunked_in_http10",
            Error::RepeatedHost => "repeated_host",
            Error::MissingHost => "missing_host",
            Error::Upgrade => "upgrade",
            Error::BadChunkSize => "bad_chunk_size",
            Error::ChunkExtension => "chunk_extension",
            Error::BadChunkEnd => "bad_chunk_end",
        }
    }
}
/// Unreserved characters (RFC 3986): decoded when percent-encoded.
#[inline(always)]
pub const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes a path segment may carry unencoded: unreserved, sub-delims except `;` (which is
/// refused on its own), `:` and `@`.
#[inline(always)]
const fn is_path_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@')
}

#[inline(always)]
pub const fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// An upper-case hex digit, computed (no table: the verifier would have to prove the index).
#[inline(always)]
const fn hex_digit(n: u8) -> u8 {
    let n = n & 15;
    if n < 10 { b'0' + n } else { b'A' + n - 10 }
}

/// The streaming normaliser's state and output. `#[repr(C)]` with explicit padding: it lives
/// inside the kernel's per-connection state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathNorm {
    /// Bytes of `out` in use; `out[0]` is always `/`.
    pub len: u16,
    /// Where the segment being written starts in `out` (just past its `/`).
    pub seg_start: u16,
    /// Percent-decoding: 0 none, 1 after `%`, 2 after its first hex digit.
    pub pct: u8,
    pub pct_hi: u8,
    /// Continuation bytes a UTF-8 sequence still needs, and the range the next one must lie in.
    pub utf8_need: u8,
    pub utf8_lo: u8,
    pub utf8_hi: u8,
    pub _pad: [u8; 7],
    pub out: [u8; PATH_MAX],
}

const _: () = assert!(core::mem::size_of::<PathNorm>() == 16 + PATH_MAX);
const _: () = assert!(PATH_MAX.is_power_of_two());

impl PathNorm {
    pub const EMPTY: PathNorm = PathNorm {
        len: 0,
        seg_start: 0,
        pct: 0,
        pct_hi: 0,
        utf8_need: 0,
        utf8_lo: 0,
        utf8_hi: 0,
        _pad: [0; 7],
        out: [0; PATH_MAX],
    };

    /// Starts a path: the caller has seen its leading `/`.
    #[inline(always)]
    pub fn start(&mut self) {
        self.out[0] = b'/';
        self.len = 1;
        self.seg_start = 1;
        self.pct = 0;
        self.pct_hi = 0;
        self.utf8_need = 0;
    }

    /// The normalised path so far (complete after [`PathNorm::finish`]).
    pub fn as_bytes(&self) -> &[u8] {
        let n = (self.len as usize).min(PATH_MAX);
        &self.out[..n]
    }

    /// One byte of the path after its leading `/` (not `?`, `#` or a space: the request-line
    /// parser ends the path on those).
    #[inline(always)]
    pub fn push(&mut self, b: u8) -> Result<(), Error> {
        match self.pct {
            1 => {
                let Some(h) = hex_value(b) else { return Err(Error::BadPercent) };
                self.pct_hi = h;
                self.pct = 2;
                return Ok(());
            }
            2 => {
                let Some(l) = hex_value(b) else { return Err(Error::BadPercent) };
                self.pct = 0;
                return self.decoded((self.pct_hi << 4) | l);
            }
            _ => {}
        }
        if b == b'%' {
            self.pct = 1;
            return Ok(());
        }
        // A UTF-8 sequence is made of consecutive encoded bytes only.
        if self.utf8_need != 0 {
            return Err(Error::BadUtf8);
        }
        match b {
            b'/' => self.slash(),
            b'\\' => Err(Error::Backslash),
            b';' => Err(Error::Semicolon),
            b'#' => Err(Error::Fragment),
            0..=0x1f | 0x7f => Err(Error::ControlByte),
            0x80.. => Err(Error::NonAscii),
            _ if is_path_char(b) => self.put(b),
            _ => Err(Error::BadPathByte),
        }
    }

    /// Ends the path: no `%` or UTF-8 sequence may be left open, and a final `.` or `..`
    /// segment is resolved.
    #[inline(always)]
    pub fn finish(&mut self) -> Result<(), Error> {
        if self.pct != 0 {
            return Err(Error::BadPercent);
        }
        if self.utf8_need != 0 {
            return Err(Error::BadUtf8);
        }
        self.end_segment()?;
        Ok(())
    }

    #[inline(always)]
    fn decoded(&mut self, v: u8) -> Result<(), Error> {
        if self.utf8_need != 0 {
            if v < self.utf8_lo || v > self.utf8_hi {
                return Err(Error::BadUtf8);
            }
            self.utf8_need -= 1;
            self.utf8_lo = 0x80;
            self.utf8_hi = 0xbf;
            return self.put_encoded(v);
        }
        match v {
            0 => Err(Error::EncodedNul),
            0x01..=0x1f | 0x7f => Err(Error::ControlByte),
            b'/' | b'\\' => Err(Error::EncodedSlash),
            _ if is_unreserved(v) => self.put(v),
            0x80..=0xff => {
                // The first byte of a UTF-8 sequence, and what its first continuation byte may
                // be: this refuses overlong forms (C0, C1, E0 80..9F, F0 80..8F), surrogates
                // (ED A0..BF) and code points past U+10FFFF.
                let (need, lo, hi) = match v {
                    0xc2..=0xdf => (1, 0x80, 0xbf),
                    0xe0 => (2, 0xa0, 0xbf),
                    0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
                    0xed => (2, 0x80, 0x9f),
                    0xf0 => (3, 0x90, 0xbf),
                    0xf1..=0xf3 => (3, 0x80, 0xbf),
                    0xf4 => (3, 0x80, 0x8f),
                    _ => return Err(Error::BadUtf8),
                };
                self.utf8_need = need;
                self.utf8_lo = lo;
                self.utf8_hi = hi;
                self.put_encoded(v)
            }
            // Reserved and other ASCII characters keep their encoding: `%3F` is not a query,
            // `%3B` not a parameter, `%25` not a second round of decoding.
            _ => self.put_encoded(v),
        }
    }

    #[inline(always)]
    fn put(&mut self, b: u8) -> Result<(), Error> {
        let n = self.len as usize;
        if n >= PATH_MAX {
            return Err(Error::PathTooLong);
        }
        self.out[n & (PATH_MAX - 1)] = b;
        self.len += 1;
        Ok(())
    }

    #[inline(always)]
    fn put_encoded(&mut self, v: u8) -> Result<(), Error> {
        self.put(b'%')?;
        self.put(hex_digit(v >> 4))?;
        self.put(hex_digit(v))
    }

    /// The segment being written, as (start, length).
    #[inline(always)]
    fn segment(&self) -> (usize, usize) {
        let start = self.seg_start as usize;
        let end = self.len as usize;
        (start, end.saturating_sub(start))
    }

    #[inline(always)]
    fn at(&self, i: usize) -> u8 {
        self.out[i & (PATH_MAX - 1)]
    }

    /// A `/`: ends the current segment (resolving dot segments, merging `//`), starts another.
    #[inline(always)]
    fn slash(&mut self) -> Result<(), Error> {
        let (_, seg_len) = self.segment();
        if seg_len == 0 {
            // `//` (or `/./` once resolved): one slash stands.
            return Ok(());
        }
        if self.end_segment()? {
            return Ok(());
        }
        self.put(b'/')?;
        self.seg_start = self.len;
        Ok(())
    }

    /// Resolves the current segment if it is `.` or `..`; true if it was one. Afterwards `out`
    /// ends with `/` and the current segment is empty.
    #[inline(always)]
    fn end_segment(&mut self) -> Result<bool, Error> {
        let (start, seg_len) = self.segment();
        if seg_len == 1 && self.at(start) == b'.' {
            self.len = start as u16;
            return Ok(true);
        }
        if seg_len == 2 && self.at(start) == b'.' && self.at(start + 1) == b'.' {
            // `out[start - 1]` is the `/` before `..`; the segment before it starts after the
            // `/` found scanning back from there.
            if start <= 1 {
                return Err(Error::AboveRoot);
            }
            let mut slash = 0usize;
            let mut k = start - 1;
            // Bounded by PATH_MAX (verifier: constant trip count).
            for _ in 0..PATH_MAX {
                if k == 0 {
                    break;
                }
                k -= 1;
                if self.at(k) == b'/' {
                    slash = k;
                    break;
                }
            }
            self.len = slash as u16 + 1;
            self.seg_start = self.len;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Normalises a whole path (starting with `/`, no query): what the datapath would compare.
/// Writes into `into` and returns the normalised bytes.
pub fn normalize<'a>(path: &[u8], into: &'a mut PathNorm) -> Result<&'a [u8], Error> {
    let Some((&b'/', rest)) = path.split_first() else {
        return Err(Error::BadTarget);
    };
    into.start();
    for &b in rest {
        if b == b'?' || b == b' ' {
            return Err(Error::BadPathByte);
        }
        into.push(b)?;
    }
    into.finish()?;
    Ok(into.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, Error> {
        let mut n = PathNorm::EMPTY;
        normalize(p.as_bytes(), &mut n).map(|b| core::str::from_utf8(b).unwrap_or("<non-utf8>").into())
    }

    extern crate std;
    use std::string::String;

    /// Every row of the normalisation table (README, "HTTP rules"; module docs above).
    #[test]
    fn the_normalisation_table_row_by_row() {
        let ok = |input: &str, want: &str| assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        let bad = |input: &str, want: Error| assert_eq!(norm(input), Err(want), "{input}");
        // 1: control bytes, NUL, bad percent-encoding, non-ASCII, bad UTF-8.
        bad("/a%00b", Error::EncodedNul);
        bad("/a\x01b", Error::ControlByte);
        bad("/a%0d%0aHost", Error::ControlByte);
        bad("/a%7f", Error::ControlByte);
        bad("/a\x7f", Error::ControlByte);
        bad("/a%zz", Error::BadPercent);
        bad("/a%4", Error::BadPercent);
        bad("/a%", Error::BadPercent);
        bad("/caf\u{e9}", Error::NonAscii);
        bad("/%c0%ae%c0%ae/etc", Error::BadUtf8);
        bad("/%e0%80%af", Error::BadUtf8);
        bad("/%ed%a0%80", Error::BadUtf8);
        bad("/%f4%90%80%80", Error::BadUtf8);
        bad("/%e2%82", Error::BadUtf8);
        bad("/%e2%82x", Error::BadUtf8);
        bad("/%ff", Error::BadUtf8);
        ok("/caf%c3%a9", "/caf%C3%A9");
        ok("/%e2%82%ac", "/%E2%82%AC");
        ok("/%F0%9F%98%80", "/%F0%9F%98%80");
        // 2: unreserved characters decoded, others kept encoded in upper case.
        ok("/%61%70%69/%7Ev1", "/api/~v1");
        ok("/a%2db%2e%5f", "/a-b._");
        ok("/a%3fb", "/a%3Fb");
        ok("/a%3Bb", "/a%3Bb");
        ok("/a%20b", "/a%20b");
        ok("/a%2A", "/a%2A");
        ok("/a*b:c@d!$&'()+,=", "/a*b:c@d!$&'()+,=");
        // 3: encoded slash and backslash, raw backslash.
        bad("/a%2Fb", Error::EncodedSlash);
        bad("/a%2fb", Error::EncodedSlash);
        bad("/a%5Cb", Error::EncodedSlash);
        bad("/a%5cb", Error::EncodedSlash);
        bad("/a\\b", Error::Backslash);
        // 4: double encoding is decoded once only.
        ok("/%252e%252e/admin", "/%252e%252e/admin");
        ok("/a/%25%32%65", "/a/%252e");
        // 5: path parameters are rejected.
        bad("/a;jsessionid=1/b", Error::Semicolon);
        bad("/admin;/x", Error::Semicolon);
        // 6: `//` merged.
        ok("//a//b///c", "/a/b/c");
        ok("/a//", "/a/");
        // 7: dot segments, also encoded; above the root denied.
        ok("/a/./b", "/a/b");
        ok("/a/b/../c", "/a/c");
        ok("/a/b/..", "/a/");
        ok("/a/.", "/a/");
        ok("/a/..", "/");
        ok("/v1/items/../admin", "/v1/admin");
        ok("/v1/items/%2e%2e/admin", "/v1/admin");
        ok("/v1/items/.%2E/admin", "/v1/admin");
        ok("/a/.b/..c/...", "/a/.b/..c/...");
        ok("/./././", "/");
        ok("/a/b/c/../../..", "/");
        bad("/..", Error::AboveRoot);
        bad("/../etc/passwd", Error::AboveRoot);
        bad("/a/../..", Error::AboveRoot);
        bad("/a/%2e%2e/%2e%2e/x", Error::AboveRoot);
        // Other bytes.
        bad("/a b", Error::BadPathByte);
        bad("/a\"b", Error::BadPathByte);
        bad("/a<b>", Error::BadPathByte);
        bad("/a#b", Error::Fragment);
        bad("a", Error::BadTarget);
        ok("/", "/");
    }

    #[test]
    fn paths_past_the_bound_are_refused_and_dots_can_bring_them_back() {
        let long = format!("/{}", "a".repeat(PATH_MAX - 1));
        assert_eq!(norm(&long).map(|s| s.len()), Ok(PATH_MAX));
        let longer = format!("/{}", "a".repeat(PATH_MAX));
        assert_eq!(norm(&longer), Err(Error::PathTooLong));
        // Encoded bytes count three each in the output.
        assert_eq!(norm(&format!("/{}", "%20".repeat(90))), Err(Error::PathTooLong));
    }

    #[test]
    fn every_error_code_round_trips() {
        for e in Error::ALL {
            assert_eq!(Error::from_u8(e as u8), Some(e));
            assert!(!e.as_str().is_empty());
        }
        assert_eq!(Error::from_u8(0), None);
    }

    use std::format;
}
