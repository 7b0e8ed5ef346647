//! Hypercalls: a port-I/O write from the guest (`out dx, eax`) whose port is the call number
//! and whose 32-bit value is the guest-physical address of the call's argument block.
//!
//! Every argument block is `#[repr(C)]`, 8-byte aligned, lies wholly in guest memory and starts
//! with `ret: i64`, which the monitor sets before the guest resumes: a non-negative value on
//! success, a negative [`HcError`] code otherwise (see [`encode`] and [`decode`]). A call with
//! an unknown number gets [`HcError::UnknownCall`] in `ret`. A block address that is not in
//! guest memory leaves nowhere to answer: the monitor stops the VM with a fault naming it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Port of call number 0; call `n` is port `HYPERCALL_PORT_BASE + n`.
pub const HYPERCALL_PORT_BASE: u16 = 0x500;

/// The hypercalls. `#[non_exhaustive]`: new calls get new numbers, old numbers never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum Hypercall {
    /// Does nothing; its round trip is the cost of one exit. Args: [`RetArgs`].
    Nop = 0,
    /// Write bytes to the console. Args: [`BufferArgs`], at most [`CONSOLE_MAX`] bytes.
    ConsoleWrite = 1,
    /// End the VM with an exit code (0 = success). Args: [`ExitArgs`]. Does not return.
    Exit = 2,
    /// The guest panicked; the buffer says where and why. Args: [`BufferArgs`], at most
    /// [`MESSAGE_MAX`] bytes. Does not return.
    Panic = 3,
    /// A CPU exception the guest cannot handle, sent by its trap stubs. Args: [`FaultFrame`].
    /// Does not return.
    Fault = 4,
    /// Hand a result record (JSON) to the monitor. Args: [`BufferArgs`], at most
    /// [`REPORT_MAX`] bytes, and [`REPORTS_TOTAL_MAX`] bytes over the VM's life.
    Report = 5,
    /// Start an offline VCPU at an entry point with a fresh stack. Args: [`VcpuUpArgs`].
    VcpuUp = 6,
    /// Take the calling VCPU offline; it restarts only through a new `VcpuUp` (at the entry
    /// given then). Args: [`RetArgs`]. Does not return.
    VcpuDown = 7,
    /// Block the calling VCPU until it is kicked or its TSC passes a deadline. A kick that
    /// arrived since the last block makes it return at once. Args: [`BlockArgs`]; `ret` is
    /// [`BLOCK_KICKED`] or [`BLOCK_TIMED_OUT`].
    Block = 8,
    /// Wake a VCPU that is blocked, or make its next block return at once. Args: [`VcpuArgs`].
    Kick = 9,
    /// Give up the physical CPU, to a given VCPU of the same VM or to anyone. Args:
    /// [`VcpuArgs`] with `vcpu` = [`ANY_VCPU`] for an undirected yield.
    Yield = 10,
    /// Install the interrupt descriptor table on every VCPU of the VM. Args: [`TrapTableArgs`].
    SetTrapTable = 11,
    /// Wake the NIC's backend, which sleeps (see [`crate::net`]): the TX ring has frames.
    /// Args: [`RetArgs`]; [`HcError::BadState`] if the VM has no NIC.
    NetNotify = 12,
}

impl Hypercall {
    /// Every call, in number order.
    pub const ALL: [Hypercall; 13] = [
        Self::Nop,
        Self::ConsoleWrite,
        Self::Exit,
        Self::Panic,
        Self::Fault,
        Self::Report,
        Self::VcpuUp,
        Self::VcpuDown,
        Self::Block,
        Self::Kick,
        Self::Yield,
        Self::SetTrapTable,
        Self::NetNotify,
    ];

    /// The I/O port the guest writes to make this call.
    pub const fn port(self) -> u16 {
        HYPERCALL_PORT_BASE + self as u16
    }

    /// The call a port stands for, if any.
    pub fn from_port(port: u16) -> Option<Self> {
        let nr = port.checked_sub(HYPERCALL_PORT_BASE)?;
        Self::ALL.get(usize::from(nr)).copied()
    }

    /// A short name for counters and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Nop => "nop",
            Self::ConsoleWrite => "console_write",
            Self::Exit => "exit",
            Self::Panic => "panic",
            Self::Fault => "fault",
            Self::Report => "report",
            Self::VcpuUp => "vcpu_up",
            Self::VcpuDown => "vcpu_down",
            Self::Block => "block",
            Self::Kick => "kick",
            Self::Yield => "yield",
            Self::SetTrapTable => "set_trap_table",
            Self::NetNotify => "net_notify",
        }
    }
}

