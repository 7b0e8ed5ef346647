//! The load generator that drives a served workload (`kv`) in a scenario. Its clients
//! connect to the VM's forwarded port, send the requests of a [`Load`] in a closed loop (each
//! connection keeps `pipeline` requests in flight) or an open loop (each request sent when it
//! is due at `rate`, whatever came back), time every reply into an HDR histogram, and once
//! all are answered send SHUTDOWN, which ends the server's VM. One thread polls every
//! connection, as `redis-benchmark` does, so the load takes at most one host CPU.
//!
//! An open loop's latency counts from when a request was due, not from when it could be
//! sent, so a server that falls behind is charged for the wait (no coordinated omission).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use workloads::Record;
use workloads::kv::load::{Load, reply_len};
use workloads::record::Latency;

/// How long a wait for the server lasts before the VM's end is looked at again.
const POLL_PERIOD: Duration = Duration::from_millis(10);
/// Between tries to reach a server that does not answer yet (still booting).
const RETRY_PERIOD: Duration = Duration::from_millis(2);
/// How long a PING may take to be answered before another connection is tried.
const PING_WAIT: Duration = Duration::from_secs(1);
/// A connection that breaks this long before the VM's end broke because the VM ended.
const END_GRACE: Duration = Duration::from_secs(1);
/// Bytes read from a connection at a time.
const READ_BYTES: usize = 64 * 1024;

/// What a load did.
#[derive(Debug)]
pub struct LoadRun {
    /// Requests sent and answered.
    pub answered: u64,
    /// From the first request to the last reply.
    pub elapsed: Duration,
    pub latency: Latency,
    /// Why it stopped short of every reply, if it did.
    pub failure: Option<String>,
}

impl LoadRun {
    /// The served VM's record: the guest's (its parameters, per-connection counts and lock
    /// counters) with the rate, checksum and latency the clients measured; `None` if the
    /// load stopped short or the guest reported nothing.
    pub fn record(&self, load: &Load, guest: Option<Record>) -> Option<Record> {
        let guest = guest.filter(|_| self.failure.is_none())?;
        Some(Record {
            elapsed_ns: self.elapsed.as_nanos() as u64,
            ops: self.answered,
            checksum: load.checksum(),
            latency: Some(self.latency),
            ..guest
        })
    }
}

/// One client connection.
struct Client {
    stream: TcpStream,
    /// Requests not yet written, from `written` on.
    out: Vec<u8>,
    written: usize,
    input: Vec<u8>,
    /// When each request in flight was sent (open loop: was due), oldest first.
    in_flight: VecDeque<Instant>,
}

/// Drives the server at `addr` with `load` until every request is answered, or the VM ends
/// (`vm_ended`), or a connection breaks or gets an error reply.
pub fn drive(addr: SocketAddr, load: &Load, vm_ended: &AtomicBool) -> LoadRun {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
        .expect("an hour in ns at 3 significant digits is a valid histogram");
    let mut run = LoadRun { answered: 0, elapsed: Duration::ZERO, latency: Latency::default(), failure: None };
    let result = connect(addr, load.clients, vm_ended).and_then(|(control, mut clients)| {
        send_all(&mut clients, load, vm_ended, &mut histogram, &mut run)?;
        shut_down(control)
    });
    run.failure = result.err().map(|why| match ended_within(vm_ended, END_GRACE) {
        true => format!("the VM ended after {} of {} replies", run.answered, load.requests),
        false => why,
    });
    run.latency = Latency {
        p50_ns: histogram.value_at_quantile(0.5),
        p99_ns: histogram.value_at_quantile(0.99),
        p999_ns: histogram.value_at_quantile(0.999),
        max_ns: histogram.max(),
    };
    run
}

/// Whether the VM has ended, or ends within `grace`.
fn ended_within(vm_ended: &AtomicBool, grace: Duration) -> bool {
    let started = Instant::now();
    while !vm_ended.load(Ordering::Acquire) {
        if started.elapsed() > grace {
            return false;
        }
        std::thread::sleep(RETRY_PERIOD);
    }
    true
}

