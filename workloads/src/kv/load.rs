//! The load a scenario drives a `kv` server with, as pure parts: which request is the n-th
//! ([`Load::request`]) and where a reply ends ([`reply_len`]). The monitor's load generator
//! puts them on sockets.
//!
//! Requests are GETs and SETs (as `redis-benchmark -t set,get`, mixed), each of a key drawn
//! from a fixed keyspace by a hash of its number, so every run sends the same requests.

use alloc::format;
use alloc::vec::Vec;

use crate::params::{ParamError, Params};
use crate::record::{FNV_OFFSET, fnv1a};

/// What a load generator sends, from `kv`'s parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    /// Requests sent over the run.
    pub requests: u64,
    /// Connections.
    pub clients: usize,
    /// Requests a connection has in flight (closed loop), or may queue (open loop).
    pub pipeline: usize,
    /// Requests per second over all connections in an open loop; `None`: a closed loop.
    pub rate: Option<u64>,
    pub keys: u64,
    /// Percent of requests that are GETs.
    pub reads: u64,
    /// Each SET's value.
    pub value: Vec<u8>,
}

impl Load {
    /// The load `kv`'s parameters describe (see [`super::PARAMS`]).
    pub fn from_params(params: &Params) -> Result<Load, ParamError> {
        Ok(Load {
            requests: params.u64_in("requests", 1..=u64::MAX, "at least one request")?,
            clients: params.u64_in("clients", 1..=1024, "1 to 1024 connections")? as usize,
            pipeline: params.u64_in("pipeline", 1..=1024, "1 to 1024 requests in flight")? as usize,
            rate: Some(params.u64("rate")).filter(|&rate| rate > 0),
            keys: params.u64_in("keys", 1..=1 << 32, "1 to 2^32 keys")?,
            reads: params.u64_in("reads", 0..=100, "a percentage")?,
            value: alloc::vec![b'x'; params.u64_in("value_bytes", 0..=1 << 20, "at most 1 MiB")? as usize],
        })
    }

    /// Whether request number `n` is a GET (else a SET).
    pub fn is_read(&self, n: u64) -> bool {
        (mix(n) >> 32) % 100 < self.reads
    }