/// Longest console write, in bytes.
pub const CONSOLE_MAX: u64 = 4096;
/// Longest panic message, in bytes.
pub const MESSAGE_MAX: u64 = 4096;
/// Longest report record, in bytes.
pub const REPORT_MAX: u64 = 1 << 20;
/// Bytes of report records a VM may hand over in all; reports past it get `BadLength`.
pub const REPORTS_TOTAL_MAX: u64 = 16 << 20;

/// `VcpuArgs::vcpu` of an undirected yield.
pub const ANY_VCPU: u32 = u32::MAX;
/// `BlockArgs::deadline_tsc` that never passes.
pub const NO_DEADLINE: u64 = u64::MAX;
/// `ret` of a block that ended by a kick.
pub const BLOCK_KICKED: i64 = 0;
/// `ret` of a block that ended at its deadline.
pub const BLOCK_TIMED_OUT: i64 = 1;

/// Why the monitor refused a call. Encoded as a negative `ret`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HcError {
    /// No call has this number.
    UnknownCall,
    /// A guest address (buffer, entry, stack, table) lies outside guest memory.
    BadAddress,
    /// An address is not aligned as the call requires.
    BadAlignment,
    /// A length is zero where it must not be, or above the call's maximum.
    BadLength,
    /// A VCPU id is not below the VM's VCPU count (or names the caller where it must not).
    BadVcpu,
    /// The call does not fit the target's state (e.g. `VcpuUp` of an online VCPU).
    BadState,
    /// Some other argument is out of range.
    Invalid,
    /// A code this version of the ABI does not know.
    Unknown(i64),
}

impl HcError {
    /// The negative code carried in `ret`.
    pub const fn code(self) -> i64 {
        match self {
            Self::UnknownCall => -1,
            Self::BadAddress => -2,
            Self::BadAlignment => -3,
            Self::BadLength => -4,
            Self::BadVcpu => -5,
            Self::BadState => -6,
            Self::Invalid => -7,
            Self::Unknown(code) => code,
        }
    }

    /// A short description for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::UnknownCall => "unknown hypercall",
            Self::BadAddress => "address outside guest memory",
            Self::BadAlignment => "misaligned address",
            Self::BadLength => "bad length",
            Self::BadVcpu => "bad VCPU id",
            Self::BadState => "VCPU in the wrong state",
            Self::Invalid => "invalid argument",
            Self::Unknown(_) => "unknown error code",
        }
    }
}

impl core::fmt::Display for HcError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.describe(), self.code())
    }
}

/// Encodes a call's outcome as `ret`. Success values above `i64::MAX` are clamped, which no
/// call produces.
pub const fn encode(result: Result<u64, HcError>) -> i64 {
    match result {
        Ok(value) if value > i64::MAX as u64 => i64::MAX,
        Ok(value) => value as i64,
        Err(error) => error.code(),
    }
}

/// Decodes `ret` back into the call's outcome.
pub const fn decode(ret: i64) -> Result<u64, HcError> {
    match ret {
        0.. => Ok(ret as u64),
        -1 => Err(HcError::UnknownCall),
        -2 => Err(HcError::BadAddress),
        -3 => Err(HcError::BadAlignment),
        -4 => Err(HcError::BadLength),
        -5 => Err(HcError::BadVcpu),
        -6 => Err(HcError::BadState),
        -7 => Err(HcError::Invalid),
        code => Err(HcError::Unknown(code)),
    }
}

/// Alignment every argument block must have.
pub const ARGS_ALIGN: u64 = 8;

/// Arguments of calls that take none: `Nop`, `VcpuDown`, `NetNotify`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RetArgs {
    /// Result, set by the monitor.
    pub ret: i64,
}

/// A guest buffer: `ConsoleWrite`, `Panic`, `Report`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BufferArgs {
    /// Result, set by the monitor: the number of bytes taken.
    pub ret: i64,
    /// Guest address of the first byte.
    pub addr: u64,
    /// Number of bytes.
    pub len: u64,
}

/// `Exit`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ExitArgs {
    /// Result (never seen: the call does not return).
    pub ret: i64,
    /// Exit code; 0 is success. `tandem run` exits with it if it lies in 0..=255, else with 1.
    pub code: i64,
}

/// `VcpuUp`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuUpArgs {
    /// Result, set by the monitor.
    pub ret: i64,
    /// The VCPU to start; must be offline.
    pub vcpu: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Where it starts (a guest address).
    pub entry: u64,
    /// Top of its stack: 16-byte aligned, in guest memory.
    pub stack_top: u64,
    /// Passed to the entry in `rdx`.
    pub arg: u64,
}

