//! RESP2, the Redis serialization protocol, as a server reads and writes it: requests are
//! arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or inline commands (`GET k\r\n`,
//! words split on spaces); replies are simple strings, errors, integers, bulk strings (or
//! nil) and arrays.
//!
//! [`parse`] is incremental: given the bytes received so far it returns a whole request and
//! how many bytes it took, or `None` until more arrive, or a [`ProtocolError`] after which the
//! connection cannot be resynchronized (the server replies with the error and closes it, as
//! Redis does). Every length is bounded by [`Limits`] before anything is allocated for it.

use alloc::vec::Vec;
use core::fmt;

/// What a request may be at most.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of one bulk string (Redis's proto-max-bulk-len is 512 MiB; a guest has less).
    pub max_bulk: usize,
    /// Elements of one request array.
    pub max_args: usize,
    /// Bytes of an inline request or of a header line.
    pub max_inline: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_bulk: 8 << 20, max_args: 1 << 20, max_inline: 64 << 10 }
    }
}

/// A malformed request; its text is what Redis says, after "ERR Protocol error: ".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A `*` header that is not a number, or above the limit.
    MultibulkLength,
    /// A `$` header that is not a number, or above the limit.
    BulkLength,
    /// Something else where a `$` header must be.
    ExpectedBulk(u8),
    /// A bulk string not followed by CRLF.
    BulkTerminator,
    /// An inline request or header line longer than the limit.
    TooBigInline,
    /// An inline request with an unbalanced quote.
    UnbalancedQuotes,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MultibulkLength => write!(f, "invalid multibulk length"),
            Self::BulkLength => write!(f, "invalid bulk length"),
            Self::ExpectedBulk(byte) => write!(f, "expected '$', got '{}'", char::from(*byte).escape_default()),
            Self::BulkTerminator => write!(f, "bulk string not terminated by CRLF"),
            Self::TooBigInline => write!(f, "too big inline request"),
            Self::UnbalancedQuotes => write!(f, "unbalanced quotes in request"),
        }
    }
}

/// A request: its words, borrowed from the receive buffer.
pub type Request<'a> = Vec<&'a [u8]>;

/// Parses one request from the front of `buf`: `Ok(Some((request, consumed)))`, `Ok(None)` if
/// `buf` holds only part of one, or the error that ends the connection. An empty inline line
/// is a request of no words (the server skips it).
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<(Request<'a>, usize)>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_array(buf, limits),
        Some(_) => parse_inline(buf, limits),
    }
}

/// The line starting at `at`, without its terminator, and the offset after it; `None` if its
/// end has not arrived.
fn line<'a>(buf: &'a [u8], at: usize, limits: &Limits) -> Result<Option<(&'a [u8], usize)>, ProtocolError> {
    let rest = &buf[at..];
    match rest.iter().position(|&byte| byte == b'\n') {
        Some(end) if end > limits.max_inline => Err(ProtocolError::TooBigInline),
        Some(end) => {
            let text = &rest[..end];
            Ok(Some((text.strip_suffix(b"\r").unwrap_or(text), at + end + 1)))
        }
        None if rest.len() > limits.max_inline => Err(ProtocolError::TooBigInline),
        None => Ok(None),
    }
}

/// A decimal header value (`*N` or `$N`), in `0..=max`; -1 (nil) and other negatives are
/// refused, as a server does for requests.
fn number(text: &[u8], max: usize, error: ProtocolError) -> Result<usize, ProtocolError> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return Err(error);
    }
    let value = text.iter().fold(0usize, |value, &digit| value * 10 + usize::from(digit - b'0'));
    if value > max { Err(error) } else { Ok(value) }
}

fn parse_array<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<(Request<'a>, usize)>, ProtocolError> {
    let Some((header, mut at)) = line(buf, 0, limits)? else { return Ok(None) };
    let count = number(&header[1..], limits.max_args, ProtocolError::MultibulkLength)?;
    // Bounded by what has arrived, so a forged count allocates nothing.
    let mut words = Vec::with_capacity(count.min(buf.len() / 4));
    for _ in 0..count {
        let Some((header, start)) = line(buf, at, limits)? else { return Ok(None) };
        match header.first() {
            Some(b'$') => {}
            Some(&other) => return Err(ProtocolError::ExpectedBulk(other)),
            None => return Err(ProtocolError::ExpectedBulk(b'\r')),
        }
        let len = number(&header[1..], limits.max_bulk, ProtocolError::BulkLength)?;
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::BulkTerminator);
        }
        words.push(&buf[start..end]);
        at = end + 2;
    }
    Ok(Some((words, at)))
}

