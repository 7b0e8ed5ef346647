//! `tandem top` against a stand-in for a monitor's live socket: a listener in the test that
//! serves synthetic snapshots, at `$XDG_RUNTIME_DIR/tandem/PID.sock` with the child's
//! XDG_RUNTIME_DIR a directory of the test's own. Batch mode's CSV, the errors, and the
//! interactive view driven through tmux.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::process::{Run, Tandem};
use common::tmux::Tmux;
use tandem_core::live::{DispatcherLive, Snapshot, VcpuLive, VcpuState, VmLive};

/// How long anything here may take: far more than it does, so that a slow machine does not
/// fail a test.
const LIMIT: Duration = Duration::from_secs(30);

/// The stand-in's clock advances this much per connection.
const STEP_NS: u64 = 100_000_000;

/// The VMs the stand-in serves: names (one that CSV must quote) and VCPU counts.
const VMS: [(&str, u32); 2] = [("db", 2), ("web, front", 3)];

/// A directory of the test's own, to be the child's XDG_RUNTIME_DIR; removed when dropped.
struct RuntimeDir(PathBuf);

impl RuntimeDir {
    fn new(test: &str) -> RuntimeDir {
        let dir = std::env::temp_dir().join(format!("tandem-top-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tandem")).unwrap();
        RuntimeDir(dir)
    }

    fn socket(&self, pid: u32) -> PathBuf {
        self.0.join("tandem").join(format!("{pid}.sock"))
    }

