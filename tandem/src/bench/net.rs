//! `tandem bench net`: the guest's TCP echo server (`echo`, through user-mode networking's
//! port forward) against a native echo server on the host, driven by the same client side by
//! side: round-trip latency and requests/s at each connection count, bulk throughput over
//! one connection, and the guest's exits per request. Each guest measurement boots its own
//! VM, so its exit counts belong to that load alone (plus one boot, negligible against the
//! requests).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use pv_abi::hypercall::Hypercall;
use tandem_core::stats::{Percentiles, median};
use tandem_kvm::open_kvm;
use tandem_kvm::vm::RunReport;

use super::server::{GuestServer, exchange};

/// The port the guest's echo server listens on.
const GUEST_PORT: u16 = 7;

#[derive(Debug, Args)]
pub struct NetArgs {
    /// Runs of each measurement in each place (interleaved); medians are reported
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// VCPUs of the guest
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// Concurrent connections of the latency runs
    #[arg(long, value_delimiter = ',', default_value = "1,50")]
    pub connections: Vec<usize>,
    /// Seconds each latency run lasts
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Bytes of each request (echoed back whole before the next is sent)
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// MiB echoed over one connection for the throughput run (0 for none)
    #[arg(long, default_value_t = 64)]
    pub bulk_mib: usize,
}

/// What one closed-loop run measured.
#[derive(Debug, Clone, Copy)]
struct Load {
    requests: u64,
    per_second: f64,
    /// Round trips in nanoseconds.
    rtt: Percentiles,
}

/// What one guest run measured beyond the load: its exits per request, in all and of the
/// kinds the network causes (an idle VCPU's block, a VCPU kicking another, a notification of
/// the sleeping backend).
#[derive(Debug, Clone, Copy)]
struct GuestLoad {
    load: Load,
    exits_per_request: f64,
    blocks: f64,
    kicks: f64,
    notifications: f64,
}

pub fn net(args: &NetArgs) -> anyhow::Result<()> {
    ensure!(args.runs > 0 && args.size > 0 && args.seconds > 0.0, "--runs, --size and --seconds must be positive");
    open_kvm()?;
    let native = NativeEcho::start()?;
    println!(
        "TCP echo, {}-byte requests, closed loop: the guest's `echo` ({} VCPUs, --net user, hostfwd) against a \
         native thread-per-connection echo server; median of {} interleaved runs",
        args.size, args.vcpus, args.runs
    );
    println!(
        "{:>6} {:>12} {:>12} {:>7} {:>18} {:>18} {:>10} {:>20}",
        "conns",
        "native req/s",
        "guest req/s",
        "ratio",
        "native p50/p99 us",
        "guest p50/p99 us",
        "exits/req",
        "block/kick/notify"
    );
    for &connections in &args.connections {
        let mut natives = Vec::new();
        let mut guests = Vec::new();
        for _ in 0..args.runs {
            natives.push(closed_loop(native.addr, connections, args.size, args.seconds)?);
            guests.push(guest_load(args, connections)?);
        }
        let guest_loads: Vec<Load> = guests.iter().map(|g| g.load).collect();
        let (native, guest) = (median_load(&natives), median_load(&guest_loads));
        let median_of =
            |f: fn(&GuestLoad) -> f64| median(&guests.iter().map(f).collect::<Vec<_>>()).unwrap_or_default();
        let exits = median_of(|g| g.exits_per_request);
        let kinds = format!(
            "{:.3}/{:.3}/{:.3}",
            median_of(|g| g.blocks),
            median_of(|g| g.kicks),
            median_of(|g| g.notifications)
        );
        let us = |load: &Load| format!("{:.0}/{:.0}", load.rtt.p50 as f64 / 1e3, load.rtt.p99 as f64 / 1e3);
        println!(
            "{connections:>6} {:>12.0} {:>12.0} {:>7.3} {:>18} {:>18} {exits:>10.4} {kinds:>20}",
            native.per_second,
            guest.per_second,
            guest.per_second / native.per_second,
            us(&native),
            us(&guest)
        );
    }
    if args.bulk_mib > 0 {
        let bytes = args.bulk_mib << 20;
        let mut natives = Vec::new();
        let mut guests = Vec::new();
        for _ in 0..args.runs {
            natives.push(bulk(native.addr, bytes)?);
            let (rate, _) = with_guest(args.vcpus, 1, |addr| bulk(addr, bytes))?;
            guests.push(rate);
        }
        let (native, guest) = (median(&natives).unwrap_or_default(), median(&guests).unwrap_or_default());
        println!(
            "bulk, {} MiB echoed over one connection: native {native:.0} MB/s, guest {guest:.0} MB/s, ratio {:.3}",
            args.bulk_mib,
            guest / native
        );
    }
    Ok(())
}

