//! Runs a workload of the `workloads` crate on guest threads: prints its summary and reports
//! its record. The guest runtime's parameters (`locks`, the bounds of a paravirtual wait) were
//! applied by tandem-rt before the program started.

use tandem_rt::{Args, GuestRuntime, println, sched, workloads};

/// Exit code of a workload whose self-check failed.
const EXIT_CHECK_FAILED: i64 = 1;

/// Whether `name` is a workload.
pub fn exists(name: &str) -> bool {
    workloads::workload(name).is_some()
}

/// Runs the workload `args` names on guest threads; returns the exit code.
pub fn run(args: &Args) -> i64 {
    let name = args.program();
    let words = args.words().to_vec();
    sched::start(move || match workloads::run(&GuestRuntime, name, &words) {
        Ok(record) => {
            println!("{}", record.summary());
            tandem_rt::report(record.to_json().as_bytes()).expect("the monitor refused the report");
            0
        }
        Err(error @ workloads::Error::Check(_)) => {
            println!("{name}: {error}");
            EXIT_CHECK_FAILED
        }
        Err(error) => {
            println!("{name}: {error}");
            tandem_rt::EXIT_USAGE
        }
    })
}
