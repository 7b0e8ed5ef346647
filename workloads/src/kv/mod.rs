//! The protocol and table of `kv`, a Redis-protocol key-value server: [`resp`] reads requests
//! and writes replies, [`store`] is the sharded table under the runtime's spinlock family, and
//! [`commands`] answers each request; [`load`] is what a load generator sends it and how it
//! reads the replies. The server around them (sockets, threads) is the guest program's, the
//! load generator around [`load`] the monitor's; these parts are pure and tested here on host
//! threads.

pub mod commands;
pub mod load;
pub mod resp;
pub mod store;

use crate::WorkloadInfo;
use crate::params::ParamSpec;

/// `kv` as the registry lists it.
pub const WORKLOAD: WorkloadInfo = WorkloadInfo {
    name: "kv",
    about: "a Redis-protocol key-value server on the VM's NIC (memcached, redis)",
    unit: "requests",
    params: PARAMS,
    matrix_args: Some(&[("requests", "20000")]),
    endless_args: &[("requests", "1000000000000")],
    served: true,
};

/// The parameters of `kv`: the server's, then those of the load a scenario drives it with
/// ([`load::Load`]), which the server ignores.
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::int("port", "6379", "the TCP port to listen on"),
    ParamSpec::int("shards", "64", "buckets of the table, each under its own lock, 1-65536"),
    ParamSpec::int("max_value_mib", "8", "the longest value (and request word), MiB"),
    ParamSpec::int("max_memory_mib", "64", "bytes of keys and values the table may hold, MiB"),
    ParamSpec::int("requests", "100000", "scenarios: requests the monitor's load generator sends"),
    ParamSpec::int("clients", "50", "scenarios: the load's connections, 1-1024"),
    ParamSpec::int("pipeline", "1", "scenarios: requests a connection has in flight, 1-1024"),
    ParamSpec::int("rate", "0", "scenarios: an open loop at this many requests/s (0: a closed loop)"),
    ParamSpec::int("keys", "10000", "scenarios: the keys requests pick from, 1-2^32"),
    ParamSpec::int("reads", "50", "scenarios: percent of requests that are GETs (the others SETs)"),
    ParamSpec::int("value_bytes", "3", "scenarios: bytes of each SET's value"),
];

#[cfg(all(test, feature = "std"))]
mod tests {
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    use super::commands::{After, Command, execute};
    use super::resp::{Limits, parse};
    use super::store::{Shard, Store};
    use crate::native::NativeRuntime;
    use crate::runtime::Runtime;

    type NativeStore = Store<<NativeRuntime as Runtime>::SpinLock<Shard>>;

    fn store(max_memory: usize) -> NativeStore {
        let rt = NativeRuntime::new(Some(2));
        Store::new(8, max_memory, 1 << 20, |shard| rt.spin_lock(shard))
    }

    /// Runs the inline or RESP `requests` at `now` and returns the replies as text.
    fn session(store: &NativeStore, now: u64, requests: &str) -> (String, After) {
        let mut out = Vec::new();
        let mut buf = requests.as_bytes();
        let mut after = After::Continue;
        while let Some((words, used)) = parse(buf, &Limits::default()).unwrap() {
            after = execute(store, &words, now, &mut out).1;
            buf = &buf[used..];
        }
        (String::from_utf8(out).unwrap(), after)
    }

    fn replies(store: &NativeStore, requests: &str) -> String {
        session(store, 0, requests).0
    }

    #[test]
    fn strings_and_counters() {
        let s = store(1 << 20);
        assert_eq!(replies(&s, "PING\r\nping hi\r\necho x\r\n"), "+PONG\r\n$2\r\nhi\r\n$1\r\nx\r\n");
        assert_eq!(replies(&s, "SET k v\r\nGET k\r\nGET nope\r\n"), "+OK\r\n$1\r\nv\r\n$-1\r\n");
        assert_eq!(replies(&s, "INCR n\r\nINCRBY n 41\r\nDECR n\r\nGET n\r\n"), ":1\r\n:42\r\n:41\r\n$2\r\n41\r\n");
        assert_eq!(replies(&s, "INCR k\r\n"), "-ERR value is not an integer or out of range\r\n");
        assert_eq!(
            replies(&s, "SET big 9223372036854775807\r\nINCR big\r\n"),
            "+OK\r\n-ERR increment or decrement would overflow\r\n"
        );
        assert_eq!(replies(&s, "APPEND k ww\r\nSTRLEN k\r\nSTRLEN none\r\n"), ":3\r\n:3\r\n:0\r\n");
        assert_eq!(replies(&s, "MSET a 1 b 2\r\nMGET a b c\r\n"), "+OK\r\n*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n");
        assert_eq!(replies(&s, "EXISTS a b c a\r\nDEL a c\r\nEXISTS a\r\n"), ":3\r\n:1\r\n:0\r\n");
        assert_eq!(replies(&s, "DBSIZE\r\nFLUSHALL\r\nDBSIZE\r\n"), ":4\r\n+OK\r\n:0\r\n");
        assert_eq!(s.used(), 0);
    }

