//! tandem's KVM side: real VMs whose VCPU threads a dispatcher gates onto pCPUs under a
//! `sched` policy.
//!
//! - [`vm`]: a VM (memory, image, boot structures, VCPU threads) and how it ends;
//! - [`vcpu`]: a VCPU thread's run loop;
//! - [`hypercall`]: decoding and carrying out hypercalls;
//! - [`dispatch`]: drives a policy in real time, gating VCPU threads onto pCPUs;
//! - [`runner`]: a scenario's VMs run together, and the reference runs behind the ideals;
//! - [`image`]: checking and loading guest ELF images;
//! - [`x86`]: the x86 structures in guest memory;
//! - [`accounting`]: where each VCPU's time goes (RUN, RDY, WAIT);
//! - [`console`], [`kick`]: guest console lines, forcing a VCPU out of KVM_RUN.

pub mod accounting;
pub mod console;
pub mod dispatch;
pub mod hypercall;
pub mod image;
pub mod kick;
pub mod runner;
pub mod vcpu;
pub mod vm;
pub mod x86;

use anyhow::Context;
use kvm_ioctls::Kvm;

/// Opens /dev/kvm with an error that says what to check.
pub fn open_kvm() -> anyhow::Result<Kvm> {
    Kvm::new()
        .context("cannot open /dev/kvm (tandem needs KVM: check that /dev/kvm exists and is readable and writable)")
}
