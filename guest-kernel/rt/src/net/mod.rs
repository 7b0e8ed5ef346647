//! The network: TCP over the paravirtual NIC (`pv_abi::net`), with smoltcp as the stack and
//! blocking sockets for threads ([`TcpListener`], [`TcpStream`]).
//!
//! A VM whose boot info names a NIC gets the stack at boot, configured from it (MAC, IPv4
//! address and prefix, default route through the gateway if there is one); a VM without
//! one pays a load of a null pointer per scheduler pass, and its socket calls fail with
//! [`NetError::NoNic`]. The sockets are for threads: the thread scheduler
//! (`crate::sched::start`) polls the stack and blocks the threads that wait, so a program
//! that drives the VCPUs itself has no network.
//!
//! # The NIC protocol, as this driver follows it
//!
//! - **Buffers.** TX slot `i` uses buffer `i`, RX slot `i` buffer `NET_SLOTS + i`
//!   (`pv_abi::net::buffer_offset`). At start every RX buffer is posted (`rx_posted` =
//!   `rx_filled` + `NET_SLOTS`, each descriptor with the buffer's capacity,
//!   `NET_BUF_SIZE`); the rings must be empty then (each guest index equal to the
//!   backend's), and the driver continues from the indices it finds.
//! - **TX.** Under the stack's lock: while `tx_posted - tx_done` (Acquire) is below
//!   `NET_SLOTS`, write the frame into the slot's buffer, fill the descriptor (address,
//!   length, flags 0), bump `tx_posted` (Release). A full ring makes smoltcp keep the frame
//!   for its next poll, and stops taking RX frames in (their replies need TX slots).
//! - **RX.** Under the lock: take the frames up to `rx_filled` (Acquire), each descriptor's
//!   `len` being the frame's length, hand each to smoltcp, then post its buffer again in the
//!   same slot and bump `rx_posted` (Release). At most `NET_SLOTS` frames per poll.
//! - **Notifying the backend.** After a poll that posted frames: `fence(SeqCst)`, then if
//!   `backend_asleep` is 1, take it (swap 0 in) and, if this VCPU did, one `NetNotify`
//!   hypercall: of the VCPUs that post while the backend wakes up, one notifies.
//! - **Being kicked for RX.** A VCPU with nothing to run spins for a while (returning to
//!   its scheduler as soon as `rx_filled` moves), then, before it blocks: `rx_waiting` =
//!   its id + 1, `fence(SeqCst)`, and it blocks only if no frame is pending (and no thread
//!   queued), until its next timer or the stack's next deadline, whichever is first. Awake
//!   again, it withdraws with `compare_exchange(id + 1, 0)`, since the backend may have
//!   taken the declaration (swapping 0 in) or another VCPU replaced it. If the withdrawal
//!   succeeds (it woke for something else) and another VCPU is still blocked, it stores that
//!   VCPU's id + 1 instead: the slot holds one VCPU, and the others blocked would otherwise
//!   sleep through frames while this one runs threads. (A VCPU waking meanwhile may be
//!   declared after its own withdrawal: one kick then ends its next block at once.)
//! - **Polling.** Each scheduler pass calls `stack::poll`, which returns after two loads
//!   unless frames wait or smoltcp's deadline has passed; a VCPU that finds another polling
//!   goes on. A write polls at once under the lock it holds, so its data leaves without
//!   waiting for a scheduler pass. A thread the stack wakes is queued on the VCPU that
//!   polled, with no kick (see `crate::sched`).

mod device;
mod listener;
mod socket;
pub(crate) mod stack;

use pv_abi::net::NetInfo;

pub use socket::{DEFAULT_BACKLOG, DEFAULT_POOL, NetError, TcpListener, TcpStream};

/// Brings the stack up on the NIC `info` describes. The library does it at boot for the NIC
/// the monitor gives; an application calls it only to play the backend's part itself, on an
/// area of its own, in a VM without a NIC (a loopback test).
///
/// # Safety
/// `info.area` is page aligned and starts `pv_abi::net::NET_AREA_SIZE` bytes of guest memory,
/// kept for the guest's life, that hold a `NetArea` with empty rings and its buffers, served
/// by a backend that follows `pv_abi::net` and used by nothing else in the guest. Panics if
/// a NIC is attached already.
pub unsafe fn attach(info: &NetInfo) {
    // SAFETY: per the caller.
    unsafe { stack::init(info) }
}

/// Whether the VM has a NIC the stack runs on.
pub fn present() -> bool {
    stack::present()
}

/// How many sockets the stack holds: listening, connected, and closed by their owner with
/// the connection not over yet. 0 without a NIC. For tests that check that nothing leaks.
pub fn sockets() -> usize {
    stack::lock().map_or(0, |stack| stack.socket_count())
}