/// `Block`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlockArgs {
    /// Result, set by the monitor: [`BLOCK_KICKED`] or [`BLOCK_TIMED_OUT`].
    pub ret: i64,
    /// TSC value (as the guest reads it) at which to return anyway; [`NO_DEADLINE`] for none.
    pub deadline_tsc: u64,
}

/// Calls that name a VCPU: `Kick`, `Yield`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuArgs {
    /// Result, set by the monitor.
    pub ret: i64,
    /// The VCPU id, or [`ANY_VCPU`] where the call allows it.
    pub vcpu: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

/// `SetTrapTable`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TrapTableArgs {
    /// Result, set by the monitor.
    pub ret: i64,
    /// Guest address of the IDT; 8-byte aligned, wholly in guest memory.
    pub base: u64,
    /// IDT limit (size in bytes - 1), as in `lidt`; at most 4095 (256 gates).
    pub limit: u64,
}

/// `Fault`: the frame a trap stub builds on its ring-0 stack (lowest address first). The CPU
/// pushed `rip` to `ss` (and `error_code` for the vectors that have one); the stub pushes
/// the rest, with 0 for a missing error code.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FaultFrame {
    /// Result (never seen: the call does not return).
    pub ret: i64,
    /// Exception vector (0-31).
    pub vector: u64,
    /// Error code, or 0 for vectors without one.
    pub error_code: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// Code segment at the fault.
    pub cs: u64,
    /// Flags at the fault.
    pub rflags: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// Stack segment at the fault.
    pub ss: u64,
}

/// Name of an exception vector, e.g. "page fault (#PF)".
pub const fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "NMI",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating point (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating point (#XM)",
        20 => "virtualization (#VE)",
        21 => "control protection (#CP)",
        _ => "reserved exception",
    }
}

/// Whether the CPU pushes an error code for this exception vector.
pub const fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21)
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn ports_round_trip() {
        for (nr, call) in Hypercall::ALL.iter().enumerate() {
            assert_eq!(*call as usize, nr, "ALL is in number order");
            assert_eq!(Hypercall::from_port(call.port()), Some(*call));
        }
        assert_eq!(Hypercall::from_port(HYPERCALL_PORT_BASE - 1), None);
        assert_eq!(Hypercall::from_port(HYPERCALL_PORT_BASE + Hypercall::ALL.len() as u16), None);
        assert_eq!(Hypercall::from_port(0), None);
    }

    #[test]
    fn errors_round_trip() {
        let errors = [
            HcError::UnknownCall,
            HcError::BadAddress,
            HcError::BadAlignment,
            HcError::BadLength,
            HcError::BadVcpu,
            HcError::BadState,
            HcError::Invalid,
            HcError::Unknown(-1000),
        ];
        for error in errors {
            assert!(error.code() < 0);
            assert_eq!(decode(encode(Err(error))), Err(error));
        }
        for value in [0, 1, 4096, i64::MAX as u64] {
            assert_eq!(decode(encode(Ok(value))), Ok(value));
        }
        assert_eq!(encode(Ok(u64::MAX)), i64::MAX);
    }

    #[test]
    fn every_block_starts_with_ret_and_is_8_aligned() {
        macro_rules! check {
            ($($t:ty => $size:expr),* $(,)?) => {$(
                assert_eq!(size_of::<$t>(), $size, stringify!($t));
                assert_eq!(align_of::<$t>() as u64, ARGS_ALIGN, stringify!($t));
                assert_eq!(offset_of!($t, ret), 0, stringify!($t));
            )*};
        }
        check!(
            RetArgs => 8,
            BufferArgs => 24,
            ExitArgs => 16,
            VcpuUpArgs => 40,
            BlockArgs => 16,
            VcpuArgs => 16,
            TrapTableArgs => 24,
            FaultFrame => 64,
        );
        assert_eq!(offset_of!(VcpuUpArgs, entry), 16);
        assert_eq!(offset_of!(VcpuUpArgs, stack_top), 24);
        assert_eq!(offset_of!(VcpuUpArgs, arg), 32);
        // The trap stubs build this frame by pushes on top of the CPU's frame.
        assert_eq!(offset_of!(FaultFrame, vector), 8);
        assert_eq!(offset_of!(FaultFrame, error_code), 16);
        assert_eq!(offset_of!(FaultFrame, rip), 24);
        assert_eq!(offset_of!(FaultFrame, ss), 56);
    }

    #[test]
    fn exception_table() {
        assert_eq!(exception_name(14), "page fault (#PF)");
        assert_eq!(exception_name(9), "reserved exception");
        assert!(has_error_code(14) && has_error_code(13) && !has_error_code(6));
    }
}
