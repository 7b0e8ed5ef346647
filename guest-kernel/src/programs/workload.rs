//! Runs a workload of the `workloads` crate on guest threads: prints its summary and reports
//! its record. Besides the workload's own parameters it takes the guest runtime's:
//! `locks`, the spinlock family.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use workloads::{ParamSpec, Params};

use crate::cmdline::Command;
use crate::runtime::GuestRuntime;
use crate::{hypercall, println, sched};

/// Exit code of a workload whose self-check failed.
const EXIT_CHECK_FAILED: i64 = 1;

/// Whether `name` is a workload.
pub fn exists(name: &str) -> bool {
    workloads::WORKLOADS.iter().any(|w| w.name == name)
}

/// The guest runtime's parameters, taken by every workload.
const RUNTIME_PARAMS: &[ParamSpec] = &[ParamSpec::choice("locks", "spin", &["spin"], "the spinlock family")];

fn is_runtime_param(word: &str) -> bool {
    RUNTIME_PARAMS.iter().any(|param| word.split_once('=').is_some_and(|(key, _)| key == param.name))
}

/// Runs the workload `command` names on guest threads; returns the exit code.
pub fn run(command: &Command<'_>) -> i64 {
    if let Err(error) = Params::parse(RUNTIME_PARAMS, command.words().filter(|word| is_runtime_param(word))) {
        println!("{}: {error}", command.program);
        return crate::EXIT_USAGE;
    }
    let name = command.program.to_string();
    let args: Vec<String> = command.words().filter(|word| !is_runtime_param(word)).map(String::from).collect();
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
