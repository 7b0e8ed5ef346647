//! The guest-physical memory map, which the monitor lays out and the guest links against.
//! Guest virtual addresses equal physical ones.
//!
//! ```text
//! 0x0000_0000  not present (null dereferences fault)
//! 0x0000_1000  boot info                       (crate::boot::BOOT_INFO_ADDR)
//! 0x0000_2000  shared page, 8 KiB              (crate::shared::SharedPage)
//! 0x0000_4000  page tables: PML4, PDPT, 3 PDs, the 4 KiB table of the first 2 MiB
//! 0x0001_0000  per-VCPU areas, 16 KiB each: GDT, TSS with I/O bitmap, ring-0 trap stack
//! 0x0020_0000  the guest image, then the heap
//! ...          the NIC area, if the VM has a NIC (crate::net::NET_AREA_SIZE, below the stack)
//! mem - 1 MiB  VCPU 0's boot stack, up to the end of memory
//! ```

use crate::MAX_VCPUS;

pub const BOOT_INFO: u64 = crate::boot::BOOT_INFO_ADDR;
pub const SHARED_PAGE: u64 = 0x2000;
pub const PML4: u64 = 0x4000;
pub const PDPT: u64 = 0x5000;
/// One page directory per GiB of guest memory.
pub const PD: u64 = 0x6000;
/// The page table that maps the first 2 MiB with 4 KiB pages, leaving page 0 out.
pub const PT_LOW: u64 = 0x9000;

pub const VCPU_AREAS: u64 = 0x10000;
pub const VCPU_AREA_SIZE: u64 = 0x4000;
/// Offsets inside a VCPU area.
pub const GDT_OFFSET: u64 = 0;
pub const TSS_OFFSET: u64 = 0x80;

/// Where the image must start (the linker script puts it here).
pub const IMAGE_START: u64 = 0x20_0000;
pub const BOOT_STACK_SIZE: u64 = 1 << 20;
/// The smallest heap a guest gets.
pub const MIN_HEAP: u64 = 1 << 20;

pub const PAGE_SIZE: u64 = 0x1000;
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;
/// Guest memory must leave room below 4 GiB for KVM's TSS pages (see `TSS_ADDR`), and
/// hypercall block addresses are 32-bit.
pub const MAX_MEM: u64 = 3 << 30;
pub const MIN_MEM: u64 = 4 << 20;
/// The three pages KVM_SET_TSS_ADDR reserves (needed on VMX hosts), above guest memory.
pub const TSS_ADDR: usize = 0xfffb_d000;

/// Start of VCPU `id`'s area.
pub const fn vcpu_area(id: u32) -> u64 {
    VCPU_AREAS + id as u64 * VCPU_AREA_SIZE
}

/// Top of VCPU `id`'s ring-0 trap stack (the end of its area).
pub const fn trap_stack_top(id: u32) -> u64 {
    vcpu_area(id) + VCPU_AREA_SIZE
}

const _: () = {
    assert!(SHARED_PAGE + crate::shared::SHARED_PAGE_SIZE as u64 <= PML4);
    assert!(PD + 3 * PAGE_SIZE <= PT_LOW && PT_LOW + PAGE_SIZE <= VCPU_AREAS);
    assert!(vcpu_area(MAX_VCPUS as u32) <= IMAGE_START);
    assert!(MAX_MEM <= TSS_ADDR as u64);
    assert!(core::mem::size_of::<crate::boot::BootInfo>() as u64 <= SHARED_PAGE - BOOT_INFO);
};