/// Waits until the server answers PING on a connection of its own (kept to send SHUTDOWN
/// on), then opens `clients` connections.
fn connect(addr: SocketAddr, clients: usize, vm_ended: &AtomicBool) -> Result<(TcpStream, Vec<Client>), String> {
    let control = loop {
        if vm_ended.load(Ordering::Acquire) {
            return Err("the VM ended before its server answered".into());
        }
        match ping(addr) {
            Ok(stream) => break stream,
            Err(_) => std::thread::sleep(RETRY_PERIOD),
        }
    };
    let clients = (0..clients)
        .map(|_| {
            let stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            Ok(Client { stream, out: Vec::new(), written: 0, input: Vec::new(), in_flight: VecDeque::new() })
        })
        .collect::<std::io::Result<_>>()
        .map_err(|error| format!("cannot connect to the server at {addr}: {error}"))?;
    Ok((control, clients))
}

/// A connection on which the server has answered PING.
fn ping(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PING_WAIT))?;
    stream.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut reply = [0; 7];
    stream.read_exact(&mut reply)?;
    if &reply != b"+PONG\r\n" {
        return Err(std::io::Error::other("not PONG"));
    }
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends every request and reads every reply.
fn send_all(
    clients: &mut [Client],
    load: &Load,
    vm_ended: &AtomicBool,
    histogram: &mut Histogram<u64>,
    run: &mut LoadRun,
) -> Result<(), String> {
    let started = Instant::now();
    let mut next = 0;
    let mut chunk = vec![0; READ_BYTES];
    let mut polls = Vec::with_capacity(clients.len());
    while run.answered < load.requests {
        if vm_ended.load(Ordering::Acquire) {
            return Err("the VM ended".into());
        }
        let now = Instant::now();
        let wait = match load.rate {
            None => {
                for client in clients.iter_mut() {
                    while client.in_flight.len() < load.pipeline && next < load.requests {
                        load.request(next, &mut client.out);
                        client.in_flight.push_back(now);
                        next += 1;
                    }
                }
                POLL_PERIOD
            }
            Some(rate) => {
                let due_at =
                    |n: u64| started + Duration::from_nanos((u128::from(n) * 1_000_000_000 / u128::from(rate)) as u64);
                while next < load.requests && due_at(next) <= now {
                    let client = &mut clients[(next % clients.len() as u64) as usize];
                    load.request(next, &mut client.out);
                    client.in_flight.push_back(due_at(next));
                    next += 1;
                }
                if next < load.requests {
                    due_at(next).saturating_duration_since(now).min(POLL_PERIOD)
                } else {
                    POLL_PERIOD
                }
            }
        };
        for (index, client) in clients.iter_mut().enumerate() {
            flush(client).map_err(|error| format!("connection {index}: cannot send: {error}"))?;
        }
        wait_ready(clients, &mut polls, wait)?;
        for (index, poll) in polls.iter().enumerate() {
            if poll.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                read_replies(&mut clients[index], &mut chunk, histogram, run).map_err(|why| {
                    format!("connection {index}, after {} of {} replies: {why}", run.answered, load.requests)
                })?;
            }
        }
        run.elapsed = started.elapsed();
    }
    Ok(())
}

