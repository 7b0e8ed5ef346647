//! The live endpoint: a Unix socket named after the process (`tandem_core::live::socket_path`)
//! that answers each connection with a [`Snapshot`] of the running VMs, as JSON, and closes
//! it. The counters it serves are those the VCPU threads and the dispatcher keep anyway; a
//! snapshot only reads them, so serving costs the VMs nothing until someone connects.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use pv_abi::hypercall::Hypercall;
use tandem_core::live::{self, Snapshot, VcpuLive, VmLive};

use crate::accounting::{ns, split_costop};
use crate::running;
use crate::vm_shared::VmShared;

/// A client gets this long to take its snapshot.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket, served by a thread of its own; removed when dropped.
#[derive(Debug)]
pub struct LiveSocket {
    path: PathBuf,
}

impl Drop for LiveSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves this process's live socket, the process running `command`. Sockets left by
/// processes that are gone are removed first.
pub fn serve(command: &str) -> anyhow::Result<LiveSocket> {
    let dir = live::socket_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    remove_stale(&dir);
    let path = live::socket_path(std::process::id());
    // A socket of ours can only be left by a process with our pid, which is gone.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let socket = LiveSocket { path };
    let (command, origin) = (command.to_owned(), Instant::now());
    std::thread::Builder::new()
        .name("live".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, &command, origin);
            }
        })
        .context("cannot start the live socket's thread")?;
    Ok(socket)
}

/// Removes the sockets in `dir` whose process is gone.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.flatten().map(|entry| entry.path()) {
        if let Some(pid) = live::socket_pid(&path)
            && !live::process_alive(pid)
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes a snapshot to `stream`; a client that does not read it is its own loss.
fn answer(mut stream: UnixStream, command: &str, origin: Instant) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(json) = serde_json::to_vec(&snapshot(command, origin)) else { return };
    let _ = stream.write_all(&json);
}

/// The running VMs and their dispatchers now, counted from `origin`.
fn snapshot(command: &str, origin: Instant) -> Snapshot {
    let mut vms = running::all();
    // In the order they were created: a scenario's order.
    vms.sort_by_key(|vm| vm.id);
    let mut dispatchers = BTreeMap::new();
    for vm in &vms {
        let dispatcher = &vm.seat.dispatcher;
        dispatchers.entry(dispatcher.id()).or_insert_with(|| dispatcher.live(origin));
    }
    let vms = vms.iter().map(|vm| vm_live(vm, origin)).collect();
    Snapshot {
        pid: std::process::id(),
        command: command.to_owned(),
        at_ns: ns(origin, Instant::now()),
        dispatchers: dispatchers.into_values().collect(),
        vms,
    }
}

fn vm_live(vm: &Arc<VmShared>, origin: Instant) -> VmLive {
    let view = vm.seat.dispatcher.vm_view(vm.seat.vm);
    let now = Instant::now();
    let page = vm.memory.shared_page();
    let vcpus = view
        .vcpus
        .iter()
        .zip(vm.counters.iter())
        .enumerate()
        .map(|(id, (view, counters))| {
            let times = counters.time().at(now, view.woken_at);
            let (ready_ns, costop_ns) = split_costop(times.ready_ns, view.costop_ns);
            let (calls, other) = counters.exits();
            let exits = Hypercall::ALL
                .iter()
                .map(|call| (call.name().to_owned(), calls[*call as usize]))
                .chain([("other".to_owned(), other)])
                .collect();
            VcpuLive {
                id: id as u32,
                state: view.state,
                run_ns: times.run_ns,
                ready_ns,
                costop_ns,
                wait_ns: times.wait_ns,
                offline_ns: times.offline_ns,
                exits,
                lock_slow_paths: u64::from(page.vcpus[id].lock_slow_paths.load(Ordering::Relaxed)),
            }
        })
        .collect();
    VmLive {
        id: vm.id,
        name: vm.name.clone(),
        dispatcher: vm.seat.dispatcher.id(),
        started_ns: ns(origin, vm.created),
        grant: view.grant,
        demand: view.demand,
        vcpus,
    }
}
