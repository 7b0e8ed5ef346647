//! `hello`: every VCPU comes online and prints its id; the guest exits 0 when all have.

use core::sync::atomic::{AtomicU32, Ordering};
use tandem_rt::workloads::{ParamError, Params};
use tandem_rt::{boot, clock, hypercall, percpu, println, smp};

static GREETED: AtomicU32 = AtomicU32::new(0);

/// How long VCPU 0 waits for the others before it gives up.
const WAIT_NS: u64 = 10_000_000_000;

fn greet(vcpu: u32) {
    assert_eq!(vcpu, percpu::vcpu_id(), "GS base names another VCPU");
    println!("hello from VCPU {vcpu} of {}", boot::nr_vcpus());
    GREETED.fetch_add(1, Ordering::AcqRel);
    if vcpu != 0 {
        let _ = hypercall::kick(0);
    }
}

pub fn run(_: &Params) -> Result<i64, ParamError> {
    let vcpus = boot::nr_vcpus();
    for vcpu in 1..vcpus {
        smp::start(vcpu, greet).expect("vcpu_up failed");
    }
    greet(0);
    let deadline = clock::deadline_after_ns(WAIT_NS);
    while GREETED.load(Ordering::Acquire) < vcpus {
        if !hypercall::block(deadline) && clock::tsc() >= deadline {
            println!("only {} of {vcpus} VCPUs came online", GREETED.load(Ordering::Acquire));
            return Ok(1);
        }
    }
    println!("all {vcpus} VCPUs online");
    Ok(0)
}
