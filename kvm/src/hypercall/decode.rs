//! Decoding a hypercall: from the `out` a VCPU made (port, value) and its argument block in
//! guest memory to a typed [`Call`]. Pure: guest memory is only read, through [`GuestRead`],
//! and every argument is checked here (addresses, alignment, lengths, VCPU ids, trap table
//! limits, entry and stack bounds), so that carrying a call out never meets a bad one.
//!
//! A bad argument is answered in the block's `ret` ([`Request::call`] is an [`HcError`]); a
//! call whose block is not in guest memory, or whose write is not 4 bytes, leaves nowhere to
//! answer and is [`Unanswerable`]: it ends the VM.

use pv_abi::hypercall::{
    ANY_VCPU, ARGS_ALIGN, BlockArgs, BufferArgs, CONSOLE_MAX, ExitArgs, FaultFrame, HcError, Hypercall, MESSAGE_MAX,
    REPORT_MAX, TrapTableArgs, VcpuArgs, VcpuUpArgs,
};
use pv_abi::layout::PAGE_SIZE;
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::memory::GuestRead;
use crate::outcome::Unanswerable;
use crate::x86::Start;

/// A hypercall with somewhere to answer: its argument block, whose first 8 bytes (`ret`) lie
/// in guest memory, and the call, or the error that answers it.
#[derive(Debug)]
pub struct Request {
    pub block: u64,
    pub call: Result<Call, HcError>,
}

/// A hypercall with checked arguments (see `pv_abi::hypercall::Hypercall` for each).
#[derive(Debug)]
pub enum Call {
    Nop,
    /// Bytes for the console, at most `CONSOLE_MAX`.
    ConsoleWrite(Vec<u8>),
    /// A result record, UTF-8, not empty, at most `REPORT_MAX` bytes.
    Report(String),
    Exit(i64),
    /// The guest's panic message, or why it could not be read: a panic ends the VM anyway.
    Panic(String),
    Fault(FaultFrame),
    /// Start `vcpu` (an id of the VM's) at an entry in guest memory, past page 0, with a
    /// 16-byte aligned stack top in guest memory.
    VcpuUp {
        vcpu: u32,
        start: Start,
    },
    VcpuDown,
    Block {
        deadline_tsc: u64,
    },
    Kick {
        vcpu: u32,
    },
    /// Yield, to this VCPU of the VM if set.
    Yield {
        to: Option<u32>,
    },
    /// An IDT of whole gates, 8-byte aligned, wholly in guest memory.
    SetTrapTable {
        base: u64,
        limit: u16,
    },
    /// Wake the NIC's backend.
    NetNotify,
}

/// Largest IDT: 256 gates of 16 bytes.
const IDT_MAX_LIMIT: u64 = 256 * 16 - 1;

/// Decodes the hypercall a VCPU of a VM with `vcpus` VCPUs made by writing `data` to `port`.
pub fn decode(memory: &impl GuestRead, vcpus: u32, port: u16, data: &[u8]) -> Result<Request, Unanswerable> {
    let Ok(value) = <[u8; 4]>::try_from(data) else {
        return Err(Unanswerable::WriteSize { port, len: data.len() });
    };
    let block = u64::from(u32::from_le_bytes(value));
    let hypercall = Hypercall::from_port(port);
    if !memory.contains(block, size_of::<i64>() as u64) {
        return Err(Unanswerable::BlockOutside { call: hypercall, port, block });
    }
    let call = match hypercall {
        None => Err(HcError::UnknownCall),
        Some(_) if block % ARGS_ALIGN != 0 => Err(HcError::BadAlignment),
        Some(Hypercall::Fault) => match read_obj::<FaultFrame>(memory, block) {
            Ok(frame) => Ok(Call::Fault(frame)),
            Err(error) => return Err(Unanswerable::FaultFrame { block, error }),
        },
        Some(hypercall) => Arguments { memory, vcpus, block }.call(hypercall),
    };
    Ok(Request { block, call })
}