    /// Appends request number `n` to `out`, as RESP.
    pub fn request(&self, n: u64, out: &mut Vec<u8>) {
        let key = format!("key:{:012}", mix(n) % self.keys);
        let words: &[&[u8]] =
            if self.is_read(n) { &[b"GET", key.as_bytes()] } else { &[b"SET", key.as_bytes(), &self.value] };
        out.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
        for word in words {
            out.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
            out.extend_from_slice(word);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// A digest of the run's requests, equal across runs of the same load (the replies to
    /// GETs depend on the order the connections' requests met in, so they are not in it).
    pub fn checksum(&self) -> u64 {
        let reads = (0..self.requests.min(1 << 16)).filter(|&n| self.is_read(n)).count() as u64;
        [self.requests, self.keys, self.reads, self.value.len() as u64, reads].into_iter().fold(FNV_OFFSET, fnv1a)
    }
}

/// A well-mixed hash of a request's number (splitmix64's finalizer).
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A reply that is not RESP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadReply;

/// The reply at the front of `buf`: `Ok(Some((len, error)))` with its length in bytes and
/// whether it is an error (`-...`), `Ok(None)` if it has not all arrived, or [`BadReply`].
pub fn reply_len(buf: &[u8]) -> Result<Option<(usize, bool)>, BadReply> {
    let Some(end) = buf.iter().position(|&byte| byte == b'\n') else {
        return Ok(None);
    };
    // A type byte, then the line's text, then CRLF.
    if end < 2 || buf[end - 1] != b'\r' {
        return Err(BadReply);
    }
    let header = &buf[1..end - 1];
    let after = end + 1;
    match buf[0] {
        b'+' | b':' => Ok(Some((after, false))),
        b'-' => Ok(Some((after, true))),
        b'$' => match number(header)? {
            -1 => Ok(Some((after, false))),
            len if len >= 0 => {
                let total = after + len as usize + 2;
                if buf.len() < total {
                    Ok(None)
                } else if &buf[total - 2..total] == b"\r\n" {
                    Ok(Some((total, false)))
                } else {
                    Err(BadReply)
                }
            }
            _ => Err(BadReply),
        },
        b'*' => {
            let count = number(header)?;
            let (mut at, mut error) = (after, false);
            for _ in 0..count.max(0) {
                match reply_len(&buf[at..])? {
                    Some((len, element_error)) => {
                        at += len;
                        error |= element_error;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((at, error)))
        }
        _ => Err(BadReply),
    }
}

fn number(text: &[u8]) -> Result<i64, BadReply> {
    core::str::from_utf8(text).ok().and_then(|text| text.parse().ok()).filter(|n: &i64| *n < 1 << 40).ok_or(BadReply)
}

#[cfg(test)]
mod tests {
    use alloc::string::String;

    use super::*;
    use crate::kv::PARAMS;
    use crate::kv::resp::{Limits, parse};

    fn load(args: &[&str]) -> Load {
        Load::from_params(&Params::parse(PARAMS, args.iter().copied()).unwrap()).unwrap()
    }

    #[test]
    fn requests_are_resp_the_server_parses_and_the_mix_is_as_asked() {
        let load = load(&["reads=30", "keys=100", "value_bytes=5"]);
        let mut out = Vec::new();
        for n in 0..1000 {
            load.request(n, &mut out);
        }
        let (mut at, mut gets, mut sets) = (0, 0, 0);
        while let Some((words, used)) = parse(&out[at..], &Limits::default()).unwrap() {
            match words[0] {
                b"GET" => gets += 1,
                b"SET" => {
                    assert_eq!(words[2], b"xxxxx");
                    sets += 1;
                }
                other => panic!("{other:?}"),
            }
            assert!(String::from_utf8(words[1].to_vec()).unwrap().starts_with("key:0000000000"));
            at += used;
        }
        assert_eq!((at, gets + sets), (out.len(), 1000));
        assert!((250..350).contains(&gets), "{gets} GETs of 1000 at reads=30");
    }

    #[test]
    fn the_load_is_checked() {
        let error =
            |args: &[&str]| Load::from_params(&Params::parse(PARAMS, args.iter().copied()).unwrap()).unwrap_err();
        assert!(matches!(error(&["clients=0"]), ParamError::OutOfRange { .. }));
        assert!(matches!(error(&["pipeline=2000"]), ParamError::OutOfRange { .. }));
        assert!(matches!(error(&["reads=101"]), ParamError::OutOfRange { .. }));
        assert_eq!(load(&["rate=0"]).rate, None);
        assert_eq!(load(&["rate=5000"]).rate, Some(5000));
        assert_eq!(load(&[]).checksum(), load(&[]).checksum());
        assert_ne!(load(&[]).checksum(), load(&["requests=7"]).checksum());
    }

    #[test]
    fn replies_are_measured_whole_or_not_at_all() {
        let replies: &[(&[u8], usize, bool)] = &[
            (b"+OK\r\n", 5, false),
            (b"-ERR no\r\n", 9, true),
            (b":42\r\n", 5, false),
            (b"$-1\r\n", 5, false),
            (b"$3\r\nabc\r\n", 9, false),
            (b"$0\r\n\r\n", 6, false),
            (b"*2\r\n$1\r\na\r\n-ERR x\r\n", 19, true),
            (b"*0\r\n", 4, false),
        ];
        for &(reply, len, error) in replies {
            let mut buf = reply.to_vec();
            buf.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(reply_len(&buf), Ok(Some((len, error))), "{reply:?}");
            for cut in 0..reply.len() {
                assert_eq!(reply_len(&reply[..cut]), Ok(None), "{reply:?} cut at {cut}");
            }
        }
        // "\r\n" alone was found by the fuzzer (fuzz/fuzz_targets/resp.rs): it panicked.
        for bad in
            [&b"?\r\n"[..], b"\r\n", b"\n", b"+OK\n", b"$x\r\n", b"$3\r\nabcd\r\n", b"$-5\r\n", b"$99999999999999\r\n"]
        {
            assert_eq!(reply_len(bad), Err(BadReply), "{bad:?}");
        }
    }
}
