//! The tandem guest <-> monitor contract.
//!
//! Everything both sides must agree on lives here and nowhere else:
//! - [`boot`]: the boot info the monitor writes before VCPU 0 starts, and the entry convention;
//! - [`hypercall`]: call numbers, `#[repr(C)]` argument blocks and error codes;
//! - [`shared`]: the shared page both sides read and write with atomics, without exits;
//! - [`layout`]: the guest memory map (where the boot info, shared page, image and stacks are);
//! - [`net`]: the paravirtual NIC's rings, buffers and notification flags;
//! - [`note`]: the ELF note that marks a tandem guest and names its ABI version.
//!
//! The ABI is versioned by [`ABI_VERSION`]; both sides check it: the monitor reads it from
//! the guest image's [`note`] before loading it, and the guest checks the boot info's.
#![no_std]

pub mod boot;
pub mod hypercall;
pub mod layout;
pub mod net;
pub mod note;
pub mod shared;

/// Bumped on every incompatible change of anything in this crate.
pub const ABI_VERSION: u32 = 3;

/// Largest number of VCPUs a VM may have. Sizes the boot info and the shared page.
pub const MAX_VCPUS: usize = 64;