/// An argument block in memory, read for a VM with `vcpus` VCPUs.
struct Arguments<'a, M> {
    memory: &'a M,
    vcpus: u32,
    block: u64,
}

impl<M: GuestRead> Arguments<'_, M> {
    fn call(&self, hypercall: Hypercall) -> Result<Call, HcError> {
        Ok(match hypercall {
            Hypercall::Nop => Call::Nop,
            Hypercall::ConsoleWrite => Call::ConsoleWrite(self.buffer(CONSOLE_MAX)?),
            Hypercall::Report => Call::Report(self.report()?),
            Hypercall::Exit => Call::Exit(self.read::<ExitArgs>()?.code),
            Hypercall::Panic => Call::Panic(match self.buffer(MESSAGE_MAX) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(error) => format!("(the panic message could not be read: {error})"),
            }),
            Hypercall::VcpuUp => self.vcpu_up()?,
            Hypercall::VcpuDown => Call::VcpuDown,
            Hypercall::Block => Call::Block { deadline_tsc: self.read::<BlockArgs>()?.deadline_tsc },
            Hypercall::Kick => Call::Kick { vcpu: self.vcpu(self.read::<VcpuArgs>()?.vcpu)? },
            Hypercall::Yield => Call::Yield {
                to: match self.read::<VcpuArgs>()?.vcpu {
                    ANY_VCPU => None,
                    id => Some(self.vcpu(id)?),
                },
            },
            Hypercall::SetTrapTable => self.set_trap_table()?,
            Hypercall::NetNotify => Call::NetNotify,
            _ => return Err(HcError::UnknownCall),
        })
    }

    fn read<T: FromBytes + KnownLayout + Immutable>(&self) -> Result<T, HcError> {
        read_obj(self.memory, self.block)
    }

    fn vcpu(&self, id: u32) -> Result<u32, HcError> {
        if id < self.vcpus { Ok(id) } else { Err(HcError::BadVcpu) }
    }

    /// The buffer a `BufferArgs` block names, of at most `max` bytes.
    fn buffer(&self, max: u64) -> Result<Vec<u8>, HcError> {
        let args = self.read::<BufferArgs>()?;
        if args.len > max {
            return Err(HcError::BadLength);
        }
        let mut bytes = vec![0; args.len as usize];
        if !self.memory.read(args.addr, &mut bytes) {
            return Err(HcError::BadAddress);
        }
        Ok(bytes)
    }

    fn report(&self) -> Result<String, HcError> {
        let bytes = self.buffer(REPORT_MAX)?;
        if bytes.is_empty() {
            return Err(HcError::BadLength);
        }
        String::from_utf8(bytes).map_err(|_| HcError::Invalid)
    }

    fn vcpu_up(&self) -> Result<Call, HcError> {
        let args = self.read::<VcpuUpArgs>()?;
        let vcpu = self.vcpu(args.vcpu)?;
        let size = self.memory.size();
        if !(PAGE_SIZE..size).contains(&args.entry) {
            return Err(HcError::BadAddress);
        }
        if args.stack_top % 16 != 0 {
            return Err(HcError::BadAlignment);
        }
        if args.stack_top <= PAGE_SIZE || args.stack_top > size {
            return Err(HcError::BadAddress);
        }
        Ok(Call::VcpuUp { vcpu, start: Start { entry: args.entry, stack_top: args.stack_top, arg: args.arg } })
    }

    fn set_trap_table(&self) -> Result<Call, HcError> {
        let args = self.read::<TrapTableArgs>()?;
        if args.limit > IDT_MAX_LIMIT {
            return Err(HcError::BadLength);
        }
        if (args.limit + 1) % 16 != 0 {
            return Err(HcError::Invalid);
        }
        if args.base % 8 != 0 {
            return Err(HcError::BadAlignment);
        }
        if !self.memory.contains(args.base, args.limit + 1) {
            return Err(HcError::BadAddress);
        }
        Ok(Call::SetTrapTable { base: args.base, limit: args.limit as u16 })
    }
}

