//! The RESP request parser, which reads whatever a client sends, and the load generator's
//! reply scanner: never a panic, never a length past the input, and a whole request taken.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workloads::kv::load::reply_len;
use workloads::kv::resp::{Limits, parse};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_bulk: 1 << 16, max_args: 1 << 10, max_inline: 1 << 12 };
    let mut at = 0;
    while let Ok(Some((words, used))) = parse(&data[at..], &limits) {
        assert!(used > 0 && at + used <= data.len(), "a request of {used} bytes at {at} of {}", data.len());
        assert!(words.len() <= limits.max_args && words.iter().all(|w| w.len() <= limits.max_bulk.max(limits.max_inline)));
        at += used;
    }
    if let Ok(Some((len, _))) = reply_len(data) {
        assert!(len > 0 && len <= data.len());
    }
});
