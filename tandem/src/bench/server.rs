//! A guest server for the network benchmarks: an embedded program booted on a thread of this
//! process, with a free loopback port forwarded to its port (user-mode networking), so that
//! its run report (its exits) comes back when it ends.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_core::guest::{self, Kernel, VmConfig};
use tandem_core::net::{GuestInterface, HostForward, NetBackend, NetConfig};
use tandem_core::scenario::DEFAULT_MEM_MIB;
use tandem_kvm::vm::{self, Outcome, RunReport};
use tandem_kvm::{image, open_kvm};

/// How long a server has to answer its first request.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A running guest server and the host address forwarded to it.
pub struct GuestServer {
    pub addr: SocketAddr,
    program: String,
    vm: JoinHandle<anyhow::Result<RunReport>>,
}

impl GuestServer {
    /// Boots `program` with `args` on `vcpus` VCPUs, a free loopback port forwarded to
    /// `guest_port`.
    pub fn start(program: &str, args: &[String], guest_port: u16, vcpus: u32) -> anyhow::Result<GuestServer> {
        let host = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port()?);
        let config = VmConfig {
            name: program.to_owned(),
            vcpus,
            mem_mib: DEFAULT_MEM_MIB,
            cmdline: guest::cmdline(program, args, Kernel::Embedded)?,
            timeout: Duration::from_secs(300),
            echo_console: false,
            net: Some(NetConfig {
                backend: NetBackend::User { forwards: vec![HostForward { host, guest_port }] },
                guest: GuestInterface::USER,
            }),
        };
        let kvm = open_kvm()?;
        let vm = std::thread::spawn(move || vm::run_alone(&kvm, &config, image::DEFAULT_GUEST));
        Ok(GuestServer { addr: host.into(), program: program.to_owned(), vm })
    }

    /// Retries `probe` until it succeeds (the guest may still be booting).
    pub fn wait_ready(&self, probe: impl Fn(SocketAddr) -> std::io::Result<()>) -> anyhow::Result<()> {
        wait_ready(&self.program, self.addr, probe)
    }

    /// Waits for the guest to end; it must exit 0.
    pub fn finish(self) -> anyhow::Result<RunReport> {
        let report = self.vm.join().expect("the VM thread panicked")?;
        if report.outcome != Outcome::Exited(0) {
            bail!("{}", report.outcome.describe(&self.program));
        }
        Ok(report)
    }
}

/// Retries `probe` against the server `name` at `addr` until it succeeds, for
/// [`READY_WITHIN`].
pub fn wait_ready(
    name: &str,
    addr: SocketAddr,
    probe: impl Fn(SocketAddr) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match probe(addr) {
            Ok(()) => return Ok(()),
            Err(error) if started.elapsed() > READY_WITHIN => {
                return Err(error).context(format!("{name} at {addr} did not answer"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Sends `request` on a new connection to `addr` and checks that `reply` comes back, within
/// a second: a server's readiness probe.
pub fn exchange(addr: SocketAddr, request: &[u8], reply: &[u8]) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(request)?;
    let mut got = vec![0; reply.len()];
    stream.read_exact(&mut got)?;
    if got == reply { Ok(()) } else { Err(std::io::Error::other("an unexpected reply")) }
}

/// A port free on loopback now (the kernel's pick; another process could take it before the
/// monitor binds it, which the monitor reports).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind loopback")?.local_addr()?.port())
}
