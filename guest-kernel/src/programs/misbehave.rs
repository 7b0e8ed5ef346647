//! Programs that misbehave on purpose, so that tests can check that the monitor reports each
//! failure clearly, ends the VM, and stays well itself.

use core::sync::atomic::{AtomicU64, Ordering, fence};

use tandem_rt::pv_abi::boot::BOOT_INFO_ADDR;
use tandem_rt::pv_abi::hypercall::{
    BufferArgs, CONSOLE_MAX, HYPERCALL_PORT_BASE, HcError, Hypercall, NO_DEADLINE, REPORT_MAX, REPORTS_TOTAL_MAX,
    decode,
};
use tandem_rt::pv_abi::net::{NET_SLOTS, NetArea};

use tandem_rt::workloads::{ParamError, ParamSpec, Params};
use tandem_rt::{EXIT_USAGE, boot, clock, hypercall, percpu, println, smp};

const VCPU: ParamSpec = ParamSpec::int("vcpu", "0", "the VCPU that misbehaves");

pub const FAULT_PARAMS: &[ParamSpec] =
    &[ParamSpec::choice("kind", "page", &["page", "gp", "ud", "div"], "the exception to raise"), VCPU];
pub const PANIC_PARAMS: &[ParamSpec] = &[VCPU];
pub const HANG_PARAMS: &[ParamSpec] =
    &[ParamSpec::choice("mode", "spin", &["spin", "block"], "spin on the CPU, or block with no deadline")];
pub const STORM_PARAMS: &[ParamSpec] =
    &[ParamSpec::int("ms", "2000", "how long to flood the monitor, in ms (0: until the VM is stopped)")];

/// When `storm`'s flood ends, as a TSC value.
static STORM_END: AtomicU64 = AtomicU64::new(0);

/// `fault kind=page|gp|ud|div [vcpu=N]`: raises a CPU exception, on VCPU N (default 0).
pub fn fault(params: &Params) -> Result<i64, ParamError> {
    let raise: fn(u32) = match params.str("kind") {
        "page" => |_| {
            // SAFETY: none; this read of the unmapped null page is meant to fault.
            let value = unsafe { core::ptr::read_volatile(core::ptr::without_provenance::<u64>(8)) };
            println!("read {value} from the null page");
        },
        // SAFETY: `hlt` at ring 3 is meant to raise #GP.
        "gp" => |_| unsafe { core::arch::asm!("hlt") },
        // SAFETY: `ud2` is meant to raise #UD.
        "ud" => |_| unsafe { core::arch::asm!("ud2") },
        // SAFETY: dividing by zero is meant to raise #DE.
        "div" => |_| unsafe {
            core::arch::asm!("xor edx, edx", "xor ecx, ecx", "div ecx", out("eax") _, out("edx") _, out("ecx") _)
        },
        _ => unreachable!("Params checks the choice"),
    };
    on_vcpu(params, raise)
}

/// `panic [vcpu=N]`: panics, on VCPU N (default 0).
pub fn panic(params: &Params) -> Result<i64, ParamError> {
    on_vcpu(params, |vcpu| panic!("deliberate panic on VCPU {vcpu}"))
}

/// `hang [mode=spin|block]`: never finishes; spins on the CPU or blocks with no deadline.
pub fn hang(params: &Params) -> Result<i64, ParamError> {
    if params.str("mode") == "block" {
        loop {
            hypercall::block(NO_DEADLINE);
        }
    }
    loop {
        core::hint::spin_loop();
    }
}

/// `storm [ms=2000]`: floods the monitor from every VCPU for `ms`, then exits 0: kicks to its
/// siblings, yields (undirected and directed), blocks with a deadline already past, console
/// lines, report records (refused once the VM's allowance is spent), NIC doorbells, and
/// VCPUs that go down and are brought up again. Each is a call the monitor must answer
/// without giving the VM more than its share of the pCPUs.
pub fn storm(params: &Params) -> Result<i64, ParamError> {
    let end = match params.u64("ms") {
        0 => u64::MAX,
        ms => clock::deadline_after_ns(ms.saturating_mul(1_000_000)),
    };
    STORM_END.store(end, Ordering::Release);
    flood(0);
    println!("storm: done");
    Ok(0)
}

