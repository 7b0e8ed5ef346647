//! End-to-end tests of the `kv` server: the guest program under the real `tandem` binary,
//! through a loopback port forward, driven by the stock `redis-benchmark` (from Debian's
//! redis-tools, which `.ci/run` installs) and by a client of the test's own speaking RESP;
//! and `kv` VMs in scenarios, driven by the monitor's load generator.
//!
//! They need /dev/kvm and fail loudly without it, unless TANDEM_SKIP_KVM=1 says to skip them.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kvm_available;
use common::process::Tandem;
use tandem_core::host::available_cores;
use tandem_core::results::References;
use tandem_core::scenario::Scenario;
use tandem_kvm::image::DEFAULT_GUEST;
use tandem_kvm::open_kvm;
use tandem_kvm::runner::{measure_references, run_scenario};

/// `tandem run kv` on 2 VCPUs behind a forward of a free loopback port.
struct Kv {
    server: Tandem,
    addr: SocketAddr,
}

impl Kv {
    fn start() -> Kv {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let net = format!("user,hostfwd=tcp:127.0.0.1:{port}-:6379");
        let server = Tandem::start(&["run", "kv", "--vcpus", "2", "--timeout", "120", "--net", &net]);
        let kv = Kv { server, addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)) };
        kv.wait_serving();
        kv
    }

    /// Retries a PING until it is answered (the guest may still be booting).
    fn wait_serving(&self) {
        let started = Instant::now();
        loop {
            let attempt = || -> std::io::Result<String> {
                let mut client = Client::connect(self.addr)?;
                client.call(&["PING"])
            };
            match attempt() {
                Ok(reply) if reply == "+PONG" => return,
                _ if started.elapsed() > Duration::from_secs(20) => panic!("kv never answered a PING"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends SHUTDOWN and returns what the server printed; it must exit 0.
    fn shut_down(self) -> String {
        let mut client = Client::connect(self.addr).unwrap();
        client.send(&["SHUTDOWN"]).unwrap();
        self.server.finish_ok(Duration::from_secs(20)).stdout
    }
}

/// A RESP client: sends arrays of bulk strings, reads one reply line (and a bulk string's
/// body) at a time.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(Client { writer: stream.try_clone()?, reader: BufReader::new(stream) })
    }

    fn encode(words: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", words.len()).into_bytes();
        for word in words {
            out.extend_from_slice(format!("${}\r\n{word}\r\n", word.len()).as_bytes());
        }
        out
    }

    fn send(&mut self, words: &[&str]) -> std::io::Result<()> {
        self.writer.write_all(&Self::encode(words))
    }

    /// One reply: a status, error or integer line as it is, a bulk string as its body (or
    /// "(nil)").
    fn reply(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end().to_owned();
        match line.strip_prefix('$').map(str::parse::<i64>) {
            Some(Ok(-1)) => Ok("(nil)".into()),
            Some(Ok(len)) => {
                let mut body = vec![0; len as usize + 2];
                self.reader.read_exact(&mut body)?;
                body.truncate(len as usize);
                Ok(String::from_utf8(body).unwrap())
            }
            _ => Ok(line),
        }
    }

    fn call(&mut self, words: &[&str]) -> std::io::Result<String> {
        self.send(words)?;
        self.reply()
    }
}

#[test]
fn sigint_ends_kv_with_its_summary() {
    if !kvm_available() {
        return;
    }
    let kv = Kv::start();
    let mut client = Client::connect(kv.addr).unwrap();
    for _ in 0..100 {
        assert_eq!(client.call(&["INCR", "n"]).unwrap().chars().next(), Some(':'));
    }
    kv.server.signal(libc::SIGINT);
    let run = kv.server.finish(Duration::from_secs(10));
    assert_eq!(run.status, Some(130), "{}", run.stderr);
    assert!(run.stdout.contains("incr=100") && run.stdout.contains("kv: "), "{}", run.stdout);
    assert!(run.stdout.contains("locks: 100 acquisitions"), "{}", run.stdout);
    assert!(run.stderr.contains("VM kv exited with code 0"), "{}", run.stderr);
}

/// Runs the stock redis-benchmark against `addr`; it must complete every test without
/// errors.
fn redis_benchmark(addr: SocketAddr, pipeline: u32) {
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-t", "ping,set,get,incr,mset"])
        .args(["-n", "20000", "-c", "50", "-P", &pipeline.to_string(), "-q"])
        .output()
        .expect("redis-benchmark is missing: install Debian's redis-tools (.ci/run does)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "redis-benchmark -P {pipeline} failed:\n{stdout}\n{stderr}");
    for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET"] {
        let line = stdout
            .lines()
            .flat_map(|line| line.split('\r'))
            .find(|l| l.starts_with(test) && l.contains("requests per second"));
        assert!(line.is_some(), "-P {pipeline}: no result for {test}:\n{stdout}\n{stderr}");
    }
    assert!(!stdout.contains("ERR") && !stderr.contains("rror"), "-P {pipeline}:\n{stdout}\n{stderr}");
}

#[test]
fn redis_benchmark_runs_against_kv_with_and_without_pipelining() {
    if !kvm_available() {
        return;
    }
    let kv = Kv::start();
    redis_benchmark(kv.addr, 1);
    redis_benchmark(kv.addr, 16);
    let summary = kv.shut_down();
    assert!(summary.contains("kv: requests") && summary.contains("set=") && summary.contains("mset="), "{summary}");
}

#[test]
fn kv_keeps_values_counters_and_bad_clients_apart() {
    if !kvm_available() {
        return;
    }
    let kv = Kv::start();
    let mut client = Client::connect(kv.addr).unwrap();

    // Values round-trip, a 1 MiB one too.
    assert_eq!(client.call(&["SET", "greeting", "hello world"]).unwrap(), "+OK");
    assert_eq!(client.call(&["GET", "greeting"]).unwrap(), "hello world");
    let big: String = (0..1 << 20).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    assert_eq!(client.call(&["SET", "big", &big]).unwrap(), "+OK");
    assert_eq!(client.call(&["GET", "big"]).unwrap(), big);

    // INCR stays exact from 8 connections at once.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let addr = kv.addr;
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                for _ in 0..500 {
                    client.call(&["INCR", "counter"]).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|thread| thread.join().unwrap());
    assert_eq!(client.call(&["GET", "counter"]).unwrap(), "4000");

    // 1000 pipelined commands, sent at once, answered in order.
    let batch: Vec<u8> = (0..1000).flat_map(|i| Client::encode(&["SET", &format!("k{i}"), &i.to_string()])).collect();
    client.writer.write_all(&batch).unwrap();
    for _ in 0..1000 {
        assert_eq!(client.reply().unwrap(), "+OK");
    }
    assert_eq!(client.call(&["GET", "k999"]).unwrap(), "999");

    // Garbage: a protocol error, then the connection is closed; a client dying in the
    // middle of a command; the server serves on.
    let mut garbage = Client::connect(kv.addr).unwrap();
    garbage.writer.write_all(b"*2\r\n$3\r\nGET\r\n:nonsense\r\n").unwrap();
    assert_eq!(garbage.reply().unwrap(), "-ERR Protocol error: expected '$', got ':'");
    assert!(garbage.reply().is_err(), "the connection stays open after a protocol error");
    let mut dying = Client::connect(kv.addr).unwrap();
    dying.writer.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$100\r\nonly part").unwrap();
    drop(dying);
    assert_eq!(client.call(&["DBSIZE"]).unwrap(), ":1003");

    let summary = kv.shut_down();
    assert!(summary.contains("incr=4000"), "{summary}");
}

/// A `kv` VM driven by the monitor's load generator beside a busy `cpu` VM, on (at most) 2
/// pCPUs.
fn kv_beside_cpu(kv_args: &str, timeout_s: u32) -> Scenario {
    let pcpus = available_cores().len().min(2);
    let text = format!(
        "pcpus = {pcpus}\ntimeout_s = {timeout_s}\n[policy]\nname = \"credit\"\n\
         [[vm]]\nname = \"kv\"\nvcpus = 2\nworkload = \"kv\"\nargs = {{ {kv_args} }}\n\
         [[vm]]\nname = \"cpu\"\nvcpus = 2\nworkload = \"cpu\"\nargs = {{ tasks = 40 }}\n"
    );
    Scenario::parse(Path::new("kv-beside-cpu.toml"), &text).unwrap()
}

#[test]
fn a_scenario_drives_kv_with_its_load_and_sets_it_against_its_reference() {
    if !kvm_available() {
        return;
    }
    let kvm = open_kvm().unwrap();
    let scenario = kv_beside_cpu("requests = 3000, clients = 8, pipeline = 4", 60);
    let mut references = References::default();
    measure_references(&kvm, DEFAULT_GUEST, &scenario, &mut references, false).unwrap();
    let result = run_scenario(&kvm, DEFAULT_GUEST, &scenario, Some(&references)).unwrap();
    for vm in &result.vms {
        assert!(vm.ok, "{}: {}", vm.name, vm.outcome);
        assert!(vm.ratio.is_some_and(|ratio| ratio > 0.0), "{}: {:?}", vm.name, vm.ratio);
    }
    let kv = result.vms[0].record.as_ref().unwrap();
    let load = scenario.vms[0].served().unwrap().unwrap().load;
    assert_eq!((kv.ops, kv.unit.as_str(), kv.checksum), (3000, "requests", load.checksum()));
    let latency = kv.latency.expect("a served VM's record has its latency");
    assert!(0 < latency.p50_ns && latency.p50_ns <= latency.p99_ns, "{latency:?}");
    assert!(latency.p99_ns <= latency.p999_ns && latency.p999_ns <= latency.max_ns, "{latency:?}");
    // The guest's side: the control connection (after any PING tried while it booted) and
    // the 8 clients', every request counted, each GET or SET under one shard's lock.
    assert!(kv.per_thread.len() >= 9, "{:?}", kv.per_thread);
    assert!(kv.per_thread.iter().sum::<u64>() >= 3000, "{:?}", kv.per_thread);
    assert!(kv.lock_stats.unwrap().acquisitions >= 3000, "{:?}", kv.lock_stats);
    assert!(result.vms[1].record.as_ref().unwrap().latency.is_none(), "cpu serves no one");
}

#[test]
fn an_open_loop_sends_each_request_when_it_is_due() {
    if !kvm_available() {
        return;
    }
    let kvm = open_kvm().unwrap();
    let scenario = kv_beside_cpu("requests = 600, clients = 4, rate = 2000", 60);
    let result = run_scenario(&kvm, DEFAULT_GUEST, &scenario, None).unwrap();
    let kv = &result.vms[0];
    assert!(kv.ok, "{}", kv.outcome);
    let record = kv.record.as_ref().unwrap();
    // The last request is due 599 / 2000 s after the first: no load can finish sooner.
    assert!(record.elapsed_ns >= 299_500_000, "{} requests in {} ns", record.ops, record.elapsed_ns);
    assert!(record.rate() <= 2000.0 * 1.01, "{}", record.rate());
}

#[test]
fn a_kv_vm_stopped_before_its_load_is_answered_fails_alone_in_its_row() {
    if !kvm_available() {
        return;
    }
    let kvm = open_kvm().unwrap();
    let scenario = kv_beside_cpu("requests = 1000000000, clients = 4", 3);
    let started = Instant::now();
    let result = run_scenario(&kvm, DEFAULT_GUEST, &scenario, None).unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let (kv, cpu) = (&result.vms[0], &result.vms[1]);
    assert!(!kv.ok && kv.timed_out && kv.record.is_none(), "{kv:?}");
    assert!(kv.outcome.contains("its load: the VM ended after"), "{}", kv.outcome);
    assert!(cpu.ok, "{}", cpu.outcome);
}
