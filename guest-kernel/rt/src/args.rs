//! The boot command line: a program name followed by `key=value` words. The guest runtime's
//! own words ([`workloads::GUEST_PARAMS`]) are applied here, before the application runs; the
//! application gets the rest in [`Args`] and checks them against its parameters.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Display;

use workloads::{ParamError, ParamSpec, Params};

use crate::sync::{self, pv, pvq};
use crate::{EXIT_USAGE, println};

/// The command line the application runs with: the program name as given and the
/// `key=value` words that are not the guest runtime's.
pub struct Args {
    program: &'static str,
    words: Vec<&'static str>,
}

impl Args {
    /// Splits `line` at whitespace and applies the guest runtime's parameters; the error is
    /// the message to print before exiting with [`EXIT_USAGE`].
    pub(crate) fn parse(line: &'static str) -> Result<Self, String> {
        let mut words = line.split_ascii_whitespace();
        let program = words.next().ok_or_else(|| String::from("the boot command line names no program"))?;
        let (guest_words, words) = workloads::split_guest_args(words);
        let guest =
            Params::parse(workloads::GUEST_PARAMS, guest_words).map_err(|error| format!("{program}: {error}"))?;
        let family = guest.str("locks");
        if workloads::paravirtual(family) {
            pv::set_thresholds(pv::Thresholds {
                yield_after_ns: guest.u64("pv_yield_us") * 1_000,
                block_after_ns: guest.u64("pv_block_us") * 1_000,
            });
            pvq::set_bounds(guest.u64("pvq_spin_us") * 1_000, guest.u64("pvq_head_us") * 1_000);
        }
        sync::choose_family(family);
        Ok(Args { program, words })
    }

    /// The program name, the command line's first word.
    pub fn program(&self) -> &'static str {
        self.program
    }

    /// The `key=value` words after the program name, as given, without the guest runtime's.
    pub fn words(&self) -> &[&'static str] {
        &self.words
    }

    /// The words checked against `spec`: every key known, every value valid, defaults filled
    /// in.
    pub fn params(&self, spec: &[ParamSpec]) -> Result<Params, ParamError> {
        Params::parse(spec, self.words.iter().copied())
    }

    /// Prints "program: `error`" and returns [`EXIT_USAGE`], the exit code of a bad command
    /// line.
    pub fn usage_error(&self, error: impl Display) -> i64 {
        println!("{}: {error}", self.program);
        EXIT_USAGE
    }
}
