//! Hypercall decoding and handling. A hypercall is a 4-byte `out` whose port names the call
//! and whose value is the guest address of its argument block (see `pv_abi::hypercall`).
//! Every argument is checked here; a bad one gets an error code in `ret`, never a monitor
//! crash, and nothing outside guest memory is ever read or written.

use pv_abi::hypercall::{
    ANY_VCPU, ARGS_ALIGN, BlockArgs, BufferArgs, CONSOLE_MAX, ExitArgs, FaultFrame, HcError, Hypercall, MESSAGE_MAX,
    REPORT_MAX, TrapTableArgs, VcpuArgs, VcpuUpArgs, encode,
};

use crate::vcpu::Start;
use crate::vm::{Outcome, VmShared};
use pv_abi::layout::PAGE_SIZE;

/// What the VCPU thread does after a hypercall.
#[derive(Debug)]
pub(crate) enum Action {
    /// Re-enter the guest.
    Continue,
    /// Park until kicked or the deadline, then write the result at `ret_at`.
    Block { deadline_tsc: u64, ret_at: u64 },
    /// Give up the pCPU, in favour of this VCPU of the same VM if set.
    Yield { to: Option<u32> },
    /// Go offline.
    Down,
    /// The guest's trap stub reported an exception.
    Fault(FaultFrame),
    /// The guest did something that ends it; the message says what.
    Fail(String),
    /// The VM has an outcome; leave.
    Stop,
}

/// Handles the hypercall `vcpu` made by writing `data` to `port`, which stands for `call`
/// (`Hypercall::from_port`, decoded by the caller, which counts calls).
pub(crate) fn handle(vm: &VmShared, vcpu: u32, port: u16, call: Option<Hypercall>, data: &[u8]) -> Action {
    let Ok(value) = <[u8; 4]>::try_from(data) else {
        return Action::Fail(format!("{}-byte write to I/O port {port:#x}; hypercalls write 4 bytes", data.len()));
    };
    let block = u64::from(u32::from_le_bytes(value));
    if !vm.contains(block, size_of::<i64>() as u64) {
        return Action::Fail(format!(
            "hypercall {} (port {port:#x}) with its argument block at {block:#x}, outside guest memory",
            call.map_or("unknown", Hypercall::name)
        ));
    }
    let answer = |result: Result<u64, HcError>| {
        vm.write_ret(block, encode(result));
        Action::Continue
    };
    let Some(call) = call else {
        return answer(Err(HcError::UnknownCall));
    };
    if block % ARGS_ALIGN != 0 {
        return answer(Err(HcError::BadAlignment));
    }
    match call {
        Hypercall::Nop => answer(Ok(0)),
        Hypercall::ConsoleWrite => answer(buffer(vm, block, CONSOLE_MAX).map(|bytes| {
            vm.console.write(vcpu, &bytes);
            bytes.len() as u64
        })),
        Hypercall::Report => answer(report(vm, block)),
        Hypercall::Exit => match vm.read_obj::<ExitArgs>(block) {
            Ok(args) => {
                vm.finish(Outcome::Exited(args.code));
                Action::Stop
            }
            Err(error) => answer(Err(error)),
        },
        Hypercall::Panic => {
            let message = match buffer(vm, block, MESSAGE_MAX) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(error) => format!("(the panic message could not be read: {error})"),
            };
            vm.finish(Outcome::Panicked { vcpu, message });
            Action::Stop
        }
        Hypercall::Fault => match vm.read_obj::<FaultFrame>(block) {
            Ok(frame) => Action::Fault(frame),
            Err(error) => Action::Fail(format!("exception with an unreadable fault frame at {block:#x}: {error}")),
        },
        Hypercall::VcpuUp => answer(vcpu_up(vm, block)),
        Hypercall::VcpuDown => Action::Down,
        Hypercall::Block => match vm.read_obj::<BlockArgs>(block) {
            Ok(args) => Action::Block { deadline_tsc: args.deadline_tsc, ret_at: block },
            Err(error) => answer(Err(error)),
        },
        Hypercall::Kick => answer(vm.read_obj::<VcpuArgs>(block).and_then(|args| {
            let target = vcpu_id(vm, args.vcpu)?;
            vm.kick(target);
            Ok(0)
        })),
        Hypercall::Yield => {
            let target = vm.read_obj::<VcpuArgs>(block).and_then(|args| match args.vcpu {
                ANY_VCPU => Ok(None),
                id => vcpu_id(vm, id).map(Some),
            });
            match target {
                Ok(to) => {
                    answer(Ok(0));
                    Action::Yield { to }
                }
                Err(error) => answer(Err(error)),
            }
        }
        Hypercall::SetTrapTable => answer(set_trap_table(vm, block)),
        _ => answer(Err(HcError::UnknownCall)),
    }
}

