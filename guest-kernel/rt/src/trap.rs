//! Exceptions: an IDT whose 32 gates point at tiny ring-0 stubs. A stub completes the
//! `pv_abi::hypercall::FaultFrame` on the trap stack (the monitor's TSS.RSP0) and hands it to
//! the monitor with the fault hypercall; the monitor reports the fault and ends the VM.
//!
//! Ring-0 code is emulated one instruction at a time on PVM hosts, so the stubs are a handful
//! of SSE-free instructions and never return.

use core::cell::UnsafeCell;

use pv_abi::hypercall::{Hypercall, has_error_code};

/// Kernel code selector: ring-0 gates must target it.
const KERNEL_CS: u16 = 0x08;
/// Present, DPL 0, 64-bit interrupt gate.
const INTERRUPT_GATE: u8 = 0x8e;
const VECTORS: usize = 32;

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate =
        Gate { offset_low: 0, selector: 0, ist: 0, attributes: 0, offset_mid: 0, offset_high: 0, reserved: 0 };

    fn new(handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist: 0,
            attributes: INTERRUPT_GATE,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; VECTORS]>);

// SAFETY: written once by VCPU 0 before any other VCPU starts, read only by the CPU after.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::MISSING; VECTORS]));

/// Pushes what the CPU did not (a zero error code where it pushes none, the vector, the `ret`
/// slot) and makes the fault hypercall with the frame's address.
macro_rules! stubs {
    ($($vector:literal)*) => {
        [$({
            #[unsafe(naked)]
            extern "C" fn stub() -> ! {
                core::arch::naked_asm!(
                    ".if {has_error_code} == 0",
                    "push 0",
                    ".endif",
                    "push {vector}",
                    "push 0",
                    "mov eax, esp",
                    "mov dx, {port}",
                    "out dx, eax",
                    "2: jmp 2b",
                    has_error_code = const has_error_code($vector) as u8,
                    vector = const $vector,
                    port = const Hypercall::Fault.port(),
                )
            }
            stub as extern "C" fn() -> !
        }),*]
    };
}

/// Builds the IDT and installs it on every VCPU of the VM.
pub(crate) fn init() {
    let stubs: [extern "C" fn() -> !; VECTORS] = stubs!(
        0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
    );
    // SAFETY: only VCPU 0 runs, once, before the table is installed.
    let gates = unsafe { &mut *IDT.0.get() };
    for (gate, stub) in gates.iter_mut().zip(stubs) {
        *gate = Gate::new(stub as usize as u64);
    }
    let limit = (core::mem::size_of_val(gates) - 1) as u64;
    crate::hypercall::set_trap_table(gates.as_ptr() as u64, limit).expect("the monitor refused the trap table");
}