fn parse_inline<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<(Request<'a>, usize)>, ProtocolError> {
    let Some((text, consumed)) = line(buf, 0, limits)? else { return Ok(None) };
    let mut words = Vec::new();
    let mut rest = text;
    loop {
        rest = trim_start(rest);
        let Some(&first) = rest.first() else { break };
        if first == b'"' || first == b'\'' {
            // A quoted word, taken as it is (no escapes): enough for hand-typed requests.
            let close = rest[1..].iter().position(|&byte| byte == first).ok_or(ProtocolError::UnbalancedQuotes)?;
            words.push(&rest[1..=close]);
            rest = &rest[close + 2..];
        } else {
            let end = rest.iter().position(u8::is_ascii_whitespace).unwrap_or(rest.len());
            words.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
    Ok(Some((words, consumed)))
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|byte| !byte.is_ascii_whitespace()).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Replies, appended to an output buffer.
pub mod reply {
    use alloc::vec::Vec;
    use core::fmt::Write;

    /// `+text`
    pub fn simple(out: &mut Vec<u8>, text: &str) {
        line(out, b'+', text.as_bytes());
    }

    /// `-text` (text starts with an error code such as `ERR`).
    pub fn error(out: &mut Vec<u8>, text: &str) {
        line(out, b'-', text.as_bytes());
    }

    /// `:value`
    pub fn integer(out: &mut Vec<u8>, value: i64) {
        out.push(b':');
        decimal(out, value);
        out.extend_from_slice(b"\r\n");
    }

    /// `$len`, the bytes, or `$-1` (nil) for `None`.
    pub fn bulk(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            Some(bytes) => {
                out.push(b'$');
                decimal(out, bytes.len() as i64);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(b"$-1\r\n"),
        }
    }

    /// `*len`; the elements follow.
    pub fn array(out: &mut Vec<u8>, len: usize) {
        out.push(b'*');
        decimal(out, len as i64);
        out.extend_from_slice(b"\r\n");
    }

    fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
        out.push(kind);
        // A line break inside would end the reply early.
        out.extend(text.iter().map(|&byte| if byte == b'\r' || byte == b'\n' { b' ' } else { byte }));
        out.extend_from_slice(b"\r\n");
    }

    fn decimal(out: &mut Vec<u8>, value: i64) {
        struct Bytes<'a>(&'a mut Vec<u8>);
        impl Write for Bytes<'_> {
            fn write_str(&mut self, text: &str) -> core::fmt::Result {
                self.0.extend_from_slice(text.as_bytes());
                Ok(())
            }
        }
        let _ = write!(Bytes(out), "{value}");
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn whole(buf: &[u8]) -> (Vec<&[u8]>, usize) {
        parse(buf, &Limits::default()).unwrap().unwrap()
    }

    #[test]
    fn arrays_and_inline_requests() {
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let (words, used) = whole(buf);
        assert_eq!(words, [&b"SET"[..], b"k", b"hello"]);
        assert_eq!(whole(&buf[used..]), (vec![&b"PING"[..]], buf.len() - used));
        assert_eq!(whole(b"GET  key\r\n"), (vec![&b"GET"[..], b"key"], 10));
        assert_eq!(whole(b"SET k \"two words\"\n").0, [&b"SET"[..], b"k", b"two words"]);
        assert_eq!(whole(b"\r\n"), (vec![], 2));
        // Binary values: a bulk string may hold CRLF.
        assert_eq!(whole(b"*1\r\n$4\r\na\r\nb\r\n").0, [&b"a\r\nb"[..]]);
        assert_eq!(whole(b"*0\r\n"), (vec![], 4));
    }

    #[test]
    fn a_partial_request_waits_for_more_at_every_cut() {
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut], &Limits::default()), Ok(None), "cut at {cut}");
        }
        assert_eq!(whole(b"PING\r\n").1, 6);
        assert_eq!(parse(b"PING", &Limits::default()), Ok(None));
    }

    #[test]
    fn malformed_requests_are_refused_before_anything_is_allocated() {
        let limits = Limits { max_bulk: 100, max_args: 10, max_inline: 32 };
        for (buf, error) in [
            (&b"*x\r\n"[..], ProtocolError::MultibulkLength),
            (b"*-1\r\n", ProtocolError::MultibulkLength),
            (b"*11\r\n", ProtocolError::MultibulkLength),
            (b"*99999999999999999999\r\n", ProtocolError::MultibulkLength),
            (b"*1\r\n$101\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$\r\n", ProtocolError::BulkLength),
            (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk(b':')),
            (b"*1\r\n$1\r\nab\r\n", ProtocolError::BulkTerminator),
            (b"SET k \"open\r\n", ProtocolError::UnbalancedQuotes),
            (&[b'A'; 40], ProtocolError::TooBigInline),
        ] {
            assert_eq!(parse(buf, &limits), Err(error), "{:?}", core::str::from_utf8(buf));
        }
    }

    #[test]
    fn replies_are_encoded() {
        let mut out = Vec::new();
        reply::simple(&mut out, "OK");
        reply::error(&mut out, "ERR bad\r\nthing");
        reply::integer(&mut out, -42);
        reply::bulk(&mut out, Some(b"v"));
        reply::bulk(&mut out, None);
        reply::array(&mut out, 2);
        assert_eq!(out, b"+OK\r\n-ERR bad  thing\r\n:-42\r\n$1\r\nv\r\n$-1\r\n*2\r\n");
    }
}