/// Writes what `client` has to send, as far as the socket takes it.
fn flush(client: &mut Client) -> std::io::Result<()> {
    while client.written < client.out.len() {
        match client.stream.write(&client.out[client.written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(written) => client.written += written,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    client.out.clear();
    client.written = 0;
    Ok(())
}

/// Waits up to `wait` until a connection has something to read, or room for what it has to
/// write; `polls` then says which.
fn wait_ready(clients: &[Client], polls: &mut Vec<libc::pollfd>, wait: Duration) -> Result<(), String> {
    polls.clear();
    polls.extend(clients.iter().map(|client| libc::pollfd {
        fd: client.stream.as_raw_fd(),
        events: libc::POLLIN | if client.out.is_empty() { 0 } else { libc::POLLOUT },
        revents: 0,
    }));
    let timeout = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos().into() };
    // SAFETY: `polls` is a valid array of `polls.len()` pollfds, and the timespec lives
    // through the call.
    let ready = unsafe { libc::ppoll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, &timeout, std::ptr::null()) };
    if ready < 0 && std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
        return Err(format!("poll failed: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Reads what arrived on `client` and times each whole reply.
fn read_replies(
    client: &mut Client,
    chunk: &mut [u8],
    histogram: &mut Histogram<u64>,
    run: &mut LoadRun,
) -> Result<(), String> {
    loop {
        match client.stream.read(chunk) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(read) => client.input.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(format!("cannot receive: {error}")),
        }
    }
    let now = Instant::now();
    let mut used = 0;
    while let Some((len, error)) = reply_len(&client.input[used..]).map_err(|_| "a reply that is not RESP")? {
        let reply = &client.input[used..used + len];
        if error {
            return Err(format!("the server replied {:?}", String::from_utf8_lossy(reply).trim_end()));
        }
        let Some(sent) = client.in_flight.pop_front() else {
            return Err("a reply to no request".into());
        };
        histogram.saturating_record(now.saturating_duration_since(sent).as_nanos().max(1) as u64);
        run.answered += 1;
        used += len;
    }
    client.input.drain(..used);
    Ok(())
}

/// Sends SHUTDOWN, which ends the server's VM.
fn shut_down(mut control: TcpStream) -> Result<(), String> {
    control.write_all(b"*1\r\n$8\r\nSHUTDOWN\r\n").map_err(|error| format!("cannot send SHUTDOWN: {error}"))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use workloads::Params;
    use workloads::kv::resp::{Limits, parse};

    use super::*;

    /// A stand-in server on the host's loopback: answers PONG to PING and `reply` to anything
    /// else, connection by connection, until SHUTDOWN (counted in `shutdowns`); with
    /// `close_after`, closes each client connection after that many requests.
    fn server(reply: &'static [u8], close_after: Option<usize>, shutdowns: Arc<AtomicU64>) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let (mut stream, shutdowns) = (stream.unwrap(), Arc::clone(&shutdowns));
                std::thread::spawn(move || {
                    let (mut input, mut chunk, mut served) = (Vec::new(), [0; 4096], 0);
                    while let Ok(read @ 1..) = stream.read(&mut chunk) {
                        input.extend_from_slice(&chunk[..read]);
                        let mut out = Vec::new();
                        while let Some((words, used)) = parse(&input, &Limits::default()).unwrap() {
                            match words[0] {
                                b"PING" => out.extend_from_slice(b"+PONG\r\n"),
                                b"SHUTDOWN" => _ = shutdowns.fetch_add(1, Ordering::Relaxed),
                                _ => out.extend_from_slice(reply),
                            }
                            input.drain(..used);
                            served += 1;
                        }
                        if stream.write_all(&out).is_err() || close_after.is_some_and(|n| served >= n) {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn load(args: &[&str]) -> Load {
        Load::from_params(&Params::parse(workloads::kv::PARAMS, args.iter().copied()).unwrap()).unwrap()
    }

    #[test]
    fn a_closed_loop_gets_every_reply_then_shuts_the_server_down() {
        let shutdowns = Arc::new(AtomicU64::new(0));
        let addr = server(b"+OK\r\n", None, Arc::clone(&shutdowns));
        let run = drive(addr, &load(&["requests=2000", "clients=4", "pipeline=8"]), &AtomicBool::new(false));
        assert_eq!((run.answered, run.failure), (2000, None));
        let latency = run.latency;
        assert!(0 < latency.p50_ns && latency.p50_ns <= latency.p99_ns && latency.p999_ns <= latency.max_ns);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(shutdowns.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_open_loop_takes_as_long_as_its_rate_says() {
        let addr = server(b"$-1\r\n", None, Arc::default());
        let run = drive(addr, &load(&["requests=200", "clients=3", "rate=1000"]), &AtomicBool::new(false));
        assert_eq!((run.answered, run.failure), (200, None));
        // The last of 200 requests at 1000/s is due 199 ms after the first.
        assert!(run.elapsed >= Duration::from_millis(199), "{:?}", run.elapsed);
    }

    #[test]
    fn an_error_reply_or_a_closed_connection_stops_the_load_and_says_why() {
        let addr = server(b"-ERR nope\r\n", None, Arc::default());
        let run = drive(addr, &load(&["requests=100", "clients=2"]), &AtomicBool::new(false));
        let failure = run.failure.unwrap();
        assert!(failure.ends_with("the server replied \"-ERR nope\""), "{failure}");
        let addr = server(b"+OK\r\n", Some(10), Arc::default());
        let run = drive(addr, &load(&["requests=100", "clients=2"]), &AtomicBool::new(false));
        assert!(run.answered < 100);
        assert!(run.failure.unwrap().ends_with("the server closed the connection"));
    }

    #[test]
    fn a_vm_that_ends_first_ends_the_load() {
        // Nothing listens: every PING fails until the VM is seen to have ended.
        let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap();
        let run = drive(addr, &load(&["requests=10"]), &AtomicBool::new(true));
        assert_eq!((run.answered, run.failure.as_deref()), (0, Some("the VM ended after 0 of 10 replies")));
    }
}
