//! The `tandem` command and the experiments that span both sides: the top floor, above the
//! KVM side (`tandem-kvm`) and the simulator (`tandem-sim`), both on `tandem-core`.
//!
//! - [`cli`]: the command line: parsing, calling the floors below, printing;
//! - [`interrupt`]: SIGINT and SIGTERM handed to what runs, to end it cleanly;
//! - [`report`]: results as tables, JSON and Chrome traces;
//! - [`compare`]: scenarios under each policy on KVM, side by side, table and chart;
//! - [`validate`]: the same scenarios on KVM and in the simulator;
//! - [`sweep`]: the simulator over a grid, as CSV, JSON and plots;
//! - [`top`]: a running tandem's VMs and VCPUs, live, in a terminal or as CSV;
//! - [`bench`]: boot time, hypercalls, workloads and the network in the guest against native;
//! - [`scaffold`]: guest applications of one's own, laid out and built.

pub mod bench;
pub mod cli;
pub mod compare;
pub mod interrupt;
pub mod report;
pub mod scaffold;
pub mod sweep;
pub mod top;
pub mod validate;
