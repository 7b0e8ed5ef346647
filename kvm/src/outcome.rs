//! How a VM ends: its [`Outcome`], the [`VcpuFault`]s that end it, the hypercalls that are
//! [`Unanswerable`], and the breaches of the NIC's rules ([`NicFault`]).

use std::fmt;
use std::time::Duration;

use pv_abi::hypercall::{FaultFrame, HcError, Hypercall, exception_name};

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest called exit with this code.
    Exited(i64),
    /// The guest panicked.
    Panicked { vcpu: u32, message: String },
    /// A VCPU faulted, or made a hypercall the monitor could not answer.
    Faulted { vcpu: u32, fault: VcpuFault },
    /// The guest ran past its timeout.
    TimedOut(Duration),
    /// The guest broke the NIC's rules (see `pv_abi::net`), as its backend found.
    NicFaulted(NicFault),
    /// The monitor got this signal (SIGINT or SIGTERM) and the guest, asked to end, had not
    /// within the grace period.
    Interrupted(i32),
}

/// Process status of a guest panic.
pub const STATUS_PANIC: u8 = 101;
/// Process status of a guest fault.
pub const STATUS_FAULT: u8 = 102;
/// Process status of a timeout (as timeout(1)).
pub const STATUS_TIMEOUT: u8 = 124;

impl Outcome {
    /// The process status `tandem run` exits with: the guest's code if it is in 0..=255
    /// (else 1), or one of the `STATUS_*` values.
    pub fn status(&self) -> u8 {
        match self {
            Outcome::Exited(code) => u8::try_from(*code).unwrap_or(1),
            Outcome::Panicked { .. } => STATUS_PANIC,
            Outcome::Faulted { .. } | Outcome::NicFaulted(_) => STATUS_FAULT,
            Outcome::TimedOut(_) => STATUS_TIMEOUT,
            Outcome::Interrupted(signal) => interrupted_status(*signal),
        }
    }

    /// One line for the user.
    pub fn describe(&self, vm: &str) -> String {
        match self {
            Outcome::Exited(code) => format!("VM {vm} exited with code {code}"),
            Outcome::Panicked { vcpu, message } => format!("VM {vm}: guest panicked on VCPU {vcpu}: {message}"),
            Outcome::Faulted { vcpu, fault } => format!("VM {vm}: VCPU {vcpu} faulted: {fault}"),
            Outcome::TimedOut(after) => format!("VM {vm} timed out after {:.1} s and was stopped", after.as_secs_f64()),
            Outcome::NicFaulted(fault) => format!("VM {vm}: the guest broke the NIC's rules: {fault}"),
            Outcome::Interrupted(signal) => {
                format!("VM {vm} was stopped on {}: asked to end, it had not", signal_name(*signal))
            }
        }
    }
}

/// The process status of a command ended by `signal`, as a shell reports it: 128 + signal.
pub fn interrupted_status(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

/// `SIGINT`, `SIGTERM`, or `signal N`.
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

/// Why a VCPU ended its VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VcpuFault {
    /// The guest's trap stub reported an exception: its vector, where, its error code (for
    /// the vectors that have one) and, for a page fault, the address (CR2).
    #[error(fmt = fmt_exception)]
    Exception { vector: u64, rip: u64, error_code: Option<u64>, address: Option<u64> },
    #[error("triple fault near rip {rip:#x} (an exception with no usable trap table or stack)")]
    TripleFault { rip: u64 },
    #[error("access to {addr:#x}, which is not guest memory")]
    NotMemory { addr: u64 },
    #[error("KVM could not enter the guest (reason {reason:#x})")]
    EntryFailed { reason: u64 },
    #[error("KVM internal error (emulation failure)")]
    Internal,
    /// An exit the monitor does not expect, as KVM describes it.
    #[error("unexpected exit {0}")]
    UnexpectedExit(String),
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),
    #[error("cannot set up the VCPU: {0}")]
    Setup(kvm_ioctls::Error),
    #[error("cannot load the trap table: {0}")]
    TrapTable(kvm_ioctls::Error),
    #[error(transparent)]
    Unanswerable(#[from] Unanswerable),
}

impl VcpuFault {
    /// The exception a trap stub reported in `frame`; `cr2` is the faulting address, if
    /// known, which only a page fault reports.
    pub fn exception(frame: &FaultFrame, cr2: Option<u64>) -> VcpuFault {
        VcpuFault::Exception {
            vector: frame.vector,
            rip: frame.rip,
            error_code: pv_abi::hypercall::has_error_code(frame.vector).then_some(frame.error_code),
            address: cr2.filter(|_| frame.vector == PAGE_FAULT),
        }
    }
}

/// The page fault's vector (#PF), the one exception with an address.
pub const PAGE_FAULT: u64 = 14;

fn fmt_exception(
    vector: &u64,
    rip: &u64,
    error_code: &Option<u64>,
    address: &Option<u64>,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    write!(f, "{} at rip {rip:#x}", exception_name(*vector))?;
    if let Some(code) = error_code {
        write!(f, ", error code {code:#x}")?;
    }
    if let Some(address) = address {
        write!(f, ", address {address:#x}")?;
    }
    Ok(())
}

