//! `tandem` as a child process: started in the background, its output drained as it comes
//! (a guest that prints much would otherwise block on a full pipe), and finished within a
//! time limit, killed past it (which fails the test). The monitor itself must never crash or
//! panic, whatever the guest did: `finish` checks that too.
// Each test file uses the part it needs.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a run of `tandem` ended.
pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// A `tandem` process, killed if the test drops it unfinished.
pub struct Tandem {
    child: Child,
    args: Vec<String>,
    started: Instant,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Tandem {
    /// Starts `tandem ARGS`.
    pub fn start(args: &[&str]) -> Tandem {
        Self::start_with(Command::new(env!("CARGO_BIN_EXE_tandem")), args)
    }

    /// Starts `command` (which runs tandem, perhaps through a wrapper) with `args`.
    pub fn start_with(mut command: Command, args: &[&str]) -> Tandem {
        let started = Instant::now();
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tandem");
        let stdout = Some(drain(child.stdout.take().expect("piped")));
        let stderr = Some(drain(child.stderr.take().expect("piped")));
        Tandem { child, args: args.iter().map(|arg| arg.to_string()).collect(), started, stdout, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the process `signal` (as a terminal's Ctrl-C would SIGINT).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which it keeps until we wait for it.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0, "kill failed");
    }

    /// Waits for the process to end, killing it after `limit` (which fails the test).
    pub fn finish(mut self, limit: Duration) -> Run {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for tandem") {
                break status;
            }
            if self.started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let (stdout, stderr) = self.output();
                panic!("tandem {:?} still running after {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", self.args);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        let (stdout, stderr) = self.output();
        let run = Run { status: status.code(), stdout, stderr, elapsed };
        assert!(run.status.is_some(), "tandem {:?} was killed by a signal; stderr:\n{}", self.args, run.stderr);
        assert!(!run.stderr.contains("thread '"), "the monitor panicked on {:?}:\n{}", self.args, run.stderr);
        run
    }

    /// As `finish`, and the run must have exited 0.
    pub fn finish_ok(self, limit: Duration) -> Run {
        let args = self.args.clone();
        let run = self.finish(limit);
        assert_eq!(run.status, Some(0), "tandem {args:?}\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
        run
    }

    /// What the process wrote, once it has ended.
    fn output(&mut self) -> (String, String) {
        let take =
            |reader: &mut Option<JoinHandle<String>>| reader.take().map(|r| r.join().unwrap()).unwrap_or_default();
        (take(&mut self.stdout), take(&mut self.stderr))
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
