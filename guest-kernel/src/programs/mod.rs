//! The programs a guest can run, chosen by the first word of the boot command line: the
//! workloads of the `workloads` crate, and the programs below that test the kernel and the
//! monitor.

mod hello;
mod hypercall_bench;
mod misbehave;
mod selftest;
mod updown;
mod workload;

use workloads::{ParamError, ParamSpec, Params};

use crate::cmdline::Command;

struct Program {
    name: &'static str,
    params: &'static [ParamSpec],
    run: fn(&Params) -> Result<i64, ParamError>,
}

const PROGRAMS: &[Program] = &[
    Program { name: "hello", params: &[], run: hello::run },
    Program { name: "hypercall", params: hypercall_bench::PARAMS, run: hypercall_bench::run },
    Program { name: "updown", params: updown::PARAMS, run: updown::run },
    Program { name: "selftest", params: &[], run: selftest::run },
    Program { name: "fault", params: misbehave::FAULT_PARAMS, run: misbehave::fault },
    Program { name: "panic", params: misbehave::PANIC_PARAMS, run: misbehave::panic },
    Program { name: "hang", params: misbehave::HANG_PARAMS, run: misbehave::hang },
    Program { name: "badcall", params: &[], run: misbehave::badcall },
];

/// Runs the program the command names; returns the exit code.
pub fn run(command: &Command<'_>) -> i64 {
    let program = match PROGRAMS.iter().find(|p| p.name == command.program) {
        Some(program) => program,
        None if workload::exists(command.program) => return workload::run(command),
        None => {
            crate::print!("unknown program {:?}; the guest has:", command.program);
            for name in workloads::WORKLOADS.iter().map(|w| w.name).chain(PROGRAMS.iter().map(|p| p.name)) {
                crate::print!(" {name}");
            }
            crate::println!();
            return crate::EXIT_USAGE;
        }
    };
    match Params::parse(program.params, command.words()).and_then(|params| (program.run)(&params)) {
        Ok(code) => code,
        Err(error) => {
            crate::println!("{}: {error}", command.program);
            crate::EXIT_USAGE
        }
    }
}
