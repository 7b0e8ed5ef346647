use std::process::ExitCode;

fn main() -> ExitCode {
    host_monitor::cli::main()
}