/// A hypercall with nowhere to answer: it ends the VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswerable {
    /// An `out` of another size than the 4 bytes of a block address.
    #[error("{len}-byte write to I/O port {port:#x}; hypercalls write 4 bytes")]
    WriteSize { port: u16, len: usize },
    /// The argument block, where `ret` goes, is not in guest memory.
    #[error(
        "hypercall {} (port {port:#x}) with its argument block at {block:#x}, outside guest memory",
        .call.map_or("unknown", Hypercall::name)
    )]
    BlockOutside { call: Option<Hypercall>, port: u16, block: u64 },
    /// A trap stub's fault frame cannot be read: the exception is unknown, and the fault call
    /// does not return.
    #[error("exception with an unreadable fault frame at {block:#x}: {error}")]
    FaultFrame { block: u64, error: HcError },
}

/// One of the NIC's two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    Tx,
    Rx,
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ring::Tx => "TX",
            Ring::Rx => "RX",
        })
    }
}

/// What the guest did wrong with its NIC: the monitor ends the VM rather than guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NicFault {
    /// A descriptor's buffer does not lie wholly in the buffer area.
    #[error(
        "the NIC's {ring} descriptor {slot} points at {addr:#x} ({len} bytes), outside its buffer area \
         {area_start:#x}..{area_end:#x}"
    )]
    OutsideBuffers { ring: Ring, slot: usize, addr: u64, len: u32, area_start: u64, area_end: u64 },
    /// A TX descriptor's frame is empty or longer than a buffer.
    #[error("the NIC's TX descriptor {slot} holds a frame of {len} bytes; a frame has 1 to {max} bytes")]
    TxLength { slot: usize, len: u32, max: u32 },
    /// An RX descriptor's buffer cannot hold every frame, or is longer than a buffer.
    #[error("the NIC's RX descriptor {slot} posts a buffer of {len} bytes; an RX buffer holds {min} to {max}")]
    RxCapacity { slot: usize, len: u32, min: u32, max: u32 },
    /// The guest's index runs more than a ring ahead of the monitor's (or behind it).
    #[error("the NIC's {posted} is {posted_value}, {ahead} ahead of {done} ({done_value}); the ring has {slots} slots")]
    IndexAhead {
        posted: &'static str,
        posted_value: u32,
        done: &'static str,
        done_value: u32,
        ahead: u32,
        slots: usize,
    },
    /// `rx_waiting` names no VCPU of the VM.
    #[error("the NIC's rx_waiting is {value} (VCPU id + 1), but the VM has {vcpus} VCPUs")]
    RxWaiting { value: u32, vcpus: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(fault: VcpuFault) -> String {
        Outcome::Faulted { vcpu: 1, fault }.describe("t")
    }

    #[test]
    fn faults_read_as_they_always_have() {
        let page = FaultFrame { vector: 14, error_code: 4, rip: 0x20_1234, ..FaultFrame::default() };
        assert_eq!(
            describe(VcpuFault::exception(&page, Some(8))),
            "VM t: VCPU 1 faulted: page fault (#PF) at rip 0x201234, error code 0x4, address 0x8"
        );
        let ud = FaultFrame { vector: 6, error_code: 9, rip: 0x10, ..FaultFrame::default() };
        assert_eq!(
            describe(VcpuFault::exception(&ud, Some(8))),
            "VM t: VCPU 1 faulted: invalid opcode (#UD) at rip 0x10"
        );
        let outside = Unanswerable::BlockOutside { call: Hypercall::from_port(0x501), port: 0x501, block: 0x800_1000 };
        assert_eq!(
            describe(outside.into()),
            "VM t: VCPU 1 faulted: hypercall console_write (port 0x501) with its argument block at 0x8001000, \
             outside guest memory"
        );
        let unknown = Unanswerable::BlockOutside { call: None, port: 0x5ff, block: 1 << 32 };
        assert!(
            describe(unknown.into()).ends_with(
                "hypercall unknown (port 0x5ff) with its argument block at 0x100000000, outside guest memory"
            )
        );
        assert_eq!(
            describe(Unanswerable::WriteSize { port: 0x500, len: 2 }.into()),
            "VM t: VCPU 1 faulted: 2-byte write to I/O port 0x500; hypercalls write 4 bytes"
        );
        assert_eq!(
            describe(Unanswerable::FaultFrame { block: 0x3ff_ff8, error: HcError::BadAddress }.into()),
            "VM t: VCPU 1 faulted: exception with an unreadable fault frame at 0x3ffff8: address outside guest memory (-2)"
        );
        assert_eq!(
            describe(VcpuFault::TripleFault { rip: 0xabc }),
            "VM t: VCPU 1 faulted: triple fault near rip 0xabc (an exception with no usable trap table or stack)"
        );
        assert_eq!(
            describe(VcpuFault::NotMemory { addr: 0xfee0_0000 }),
            "VM t: VCPU 1 faulted: access to 0xfee00000, which is not guest memory"
        );
        assert_eq!(
            describe(VcpuFault::EntryFailed { reason: 0x21 }),
            "VM t: VCPU 1 faulted: KVM could not enter the guest (reason 0x21)"
        );
        assert_eq!(describe(VcpuFault::Internal), "VM t: VCPU 1 faulted: KVM internal error (emulation failure)");
        assert_eq!(
            describe(VcpuFault::Run(kvm_ioctls::Error::new(libc::EFAULT))),
            format!("VM t: VCPU 1 faulted: KVM_RUN failed: {}", std::io::Error::from_raw_os_error(libc::EFAULT))
        );
    }
}
