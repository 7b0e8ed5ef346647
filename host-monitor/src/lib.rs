//! tandem's monitor: runs paravirtual SMP unikernels under KVM.
//!
//! - [`vm`]: a VM (memory, image, boot structures, VCPU threads) and how it ends;
//! - [`vcpu`]: a VCPU thread's run loop, blocking, kicking and start/stop;
//! - [`hypercall`]: decoding and validating hypercalls;
//! - [`image`]: checking and loading guest ELF images;
//! - [`layout`], [`x86`]: the guest memory map and the x86 structures in it;
//! - [`accounting`]: where each VCPU's time goes (RUN, RDY, WAIT);
//! - [`console`], [`kick`]: guest console lines, forcing a VCPU out of KVM_RUN;
//! - [`cli`], [`bench`]: the `tandem` command line and its benchmarks.

pub mod accounting;
pub mod bench;
pub mod cli;
pub mod console;
pub mod hypercall;
pub mod image;
pub mod kick;
pub mod layout;
pub mod vcpu;
pub mod vm;
pub mod x86;
