//! Boot info and the entry convention.
//!
//! The monitor loads the guest ELF (which carries hermit-entry's entry-version note), writes a
//! [`BootInfo`] at [`BOOT_INFO_ADDR`] and starts VCPU 0 at the ELF entry. Every VCPU, VCPU 0 and
//! those started later with the `vcpu_up` hypercall, begins in 64-bit mode at CPL 3 with:
//!
//! | register  | value                                                               |
//! |-----------|---------------------------------------------------------------------|
//! | `rip`     | the ELF entry (VCPU 0) or the entry given to `vcpu_up`              |
//! | `rdi`     | guest-physical (= virtual) address of the [`BootInfo`]              |
//! | `rsi`     | the VCPU id                                                         |
//! | `rdx`     | the `arg` given to `vcpu_up` (0 for VCPU 0)                         |
//! | `rsp`     | stack top - 8, as after a `call` (the stack top is 16-byte aligned) |
//! | GS base   | address of `BootInfo::vcpu_info[id]`                                |
//! | `rflags`  | IOPL = 3 (hypercalls are `out` instructions), interrupts off        |
//!
//! SSE is enabled (CR0.MP|NE, CR4.OSFXSR|OSXMMEXCPT, MXCSR 0x1f80). Guest memory is identity
//! mapped with user access, except the first 4 KiB page, which is not present (null
//! dereferences fault).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::MAX_VCPUS;
use crate::net::NetInfo;

/// Guest-physical address of the boot info.
pub const BOOT_INFO_ADDR: u64 = 0x1000;

/// `BootInfo::magic`: "TANDEMBI" in little-endian byte order.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"TANDEMBI");

/// Capacity of `BootInfo::cmdline` in bytes.
pub const CMDLINE_MAX: usize = 1024;

/// What the monitor tells the guest at boot. Written once before VCPU 0 starts; read-only for
/// the guest except `vcpu_info[].guest`.
#[derive(Clone, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`crate::ABI_VERSION`] of the monitor.
    pub abi_version: u32,
    /// Number of VCPUs the VM has (online or not); ids are `0..nr_vcpus`.
    pub nr_vcpus: u32,
    /// Size of guest memory in bytes, starting at guest-physical 0.
    pub mem_size: u64,
    /// First byte of the heap (page aligned, after the loaded image).
    pub heap_start: u64,
    /// One past the last byte of the heap (below VCPU 0's boot stack).
    pub heap_end: u64,
    /// Frequency of the TSC as the guest reads it, in kHz.
    pub tsc_khz: u64,
    /// Guest-physical address of the [`crate::shared::SharedPage`].
    pub shared_page: u64,
    /// Number of valid bytes in `cmdline`.
    pub cmdline_len: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// The command line: a program name and `key=value` arguments, UTF-8, space separated.
    pub cmdline: [u8; CMDLINE_MAX],
    /// Per-VCPU words; GS base points at the running VCPU's entry.
    pub vcpu_info: [VcpuInfo; MAX_VCPUS],
    /// The NIC, if the VM has one.
    pub net: NetInfo,
}

/// The word pair GS base points at.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuInfo {
    /// This VCPU's id (at `gs:0`).
    pub id: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Free for the guest (at `gs:8`), e.g. a pointer to its per-VCPU data; zero at boot.
    pub guest: u64,
}

impl BootInfo {
    /// The command line as text, if it is valid UTF-8 and its length is in bounds.
    pub fn cmdline(&self) -> Option<&str> {
        let bytes = self.cmdline.get(..self.cmdline_len as usize)?;
        core::str::from_utf8(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use zerocopy::FromZeros;

    use super::*;

    #[test]
    fn layout() {
        assert_eq!(offset_of!(BootInfo, magic), 0);
        assert_eq!(offset_of!(BootInfo, abi_version), 8);
        assert_eq!(offset_of!(BootInfo, nr_vcpus), 12);
        assert_eq!(offset_of!(BootInfo, mem_size), 16);
        assert_eq!(offset_of!(BootInfo, heap_start), 24);
        assert_eq!(offset_of!(BootInfo, heap_end), 32);
        assert_eq!(offset_of!(BootInfo, tsc_khz), 40);
        assert_eq!(offset_of!(BootInfo, shared_page), 48);
        assert_eq!(offset_of!(BootInfo, cmdline_len), 56);
        assert_eq!(offset_of!(BootInfo, cmdline), 64);
        assert_eq!(offset_of!(BootInfo, vcpu_info), 64 + CMDLINE_MAX);
        assert_eq!(size_of::<VcpuInfo>(), 16);
        assert_eq!(offset_of!(VcpuInfo, guest), 8);
        assert_eq!(offset_of!(BootInfo, net), 64 + CMDLINE_MAX + 16 * MAX_VCPUS);
        assert_eq!(size_of::<BootInfo>(), 64 + CMDLINE_MAX + 16 * MAX_VCPUS + 32);
        // The boot info must fit in the page the monitor reserves for it.
        assert!(size_of::<BootInfo>() <= 4096);
    }

    #[test]
    fn magic_spells_its_name() {
        assert_eq!(&BOOT_MAGIC.to_le_bytes(), b"TANDEMBI");
    }

    #[test]
    fn cmdline_is_bounded_and_checked() {
        let mut info = BootInfo::new_zeroed();
        info.cmdline[..9].copy_from_slice(b"hello a=1");
        info.cmdline_len = 9;
        assert_eq!(info.cmdline(), Some("hello a=1"));
        info.cmdline_len = CMDLINE_MAX as u32 + 1;
        assert_eq!(info.cmdline(), None);
        info.cmdline[0] = 0xff;
        info.cmdline_len = 1;
        assert_eq!(info.cmdline(), None);
    }
}
