//! `tandem bench kv`: the stock `redis-benchmark` (SET and GET) against the guest's `kv`
//! server (behind a user-mode port forward) and against `redis-server` on the host pinned to
//! as many cores as the guest has VCPUs, interleaved: requests/s, p50 and p99 latency, and
//! the guest's exits per request. Each guest run boots its own VM, so its exits are that
//! load's. Needs Debian's redis-tools and redis-server.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail, ensure};
use clap::Args;
use tandem_core::host::available_cores;
use tandem_core::stats::median;

use super::server::{GuestServer, exchange, free_port, wait_ready};

/// The port `kv` listens on in the guest.
const GUEST_PORT: u16 = 6379;
/// The tests run, in redis-benchmark's names.
const TESTS: [&str; 2] = ["SET", "GET"];

#[derive(Debug, Args)]
pub struct KvArgs {
    /// Runs of each measurement in each place (interleaved); medians are reported
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// VCPUs of the guest, and cores redis-server is pinned to
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// Requests of each test (redis-benchmark -n)
    #[arg(long, default_value_t = 200_000)]
    pub requests: u64,
    /// Connections (redis-benchmark -c)
    #[arg(long, default_value_t = 50)]
    pub clients: u32,
    /// Pipeline depths (redis-benchmark -P)
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub pipelines: Vec<u32>,
}

/// One test's result, as redis-benchmark reports it.
#[derive(Debug, Clone, Copy, Default)]
struct Result {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub fn kv(args: &KvArgs) -> anyhow::Result<()> {
    ensure!(
        args.runs > 0 && args.requests > 0 && args.clients > 0,
        "--runs, --requests and --clients must be positive"
    );
    let cores = available_cores();
    ensure!(cores.len() >= args.vcpus as usize, "{} cores available for {} VCPUs", cores.len(), args.vcpus);
    let pinned: Vec<String> = cores[..args.vcpus as usize].iter().map(usize::to_string).collect();
    println!(
        "redis-benchmark -t set,get -n {} -c {}: the guest's `kv` ({} VCPUs, --net user) against redis-server \
         pinned to cores {}; median of {} interleaved runs",
        args.requests,
        args.clients,
        args.vcpus,
        pinned.join(","),
        args.runs
    );
    println!(
        "{:>3} {:>4} {:>12} {:>12} {:>7} {:>18} {:>18} {:>10}",
        "-P", "test", "redis req/s", "kv req/s", "ratio", "redis p50/p99 ms", "kv p50/p99 ms", "exits/req"
    );
    for &pipeline in &args.pipelines {
        let mut native = Vec::new();
        let mut guest = Vec::new();
        let mut exits = Vec::new();
        for _ in 0..args.runs {
            native.push(against_redis_server(args, pipeline, &pinned.join(","))?);
            let (results, per_request) = against_kv(args, pipeline)?;
            guest.push(results);
            exits.push(per_request);
        }
        let exits = median(&exits).unwrap_or_default();
        for (t, test) in TESTS.iter().enumerate() {
            let (n, g) = (median_result(&native, t), median_result(&guest, t));
            println!(
                "{pipeline:>3} {test:>4} {:>12.0} {:>12.0} {:>7.3} {:>18} {:>18} {exits:>10.4}",
                n.rps,
                g.rps,
                g.rps / n.rps,
                format!("{:.3}/{:.3}", n.p50_ms, n.p99_ms),
                format!("{:.3}/{:.3}", g.p50_ms, g.p99_ms),
            );
        }
    }
    Ok(())
}

/// The run with the median requests/s of test `t`.
fn median_result(runs: &[[Result; 2]], t: usize) -> Result {
    let mut results: Vec<Result> = runs.iter().map(|run| run[t]).collect();
    results.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    results[(results.len() - 1) / 2]
}

/// redis-benchmark against a fresh `kv` guest; its results and the guest's exits per
/// request.
fn against_kv(args: &KvArgs, pipeline: u32) -> anyhow::Result<([Result; 2], f64)> {
    let server = GuestServer::start("kv", &[format!("port={GUEST_PORT}")], GUEST_PORT, args.vcpus)?;
    let results = server.wait_ready(ping).and_then(|()| redis_benchmark(server.addr, args, pipeline));
    let shutdown = shut_down(server.addr);
    let report = server.finish()?;
    let results = results?;
    shutdown?;
    let exits: u64 = report.vcpus.iter().map(|vcpu| vcpu.total()).sum();
    Ok((results, exits as f64 / (args.requests * TESTS.len() as u64) as f64))
}

/// redis-benchmark against a fresh redis-server pinned to `cores`, persistence off.
fn against_redis_server(args: &KvArgs, pipeline: u32, cores: &str) -> anyhow::Result<[Result; 2]> {
    let port = free_port()?;
    let mut server = RedisServer(
        Command::new("taskset")
            .args(["-c", cores, "redis-server", "--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server under taskset (install Debian's redis-server)")?,
    );
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    wait_ready("redis-server", addr, ping)?;
    let results = redis_benchmark(addr, args, pipeline);
    shut_down(addr)?;
    server.0.wait()?;
    results
}

/// Kills a redis-server left running by an error.
struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs redis-benchmark's SET and GET against `addr` and reads its CSV.
fn redis_benchmark(addr: SocketAddr, args: &KvArgs, pipeline: u32) -> anyhow::Result<[Result; 2]> {
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-t", "set,get", "--csv"])
        .args(["-n", &args.requests.to_string(), "-c", &args.clients.to_string(), "-P", &pipeline.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run redis-benchmark (install Debian's redis-tools)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("redis-benchmark failed: {text}");
    }
    let mut results = [Result::default(); 2];
    for (t, test) in TESTS.iter().enumerate() {
        let row = text
            .lines()
            .find(|line| line.starts_with(&format!("\"{test}\"")))
            .with_context(|| format!("no {test} row in redis-benchmark's output:\n{text}"))?;
        let fields: Vec<f64> =
            row.split(',').skip(1).map(|field| field.trim_matches('"').parse().unwrap_or(f64::NAN)).collect();
        // rps, avg, min, p50, p95, p99, max
        ensure!(fields.len() >= 6, "unexpected redis-benchmark row: {row}");
        results[t] = Result { rps: fields[0], p50_ms: fields[3], p99_ms: fields[5] };
    }
    Ok(results)
}

/// A PING answered.
fn ping(addr: SocketAddr) -> std::io::Result<()> {
    exchange(addr, b"PING\r\n", b"+PONG\r\n")
}

/// Asks the server at `addr` to shut down (redis-server without saving).
fn shut_down(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr} to shut it down"))?;
    stream.write_all(b"SHUTDOWN NOSAVE\r\n")?;
    Ok(())
}
