//! A tmux server of a test's own, to drive an interactive program in a pseudo-terminal and
//! read its screen.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a screen may take to show what a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

/// A tmux server of the test's own (its socket in the test's directory), killed when
/// dropped.
pub struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Starts `command` (a shell's) in a detached 160x40 session, its socket in `dir`.
    pub fn start(dir: &Path, command: &str) -> Tmux {
        let version = Command::new("tmux").arg("-V").output();
        assert!(
            version.is_ok_and(|output| output.status.success()),
            "tmux is missing: the interactive view's test needs it (apt-get install tmux)"
        );
        let tmux = Tmux { socket: dir.join("tmux.sock") };
        let session =
            "-f /dev/null start-server ; set-option -g remain-on-exit on ; new-session -d -s top -x 160 -y 40";
        let started = tmux.run(&[session.split(' ').collect(), vec![command]].concat());
        assert!(started.status.success(), "tmux new-session failed: {}", String::from_utf8_lossy(&started.stderr));
        tmux
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").env_remove("TMUX").arg("-S").arg(&self.socket).args(args).output().unwrap()
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Waits until the screen shows what `done` looks for, failing the test past [`LIMIT`]
    /// with what it showed last.
    pub fn wait_for(&self, done: impl Fn(&str) -> bool, waiting_for: &str) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(started.elapsed() < LIMIT, "waited {LIMIT:?} for {waiting_for}; the pane shows:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
