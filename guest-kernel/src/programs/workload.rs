//! Runs a workload of the `workloads` crate on guest threads: prints its summary and reports
//! its record. Besides the workload's own parameters it takes `locks=spin|pv`, the spinlock
//! family.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::cmdline::{Command, Error};
use crate::runtime::GuestRuntime;
use crate::{hypercall, println, sched};

/// Exit code of a workload whose self-check failed.
const EXIT_CHECK_FAILED: i64 = 1;

/// Whether `name` is a workload.
pub fn exists(name: &str) -> bool {
    workloads::WORKLOADS.iter().any(|w| w.name == name)
}

pub fn run(command: &Command<'_>) -> Result<i64, Error> {
    let locks = command.str("locks", "spin");
    if locks != "spin" {
        return Err(Error::BadValue { key: "locks".to_string(), value: locks.to_string() });
    }
    let name = command.program.to_string();
    let args: Vec<String> = command.words().filter(|word| !word.starts_with("locks=")).map(String::from).collect();
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
