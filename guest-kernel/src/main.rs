//! The tandem guest kernel: a paravirtual SMP unikernel.
//!
//! It runs at ring 3 (see the README's platform notes); privileged work is done by the
//! monitor through hypercalls. VCPU 0 enters at [`_start`], sets up the trap table, heap and
//! clock, then runs the program the command line names; the program brings up the other
//! VCPUs as it needs them.
#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod clock;
mod cmdline;
mod console;
mod heap;
mod hypercall;
mod lang;
mod percpu;
mod programs;
mod runtime;
mod sched;
mod smp;
mod sync;
mod trap;

use pv_abi::boot::BootInfo;

/// Marks the image as a tandem guest of this ABI version (see `pv_abi::note`).
#[used]
#[unsafe(link_section = ".note.tandem")]
static ABI_NOTE: pv_abi::note::AbiNote = pv_abi::note::ABI_NOTE;

/// Process status the guest exits with when its command line is wrong.
const EXIT_USAGE: i64 = 64;

/// VCPU 0's entry (the ELF entry point); see `pv_abi::boot` for the register convention.
#[unsafe(no_mangle)]
pub extern "C" fn _start(boot_info: &'static BootInfo, vcpu: u32, _arg: u64) -> ! {
    boot::init(boot_info, vcpu);
    trap::init();
    heap::init(boot_info.heap_start, boot_info.heap_end);
    clock::init(boot_info.tsc_khz);

    let Some(line) = boot_info.cmdline() else {
        println!("the boot command line is not UTF-8");
        hypercall::exit(EXIT_USAGE);
    };
    let Some(command) = cmdline::Command::parse(line) else {
        println!("the boot command line names no program");
        hypercall::exit(EXIT_USAGE);
    };
    let code = programs::run(&command);
    hypercall::exit(code)
}