/// Reads a `T` at `addr`; `BadAddress` unless it lies wholly in guest memory.
fn read_obj<T: FromBytes + KnownLayout + Immutable>(memory: &impl GuestRead, addr: u64) -> Result<T, HcError> {
    let mut buf = vec![0; size_of::<T>()];
    if !memory.read(addr, &mut buf) {
        return Err(HcError::BadAddress);
    }
    T::read_from_bytes(&buf).map_err(|_| HcError::Invalid)
}

#[cfg(test)]
mod tests {
    use pv_abi::hypercall::HYPERCALL_PORT_BASE;
    use zerocopy::IntoBytes;

    use super::*;
    use crate::memory::GuestMemory;

    const MEM: u64 = 4 << 20;
    const VCPUS: u32 = 4;
    /// Where the targeted tests put their argument blocks.
    const BLOCK: u64 = 0x10_000;

    fn memory() -> GuestMemory {
        GuestMemory::new(MEM).unwrap()
    }

    /// Decodes `call` with `args` as its block at `BLOCK`.
    fn decode_with(memory: &GuestMemory, call: Hypercall, args: &[u8]) -> Result<Call, HcError> {
        memory.write(BLOCK, args).unwrap();
        decode(memory, VCPUS, call.port(), &(BLOCK as u32).to_le_bytes()).unwrap().call
    }

    #[test]
    fn each_call_is_decoded_with_its_arguments() {
        let memory = memory();
        memory.write(0x20_000, b"hello").unwrap();
        let buffer = |len| BufferArgs { ret: 0, addr: 0x20_000, len };
        assert!(matches!(decode_with(&memory, Hypercall::Nop, &[0; 8]), Ok(Call::Nop)));
        let write = decode_with(&memory, Hypercall::ConsoleWrite, buffer(5).as_bytes());
        assert!(matches!(write, Ok(Call::ConsoleWrite(bytes)) if bytes == b"hello"));
        let report = decode_with(&memory, Hypercall::Report, buffer(4).as_bytes());
        assert!(matches!(report, Ok(Call::Report(text)) if text == "hell"));
        let panic = decode_with(&memory, Hypercall::Panic, buffer(MESSAGE_MAX + 1).as_bytes());
        assert!(
            matches!(panic, Ok(Call::Panic(text)) if text == "(the panic message could not be read: bad length (-4))")
        );
        let exit = decode_with(&memory, Hypercall::Exit, ExitArgs { ret: 0, code: -3 }.as_bytes());
        assert!(matches!(exit, Ok(Call::Exit(-3))));
        let up = VcpuUpArgs { vcpu: 3, entry: 0x20_0000, stack_top: 0x30_0000, arg: 7, ..Default::default() };
        let start = Start { entry: 0x20_0000, stack_top: 0x30_0000, arg: 7 };
        assert!(
            matches!(decode_with(&memory, Hypercall::VcpuUp, up.as_bytes()), Ok(Call::VcpuUp { vcpu: 3, start: s }) if s == start)
        );
        let block = BlockArgs { ret: 0, deadline_tsc: 99 };
        assert!(matches!(
            decode_with(&memory, Hypercall::Block, block.as_bytes()),
            Ok(Call::Block { deadline_tsc: 99 })
        ));
        let vcpu = |vcpu| VcpuArgs { vcpu, ..Default::default() };
        assert!(matches!(decode_with(&memory, Hypercall::Kick, vcpu(2).as_bytes()), Ok(Call::Kick { vcpu: 2 })));
        assert!(matches!(
            decode_with(&memory, Hypercall::Yield, vcpu(ANY_VCPU).as_bytes()),
            Ok(Call::Yield { to: None })
        ));
        assert!(matches!(decode_with(&memory, Hypercall::Yield, vcpu(1).as_bytes()), Ok(Call::Yield { to: Some(1) })));
        let table = TrapTableArgs { ret: 0, base: 0x30_0000, limit: 4095 };
        let decoded = decode_with(&memory, Hypercall::SetTrapTable, table.as_bytes());
        assert!(matches!(decoded, Ok(Call::SetTrapTable { base: 0x30_0000, limit: 4095 })));
        let frame = FaultFrame { vector: 14, rip: 0x1234, ..Default::default() };
        let fault = decode_with(&memory, Hypercall::Fault, frame.as_bytes());
        assert!(matches!(fault, Ok(Call::Fault(f)) if f.vector == 14 && f.rip == 0x1234));
    }

