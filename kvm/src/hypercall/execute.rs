//! Carrying out a decoded call for the VCPU that made it: the one place where each [`Call`]
//! has its effect. The result is the call's `ret`, which the VCPU thread writes, or why the
//! VCPU leaves its run loop.

use pv_abi::hypercall::{HcError, encode};

use super::decode::Call;
use crate::dispatch::VmStopped;
use crate::outcome::{Outcome, PAGE_FAULT, VcpuFault};
use crate::vm_shared::VmShared;

/// What carrying out a call needs of the VCPU thread that made it.
pub(crate) trait Caller {
    /// The VM the VCPU belongs to.
    fn vm(&self) -> &VmShared;
    /// The VCPU's id in its VM.
    fn id(&self) -> u32;
    /// Blocks until kicked or the guest's TSC passes `deadline_tsc`, giving the pCPU back
    /// meanwhile; returns the block's `ret` once the VCPU holds a pCPU again.
    fn block(&mut self, deadline_tsc: u64) -> Result<i64, VmStopped>;
    /// Gives up the pCPU, in favour of this VCPU of the same VM if set; returns once the VCPU
    /// holds a pCPU again.
    fn yield_to(&mut self, to: Option<u32>) -> Result<(), VmStopped>;
    /// The address of the last page fault (CR2), if it can be read.
    fn fault_address(&self) -> Option<u64>;
}

/// Why a VCPU leaves its run loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leave {
    /// It went offline (`vcpu_down`).
    Down,
    /// It ended the VM itself (exit, panic, fault).
    Ended,
    /// The VM stopped while the VCPU was blocked.
    StoppedBlocked,
    /// The VM stopped while the VCPU ran or waited for a pCPU.
    Stopped,
}