/// One VCPU's part of `storm`: VCPU 0 floods until the end, bringing the others up again
/// whenever they have gone down; the others go down now and then.
fn flood(vcpu: u32) {
    let nr_vcpus = boot::nr_vcpus();
    let mut round: u64 = 0;
    while clock::tsc() < STORM_END.load(Ordering::Acquire) {
        let sibling = (vcpu + 1 + (round % u64::from(nr_vcpus)) as u32) % nr_vcpus;
        match round % 8 {
            0 => _ = hypercall::kick(sibling),
            1 => _ = hypercall::yield_to(None),
            2 => _ = hypercall::yield_to(Some(sibling)),
            3 => _ = hypercall::block(clock::tsc().saturating_sub(1)),
            4 => _ = hypercall::console_write(b"storm\n"),
            5 => _ = hypercall::report(b"{\"storm\":true}"),
            6 => _ = hypercall::net_notify(),
            _ if vcpu == 0 => (1..nr_vcpus).for_each(|other| _ = smp::start(other, flood)),
            // Returning takes this VCPU down (see `smp::start`).
            _ if round % 64 == 15 => return,
            _ => {}
        }
        round += 1;
    }
}

/// Runs `action` on the VCPU the `vcpu` argument names, and waits there if it is not 0.
fn on_vcpu(params: &Params, action: fn(u32)) -> Result<i64, ParamError> {
    let vcpu = params.u64_in("vcpu", 0..=u64::from(boot::nr_vcpus()) - 1, "no such VCPU")? as u32;
    if vcpu == 0 {
        action(0);
    } else {
        smp::start(vcpu, action).expect("vcpu_up of an offline VCPU");
        loop {
            hypercall::block(NO_DEADLINE);
        }
    }
    println!("VCPU {} survived what should have ended the VM", percpu::vcpu_id());
    Ok(1)
}

/// `badcall`: makes hypercalls with bad arguments and checks that each is refused with the
/// right error, then makes one whose argument block lies outside guest memory, which the
/// monitor must answer by ending the VM with a fault.
pub fn badcall(_: &Params) -> Result<i64, ParamError> {
    let mem_size = boot::info().mem_size;
    let nr_vcpus = boot::nr_vcpus();
    let text = b"never printed";
    let buffer = |addr: u64, len: u64| BufferArgs { ret: 0, addr, len };
    let cases: [(&str, Result<u64, HcError>, HcError); 14] = [
        ("unknown call number", raw_call(HYPERCALL_PORT_BASE + 200, &mut buffer(0, 0)), HcError::UnknownCall),
        (
            "console buffer past memory",
            raw_call(Hypercall::ConsoleWrite.port(), &mut buffer(mem_size - 4, 8)),
            HcError::BadAddress,
        ),
        (
            "console buffer wrapping around",
            raw_call(Hypercall::ConsoleWrite.port(), &mut buffer(u64::MAX - 2, 8)),
            HcError::BadAddress,
        ),
        (
            "console write too long",
            raw_call(Hypercall::ConsoleWrite.port(), &mut buffer(text.as_ptr() as u64, CONSOLE_MAX + 1)),
            HcError::BadLength,
        ),
        (
            "report too long",
            raw_call(Hypercall::Report.port(), &mut buffer(text.as_ptr() as u64, REPORT_MAX + 1)),
            HcError::BadLength,
        ),
        ("empty report", raw_call(Hypercall::Report.port(), &mut buffer(text.as_ptr() as u64, 0)), HcError::BadLength),
        (
            "vcpu_up of a VCPU that does not exist",
            hypercall::vcpu_up(nr_vcpus, 0x200000, 0x300000, 0),
            HcError::BadVcpu,
        ),
        ("vcpu_up of the running VCPU", hypercall::vcpu_up(0, 0x200000, 0x300000, 0), HcError::BadState),
        (
            "vcpu_up with the entry outside memory",
            hypercall::vcpu_up(nr_vcpus - 1, mem_size, 0x300000, 0),
            HcError::BadAddress,
        ),
        (
            "vcpu_up with a misaligned stack",
            hypercall::vcpu_up(nr_vcpus - 1, 0x200000, 0x300008, 0),
            HcError::BadAlignment,
        ),
        ("kick of a VCPU that does not exist", hypercall::kick(nr_vcpus + 7), HcError::BadVcpu),
        ("yield to a VCPU that does not exist", hypercall::yield_to(Some(nr_vcpus)), HcError::BadVcpu),
        ("trap table outside memory", hypercall::set_trap_table(mem_size, 15), HcError::BadAddress),
        ("trap table too large", hypercall::set_trap_table(0x200000, 4096), HcError::BadLength),
    ];
    let mut wrong = 0;
    for (what, got, expected) in cases {
        if got != Err(expected) {
            println!("{what}: expected {expected}, got {got:?}");
            wrong += 1;
        }
    }
    // Reports are capped per VM: fill the allowance with the largest records, then one more.
    let record = alloc::vec![b'x'; REPORT_MAX as usize];
    let allowed = REPORTS_TOTAL_MAX / REPORT_MAX;
    let accepted = (0..=allowed).filter(|_| hypercall::report(&record).is_ok()).count() as u64;
    if accepted != allowed || hypercall::report(b"{}") != Err(HcError::BadLength) {
        println!("reports past the cap: {accepted} of {} accepted, expected {allowed}", allowed + 1);
        wrong += 1;
    }
    if wrong > 0 {
        return Ok(1);
    }
    println!("all {} bad hypercalls were refused with the right error, and reports are capped", cases.len());
    // SAFETY: the block address lies outside guest memory, so the monitor writes nothing.
    unsafe { hypercall::raw(Hypercall::ConsoleWrite.port(), mem_size + 0x1000) };
    println!("the monitor let a hypercall with its argument block outside memory pass");
    Ok(1)
}

