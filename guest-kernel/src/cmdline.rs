//! The boot command line: a program name followed by `key=value` arguments.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// A parsed command line.
pub struct Command<'a> {
    pub program: &'a str,
    args: Vec<(&'a str, &'a str)>,
    words: Vec<&'a str>,
}

#[derive(Debug)]
pub enum Error {
    Empty,
    NotKeyValue(String),
    BadValue { key: String, value: String },
    UnknownKey(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Empty => write!(f, "no program named"),
            Error::NotKeyValue(word) => write!(f, "argument {word:?} is not key=value"),
            Error::BadValue { key, value } => write!(f, "{key}={value:?} is not a valid value"),
            Error::UnknownKey(key) => write!(f, "unknown argument {key:?}"),
        }
    }
}

impl<'a> Command<'a> {
    pub fn parse(line: &'a str) -> Result<Self, Error> {
        let mut words = line.split_ascii_whitespace();
        let program = words.next().ok_or(Error::Empty)?;
        let words: Vec<&str> = words.collect();
        let args = words
            .iter()
            .map(|word| word.split_once('=').ok_or_else(|| Error::NotKeyValue(word.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Command { program, args, words })
    }

    /// The arguments as given, `key=value` words.
    pub fn words(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.words.iter().copied()
    }

    /// Fails on any argument whose key is not in `known`.
    pub fn check_keys(&self, known: &[&str]) -> Result<(), Error> {
        match self.args.iter().find(|(key, _)| !known.contains(key)) {
            Some((key, _)) => Err(Error::UnknownKey(key.to_string())),
            None => Ok(()),
        }
    }

    /// The value of `key`, or `default` when absent.
    pub fn str(&self, key: &str, default: &'a str) -> &'a str {
        self.args.iter().rev().find(|(k, _)| *k == key).map_or(default, |(_, v)| v)
    }

    /// The value of `key` as an integer, or `default` when absent.
    pub fn u64(&self, key: &str, default: u64) -> Result<u64, Error> {
        match self.args.iter().rev().find(|(k, _)| *k == key) {
            None => Ok(default),
            Some((_, value)) => {
                value.parse().map_err(|_| Error::BadValue { key: key.to_string(), value: value.to_string() })
            }
        }
    }
}
