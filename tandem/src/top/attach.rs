//! Finding a running tandem's live socket, and reading snapshots from it: a connection
//! each, which the server answers with one JSON document and closes.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_core::live::{self, Snapshot};

/// How long a snapshot may take to arrive. The server writes it at once: a longer wait means
/// the process is stuck, which is worth an error rather than a frozen screen.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A running tandem's live socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub pid: u32,
    pub path: PathBuf,
}

/// What one look at a source found.
#[derive(Debug)]
pub enum Sample {
    Snapshot(Snapshot),
    /// The process has ended: it is gone, or its socket is, or the socket refuses connections.
    Ended,
}

/// The process `pid` names, or else the only one serving a live socket in
/// [`live::socket_dir`].
pub fn locate(pid: Option<u32>) -> anyhow::Result<Source> {
    let Some(pid) = pid else { return only_running(&live::socket_dir()) };
    let path = live::socket_path(pid);
    if !live::process_alive(pid) {
        bail!("no process {pid} is running");
    }
    if !path.exists() {
        bail!(
            "process {pid} serves no live socket (there is no {}): is it a tandem run, scenario, compare or validate?",
            path.display()
        );
    }
    Ok(Source { pid, path })
}

/// The only live socket in `dir`, or an error that says how many there are.
fn only_running(dir: &Path) -> anyhow::Result<Source> {
    let mut sources = running(dir)?;
    match sources.len() {
        0 => bail!(
            "no tandem process serves a live socket in {}: start one with tandem run, scenario, compare or validate",
            dir.display()
        ),
        1 => Ok(sources.remove(0)),
        count => {
            let named: Vec<String> =
                sources.iter().map(|source| format!("{} {}", source.pid, source.command())).collect();
            bail!("{count} tandem processes are running ({}): name one with -p PID", named.join(", "))
        }
    }
}

/// The sockets in `dir` whose process is alive, by pid; a socket left by a process that has
/// ended is stale and skipped. No directory: none.
fn running(dir: &Path) -> anyhow::Result<Vec<Source>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut sources = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if let Some(pid) = live::socket_pid(&path).filter(|pid| live::process_alive(*pid)) {
            sources.push(Source { pid, path });
        }
    }
    sources.sort_by_key(|source| source.pid);
    Ok(sources)
}

impl Source {
    /// A snapshot, or an error if there is none to be had.
    pub fn fetch(&self) -> anyhow::Result<Snapshot> {
        fetch(&self.path)
    }

    /// A snapshot, or [`Sample::Ended`] if the process has ended since it was found.
    pub fn sample(&self) -> anyhow::Result<Sample> {
        match self.fetch() {
            Ok(snapshot) => Ok(Sample::Snapshot(snapshot)),
            Err(_) if self.ended() => Ok(Sample::Ended),
            Err(error) => Err(error),
        }
    }

    fn ended(&self) -> bool {
        !live::process_alive(self.pid)
            || !self.path.exists()
            || UnixStream::connect(&self.path).is_err_and(|error| error.kind() == ErrorKind::ConnectionRefused)
    }

    /// The command the process runs, as its snapshot says, for telling processes apart.
    fn command(&self) -> String {
        self.fetch().map_or_else(|_| "(not answering)".to_owned(), |snapshot| snapshot.command)
    }
}

/// Reads one snapshot from the live socket at `path`.
pub fn fetch(path: &Path) -> anyhow::Result<Snapshot> {
    let mut stream = UnixStream::connect(path).with_context(|| format!("cannot connect to {}", path.display()))?;
    stream.set_read_timeout(Some(READ_TIMEOUT)).context("cannot set a read timeout")?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).with_context(|| format!("cannot read a snapshot from {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} sent no snapshot that tandem top reads", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tandem-top-attach-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A pid that no process has: a child's, once it has been waited for.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn sockets_of_ended_processes_and_other_files_are_skipped() {
        let dir = scratch("stale");
        let own = std::process::id();
        for name in [format!("{own}.sock"), format!("{}.sock", dead_pid()), "1.sock".into(), "notes.txt".into()] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let pids: Vec<u32> = running(&dir).unwrap().iter().map(|source| source.pid).collect();
        assert_eq!(pids, [1, own]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_directory_none_is_running_and_the_error_says_how_to_start_one() {
        let dir = std::env::temp_dir().join("tandem-top-attach-nowhere");
        assert!(running(&dir).unwrap().is_empty());
        let error = only_running(&dir).unwrap_err().to_string();
        assert!(error.starts_with("no tandem process serves a live socket in"), "{error}");
        assert!(error.contains("tandem run, scenario, compare or validate"), "{error}");
    }

    #[test]
    fn several_running_are_named_with_their_pids() {
        let dir = scratch("several");
        for pid in [1, std::process::id()] {
            std::fs::write(dir.join(format!("{pid}.sock")), "").unwrap();
        }
        let error = only_running(&dir).unwrap_err().to_string();
        assert!(error.starts_with("2 tandem processes are running (1 (not answering), "), "{error}");
        assert!(error.ends_with("name one with -p PID"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