fn raw_call(port: u16, args: &mut BufferArgs) -> Result<u64, HcError> {
    let addr = core::ptr::from_mut(args);
    // SAFETY: `args` is a live, exclusively borrowed block that starts with `ret`.
    unsafe {
        hypercall::raw(port, addr as u64);
        decode(core::ptr::read_volatile(addr.cast::<i64>()))
    }
}

/// How long `badnic` waits for the NIC's backend, which takes the TX ring on its own thread,
/// to find the bad descriptor and end the VM.
const BACKEND_GRACE_NS: u64 = 2_000_000_000;
/// `badnic`'s exit code if the monitor let its descriptor pass: none of the codes `tandem run`
/// gives itself (1 is a monitor error there).
const EXIT_LET_PASS: i64 = 3;

/// `badnic`: posts a TX descriptor that points outside the NIC's buffer area (at the boot
/// info page) and notifies the backend, which the monitor must answer by ending the VM with
/// a fault naming the descriptor. Exits 3 if the monitor let it pass, and with the usage
/// error's code in a VM without a NIC.
pub fn badnic(_: &Params) -> Result<i64, ParamError> {
    let net = boot::info().net;
    if !net.present() {
        println!("badnic: the VM has no NIC to misbehave on");
        return Ok(EXIT_USAGE);
    }
    // SAFETY: the monitor keeps the NIC area for the VM's life. The stack brought up at boot
    // is polled only by the thread scheduler, which this program does not start, so the TX
    // ring is this program's to write.
    let area = unsafe { &*(net.area as *const NetArea) };
    let index = area.tx_posted.value.load(Ordering::Relaxed);
    let desc = &area.tx[index as usize % NET_SLOTS];
    desc.addr.store(BOOT_INFO_ADDR, Ordering::Relaxed);
    desc.len.store(64, Ordering::Relaxed);
    desc.flags.store(0, Ordering::Relaxed);
    area.tx_posted.value.store(index.wrapping_add(1), Ordering::Release);
    fence(Ordering::SeqCst);
    let notified = hypercall::net_notify();
    let deadline = clock::deadline_after_ns(BACKEND_GRACE_NS);
    while clock::tsc() < deadline {
        hypercall::block(deadline);
    }
    println!("badnic: the monitor let a TX descriptor at {BOOT_INFO_ADDR:#x} pass (NetNotify: {notified:?})");
    Ok(EXIT_LET_PASS)
}