/// Carries out `call` for `caller`: its `ret`, or why the VCPU leaves (a call that ends the
/// VM or takes the VCPU down does not return to the guest).
pub(crate) fn execute(caller: &mut impl Caller, call: Call) -> Result<i64, Leave> {
    let vm = caller.vm();
    let result = match call {
        Call::Nop => Ok(0),
        Call::ConsoleWrite(bytes) => {
            vm.console.write(caller.id(), &bytes);
            Ok(bytes.len() as u64)
        }
        Call::Report(record) => {
            let len = record.len() as u64;
            vm.add_report(record).map(|()| len)
        }
        Call::Exit(code) => {
            vm.finish(Outcome::Exited(code));
            return Err(Leave::Ended);
        }
        Call::Panic(message) => {
            vm.finish(Outcome::Panicked { vcpu: caller.id(), message });
            return Err(Leave::Ended);
        }
        Call::Fault(frame) => {
            let cr2 = if frame.vector == PAGE_FAULT { caller.fault_address() } else { None };
            vm.finish(Outcome::Faulted { vcpu: caller.id(), fault: VcpuFault::exception(&frame, cr2) });
            return Err(Leave::Ended);
        }
        Call::VcpuUp { vcpu, start } => {
            if vm.start_vcpu(vcpu, start) {
                Ok(0)
            } else {
                Err(HcError::BadState)
            }
        }
        Call::VcpuDown => return Err(Leave::Down),
        Call::Block { deadline_tsc } => return caller.block(deadline_tsc).map_err(|VmStopped| Leave::StoppedBlocked),
        Call::Kick { vcpu } => {
            vm.kick(vcpu);
            Ok(0)
        }
        Call::Yield { to } => {
            caller.yield_to(to).map_err(|VmStopped| Leave::Stopped)?;
            Ok(0)
        }
        Call::SetTrapTable { base, limit } => {
            vm.set_trap_table(base, limit);
            Ok(0)
        }
        Call::NetNotify => vm.notify_net().map(|()| 0),
    };
    Ok(encode(result))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use pv_abi::hypercall::{BLOCK_TIMED_OUT, FaultFrame, REPORT_MAX, REPORTS_TOTAL_MAX};
    use tandem_core::guest::VmConfig;
    use tandem_core::net::NetConfig;

    use super::*;
    use crate::dispatch::Seat;
    use crate::memory::GuestMemory;
    use crate::net::{NetDevice, NetHandle};
    use crate::x86::Start;

    /// A VCPU thread that records what the executor asked of it.
    struct Recorder {
        vm: VmShared,
        id: u32,
        blocks: Vec<u64>,
        yields: Vec<Option<u32>>,
    }

    impl Caller for Recorder {
        fn vm(&self) -> &VmShared {
            &self.vm
        }

        fn id(&self) -> u32 {
            self.id
        }

        fn block(&mut self, deadline_tsc: u64) -> Result<i64, VmStopped> {
            self.blocks.push(deadline_tsc);
            Ok(BLOCK_TIMED_OUT)
        }

        fn yield_to(&mut self, to: Option<u32>) -> Result<(), VmStopped> {
            self.yields.push(to);
            Ok(())
        }

        fn fault_address(&self) -> Option<u64> {
            Some(0x8)
        }
    }

    /// VCPU 0 of a fresh VM of two VCPUs, not started.
    fn vcpu0() -> Recorder {
        vcpu0_with(None)
    }

    /// VCPU 0 of a fresh VM of two VCPUs, with a NIC if `net` reaches one.
    fn vcpu0_with(net: Option<NetHandle>) -> Recorder {
        let config = VmConfig {
            name: "execute".into(),
            vcpus: 2,
            mem_mib: 4,
            cmdline: String::new(),
            timeout: Duration::from_secs(1),
            echo_console: false,
            net: None,
        };
        let memory = GuestMemory::new(config.mem_mib << 20).unwrap();
        let vm = VmShared::new(&config, memory, 1_000_000, Seat::alone(config.vcpus).unwrap(), net);
        Recorder { vm, id: 0, blocks: Vec::new(), yields: Vec::new() }
    }

    #[test]
    fn console_writes_and_reports_are_answered_with_their_length_and_reports_are_capped() {
        let mut caller = vcpu0();
        assert_eq!(execute(&mut caller, Call::ConsoleWrite(b"hi\n".to_vec())), Ok(3));
        let record = "x".repeat(REPORT_MAX as usize);
        let allowed = REPORTS_TOTAL_MAX / REPORT_MAX;
        let accepted =
            (0..=allowed).filter(|_| execute(&mut caller, Call::Report(record.clone())) == Ok(REPORT_MAX as i64));
        assert_eq!(accepted.count() as u64, allowed);
        assert_eq!(execute(&mut caller, Call::Report("{}".into())), Ok(HcError::BadLength.code()));
        assert_eq!(caller.vm.take_reports().len() as u64, allowed);
    }

    #[test]
    fn exit_panic_and_fault_end_the_vm_with_their_outcome() {
        let mut caller = vcpu0();
        assert_eq!(execute(&mut caller, Call::Exit(3)), Err(Leave::Ended));
        assert_eq!(caller.vm.wait_outcome(Duration::ZERO), Some(Outcome::Exited(3)));

        let mut caller = vcpu0();
        caller.id = 1;
        assert_eq!(execute(&mut caller, Call::Panic("oops".into())), Err(Leave::Ended));
        let expected = Outcome::Panicked { vcpu: 1, message: "oops".into() };
        assert_eq!(caller.vm.wait_outcome(Duration::ZERO), Some(expected));

        let mut caller = vcpu0();
        let frame = FaultFrame { vector: 14, error_code: 4, rip: 0x20_0010, ..Default::default() };
        assert_eq!(execute(&mut caller, Call::Fault(frame)), Err(Leave::Ended));
        let outcome = caller.vm.wait_outcome(Duration::ZERO).unwrap();
        assert_eq!(
            outcome.describe("t"),
            "VM t: VCPU 0 faulted: page fault (#PF) at rip 0x200010, error code 0x4, address 0x8"
        );
    }

    #[test]
    fn block_and_yield_are_the_callers_and_answered_with_its_result() {
        let mut caller = vcpu0();
        assert_eq!(execute(&mut caller, Call::Block { deadline_tsc: 77 }), Ok(BLOCK_TIMED_OUT));
        assert_eq!(execute(&mut caller, Call::Yield { to: Some(1) }), Ok(0));
        assert_eq!((caller.blocks.as_slice(), caller.yields.as_slice()), ([77].as_slice(), [Some(1)].as_slice()));
        assert_eq!(execute(&mut caller, Call::VcpuDown), Err(Leave::Down));
    }

    #[test]
    fn vcpu_up_starts_an_offline_vcpu_once_and_a_kick_reaches_it_through_the_dispatcher() {
        let mut caller = vcpu0();
        let start = Start { entry: 0x20_0000, stack_top: 0x30_0000, arg: 5 };
        assert_eq!(execute(&mut caller, Call::VcpuUp { vcpu: 1, start }), Ok(0));
        assert_eq!(execute(&mut caller, Call::VcpuUp { vcpu: 1, start }), Ok(HcError::BadState.code()));
        let (dispatcher, vcpu) = (Arc::clone(&caller.vm.seat.dispatcher), caller.vm.vcpu(1));
        assert_eq!(dispatcher.wait_for_start(vcpu), Ok(start));
        dispatcher.started(vcpu).unwrap();
        assert_eq!(execute(&mut caller, Call::Kick { vcpu: 1 }), Ok(0));
        assert!(!dispatcher.block(vcpu), "the kick was kept for VCPU 1's next block");
        assert!(dispatcher.block(vcpu), "and that block consumed it");
    }

    #[test]
    fn net_notify_wakes_the_nics_backend_and_is_counted_and_without_a_nic_is_bad_state() {
        let mut caller = vcpu0();
        assert_eq!(execute(&mut caller, Call::NetNotify), Ok(HcError::BadState.code()));
        let memory = GuestMemory::new(8 << 20).unwrap();
        let device = NetDevice::open(&NetConfig::user(), &memory, 2).unwrap();
        let mut caller = vcpu0_with(Some(device.handle()));
        assert_eq!(execute(&mut caller, Call::NetNotify), Ok(0));
        assert_eq!(execute(&mut caller, Call::NetNotify), Ok(0));
        assert_eq!(device.handle().stats().notifications, 2);
    }

    #[test]
    fn a_trap_table_is_installed_for_every_vcpu() {
        let mut caller = vcpu0();
        let (_, generation) = caller.vm.trap_table();
        assert_eq!(execute(&mut caller, Call::SetTrapTable { base: 0x30_0000, limit: 4095 }), Ok(0));
        assert_eq!(caller.vm.trap_table(), (Some((0x30_0000, 4095)), generation + 1));
    }
}