    #[test]
    fn net_notify_takes_no_arguments_but_an_answerable_aligned_block() {
        let memory = memory();
        assert!(matches!(decode_with(&memory, Hypercall::NetNotify, &[0xff; 8]), Ok(Call::NetNotify)));
        let port = Hypercall::NetNotify.port();
        let misaligned = decode(&memory, VCPUS, port, &(BLOCK as u32 + 4).to_le_bytes());
        assert!(matches!(misaligned, Ok(Request { call: Err(HcError::BadAlignment), .. })));
        let outside = decode(&memory, VCPUS, port, &(MEM as u32).to_le_bytes()).unwrap_err();
        assert_eq!(outside, Unanswerable::BlockOutside { call: Some(Hypercall::NetNotify), port, block: MEM });
    }

    #[test]
    fn bad_arguments_are_answered_with_their_error() {
        let memory = memory();
        let buffer = |addr, len| BufferArgs { ret: 0, addr, len }.as_bytes().to_vec();
        let up =
            |vcpu, entry, stack_top| VcpuUpArgs { vcpu, entry, stack_top, ..Default::default() }.as_bytes().to_vec();
        let vcpu = |vcpu| VcpuArgs { vcpu, ..Default::default() }.as_bytes().to_vec();
        let table = |base, limit| TrapTableArgs { ret: 0, base, limit }.as_bytes().to_vec();
        let cases = [
            (Hypercall::ConsoleWrite, buffer(MEM - 4, 8), HcError::BadAddress),
            (Hypercall::ConsoleWrite, buffer(u64::MAX - 2, 8), HcError::BadAddress),
            (Hypercall::ConsoleWrite, buffer(0x20_000, CONSOLE_MAX + 1), HcError::BadLength),
            (Hypercall::Report, buffer(0x20_000, REPORT_MAX + 1), HcError::BadLength),
            (Hypercall::Report, buffer(0x20_000, 0), HcError::BadLength),
            (Hypercall::VcpuUp, up(VCPUS, 0x20_0000, 0x30_0000), HcError::BadVcpu),
            (Hypercall::VcpuUp, up(1, MEM, 0x30_0000), HcError::BadAddress),
            (Hypercall::VcpuUp, up(1, 0x800, 0x30_0000), HcError::BadAddress),
            (Hypercall::VcpuUp, up(1, 0x20_0000, 0x30_0008), HcError::BadAlignment),
            (Hypercall::VcpuUp, up(1, 0x20_0000, MEM + 16), HcError::BadAddress),
            (Hypercall::VcpuUp, up(1, 0x20_0000, PAGE_SIZE), HcError::BadAddress),
            (Hypercall::Kick, vcpu(VCPUS + 7), HcError::BadVcpu),
            (Hypercall::Yield, vcpu(VCPUS), HcError::BadVcpu),
            (Hypercall::SetTrapTable, table(MEM, 15), HcError::BadAddress),
            (Hypercall::SetTrapTable, table(0x20_0000, 4096), HcError::BadLength),
            (Hypercall::SetTrapTable, table(0x20_0000, 14), HcError::Invalid),
            (Hypercall::SetTrapTable, table(0x20_0004, 15), HcError::BadAlignment),
        ];
        for (call, args, expected) in cases {
            let decoded = decode_with(&memory, call, &args);
            assert!(matches!(decoded, Err(error) if error == expected), "{call:?} {args:?}: {decoded:?}");
        }
        let misaligned = decode(&memory, VCPUS, Hypercall::Nop.port(), &(BLOCK as u32 + 4).to_le_bytes());
        assert!(matches!(misaligned, Ok(Request { call: Err(HcError::BadAlignment), .. })));
        let unknown = decode(&memory, VCPUS, HYPERCALL_PORT_BASE + 200, &(BLOCK as u32 + 4).to_le_bytes());
        assert!(matches!(unknown, Ok(Request { call: Err(HcError::UnknownCall), .. })), "unknown before misaligned");
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn read(memory: &GuestMemory, addr: u64, len: u64) -> Vec<u8> {
        let mut bytes = vec![0; len as usize];
        assert!(memory.read(addr, &mut bytes));
        bytes
    }

    /// Random calls on random ports with random argument blocks at random addresses: decoding
    /// never panics and never writes, and a call is unanswerable exactly when its write is not
    /// 4 bytes, its block is outside memory, or it is a fault whose frame is.
    #[test]
    fn random_hypercalls_never_panic_or_write_and_only_blocks_outside_memory_are_unanswerable() {
        let memory = memory();
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        // Values that make interesting arguments: ids, lengths and addresses at the edges.
        let interesting = [0, 1, 3, 4, 7, 8, 16, 4095, 4096, 1 << 20, MEM - 8, MEM, MEM + 1, u64::MAX, u64::MAX - 7];
        for round in 0..50_000 {
            let port = HYPERCALL_PORT_BASE.wrapping_add(rng.below(20) as u16).wrapping_sub(2);
            let block = match rng.below(10) {
                0 => MEM - rng.below(16),
                1 => MEM + rng.below(1 << 20),
                2 => rng.below(u64::from(u32::MAX)),
                3 => 0x10_000 + rng.below(4096),
                _ => (0x10_000 + rng.below(MEM - 0x20_000)) & !7,
            } & u64::from(u32::MAX);
            let in_memory = block + 8 <= MEM;
            if in_memory {
                let len = (MEM - block).min(64);
                let words: Vec<u8> = (0..len.div_ceil(8))
                    .flat_map(|_| {
                        match rng.below(3) {
                            0 => interesting[rng.below(interesting.len() as u64) as usize],
                            1 => rng.below(MEM),
                            _ => rng.next(),
                        }
                        .to_le_bytes()
                    })
                    .take(len as usize)
                    .collect();
                memory.write(block, &words).unwrap();
            }
            let window = block.saturating_sub(256).min(MEM)..(block + 256).min(MEM);
            let before = read(&memory, window.start, window.end - window.start);
            let data =
                if rng.below(50) == 0 { vec![0; rng.below(4) as usize] } else { (block as u32).to_le_bytes().to_vec() };
            let decoded = decode(&memory, VCPUS, port, &data);
            assert_eq!(read(&memory, window.start, window.end - window.start), before, "round {round}: memory changed");
            let hypercall = Hypercall::from_port(port);
            let frame_outside = hypercall == Some(Hypercall::Fault)
                && block % ARGS_ALIGN == 0
                && block + size_of::<FaultFrame>() as u64 > MEM;
            let unanswerable = data.len() != 4 || !in_memory || frame_outside;
            match decoded {
                Err(error) => assert!(unanswerable, "round {round}: {error} for a block at {block:#x}"),
                Ok(request) => {
                    assert!(!unanswerable, "round {round}: {request:?} for a block at {block:#x}");
                    assert_eq!(request.block, block);
                    if hypercall.is_none() {
                        assert!(matches!(request.call, Err(HcError::UnknownCall)), "round {round}");
                    }
                }
            }
        }
    }
}
