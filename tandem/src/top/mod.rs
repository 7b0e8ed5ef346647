//! `tandem top`: a running tandem's VMs and VCPUs, live, as esxtop shows a host's: read from
//! the process's live socket (`tandem_core::live`), shown in a terminal ([`view`]) or written
//! as CSV ([`batch`]).
//!
//! - [`attach`]: finding the process and reading its snapshots;
//! - [`batch`]: `-b`, a CSV row per VCPU per sample;
//! - [`table`]: the interactive table, without a terminal: lines, sorting, expansion;
//! - [`view`]: the interactive view.

pub mod attach;
pub mod batch;
pub mod table;
pub mod view;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

#[derive(Debug, Args)]
#[command(after_help = "Without -p, watches the only tandem process serving a live socket (in \
    $XDG_RUNTIME_DIR/tandem, else /tmp/tandem-UID). Keys: q quits; Up/Down/j/k select a VM; e, Enter or space \
    expands it into its VCPUs, E expands all; < and > move the sort column, r reverses, U R N sort by %RUN, %RDY, \
    ID. Ends, with status 0, when the process ends.")]
pub struct TopArgs {
    /// The tandem process to watch (default: the only one running)
    #[arg(short, long)]
    pub pid: Option<u32>,
    /// Batch mode: write CSV to stdout, a row per VCPU per sample, instead of the interactive view
    #[arg(short, long)]
    pub batch: bool,
    /// Seconds between samples (at least 0.1)
    #[arg(short, long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_delay)]
    pub delay: f64,
    /// Samples to write in batch mode (default: until the process ends, or SIGINT)
    #[arg(short = 'n', long, value_name = "COUNT", requires = "batch", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
}

fn parse_delay(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if (0.1..=86_400.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!("{text:?} is not a number of seconds from 0.1 to 86400")),
    }
}

/// Watches the process, or writes its samples as CSV with `-b`.
pub fn top(args: &TopArgs) -> anyhow::Result<()> {
    if !args.batch && !std::io::stdout().is_terminal() {
        bail!("stdout is not a terminal: use -b to write CSV (tandem top -b -d SECONDS -n COUNT)");
    }
    let source = attach::locate(args.pid)?;
    let every = Duration::from_secs_f64(args.delay);
    if args.batch {
        batch::run(&source, every, args.iterations, &mut std::io::stdout().lock())
    } else {
        view::run(&source, every)
    }
}
