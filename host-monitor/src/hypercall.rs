//! Hypercall decoding and handling. A hypercall is a 4-byte `out` whose port names the call
//! and whose value is the guest address of its argument block (see `pv_abi::hypercall`).
//! Every argument is checked here; a bad one gets an error code in `ret`, never a monitor
//! crash, and nothing outside guest memory is ever read or written.

use pv_abi::hypercall::{
    ANY_VCPU, ARGS_ALIGN, BlockArgs, BufferArgs, CONSOLE_MAX, ExitArgs, FaultFrame, HcError, Hypercall, MESSAGE_MAX,
    REPORT_MAX, TrapTableArgs, VcpuArgs, VcpuUpArgs, encode,
};

use crate::layout::PAGE_SIZE;
use crate::vcpu::Start;
use crate::vm::{Outcome, VmShared};

/// What the VCPU thread does after a hypercall.
#[derive(Debug)]
pub(crate) enum Action {
    /// Re-enter the guest.
    Continue,
    /// Park until kicked or the deadline, then write the result at `ret_at`.
    Block { deadline_tsc: u64, ret_at: u64 },
    /// Give up the physical CPU. Directed yields (to a VCPU of the same VM) are checked but
    /// treated as undirected: under Linux scheduling there is no way to run a given thread.
    Yield,
    /// Go offline.
    Down,
    /// The guest's trap stub reported an exception.
    Fault(FaultFrame),
    /// The guest did something that ends it; the message says what.
    Fail(String),
    /// The VM has an outcome; leave.
    Stop,
}

/// Handles the hypercall `vcpu` made by writing `data` to `port`.
pub(crate) fn handle(vm: &VmShared, vcpu: u32, port: u16, data: &[u8]) -> Action {
    let name = Hypercall::from_port(port).map_or("unknown", Hypercall::name);
    let Ok(value) = <[u8; 4]>::try_from(data) else {
        return Action::Fail(format!("{}-byte write to I/O port {port:#x}; hypercalls write 4 bytes", data.len()));
    };
    let block = u64::from(u32::from_le_bytes(value));
    if !vm.contains(block, size_of::<i64>() as u64) {
        return Action::Fail(format!(
            "hypercall {name} (port {port:#x}) with its argument block at {block:#x}, outside guest memory"
        ));
    }
    let answer = |result: Result<u64, HcError>| {
        vm.write_ret(block, encode(result));
        Action::Continue
    };
    let Some(call) = Hypercall::from_port(port) else {
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
            vm.vcpus[target as usize].kick();
            Ok(0)
        })),
        Hypercall::Yield => {
            let target = vm.read_obj::<VcpuArgs>(block).and_then(|args| match args.vcpu {
                ANY_VCPU => Ok(0),
                id => vcpu_id(vm, id).map(u64::from),
            });
            match target {
                Ok(_) => {
                    answer(Ok(0));
                    Action::Yield
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