fn vcpu_id(vm: &VmShared, id: u32) -> Result<u32, HcError> {
    if id < vm.nr_vcpus { Ok(id) } else { Err(HcError::BadVcpu) }
}

/// The buffer a `BufferArgs` block names, of at most `max` bytes.
fn buffer(vm: &VmShared, block: u64, max: u64) -> Result<Vec<u8>, HcError> {
    let args = vm.read_obj::<BufferArgs>(block)?;
    vm.read_buffer(args.addr, args.len, max)
}

fn report(vm: &VmShared, block: u64) -> Result<u64, HcError> {
    let bytes = buffer(vm, block, REPORT_MAX)?;
    if bytes.is_empty() {
        return Err(HcError::BadLength);
    }
    let record = String::from_utf8(bytes).map_err(|_| HcError::Invalid)?;
    let len = record.len() as u64;
    vm.add_report(record)?;
    Ok(len)
}

fn vcpu_up(vm: &VmShared, block: u64) -> Result<u64, HcError> {
    let args = vm.read_obj::<VcpuUpArgs>(block)?;
    let target = vcpu_id(vm, args.vcpu)?;
    if !(PAGE_SIZE..vm.mem_size).contains(&args.entry) {
        return Err(HcError::BadAddress);
    }
    if args.stack_top % 16 != 0 {
        return Err(HcError::BadAlignment);
    }
    if args.stack_top <= PAGE_SIZE || args.stack_top > vm.mem_size {
        return Err(HcError::BadAddress);
    }
    let start = Start { entry: args.entry, stack_top: args.stack_top, arg: args.arg };
    vm.vcpus[target as usize].request_start(start)?;
    Ok(0)
}

/// Largest IDT: 256 gates of 16 bytes.
const IDT_MAX_LIMIT: u64 = 256 * 16 - 1;

fn set_trap_table(vm: &VmShared, block: u64) -> Result<u64, HcError> {
    let args = vm.read_obj::<TrapTableArgs>(block)?;
    if args.limit > IDT_MAX_LIMIT {
        return Err(HcError::BadLength);
    }
    if (args.limit + 1) % 16 != 0 {
        return Err(HcError::Invalid);
    }
    if args.base % 8 != 0 {
        return Err(HcError::BadAlignment);
    }
    if !vm.contains(args.base, args.limit + 1) {
        return Err(HcError::BadAddress);
    }
    vm.set_trap_table(args.base, args.limit as u16);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pv_abi::hypercall::{HYPERCALL_PORT_BASE, decode};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use tandem_core::guest::VmConfig;

    use crate::vm::Seat;

    const MEM: u64 = 4 << 20;

    fn vm() -> VmShared {
        let config = VmConfig {
            name: "fuzz".into(),
            vcpus: 4,
            mem_mib: MEM >> 20,
            cmdline: String::new(),
            timeout: Duration::from_secs(1),
            echo_console: false,
        };
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        VmShared::new(&config, memory, 1_000_000, Seat::alone(config.vcpus).unwrap())
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

    fn read(vm: &VmShared, addr: u64, len: u64) -> Vec<u8> {
        vm.read_buffer(addr, len, u64::MAX).unwrap()
    }

    /// Random calls on random ports with random argument blocks at random addresses: the
    /// handler never panics, never writes anything but the block's `ret`, answers every block
    /// in memory, and ends the VM for every block outside it.
    #[test]
    fn random_hypercalls_never_panic_and_write_only_ret() {
        let vm = vm();
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
                vm.write_bytes(block, &words).unwrap();
            }
            let window = block.saturating_sub(256).min(MEM)..(block + 256).min(MEM);
            let before = read(&vm, window.start, window.end - window.start);
            let data =
                if rng.below(50) == 0 { vec![0; rng.below(4) as usize] } else { (block as u32).to_le_bytes().to_vec() };
            let action = handle(&vm, rng.below(4) as u32, port, Hypercall::from_port(port), &data);
            let after = read(&vm, window.start, window.end - window.start);
            for (offset, (b, a)) in before.iter().zip(&after).enumerate() {
                let addr = window.start + offset as u64;
                assert!(b == a || (block..block + 8).contains(&addr), "round {round}: byte {addr:#x} changed");
            }
            if data.len() != 4 || !in_memory {
                assert!(matches!(action, Action::Fail(_)), "round {round}: {action:?} for a block at {block:#x}");
            } else if Hypercall::from_port(port).is_none() {
                let ret = i64::from_le_bytes(read(&vm, block, 8).try_into().unwrap());
                assert_eq!(decode(ret), Err(HcError::UnknownCall), "round {round}");
            }
        }
    }
}
