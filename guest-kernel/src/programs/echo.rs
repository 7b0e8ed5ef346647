//! `echo [port=7] [connections=N]`: a TCP echo server on the VM's NIC, a thread per
//! connection. With `connections=N` it accepts N connections and exits 0 once all of them
//! have closed, printing how many bytes it echoed; with 0 (the default) it serves until the
//! VM is stopped.

use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use tandem_rt::net::{NetError, TcpListener, TcpStream};
use tandem_rt::sync::WaitQueue;
use tandem_rt::workloads::{ParamError, ParamSpec, Params};
use tandem_rt::{println, sched};

pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::int("port", "7", "the TCP port to listen on"),
    ParamSpec::int("connections", "0", "connections to serve before exiting (0: serve until stopped)"),
];

/// Bytes a connection's thread reads and writes back at a time.
const CHUNK_BYTES: usize = 8 * 1024;

pub fn run(params: &Params) -> Result<i64, ParamError> {
    let port = params.u64_in("port", 1..=u64::from(u16::MAX), "not a TCP port")? as u16;
    let connections = params.u64("connections");
    sched::start(move || {
        let listener = match TcpListener::bind(port) {
            Ok(listener) => listener,
            Err(error) => {
                println!("echo: cannot listen on port {port}: {error}");
                return 1;
            }
        };
        println!("echo: listening on port {port}");
        match serve(&listener, connections) {
            Ok(summary) => {
                println!("echo: {summary}");
                0
            }
            Err(error) => {
                println!("echo: accept failed: {error}");
                1
            }
        }
    })
}

/// What the connections did, counted by their threads.
#[derive(Default)]
struct Totals {
    closed: AtomicU64,
    bytes: AtomicU64,
    resets: AtomicU64,
    /// The server, waiting for the connections to close.
    server: WaitQueue,
}

/// What a server did, once all its connections have closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub connections: u64,
    pub bytes: u64,
    /// Connections that ended with a reset.
    pub resets: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} connections, {} bytes echoed, {} reset", self.connections, self.bytes, self.resets)
    }
}

/// Accepts `connections` connections (0: without end), echoes each on a thread of its own,
/// and returns once all of them have closed.
pub fn serve(listener: &TcpListener, connections: u64) -> Result<Summary, NetError> {
    let totals = Arc::new(Totals::default());
    let mut accepted = 0;
    while connections == 0 || accepted < connections {
        let stream = listener.accept()?;
        accepted += 1;
        let totals = Arc::clone(&totals);
        // Not joined: the counts tell when the threads are done, and a server without end
        // must not keep a handle (and a stack) per connection.
        drop(sched::spawn(move || {
            echo(stream, &totals);
            0
        }));
    }
    let open = || totals.closed.load(Ordering::SeqCst) < accepted;
    while open() {
        totals.server.wait_if(open);
    }
    Ok(Summary {
        connections: accepted,
        bytes: totals.bytes.load(Ordering::Relaxed),
        resets: totals.resets.load(Ordering::Relaxed),
    })
}

/// Writes back what `stream` reads until its end, then closes it and counts it.
fn echo(mut stream: TcpStream, totals: &Totals) {
    let mut buf = [0; CHUNK_BYTES];
    let mut bytes = 0;
    let ended = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(read) => match stream.write_all(&buf[..read]) {
                Ok(()) => bytes += read as u64,
                Err(error) => break Err(error),
            },
            Err(error) => break Err(error),
        }
    };
    match ended {
        Ok(()) => {}
        Err(NetError::Reset) => _ = totals.resets.fetch_add(1, Ordering::Relaxed),
        Err(error) => println!("echo: connection from {}: {error}", stream.peer_addr()),
    }
    stream.close();
    totals.bytes.fetch_add(bytes, Ordering::Relaxed);
    totals.closed.fetch_add(1, Ordering::SeqCst);
    totals.server.wake_all();
}
