//! tandem's KVM side: real VMs whose VCPU threads a dispatcher gates onto pCPUs under a
//! `sched` policy.
//!
//! - [`runner`]: a scenario's VMs run together, and the reference runs behind the ideals;
//! - [`load`]: the load generator that drives a served workload's VM over its NIC;
//! - [`stop`]: every running VM asked to end, then stopped (SIGINT, SIGTERM);
//! - [`live`]: the live socket, which serves the running VMs' counters (`tandem top`);
//! - `running`: the process's running VMs, where `stop` and `live` find them;
//! - [`vm`]: a VM (memory, image, boot structures, VCPU threads) run to its outcome;
//! - [`vcpu`]: a VCPU thread's run loop: KVM exits, hypercalls decoded, executed, answered;
//! - [`hypercall`]: decoding hypercalls (pure, typed) and carrying them out;
//! - `vm_shared`: what a VM's VCPU threads share (console, reports, trap table, outcome,
//!   the NIC's doorbell);
//! - [`dispatch`]: the one owner of each VCPU's state; drives a policy in real time, gating
//!   VCPU threads onto pCPUs, and publishes the states and grants to the shared page;
//! - [`net`]: the paravirtual NIC: its rings in guest memory, checked, and its backend
//!   thread (user-mode networking or a TAP device);
//! - [`outcome`]: how a VM ends, and the typed faults that end it;
//! - [`memory`]: guest memory, bounds-checked, and the shared page;
//! - [`image`]: checking and loading guest ELF images;
//! - [`x86`]: the x86 structures in guest memory and the registers at a VCPU's start;
//! - [`accounting`]: what each VCPU's thread counts, readable while it runs: where its time
//!   goes (RUN, RDY, WAIT, offline) and its exits by kind;
//! - [`console`], [`kick`]: guest console lines, forcing a VCPU out of KVM_RUN.
//!
//! Which module uses which (a module uses only those listed after it here, so none uses its
//! caller and no two use each other):
//!
//! - `runner` uses `vm`, `load`, `dispatch`, `image`, `outcome`;
//! - `live` uses `running`, `vm_shared`, `dispatch`, `accounting`;
//! - `vm` uses `vcpu`, `stop`, `running`, `vm_shared`, `dispatch`, `net`, `memory`, `image`, `kick`, `x86`,
//!   `outcome`;
//! - `vcpu` uses `hypercall`, `vm_shared`, `dispatch`, `accounting`, `kick`, `x86`, `outcome`;
//! - `hypercall` uses `vm_shared`, `dispatch`, `memory`, `x86`, `outcome` (its `decode`
//!   only `memory`, `x86` and `outcome`);
//! - `stop` uses `running`, `vm_shared`, `outcome`;
//! - `running` uses `vm_shared`;
//! - `vm_shared` uses `dispatch`, `net`, `accounting`, `console`, `memory`, `x86`, `outcome`;
//! - `dispatch` uses `kick`, `memory`, `x86` (its parts: `phase` only `x86`, `gate`,
//!   `metrics` and `grants` none of the others);
//! - `net` uses `memory`, `outcome` (its parts: see its doc);
//! - `accounting`, `console`, `image`, `kick`, `load`, `memory`, `outcome`, `x86` use none
//!   of the others.

pub mod accounting;
pub mod console;
pub mod dispatch;
pub mod hypercall;
pub mod image;
pub mod kick;
pub mod live;
pub mod load;
pub mod memory;
pub mod net;
pub mod outcome;
pub mod runner;
mod running;
pub mod stop;
pub mod vcpu;
pub mod vm;
mod vm_shared;
pub mod x86;

use anyhow::Context;
use kvm_ioctls::Kvm;

/// Opens /dev/kvm with an error that says what to check.
pub fn open_kvm() -> anyhow::Result<Kvm> {
    Kvm::new()
        .context("cannot open /dev/kvm (tandem needs KVM: check that /dev/kvm exists and is readable and writable)")
}
