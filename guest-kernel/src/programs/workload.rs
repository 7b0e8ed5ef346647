//! Runs a workload of the `workloads` crate on guest threads: prints its summary and reports
//! its record. Besides the workload's own parameters it takes the guest runtime's:
//! `locks`, the spinlock family, and the bounds of a paravirtual wait.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use workloads::Params;

use crate::cmdline::Command;
use crate::runtime::GuestRuntime;
use crate::sync::pv;
use crate::{hypercall, println, sched};

/// Exit code of a workload whose self-check failed.
const EXIT_CHECK_FAILED: i64 = 1;

/// Whether `name` is a workload.
pub fn exists(name: &str) -> bool {
    workloads::WORKLOADS.iter().any(|w| w.name == name)
}

/// Runs the workload `command` names on guest threads; returns the exit code.
pub fn run(command: &Command<'_>) -> i64 {
    let (guest_args, workload_args) = workloads::split_guest_args(command.words());
    let guest = match Params::parse(workloads::GUEST_PARAMS, guest_args) {
        Ok(guest) => guest,
        Err(error) => {
            println!("{}: {error}", command.program);
            return crate::EXIT_USAGE;
        }
    };
    if guest.str("locks") == "pv" {
        pv::enable(pv::Thresholds {
            yield_after_ns: guest.u64("pv_yield_us") * 1_000,
            block_after_ns: guest.u64("pv_block_us") * 1_000,
        });
    }
    let name = command.program.to_string();
    let args: Vec<String> = workload_args.into_iter().map(String::from).collect();
    sched::start(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match workloads::run(&GuestRuntime, &name, &args) {
            Ok(record) => {
                println!("{}", record.summary());
                hypercall::report(record.to_json().as_bytes()).expect("the monitor refused the report");
                0
            }
            Err(error @ workloads::Error::Check(_)) => {
                println!("{name}: {error}");
                EXIT_CHECK_FAILED
            }
            Err(error) => {
                println!("{name}: {error}");
                crate::EXIT_USAGE
            }
        }
    })
}
