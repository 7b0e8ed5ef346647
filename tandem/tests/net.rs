//! End-to-end tests of the network: the guest's `echo` server under the real `tandem` binary,
//! reached through user-mode networking's port forwards on loopback, and through a TAP device
//! inside a network namespace the test makes. Traffic goes only to loopback or into that
//! namespace.
//!
//! They need /dev/kvm and fail loudly without it, unless TANDEM_SKIP_KVM=1 says to skip them.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kvm_available;
use common::process::Tandem;

const GUEST_PORT: u16 = 7;

/// `tandem run echo` on 2 VCPUs with a loopback port forwarded to guest port `to`, serving
/// `connections` connections; returns it and the forwarded address once it echoes (if `to`
/// is the echo port).
fn echo_server(to: u16, connections: usize) -> (Tandem, SocketAddr) {
    let port = free_port();
    let net = format!("user,hostfwd=tcp:127.0.0.1:{port}-:{to}");
    let serve = format!("connections={connections}");
    let server = Tandem::start(&[
        "run",
        "echo",
        "--vcpus",
        "2",
        "--timeout",
        "120",
        "--net",
        &net,
        "--",
        &format!("port={GUEST_PORT}"),
        &serve,
    ]);
    (server, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// Connects to `addr`, retrying while the guest boots (its first connections are reset), and
/// checks one echo; the connection counts as one of the server's.
fn wait_echoing(addr: SocketAddr) {
    let started = Instant::now();
    loop {
        let attempt = || -> std::io::Result<()> {
            let mut stream = TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(b"ping")?;
            let mut reply = [0; 4];
            stream.read_exact(&mut reply)?;
            assert_eq!(&reply, b"ping");
            Ok(())
        };
        match attempt() {
            Ok(()) => return,
            Err(error) if started.elapsed() > Duration::from_secs(20) => panic!("{addr} never echoed: {error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|error| panic!("connect to {addr}: {error}"));
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Byte `i` of the test stream: a pattern that a dropped, doubled or reordered segment breaks.
fn pattern(i: usize) -> u8 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) as u8
}

/// Sends `bytes` of the pattern over `stream` while reading the echo; checks it whole.
fn echo_pattern(stream: TcpStream, bytes: usize) {
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < bytes {
            let chunk: Vec<u8> = (sent..(sent + 65536).min(bytes)).map(pattern).collect();
            writer.write_all(&chunk).expect("send");
            sent += chunk.len();
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut reader = stream;
    let mut buffer = vec![0; 65536];
    let mut received = 0;
    loop {
        let n = reader.read(&mut buffer).expect("receive the echo");
        if n == 0 {
            break;
        }
        for (offset, &byte) in buffer[..n].iter().enumerate() {
            assert_eq!(byte, pattern(received + offset), "byte {} of the echo", received + offset);
        }
        received += n;
    }
    sender.join().unwrap();
    assert_eq!(received, bytes, "the echo ended early");
}

#[test]
fn sixty_four_mib_come_back_intact_over_one_connection() {
    if !kvm_available() {
        return;
    }
    let (server, addr) = echo_server(GUEST_PORT, 2);
    wait_echoing(addr);
    let started = Instant::now();
    echo_pattern(connect(addr), 64 << 20);
    eprintln!("64 MiB echoed in {:.2} s", started.elapsed().as_secs_f64());
    server.finish_ok(Duration::from_secs(30));
}

#[test]
fn two_hundred_concurrent_connections_each_echo() {
    if !kvm_available() {
        return;
    }
    const CONNECTIONS: usize = 200;
    let (server, addr) = echo_server(GUEST_PORT, CONNECTIONS + 1);
    wait_echoing(addr);
    // All open at once before any exchange, then each echoes its own message.
    let streams: Vec<TcpStream> = (0..CONNECTIONS).map(|_| connect(addr)).collect();
    let clients: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut stream)| {
            std::thread::spawn(move || {
                let message: Vec<u8> = (0..1000).map(|j| pattern(i * 7919 + j)).collect();
                for _ in 0..3 {
                    stream.write_all(&message).unwrap();
                    let mut reply = vec![0; message.len()];
                    stream.read_exact(&mut reply).unwrap_or_else(|error| panic!("connection {i}: {error}"));
                    assert_eq!(reply, message, "connection {i}");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    server.finish_ok(Duration::from_secs(30));
}

#[test]
fn half_close_and_reset_are_carried_both_ways() {
    if !kvm_available() {
        return;
    }
    let (server, addr) = echo_server(GUEST_PORT, 4);
    wait_echoing(addr);

    // Half-close: the client stops sending; the echo of what it sent still comes, then EOF.
    echo_pattern(connect(addr), 300_000);

    // Reset: a client that aborts mid-stream (SO_LINGER 0 sends an RST), once the server
    // has its connection (it echoed) ...
    let mut aborted = connect(addr);
    aborted.write_all(&[1; 10_000]).unwrap();
    aborted.read_exact(&mut [0; 10_000]).unwrap();
    aborted.write_all(&[2; 10_000]).unwrap();
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            aborted.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(aborted);

    // ... leaves the server serving others.
    let mut after = connect(addr);
    after.write_all(b"still here").unwrap();
    let mut reply = [0; 10];
    after.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"still here");
    drop(after);

    let run = server.finish_ok(Duration::from_secs(30));
    // The server saw the reset as one (its read failed), not as an end of stream.
    let stdout = &run.stdout;
    assert!(stdout.contains("4 connections") && stdout.contains("1 reset"), "{stdout}");
}

#[test]
fn a_connection_to_a_port_nobody_listens_on_is_refused() {
    if !kvm_available() {
        return;
    }
    // Two forwards: one to the echo port (to know the guest is up), one to a port with no
    // listener.
    let (echo_port, dead_port) = (free_port(), free_port());
    let net = format!("user,hostfwd=tcp:127.0.0.1:{echo_port}-:{GUEST_PORT},hostfwd=tcp:127.0.0.1:{dead_port}-:9");
    let server = Tandem::start(&["run", "echo", "--vcpus", "2", "--net", &net, "--", "connections=2"]);
    let echo_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, echo_port));
    wait_echoing(echo_addr);

    let mut dead = connect(SocketAddr::from((Ipv4Addr::LOCALHOST, dead_port)));
    let _ = dead.write_all(b"anyone?");
    let mut reply = [0; 16];
    match dead.read(&mut reply) {
        Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}"),
        Ok(n) => panic!("a connection to a port nobody listens on read {n} bytes instead of a reset"),
    }

    let mut last = connect(echo_addr);
    last.write_all(b"ok").unwrap();
    last.read_exact(&mut reply[..2]).unwrap();
    drop(last);
    server.finish_ok(Duration::from_secs(30));
}

#[test]
fn a_guest_that_posts_bad_descriptors_ends_with_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let run = Tandem::start(&["run", "badnic", "--vcpus", "2"]).finish(Duration::from_secs(30));
    let stderr = &run.stderr;
    assert_eq!(run.status, Some(102), "{stderr}");
    assert!(stderr.contains("NIC") && stderr.contains("descriptor"), "{stderr}");
}

#[test]
fn bad_net_options_and_a_taken_port_are_clear_errors() {
    if !kvm_available() {
        return;
    }
    let run = Tandem::start(&["run", "echo", "--net", "user,hostfwd=tcp::1-"]).finish(Duration::from_secs(10));
    assert_eq!(run.status, Some(2));
    assert!(run.stderr.contains("hostfwd=tcp::1-"), "{}", run.stderr);

    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let net = format!("user,hostfwd=tcp:127.0.0.1:{port}-:7");
    let run = Tandem::start(&["run", "echo", "--net", &net]).finish(Duration::from_secs(10));
    let stderr = &run.stderr;
    assert_eq!(run.status, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

/// A network namespace of the test's own with a TAP device in it, removed when dropped.
struct Namespace {
    name: String,
}

impl Namespace {
    /// Makes the namespace with `tap` at `host_ip/24`, or says why it cannot.
    fn with_tap(tap: &str, host_ip: &str) -> Result<Namespace, String> {
        let name = format!("tandem-test-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let namespace = Namespace { name };
        let ns = namespace.name.as_str();
        ip(&["-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"])?;
        ip(&["-n", ns, "addr", "add", &format!("{host_ip}/24"), "dev", tap])?;
        ip(&["-n", ns, "link", "set", tap, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Runs `body` on a thread that has entered the namespace (setns affects only it).
    fn enter<T: Send + 'static>(&self, body: impl FnOnce() -> T + Send + 'static) -> T {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.name)).expect("open the namespace");
        std::thread::spawn(move || {
            // SAFETY: a valid namespace file descriptor; the call changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            body()
        })
        .join()
        .expect("the thread in the namespace panicked")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|error| format!("cannot run ip: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

#[test]
fn the_tap_backend_serves_inside_a_network_namespace() {
    if !kvm_available() {
        return;
    }
    let namespace = match Namespace::with_tap("tap0", "10.77.0.1") {
        Ok(namespace) => namespace,
        Err(why) => {
            eprintln!("SKIPPED: cannot make a network namespace with a TAP device here: {why}");
            return;
        }
    };
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &namespace.name, env!("CARGO_BIN_EXE_tandem")]);
    let server = Tandem::start_with(
        command,
        &["run", "echo", "--vcpus", "2", "--net", "tap,ifname=tap0,ip=10.77.0.2/24", "--", "connections=2"],
    );
    let guest = SocketAddr::from((Ipv4Addr::new(10, 77, 0, 2), GUEST_PORT));
    namespace.enter(move || {
        wait_echoing(guest);
        echo_pattern(connect(guest), 4 << 20);
    });
    server.finish_ok(Duration::from_secs(30));
}

#[test]
fn the_guest_stack_echoes_over_a_loopback_nic_of_its_own() {
    if !kvm_available() {
        return;
    }
    // `netloop` plays the backend inside the guest (a second smoltcp interface on the far
    // side of the rings), so the stack, its driver and the scheduler's polling are tested
    // with no host traffic at all; its indices wrap during the run.
    for vcpus in ["1", "2", "4"] {
        let run =
            Tandem::start(&["run", "netloop", "--net", "none", "--vcpus", vcpus]).finish_ok(Duration::from_secs(60));
        assert!(run.stdout.contains("no socket left"), "{vcpus} VCPUs:\n{}", run.stdout);
    }
}
