//! The programs a guest can run, chosen by the first word of the boot command line: the
//! workloads of the `workloads` crate (the served one, `kv`, the Redis-protocol key-value
//! server, among the programs here), a TCP echo server, and the programs below that test the
//! kernel and the monitor.

mod echo;
mod hello;
mod hypercall_bench;
mod kv;
mod loopback;
mod misbehave;
mod netloop;
mod selftest;
mod updown;
mod workload;

use tandem_rt::workloads::{ParamError, ParamSpec, Params};
use tandem_rt::{Args, EXIT_USAGE, print, println};

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
    Program { name: "netloop", params: netloop::PARAMS, run: netloop::run },
    Program { name: "fault", params: misbehave::FAULT_PARAMS, run: misbehave::fault },
    Program { name: "panic", params: misbehave::PANIC_PARAMS, run: misbehave::panic },
    Program { name: "hang", params: misbehave::HANG_PARAMS, run: misbehave::hang },
    Program { name: "badcall", params: &[], run: misbehave::badcall },
    Program { name: "badnic", params: &[], run: misbehave::badnic },
    Program { name: "storm", params: misbehave::STORM_PARAMS, run: misbehave::storm },
    Program { name: "echo", params: echo::PARAMS, run: echo::run },
    Program { name: "kv", params: kv::PARAMS, run: kv::run },
];

/// Runs the program the command line names; returns the exit code.
pub fn run(args: Args) -> i64 {
    let program = match PROGRAMS.iter().find(|p| p.name == args.program()) {
        Some(program) => program,
        None if workload::exists(args.program()) => return workload::run(&args),
        None => {
            print!("unknown program {:?}; the guest has:", args.program());
            // Served workloads (kv) are programs of their own, listed once.
            let programs = PROGRAMS.iter().map(|p| p.name).filter(|name| !workload::exists(name));
            for name in tandem_rt::workloads::WORKLOADS.iter().map(|w| w.name).chain(programs) {
                print!(" {name}");
            }
            println!();
            return EXIT_USAGE;
        }
    };
    match args.params(program.params).and_then(|params| (program.run)(&params)) {
        Ok(code) => code,
        Err(error) => args.usage_error(error),
    }
}
