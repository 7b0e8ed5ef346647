//! The programs a guest can run, chosen by the first word of the boot command line: the
//! workloads of the `workloads` crate, and the programs below that test the kernel and the
//! monitor.

mod hello;
mod hypercall_bench;
mod misbehave;
mod selftest;
mod updown;
mod workload;

use crate::cmdline::Command;

struct Program {
    name: &'static str,
    run: fn(&Command<'_>) -> Result<i64, crate::cmdline::Error>,
}

const PROGRAMS: &[Program] = &[
    Program { name: "hello", run: hello::run },
    Program { name: "hypercall", run: hypercall_bench::run },
    Program { name: "updown", run: updown::run },
    Program { name: "selftest", run: selftest::run },
    Program { name: "fault", run: misbehave::fault },
    Program { name: "panic", run: misbehave::panic },
    Program { name: "hang", run: misbehave::hang },
    Program { name: "badcall", run: misbehave::badcall },
];

/// Runs the program the command names; returns the exit code.
pub fn run(command: &Command<'_>) -> i64 {
    let run = match PROGRAMS.iter().find(|p| p.name == command.program) {
        Some(program) => program.run,
        None if workload::exists(command.program) => workload::run,
        None => {
            crate::print!("unknown program {:?}; the guest has:", command.program);
            for name in workloads::WORKLOADS.iter().map(|w| w.name).chain(PROGRAMS.iter().map(|p| p.name)) {
                crate::print!(" {name}");
            }
            crate::println!();
            return crate::EXIT_USAGE;
        }
    };
    match run(command) {
        Ok(code) => code,
        Err(error) => {
            crate::println!("{}: {error}", command.program);
            crate::EXIT_USAGE
        }
    }
}
