//! Which VCPU is running: the monitor points GS base at `BootInfo::vcpu_info[id]`.

/// The id of the VCPU executing this code.
#[inline]
pub fn vcpu_id() -> u32 {
    let id: u32;
    // SAFETY: GS base points at this VCPU's `VcpuInfo`, whose first word is its id.
    unsafe {
        core::arch::asm!("mov {0:e}, gs:[0]", out(reg) id, options(nostack, readonly, preserves_flags));
    }
    id
}
