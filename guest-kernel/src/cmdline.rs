//! The boot command line: a program name followed by `key=value` arguments, which each program
//! checks against its parameters with `workloads::Params`.

use alloc::vec::Vec;

/// A command line split into the program and its argument words.
pub struct Command<'a> {
    pub program: &'a str,
    words: Vec<&'a str>,
}

impl<'a> Command<'a> {
    /// Splits `line` at whitespace; `None` if it names no program.
    pub fn parse(line: &'a str) -> Option<Self> {
        let mut words = line.split_ascii_whitespace();
        let program = words.next()?;
        Some(Command { program, words: words.collect() })
    }

    /// The arguments as given, `key=value` words.
    pub fn words(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.words.iter().copied()
    }
}
