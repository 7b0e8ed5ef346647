//! tandem's monitor: runs paravirtual SMP unikernels under KVM.
//!
//! - [`vm`]: a VM (memory, image, boot structures, VCPU threads) and how it ends;
//! - [`vcpu`]: a VCPU thread's run loop, blocking, kicking and start/stop;
//! - [`dispatch`]: drives a `sched` policy in real time, gating VCPU threads onto pCPUs;
//! - [`hypercall`]: decoding and validating hypercalls;
//! - [`image`]: checking and loading guest ELF images;
//! - [`layout`], [`x86`]: the guest memory map and the x86 structures in it;
//! - [`accounting`]: where each VCPU's time goes (RUN, RDY, WAIT);
//! - [`console`], [`kick`]: guest console lines, forcing a VCPU out of KVM_RUN;
//! - [`scenario`], [`runner`], [`report`]: scenario files, running their VMs together, results;
//! - [`compare`]: scenarios under each policy side by side, table and chart;
//! - [`cli`], [`bench`]: the `tandem` command line and its benchmarks.

pub mod accounting;
pub mod bench;
pub mod cli;
pub mod compare;
pub mod console;
pub mod dispatch;
pub mod hypercall;
pub mod image;
pub mod kick;
pub mod layout;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sim;
pub mod sweep;
pub mod validate;
pub mod vcpu;
pub mod vm;
pub mod x86;
