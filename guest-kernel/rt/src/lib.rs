//! tandem-rt: the tandem guest as a library. A paravirtual SMP unikernel that runs at ring 3
//! (privileged work is done by the monitor through hypercalls) and its thread runtime, which
//! applications link against to become a guest the tandem monitor boots.
//!
//! The library provides the ELF entry `_start`: VCPU 0 checks the boot info, installs the trap
//! table, sets up the heap and the clock, brings the network stack up if the VM has a NIC
//! ([`net`]), parses the boot command line into [`Args`], applies the guest runtime's
//! parameters ([`workloads::GUEST_PARAMS`]: `locks=spin|pv|qspin|pvqspin` and the bounds of
//! the paravirtual waits; a bad one ends the guest with [`EXIT_USAGE`]), and calls the
//! application's main, named with [`entry!`], on VCPU 0 alone. Its return value is the guest's
//! exit code. The other VCPUs are offline until the application starts them: all of them as
//! schedulers of threads with [`sched::start`], or one by one with [`smp::start`].
//!
//! What the library offers:
//! - threads: [`sched::start`], [`sched::spawn`] and [`sched::JoinHandle::join`],
//!   [`sched::yield_now`], [`sched::sleep`];
//! - synchronization for threads: [`sync::Mutex`], [`sync::Condvar`], [`sync::WaitQueue`], and
//!   the whole set as a [`workloads::Runtime`], [`GuestRuntime`], whose spinlocks and barriers
//!   are of the family `locks=` chose;
//! - TCP over the VM's paravirtual NIC, if it has one: [`net::TcpListener::bind`] and
//!   [`net::TcpListener::accept`]; [`net::TcpStream`]'s `read` (0 at the end of the stream),
//!   `write`, `write_all`, `shutdown` (a half-close), `close` (or drop) and `peer_addr`;
//!   failures as [`net::NetError`]. Waits block the thread, not the VCPU;
//! - the VM: [`boot::nr_vcpus`], [`percpu::vcpu_id`], [`boot::shared_page`], [`clock`], the
//!   hypercalls in [`hypercall`] (among them [`report`] and [`exit`]), and [`println!`];
//! - the crates of the contract, re-exported: [`pv_abi`] and [`workloads`].
//!
//! # An application crate
//!
//! An application is a binary crate of its own with four files. `Cargo.toml` depends on this
//! library and aborts on panic (the guest has no unwinder):
//!
//! ```toml
//! [package]
//! name = "myapp"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [dependencies]
//! tandem-rt = { path = "/path/to/tandem/guest-kernel/rt" }
//!
//! [profile.release]
//! panic = "abort"
//!
//! [profile.dev]
//! panic = "abort"
//! ```
//!
//! `.cargo/config.toml` builds it bare-metal for the host triple (`target` is set so that the
//! flags do not reach build scripts; cargo reads this file from the directory it runs in):
//!
//! ```toml
//! [build]
//! target = "x86_64-unknown-linux-gnu"
//! rustflags = [
//!     "-C", "relocation-model=static",
//!     "-C", "target-feature=+crt-static",
//!     "-C", "no-redzone=yes",
//!     "-C", "link-arg=-nostartfiles",
//!     "-C", "link-arg=-nostdlib",
//!     "-C", "link-arg=-static",
//!     "-C", "link-arg=-Wl,--build-id=none",
//! ]
//! ```
//!
//! `build.rs` links it with the library's linker script, whose path the library hands over as
//! `links` metadata (a dependency's own link arguments do not reach the binary):
//!
//! ```ignore
//! fn main() {
//!     let script = std::env::var("DEP_TANDEM_RT_LINKER_SCRIPT").expect("tandem-rt is a dependency");
//!     println!("cargo:rustc-link-arg-bins=-T{script}");
//! }
//! ```
//!
//! `src/main.rs` names its main with [`entry!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! use tandem_rt::{Args, println};
//!
//! tandem_rt::entry!(main);
//!
//! fn main(args: Args) -> i64 {
//!     println!("{} on {} VCPUs", args.program(), tandem_rt::boot::nr_vcpus());
//!     0
//! }
//! ```
//!
//! `cargo build --release` then leaves the guest in
//! `target/x86_64-unknown-linux-gnu/release/myapp`. The built-in programs (the package
//! `guest-kernel`, whose binary is `tandem-guest`, around this library) are such an
//! application.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

mod args;
pub mod boot;
pub mod clock;
pub mod console;
mod heap;
pub mod hypercall;
mod lang;
pub mod net;
pub mod percpu;
mod runtime;
pub mod sched;
pub mod smp;
pub mod sync;
mod trap;

pub use pv_abi;
pub use workloads;

pub use args::Args;
pub use hypercall::{exit, report};
pub use runtime::{GuestBarrier, GuestRuntime};

use pv_abi::boot::BootInfo;

/// Marks the image as a tandem guest of this ABI version (see `pv_abi::note`).
#[used]
#[unsafe(link_section = ".note.tandem")]
static ABI_NOTE: pv_abi::note::AbiNote = pv_abi::note::ABI_NOTE;

/// The exit code of a guest whose command line is wrong (the `EX_USAGE` of BSD's sysexits).
pub const EXIT_USAGE: i64 = 64;

/// Names the application's main, `fn(Args) -> i64`, which the library calls once the guest is
/// set up; its return value is the guest's exit code.
///
/// ```ignore
/// tandem_rt::entry!(main);
///
/// fn main(args: tandem_rt::Args) -> i64 {
///     0
/// }
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The application's main, under the name the library's `_start` calls.
        #[unsafe(export_name = "tandem_rt_main")]
        fn __tandem_rt_main(args: $crate::Args) -> i64 {
            let main: fn($crate::Args) -> i64 = $main;
            main(args)
        }
    };
}

// SAFETY: `entry!` defines the symbol with this very signature, and a guest without it does
// not link.
unsafe extern "Rust" {
    /// The application's main, defined by [`entry!`].
    #[link_name = "tandem_rt_main"]
    safe fn application_main(args: Args) -> i64;
}

/// VCPU 0's entry (the ELF entry point); see `pv_abi::boot` for the register convention.
#[unsafe(no_mangle)]
pub extern "C" fn _start(boot_info: &'static BootInfo, vcpu: u32, _arg: u64) -> ! {
    boot::init(boot_info, vcpu);
    trap::init();
    heap::init(boot_info.heap_start, boot_info.heap_end);
    clock::init(boot_info.tsc_khz);
    if boot_info.net.present() {
        // SAFETY: the monitor reserves the NIC area for the VM's life and serves it as
        // `pv_abi::net` says; nothing else in the guest uses it.
        unsafe { net::attach(&boot_info.net) };
    }

    let Some(line) = boot_info.cmdline() else {
        println!("the boot command line is not UTF-8");
        exit(EXIT_USAGE);
    };
    let args = match Args::parse(line) {
        Ok(args) => args,
        Err(message) => {
            println!("{message}");
            exit(EXIT_USAGE);
        }
    };
    exit(application_main(args))
}
