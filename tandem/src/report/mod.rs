//! Presenting results: tables for people, JSON, Chrome traces, charts and CSV; one module
//! per command that presents something of its own.
//!
//! - [`scenario`]: a scenario's result, real or simulated, as a table;
//! - [`trace`]: who ran where when, as Chrome trace-event JSON (Perfetto);
//! - [`compare`], [`validate`], [`sweep`]: those commands' tables, charts and files.

pub mod compare;
pub mod scenario;
pub mod sweep;
pub mod trace;
pub mod validate;

use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// A progress bar over `len` `things` (runs, points) with the time left, on stderr: hidden
/// when stderr is not a terminal.
pub fn progress(len: usize, things: &str) -> ProgressBar {
    let template = format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {things}, {{eta}} left {{msg}}");
    ProgressBar::new(len as u64)
        .with_style(ProgressStyle::with_template(&template).expect("a valid template").progress_chars("=> "))
}

/// Nanoseconds in microseconds.
fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}
