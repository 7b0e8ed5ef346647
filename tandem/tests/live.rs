//! End-to-end tests of the live socket: a scenario running on real KVM, read while it runs.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::Tandem;
use common::tmux::Tmux;
use tandem_core::live::{Interval, Snapshot, VcpuState};

/// A lock-heavy VM under paravirtual ticket locks beside a barrier-synchronized one, at 2x
/// overcommit of 2 pCPUs under credit: long enough to be read for several seconds, and the
/// lock VM's waiters find their lock's holder preempted (its slow path).
const SCENARIO: &str = r#"
pcpus = 2
timeout_s = 60

[policy]
name = "credit"

[[vm]]
name = "alpha"
vcpus = 2
workload = "locks"
locks = "pv"
args = { threads = 4, ops = 100000000, cs = 400, think = 400 }

[[vm]]
name = "beta"
vcpus = 2
workload = "nbody"
args = { steps = 1000000, barrier = "spin" }
"#;

/// A scenario running in its own runtime directory, killed when dropped.
pub struct Running {
    pub tandem: Tandem,
    pub runtime_dir: PathBuf,
}

impl Running {
    pub fn start(tag: &str) -> Running {
        let runtime_dir = std::env::temp_dir().join(format!("tandem-live-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&runtime_dir);
        std::fs::create_dir_all(&runtime_dir).unwrap();
        let file = runtime_dir.join("scenario.toml");
        std::fs::write(&file, SCENARIO).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
        command.env("XDG_RUNTIME_DIR", &runtime_dir);
        let tandem = Tandem::start_with(command, &["scenario", "--no-reference", file.to_str().unwrap()]);
        Running { tandem, runtime_dir }
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("tandem").join(format!("{}.sock", self.tandem.pid()))
    }

    /// A snapshot with both VMs running, waiting up to 20 s for one.
    pub fn snapshot(&self) -> Snapshot {
        let started = Instant::now();
        loop {
            if let Ok(snapshot) = read(&self.socket())
                && snapshot.vms.len() == 2
            {
                return snapshot;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no snapshot of both VMs at {:?}", self.socket());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn read(socket: &Path) -> anyhow::Result<Snapshot> {
    let mut json = Vec::new();
    UnixStream::connect(socket)?.read_to_end(&mut json)?;
    Ok(serde_json::from_slice(&json)?)
}

#[test]
fn the_socket_serves_each_vcpus_time_exits_and_lock_slow_paths_while_the_scenario_runs() {
    if !common::kvm_available() {
        return;
    }
    let running = Running::start("socket");
    let before = running.snapshot();
    std::thread::sleep(Duration::from_secs(2));
    let now = running.snapshot();
    assert_eq!(now.pid, running.tandem.pid());
    assert_eq!(now.command, "scenario");
    assert_eq!(now.dispatchers.len(), 1);
    let dispatcher = &now.dispatchers[0];
    assert_eq!((dispatcher.policy.as_str(), dispatcher.pcpus), ("credit", 2));
    assert!(dispatcher.decisions > 0 && dispatcher.preemptions > 0, "{dispatcher:?}");

    let interval = Interval::between(Some(&before), &now);
    assert!((interval.seconds - 2.0).abs() < 1.0, "{}", interval.seconds);
    let names: Vec<&str> = interval.vms.iter().map(|vm| vm.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    for vm in &interval.vms {
        assert_eq!(vm.vcpus.len(), 2);
        for vcpu in &vm.vcpus {
            let sum = vcpu.run + vcpu.ready + vcpu.costop + vcpu.wait;
            assert!((sum - 100.0).abs() < 1.0, "{} VCPU {}: {vcpu:?} adds up to {sum}", vm.name, vcpu.id);
            assert!(vcpu.run > 1.0, "{vcpu:?}");
            assert_eq!(vcpu.offline, 0.0, "{vcpu:?}");
        }
    }
    // The lock VM's waiters go to the slow path (a yield or block: exits); the barrier VM's
    // spin without any.
    let alpha = &now.vms[0];
    let slow: u64 = alpha.vcpus.iter().map(|vcpu| vcpu.lock_slow_paths).sum();
    assert!(slow > 0, "{alpha:?}");
    let yields: u64 = alpha.vcpus.iter().map(|vcpu| vcpu.exits["yield"] + vcpu.exits["block"]).sum();
    assert!(yields > 0, "{alpha:?}");
    assert!(now.vms[1].vcpus.iter().all(|vcpu| vcpu.exits["yield"] == 0), "{:?}", now.vms[1]);
    assert!(now.vms.iter().flat_map(|vm| &vm.vcpus).all(|vcpu| vcpu.state != VcpuState::Off));

    running.tandem.signal(libc::SIGINT);
    let socket = running.socket();
    let run = running.tandem.finish(Duration::from_secs(20));
    assert_eq!(run.status, Some(130), "{}", run.stderr);
    assert!(!socket.exists(), "the socket is removed when the process ends");
}

#[test]
fn tandem_top_follows_a_running_scenario_in_batch_mode_and_in_its_view() {
    if !common::kvm_available() {
        return;
    }
    let running = Running::start("top");
    running.snapshot();
    let pid = running.tandem.pid().to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
    command.env("XDG_RUNTIME_DIR", &running.runtime_dir);
    let batch = Tandem::start_with(command, &["top", "-b", "-d", "0.5", "-n", "3"]).finish_ok(Duration::from_secs(30));
    let mut lines = batch.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|title| *title == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
    assert_eq!(rows.len(), 3 * 4, "a row per VCPU per sample:\n{}", batch.stdout);
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row[column("sample")], (index / 4 + 1).to_string());
        assert_eq!(row[column("vm")], ["alpha", "beta"][index % 4 / 2]);
        assert_eq!(
            (row[column("vcpu")], row[column("policy")], row[column("pid")]),
            ((index % 2).to_string().as_str(), "credit", pid.as_str())
        );
        let share: f64 =
            ["%RUN", "%RDY", "%CSTP", "%WAIT"].iter().map(|name| row[column(name)].parse::<f64>().unwrap()).sum();
        assert!((share - 100.0).abs() < 2.0, "row {index} adds up to {share}:\n{}", batch.stdout);
    }

    let command = format!(
        "env XDG_RUNTIME_DIR={} {} top; echo tandem top exited with $?; sleep 600",
        running.runtime_dir.display(),
        env!("CARGO_BIN_EXE_tandem")
    );
    let tmux = Tmux::start(&running.runtime_dir, &command);
    let lines = |screen: &str| {
        ["%RUN", "%RDY", "%CSTP", "%WAIT", "alpha", "beta", "credit"].iter().all(|text| screen.contains(text))
    };
    let screen = tmux.wait_for(lines, "a line per VM");
    println!("{screen}");
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let screen = tmux.wait_for(|screen| screen.contains("tandem top exited with"), "tandem top to quit on q");
    assert!(screen.contains("tandem top exited with 0"), "{screen}");
}