/// The load with the median requests/s of `loads`.
fn median_load(loads: &[Load]) -> Load {
    let mut sorted = loads.to_vec();
    sorted.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    sorted[(sorted.len() - 1) / 2]
}

/// One closed-loop run against a fresh guest, with its exits per request.
fn guest_load(args: &NetArgs, connections: usize) -> anyhow::Result<GuestLoad> {
    let (load, report) =
        with_guest(args.vcpus, connections, |addr| closed_loop(addr, connections, args.size, args.seconds))?;
    let per_request = |count: u64| count as f64 / load.requests.max(1) as f64;
    let of = |call: Hypercall| per_request(report.vcpus.iter().map(|vcpu| vcpu.hypercalls[call as usize]).sum());
    Ok(GuestLoad {
        load,
        exits_per_request: per_request(report.vcpus.iter().map(|vcpu| vcpu.total()).sum()),
        blocks: of(Hypercall::Block),
        kicks: of(Hypercall::Kick),
        notifications: of(Hypercall::NetNotify),
    })
}

/// Boots `echo` with a host port forwarded to it, waits until it echoes, runs `client`
/// against the forwarded address with `connections` connections, and waits for the guest to
/// end (it exits once they have closed).
fn with_guest<T>(
    vcpus: u32,
    connections: usize,
    client: impl FnOnce(SocketAddr) -> anyhow::Result<T>,
) -> anyhow::Result<(T, RunReport)> {
    // The probe that waits for the server is a connection too.
    let args = [format!("port={GUEST_PORT}"), format!("connections={}", connections + 1)];
    let server = GuestServer::start("echo", &args, GUEST_PORT, vcpus)?;
    let result = server.wait_ready(echo_once).and_then(|()| client(server.addr));
    let report = server.finish()?;
    Ok((result?, report))
}

/// One echo of a short message.
fn echo_once(addr: SocketAddr) -> std::io::Result<()> {
    exchange(addr, b"ping", b"ping")
}

/// `connections` clients, each sending `size` bytes and reading them back, again and again,
/// for `seconds`.
fn closed_loop(addr: SocketAddr, connections: usize, size: usize, seconds: f64) -> anyhow::Result<Load> {
    let streams: Vec<TcpStream> = (0..connections)
        .map(|_| {
            let stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(stream)
        })
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot open {connections} connections to {addr}"))?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let clients: Vec<JoinHandle<std::io::Result<Vec<u64>>>> = streams
        .into_iter()
        .map(|mut stream| {
            std::thread::spawn(move || {
                let request = vec![0x5a; size];
                let mut reply = vec![0; size];
                let mut rtts = Vec::new();
                while Instant::now() < until {
                    let sent = Instant::now();
                    stream.write_all(&request)?;
                    stream.read_exact(&mut reply)?;
                    rtts.push(sent.elapsed().as_nanos() as u64);
                }
                Ok(rtts)
            })
        })
        .collect();
    let mut rtts = Vec::new();
    for client in clients {
        rtts.extend(client.join().expect("a client thread panicked").context("an echo client failed")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = rtts.len() as u64;
    Ok(Load { requests, per_second: requests as f64 / elapsed, rtt: Percentiles::of(rtts) })
}

/// Echoes `bytes` over one connection, writing and reading at once; MB/s (10^6 bytes).
fn bulk(addr: SocketAddr, bytes: usize) -> anyhow::Result<f64> {
    let stream = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let started = Instant::now();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n])?;
            left -= n;
        }
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut reader = stream;
    let mut buffer = vec![0; 64 * 1024];
    let mut received = 0;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        received += n;
    }
    sender.join().expect("the bulk sender panicked")?;
    ensure!(received == bytes, "{received} bytes came back of {bytes}");
    Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// A thread-per-connection echo server on loopback, as the guest's `echo` is; it stops when
/// dropped.
struct NativeEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl NativeEcho {
    fn start() -> anyhow::Result<NativeEcho> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind loopback")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Acquire) {
                    break;
                }
                if let Ok(stream) = stream {
                    std::thread::spawn(move || echo(stream));
                }
            }
        });
        Ok(NativeEcho { addr, stop, acceptor: Some(acceptor) })
    }
}

impl Drop for NativeEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the acceptor, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Sends back whatever comes, until the peer closes.
fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 || stream.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
}
