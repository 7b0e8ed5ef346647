//! Hypercalls: `out dx, eax` with the call's port in `dx` and the address of its argument
//! block in `eax` (see `pv_abi::hypercall`). Guest memory lies below 4 GiB, so every stack
//! or static address fits in 32 bits.

use pv_abi::hypercall::{
    ANY_VCPU, BLOCK_KICKED, BlockArgs, BufferArgs, ExitArgs, HcError, Hypercall, RetArgs, TrapTableArgs, VcpuArgs,
    VcpuUpArgs, decode,
};

/// Issues a hypercall on any port with any block address, for programs that test the
/// monitor with malformed calls; everything else goes through the typed wrappers below.
///
/// # Safety
/// If `addr` is in guest memory, the monitor may write an `i64` result at `addr` (and, for
/// calls that take buffers, read memory the block names): it must not alias live Rust data
/// that the caller does not own.
#[inline]
pub unsafe fn raw(port: u16, addr: u64) {
    // SAFETY: `out` at ring 3 is allowed (IOPL 3, zeroed I/O bitmap); it exits to the monitor,
    // which reads and writes only the argument block, per the caller's contract.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") addr as u32, options(nostack, preserves_flags));
    }
}

/// Makes `call` with `args` and returns the decoded `ret`.
fn call<T>(call: Hypercall, args: &mut T) -> Result<u64, HcError> {
    let addr = core::ptr::from_mut(args);
    // SAFETY: `args` is a live, exclusively borrowed argument block that starts with `ret`.
    unsafe {
        raw(call.port(), addr as u64);
        decode(core::ptr::read_volatile(addr.cast::<i64>()))
    }
}

fn buffer_args(bytes: &[u8]) -> BufferArgs {
    BufferArgs { ret: 0, addr: bytes.as_ptr() as u64, len: bytes.len() as u64 }
}

/// Costs one exit and does nothing else.
pub fn nop() {
    let _ = call(Hypercall::Nop, &mut RetArgs::default());
}

/// Writes `bytes` to the console, as they are (no newline added).
pub fn console_write(bytes: &[u8]) -> Result<u64, HcError> {
    call(Hypercall::ConsoleWrite, &mut buffer_args(bytes))
}

/// Hands a result record (one JSON object, see `workloads::Record`) to the monitor, which
/// keeps it in the run's results.
pub fn report(record: &[u8]) -> Result<u64, HcError> {
    call(Hypercall::Report, &mut buffer_args(record))
}

/// Ends the VM. Does not return.
pub fn exit(code: i64) -> ! {
    let _ = call(Hypercall::Exit, &mut ExitArgs { ret: 0, code });
    unreachable_after_terminal_call()
}

/// Reports a panic message and ends the VM. Does not return.
pub fn panic(message: &[u8]) -> ! {
    let _ = call(Hypercall::Panic, &mut buffer_args(message));
    unreachable_after_terminal_call()
}

/// Starts the offline `vcpu` at `entry` on the stack below `stack_top`, with `arg` in its
/// third argument register (see `pv_abi::boot`); [`crate::smp::start`] does it for a Rust
/// function.
pub fn vcpu_up(vcpu: u32, entry: u64, stack_top: u64, arg: u64) -> Result<u64, HcError> {
    call(Hypercall::VcpuUp, &mut VcpuUpArgs { ret: 0, vcpu, _reserved: 0, entry, stack_top, arg })
}

/// Takes this VCPU offline. Does not return: a later `vcpu_up` starts it afresh.
pub fn vcpu_down() -> ! {
    let _ = call(Hypercall::VcpuDown, &mut RetArgs::default());
    unreachable_after_terminal_call()
}

/// Blocks until kicked (returns true) or until the TSC passes `deadline_tsc` (false).
pub fn block(deadline_tsc: u64) -> bool {
    call(Hypercall::Block, &mut BlockArgs { ret: 0, deadline_tsc }) == Ok(BLOCK_KICKED as u64)
}

/// Ends `vcpu`'s block, or makes its next one return at once.
pub fn kick(vcpu: u32) -> Result<u64, HcError> {
    call(Hypercall::Kick, &mut VcpuArgs { ret: 0, vcpu, _reserved: 0 })
}

/// Gives up the physical CPU to `vcpu`, or to anyone with `None`.
pub fn yield_to(vcpu: Option<u32>) -> Result<u64, HcError> {
    call(Hypercall::Yield, &mut VcpuArgs { ret: 0, vcpu: vcpu.unwrap_or(ANY_VCPU), _reserved: 0 })
}

/// Installs the IDT at `base` (`limit` as in `lidt`) on every VCPU of the VM.
pub fn set_trap_table(base: u64, limit: u64) -> Result<u64, HcError> {
    call(Hypercall::SetTrapTable, &mut TrapTableArgs { ret: 0, base, limit })
}

/// Wakes the NIC's backend, which sleeps, to take the frames posted on the TX ring (see
/// `pv_abi::net`); `BadState` if the VM has no NIC.
pub fn net_notify() -> Result<u64, HcError> {
    call(Hypercall::NetNotify, &mut RetArgs::default())
}

/// The monitor never resumes a VCPU after a terminal call; if one did, stop here.
fn unreachable_after_terminal_call() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
