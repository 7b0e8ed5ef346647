//! The built-in guest programs (binary `tandem-guest`): an application on tandem-rt, laid out
//! as the crate doc of tandem-rt describes (this crate's build.rs is the two lines an
//! application needs).
#![no_std]
#![no_main]

extern crate alloc;

mod programs;

tandem_rt::entry!(programs::run);
