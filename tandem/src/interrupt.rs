//! SIGINT and SIGTERM while VMs run: the first is handed to what runs, to end it cleanly; a
//! second ends the process at once. Either way the process exits as a shell expects of one
//! ended by the signal: 128 + its number.

use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// The first signal received, 0 until one is.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Watches for SIGINT and SIGTERM while it lives.
pub struct Watch {
    handle: Handle,
}

/// Calls `on_signal` with the first SIGINT or SIGTERM, on a thread of its own; a second ends
/// the process with 128 + its number. Until the [`Watch`] is dropped.
pub fn watch(on_signal: impl FnOnce(i32) + Send + 'static) -> anyhow::Result<Watch> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot watch for SIGINT and SIGTERM")?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            let Some(first) = received.next() else { return };
            RECEIVED.store(first, Ordering::Release);
            std::thread::spawn(move || on_signal(first));
            if let Some(second) = received.next() {
                eprintln!("tandem: {} again: ending at once", tandem_kvm::outcome::signal_name(second));
                std::process::exit(i32::from(tandem_kvm::outcome::interrupted_status(second)));
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

/// The first SIGINT or SIGTERM received while a [`Watch`] lived, if any.
pub fn received() -> Option<i32> {
    Some(RECEIVED.load(Ordering::Acquire)).filter(|&signal| signal != 0)
}
