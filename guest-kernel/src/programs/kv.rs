//! `kv [port=6379] [shards=64] [max_value_mib=8] [max_memory_mib=64]`: a Redis-protocol
//! key-value server (`workloads::kv`: RESP2 and inline requests, pipelining) on the VM's
//! NIC, a thread per connection, over one table sharded under the VM's spinlock family
//! (`locks=`). It serves until a client sends SHUTDOWN or the monitor asks the VM to end
//! (SIGINT or SIGTERM to `tandem run`), then prints
//! the requests by command, reports its record (requests from the first to the last, per
//! connection, and the table's lock counters) and exits 0. A client that sends a malformed
//! request gets the protocol error and its connection is closed; the others are served on.
//! The parameters of a scenario's load (`requests`, `clients`, ...) are the monitor's.

use alloc::format;
use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use tandem_rt::net::{TcpListener, TcpStream};
use tandem_rt::workloads::kv::commands::{After, Command, execute};
use tandem_rt::workloads::kv::resp::{self, Limits, reply};
use tandem_rt::workloads::kv::store::{Shard, Store};
use tandem_rt::workloads::kv::WORKLOAD;
use tandem_rt::workloads::record::LockStats;
use tandem_rt::workloads::{Lock, ParamError, ParamSpec, Params, Record, Runtime};
use tandem_rt::{GuestRuntime, clock, println, sched};

pub const PARAMS: &[ParamSpec] = WORKLOAD.params;

/// Bytes read from a connection at a time.
const READ_BYTES: usize = 16 * 1024;

type FamilyStore = Store<<GuestRuntime as Runtime>::SpinLock<Shard>>;

/// What one connection did.
#[derive(Default)]
struct Connection {
    requests: AtomicU64,
    /// When its last batch of requests was answered.
    last_ns: AtomicU64,
}

/// What the connections share.
struct Server {
    store: FamilyStore,
    limits: Limits,
    /// Requests by command, in [`Command::ALL`]'s order.
    requests: [AtomicU64; Command::ALL.len()],
    /// Each connection's figures, in the order they were accepted.
    connections: <GuestRuntime as Runtime>::Mutex<Vec<Arc<Connection>>>,
    /// When the first request arrived (0: none yet).
    first_request_ns: AtomicU64,
    /// The record's skeleton: the parameters, every one.
    params: Params,
}

pub fn run(params: &Params) -> Result<i64, ParamError> {
    let port = params.u64_in("port", 1..=u64::from(u16::MAX), "not a TCP port")? as u16;
    let shards = params.u64_in("shards", 1..=65536, "between 1 and 65536 shards")? as usize;
    let max_value = params.u64_in("max_value_mib", 1..=512, "between 1 and 512 MiB")? as usize * (1 << 20);
    let max_memory = params.u64_in("max_memory_mib", 1..=1 << 20, "at least 1 MiB")? as usize * (1 << 20);
    let params = params.clone();
    sched::start(move || {
        let listener = match TcpListener::bind(port) {
            Ok(listener) => listener,
            Err(error) => {
                println!("kv: cannot listen on port {port}: {error}");
                return 1;
            }
        };
        let server = Arc::new(Server {
            store: Store::new(shards, max_memory, max_value, |shard| GuestRuntime.spin_lock(shard)),
            limits: Limits { max_bulk: max_value, ..Limits::default() },
            requests: [const { AtomicU64::new(0) }; Command::ALL.len()],
            connections: GuestRuntime.mutex(Vec::new()),
            first_request_ns: AtomicU64::new(0),
            params,
        });
        let stopping = Arc::clone(&server);
        sched::on_stop(move || shut_down(&stopping));
        println!("kv: listening on port {port} ({shards} shards, locks={})", GuestRuntime.lock_family());
        loop {
            match listener.accept() {
                Ok(stream) => {
                    let server = Arc::clone(&server);
                    let served = Arc::new(Connection::default());
                    server.connections.lock().push(Arc::clone(&served));
                    drop(sched::spawn(move || {
                        serve(stream, &server, &served);
                        0
                    }));
                }
                Err(error) => {
                    println!("kv: accept failed: {error}");
                    return 1;
                }
            }
        }
    })
}

/// Answers one connection's requests, pipelined ones in a batch, until it closes, quits,
/// breaks the protocol, or shuts the server down.
fn serve(mut stream: TcpStream, server: &Server, served: &Connection) {
    let mut input: Vec<u8> = Vec::new();
    let mut output = Vec::new();
    let mut chunk = vec![0; READ_BYTES];
    loop {
        let mut used = 0;
        let mut close = false;
        loop {
            match resp::parse(&input[used..], &server.limits) {
                Ok(Some((words, len))) => {
                    used += len;
                    if words.is_empty() {
                        continue;
                    }
                    if served.requests.fetch_add(1, Ordering::Relaxed) == 0 {
                        _ = server.first_request_ns.compare_exchange(0, now_ns(), Ordering::Relaxed, Ordering::Relaxed);
                    }
                    let (command, after) = execute(&server.store, &words, now_ms(), &mut output);
                    server.requests[command.index()].fetch_add(1, Ordering::Relaxed);
                    match after {
                        After::Continue => {}
                        After::Close => {
                            close = true;
                            break;
                        }
                        After::Shutdown => shut_down(server),
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    reply::error(&mut output, &format!("ERR Protocol error: {error}"));
                    close = true;
                    break;
                }
            }
        }
        input.drain(..used);
        if used > 0 {
            served.last_ns.store(now_ns(), Ordering::Relaxed);
        }
        if !output.is_empty() {
            if stream.write_all(&output).is_err() {
                return;
            }
            output.clear();
        }
        if close {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(read) => input.extend_from_slice(&chunk[..read]),
        }
    }
}

/// Prints what the server did, reports its record and ends the VM.
fn shut_down(server: &Server) -> ! {
    let counts: Vec<_> = Command::ALL
        .iter()
        .zip(&server.requests)
        .map(|(command, count)| (command.name(), count.load(Ordering::Relaxed)))
        .filter(|(_, count)| *count > 0)
        .map(|(name, count)| format!("{name}={count}"))
        .collect();
    let mut locks = LockStats::ZERO;
    for shard in server.store.shards() {
        locks.add(shard.stats());
    }
    let connections = server.connections.lock();
    let per_thread: Vec<u64> = connections.iter().map(|c| c.requests.load(Ordering::Relaxed)).collect();
    let last = connections.iter().map(|c| c.last_ns.load(Ordering::Relaxed)).max().unwrap_or_default();
    drop(connections);
    let first = server.first_request_ns.load(Ordering::Relaxed);
    let record = Record {
        workload: WORKLOAD.name.to_string(),
        runtime: GuestRuntime.name().to_string(),
        locks: GuestRuntime.lock_family().to_string(),
        cpus: GuestRuntime.cpus() as u32,
        params: server.params.values().clone(),
        elapsed_ns: last.saturating_sub(first),
        ops: per_thread.iter().sum(),
        unit: WORKLOAD.unit.to_string(),
        checksum: 0,
        per_thread,
        lock_stats: Some(locks),
        latency: None,
    };
    println!("kv: requests {}; {} keys", counts.join(" "), server.store.len());
    println!("{}", record.summary());
    tandem_rt::report(record.to_json().as_bytes()).expect("the monitor takes the record");
    tandem_rt::exit(0)
}

/// Milliseconds since boot, the clock expiry is set against.
fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

fn now_ns() -> u64 {
    clock::ticks_to_ns(clock::tsc())
}
