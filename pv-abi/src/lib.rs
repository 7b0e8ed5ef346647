//! The tandem guest <-> monitor contract.
//!
//! Everything both sides must agree on lives here and nowhere else:
//! - [`boot`]: the boot info the monitor writes before VCPU 0 starts, and the entry convention;
//! - [`hypercall`]: call numbers, `#[repr(C)]` argument blocks and error codes;
//! - [`shared`]: the shared page both sides read and write with atomics, without exits;
//! - [`layout`]: the guest memory map (where the boot info, shared page, image and stacks are).
//!
//! The ABI is versioned by [`ABI_VERSION`]; both sides check it (the guest against the boot
//! info, the monitor against nothing it cannot see, so the guest refuses to run on mismatch).
#![no_std]

pub mod boot;
pub mod hypercall;
pub mod layout;
pub mod shared;

/// Bumped on every incompatible change of anything in this crate.
pub const ABI_VERSION: u32 = 1;

/// Largest number of VCPUs a VM may have. Sizes the boot info and the shared page.
pub const MAX_VCPUS: usize = 64;
