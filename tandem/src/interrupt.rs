//! SIGINT and SIGTERM: the first stops the VMs (each asked to end, then stopped, see
//! `tandem_kvm::stop`) and lets the command finish with what it has, or, for a command with
//! nothing to keep (one simulation), ends the process; a second ends it at once. Either way
//! the process exits as a shell expects of one ended by the signal: 128 + its number.

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tandem_kvm::outcome::{interrupted_status, signal_name};
use tandem_kvm::stop;

/// Watches for SIGINT and SIGTERM while it lives.
pub struct Watch {
    handle: Handle,
}

/// How a command answers its first SIGINT or SIGTERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSignal {
    /// Stop every VM (and start no more work); the command ends with what had finished.
    Stop,
    /// End the process: nothing it has done is worth keeping.
    Exit,
}

/// Answers the first SIGINT or SIGTERM as `on_signal` says, on a thread of its own; a second
/// ends the process. Until the [`Watch`] is dropped.
pub fn watch(on_signal: OnSignal) -> anyhow::Result<Watch> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot watch for SIGINT and SIGTERM")?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            let Some(first) = received.next() else { return };
            if on_signal == OnSignal::Exit {
                eprintln!("tandem: interrupted by {}: nothing had finished", signal_name(first));
                std::process::exit(i32::from(interrupted_status(first)));
            }
            std::thread::spawn(move || stop::interrupt(first));
            if let Some(second) = received.next() {
                eprintln!("tandem: {} again: ending at once", signal_name(second));
                std::process::exit(i32::from(interrupted_status(second)));
            }
        })
        .context("cannot start the thread that watches for signals")?;
    Ok(Watch { handle })
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.handle.close();
    }
}