    /// Serves snapshot 1, 2, 3... of process `pid`, one per connection; after `connections`
    /// of them (if given), removes the socket as a monitor that ends does.
    fn serve(&self, pid: u32, connections: Option<u64>) {
        let path = self.socket(pid);
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for (served, stream) in (1..).zip(listener.incoming()) {
                let _ = stream.unwrap().write_all(&serde_json::to_vec(&snapshot(pid, served)).unwrap());
                if connections == Some(served) {
                    std::fs::remove_file(&path).unwrap();
                    return;
                }
            }
        });
    }

    /// `tandem top ARGS` with this directory as its XDG_RUNTIME_DIR.
    fn top(&self, args: &[&str]) -> Tandem {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
        command.env("XDG_RUNTIME_DIR", &self.0);
        Tandem::start_with(command, &[&["top"], args].concat())
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The stand-in's `number`th snapshot: its clock at `number` steps; every VCPU's times add
/// up to that (its VM started at 0), split differently per VCPU, the last VCPU of a VM
/// offline throughout.
fn snapshot(pid: u32, number: u64) -> Snapshot {
    let at_ns = number * STEP_NS;
    let vcpu = |id: u32, offline: bool| {
        let (run, ready, costop) =
            if offline { (0, 0, 0) } else { (at_ns / (2 + u64::from(id)), at_ns / 5, at_ns / 10) };
        let exits = BTreeMap::from([("block".to_owned(), 10 * number), ("kick".to_owned(), 5 * number)]);
        VcpuLive {
            id,
            state: if offline { VcpuState::Off } else { VcpuState::Run },
            run_ns: run,
            ready_ns: ready,
            costop_ns: costop,
            wait_ns: if offline { 0 } else { at_ns - run - ready - costop },
            offline_ns: if offline { at_ns } else { 0 },
            exits,
            lock_slow_paths: number,
        }
    };
    let vms = (1..).zip(VMS).map(|(id, (name, vcpus))| VmLive {
        id,
        name: name.to_owned(),
        dispatcher: 1,
        started_ns: 0,
        grant: (id == 1).then_some(2),
        demand: 3,
        vcpus: (0..vcpus).map(|vcpu_id| vcpu(vcpu_id, id == 2 && vcpu_id == vcpus - 1)).collect(),
    });
    let dispatcher = DispatcherLive {
        id: 1,
        policy: "credit".into(),
        pcpus: 2,
        started_ns: 0,
        decisions: 1000 * number,
        decision_ns: 2_000_000 * number,
        preemptions: 10 * number,
        preempted: 10 * number,
        preemption_ns: 50_000 * number,
    };
    Snapshot { pid, command: "scenario".into(), at_ns, dispatchers: vec![dispatcher], vms: vms.collect() }
}

/// A CSV line's fields (RFC 4180 quoting).
fn fields(line: &str) -> Vec<String> {
    let (mut fields, mut field, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => field.push(chars.next().unwrap()),
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

fn failed(run: &Run, status: i32, message: &str) {
    assert_eq!(run.status, Some(status), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains(message), "expected {message:?} in stderr:\n{}", run.stderr);
}

#[test]
fn batch_mode_writes_a_row_per_vcpu_per_sample() {
    let dir = RuntimeDir::new("batch");
    let pid = std::process::id();
    dir.serve(pid, None);
    let run = dir.top(&["-b", "-d", "0.2", "-n", "3", "-p", &pid.to_string()]).finish_ok(LIMIT);
    let lines: Vec<Vec<String>> = run.stdout.lines().map(fields).collect();
    let header = &lines[0];
    assert_eq!(header[..8], ["sample", "time_s", "pid", "policy", "vm_id", "vm", "vcpu", "state"]);
    let vcpus: u32 = VMS.iter().map(|(_, vcpus)| vcpus).sum();
    assert_eq!(lines.len(), 1 + 3 * vcpus as usize, "{}", run.stdout);
    let column = |name: &str| header.iter().position(|title| title == name).unwrap();
    for row in &lines[1..] {
        assert_eq!(row.len(), header.len(), "{row:?}");
        assert!(VMS.iter().any(|(name, _)| row[column("vm")] == *name), "{row:?}");
        assert_eq!((row[column("pid")].as_str(), row[column("policy")].as_str()), (&*pid.to_string(), "credit"));
        let shares: f64 =
            ["%RUN", "%RDY", "%CSTP", "%WAIT"].iter().map(|s| row[column(s)].parse::<f64>().unwrap()).sum();
        assert!((shares - 100.0).abs() < 0.1, "shares add up to {shares}: {row:?}");
    }
    let samples: Vec<&str> = lines[1..].iter().map(|row| row[0].as_str()).collect();
    assert_eq!(samples.iter().filter(|sample| **sample == "3").count(), vcpus as usize, "{samples:?}");
    assert!(run.stdout.contains(",\"web, front\","), "a name with a comma is quoted:\n{}", run.stdout);
    let offline = lines.iter().find(|row| row[column("state")] == "OFF").unwrap();
    assert_eq!((offline[column("%WAIT")].as_str(), offline[column("%OFF")].as_str()), ("100.00", "100.00"));
}

#[test]
fn batch_mode_stops_when_the_process_ends_and_says_so() {
    let dir = RuntimeDir::new("ends");
    let pid = std::process::id();
    // The baseline and two samples.
    dir.serve(pid, Some(3));
    let run = dir.top(&["-b", "-d", "0.1"]).finish_ok(LIMIT);
    let vcpus: u32 = VMS.iter().map(|(_, vcpus)| vcpus).sum();
    assert_eq!(run.stdout.lines().count(), 1 + 2 * vcpus as usize, "{}", run.stdout);
    assert!(run.stderr.contains(&format!("process {pid} ended")), "{}", run.stderr);
}

#[test]
fn errors_say_what_is_running_and_what_to_do() {
    let dir = RuntimeDir::new("errors");
    // A socket left by a process that has ended is stale: not a running process.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::write(dir.socket(dead), "").unwrap();
    let none = dir.top(&["-b"]).finish(LIMIT);
    failed(&none, 1, "no tandem process serves a live socket in");
    failed(&none, 1, "start one with tandem run, scenario, compare or validate");
    failed(&dir.top(&["-b", "-p", "1"]).finish(LIMIT), 1, "process 1 serves no live socket");

    let pid = std::process::id();
    dir.serve(pid, None);
    dir.serve(1, None);
    let several = dir.top(&["-b", "-n", "1"]).finish(LIMIT);
    failed(&several, 1, &format!("2 tandem processes are running (1 scenario, {pid} scenario): name one with -p PID"));

    failed(&dir.top(&["-b", "-d", "0"]).finish(LIMIT), 2, "--delay");
    failed(&dir.top(&["-p", &pid.to_string()]).finish(LIMIT), 1, "use -b");
}

#[test]
fn the_interactive_view_shows_vms_expands_them_and_quits_on_q() {
    let dir = RuntimeDir::new("view");
    let pid = std::process::id();
    dir.serve(pid, None);
    let command = format!(
        "env XDG_RUNTIME_DIR={} {} top -d 0.2 -p {pid}; echo tandem top exited with $?; sleep 600",
        dir.0.display(),
        env!("CARGO_BIN_EXE_tandem")
    );
    let tmux = Tmux::start(&dir.0, &command);
    let titles = ["ID", "NAME", "NVCPU", "STATE", "%RUN", "%RDY", "%CSTP", "%WAIT", "EXIT/s", "GRANT", "DEMAND"];
    let shown = |screen: &str| titles.iter().chain(VMS.iter().map(|(name, _)| name)).all(|text| screen.contains(text));
    let screen = tmux.wait_for(shown, "the table of VMs");
    assert!(screen.contains(&format!("pid {pid} (scenario)")), "{screen}");
    assert!(!screen.contains("vcpu0"), "VMs start collapsed:\n{screen}");

    tmux.run(&["send-keys", "-t", "top", "e"]);
    tmux.wait_for(|screen| screen.contains("vcpu0") && screen.contains("vcpu1"), "a VM's VCPUs");

    // The shell says how tandem top ended, on the screen it had before: the terminal's own,
    // restored. (It then sleeps, for the pane to stay: tmux may not show what a pane wrote
    // just before it ended.)
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let screen = tmux.wait_for(|screen| screen.contains("tandem top exited with"), "tandem top to exit on q");
    assert!(screen.contains("tandem top exited with 0"), "{screen}");
    assert!(!screen.contains("%RUN"), "the view's screen was left:\n{screen}");
}