    #[test]
    fn set_options_and_expiry() {
        let s = store(1 << 20);
        assert_eq!(replies(&s, "SET k v NX\r\nSET k w NX\r\nGET k\r\n"), "+OK\r\n$-1\r\n$1\r\nv\r\n");
        assert_eq!(replies(&s, "SET j v XX\r\nSET k w XX\r\nGET k\r\n"), "$-1\r\n+OK\r\n$1\r\nw\r\n");
        assert_eq!(session(&s, 1000, "SET t v PX 500\r\nSET u v EX 1\r\n").0, "+OK\r\n+OK\r\n");
        assert_eq!(session(&s, 1499, "GET t\r\n").0, "$1\r\nv\r\n");
        assert_eq!(session(&s, 1500, "GET t\r\nEXISTS u\r\n").0, "$-1\r\n:1\r\n");
        assert_eq!(session(&s, 2000, "GET u\r\nINCR u\r\n").0, "$-1\r\n:1\r\n");
        for bad in ["SET k v EX 0", "SET k v PX -5", "SET k v EX 9223372036854775807"] {
            assert_eq!(replies(&s, &format!("{bad}\r\n")), "-ERR invalid expire time in 'set' command\r\n", "{bad}");
        }
        for bad in ["SET k v NX XX", "SET k v EX 1 PX 1", "SET k v EX", "SET k v KEEP"] {
            assert_eq!(replies(&s, &format!("{bad}\r\n")), "-ERR syntax error\r\n", "{bad}");
        }
        assert_eq!(replies(&s, "SET k v EX x\r\n"), "-ERR value is not an integer or out of range\r\n");
    }

    #[test]
    fn errors_and_the_connection_commands() {
        let s = store(1 << 20);
        assert_eq!(replies(&s, "GET\r\n"), "-ERR wrong number of arguments for 'get' command\r\n");
        assert_eq!(replies(&s, "MSET a\r\n"), "-ERR wrong number of arguments for 'mset' command\r\n");
        assert_eq!(replies(&s, "FOO bar\r\n"), "-ERR unknown command 'FOO', with args beginning with: \r\n");
        assert_eq!(replies(&s, "SELECT 0\r\nSELECT 1\r\n"), "+OK\r\n-ERR DB index is out of range\r\n");
        assert_eq!(
            replies(&s, "CONFIG GET save\r\nCONFIG GET appendonly\r\nCONFIG GET maxmemory\r\n"),
            "*2\r\n$4\r\nsave\r\n$0\r\n\r\n*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n*0\r\n"
        );
        assert_eq!(replies(&s, "CONFIG SET save x\r\n"), "-ERR syntax error\r\n");
        assert_eq!(session(&s, 0, "QUIT\r\n"), ("+OK\r\n".into(), After::Close));
        assert_eq!(session(&s, 0, "shutdown nosave\r\n"), (String::new(), After::Shutdown));
        assert_eq!(Command::ALL.iter().enumerate().filter(|(i, c)| c.index() != *i).count(), 0);
    }

    #[test]
    fn limits_refuse_a_write_and_keep_the_table() {
        let s = Store::new(2, 100, 10, |shard| NativeRuntime::new(Some(1)).spin_lock(shard));
        let mut out = Vec::new();
        execute(&s, &[b"SET", b"k", b"0123456789"], 0, &mut out);
        execute(&s, &[b"SET", b"k", b"0123456789a"], 0, &mut out);
        execute(&s, &[b"APPEND", b"k", b"x"], 0, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK\r\n-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n\
             -ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
        );
        let mut out = Vec::new();
        for i in 0..20u8 {
            execute(&s, &[b"SET", &[b'a' + i], b"0123456789"], 0, &mut out);
        }
        assert!(String::from_utf8(out).unwrap().contains("-OOM command not allowed"));
        assert!(s.used() <= 100, "{}", s.used());
    }

    #[test]
    fn incr_is_exact_from_many_threads() {
        let s = store(1 << 20);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        execute(&s, &[b"INCR", b"n"], 0, &mut Vec::new());
                    }
                });
            }
        });
        assert_eq!(replies(&s, "GET n\r\n"), "$4\r\n8000\r\n");
    }
}
