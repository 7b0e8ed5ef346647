//! `selftest`: checks the thread runtime and its synchronization from inside the guest: many
//! threads on few VCPUs and few on many, exact counts under the mutex and under the spinlock
//! family that `locks=` chose (also while the grant changes), barrier
//! generations that never mix, join results, no thread lost or run twice, condition
//! variables, sleep. Any failure panics with what went wrong.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use tandem_rt::sync::{Condvar, Mutex, WaitQueue, relax};
use tandem_rt::workloads::sync::KindedBarrier;
use tandem_rt::workloads::{Barrier, BarrierKind, Lock, ParamError, Params, Runtime};
use tandem_rt::{GuestRuntime, boot, clock, percpu, println, sched};

pub fn run(_: &Params) -> Result<i64, ParamError> {
    sched::start(main)
}

const CHECKS: &[(&str, fn())] = &[
    ("join returns every value", join_returns_every_value),
    ("every thread runs exactly once", every_thread_runs_exactly_once),
    ("counters are exact", counters_are_exact),
    // Few rounds for the spinning barrier: with more VCPUs than host cores, each episode can
    // wait a host time slice for a descheduled laggard (what co-scheduling addresses).
    ("spinning barrier generations never mix", || barrier_generations_never_mix(BarrierKind::Spin, 100)),
    ("blocking barrier generations never mix", || barrier_generations_never_mix(BarrierKind::SpinThenBlock, 500)),
    ("condvar hands over every item", condvar_hands_over_every_item),
    ("sleep lasts at least its time", sleep_lasts_at_least_its_time),
    ("few threads on many VCPUs", few_threads_on_many_vcpus),
    ("threads survive thousands of grant changes", threads_survive_grant_changes),
    ("demand is published", demand_is_published),
];

fn main() -> i64 {
    for (name, check) in CHECKS {
        let start = clock::tsc();
        check();
        println!("selftest: {name}: ok ({} ms)", clock::ticks_to_ns(clock::tsc() - start) / 1_000_000);
    }
    println!("selftest: all {} checks passed on {} VCPUs", CHECKS.len(), boot::nr_vcpus());
    0
}

fn join_returns_every_value() {
    let handles: Vec<_> = (0..200u64).map(|i| sched::spawn(move || i * i)).collect();
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.join(), (i * i) as u64, "join of thread {i}");
    }
}

/// 1000 threads (far more than VCPUs), each bumping its own slot once, yielding in between.
fn every_thread_runs_exactly_once() {
    const THREADS: usize = 1000;
    let slots: Arc<Vec<AtomicU32>> = Arc::new((0..THREADS).map(|_| AtomicU32::new(0)).collect());
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let slots = Arc::clone(&slots);
            sched::spawn(move || {
                sched::yield_now();
                slots[i].fetch_add(1, Ordering::AcqRel);
                sched::yield_now();
                0
            })
        })
        .collect();
    handles.into_iter().for_each(|h| _ = h.join());
    for (i, slot) in slots.iter().enumerate() {
        assert_eq!(slot.load(Ordering::Acquire), 1, "thread {i} ran {} times", slot.load(Ordering::Acquire));
    }
}

/// 8 threads x 100 000 increments under the blocking mutex, and far fewer under the spinlock
/// family: when the host deschedules VCPUs (more VCPUs than cores), every hand-off to a
/// descheduled waiter stalls a spinning FIFO lock for a host time slice, the very collapse
/// that paravirtual locks address. Once the lock convoys, each acquisition costs a slice
/// (~3 ms), so 2 000 acquisitions bound this check to seconds even on a loaded host.
fn counters_are_exact() {
    const THREADS: u64 = 8;
    const MUTEX_INCREMENTS: u64 = 100_000;
    const SPIN_INCREMENTS: u64 = 250;
    let mutex = Arc::new(Mutex::new(0u64));
    let spin = Arc::new(GuestRuntime.spin_lock(0u64));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (mutex, spin) = (Arc::clone(&mutex), Arc::clone(&spin));
            sched::spawn(move || {
                for i in 0..MUTEX_INCREMENTS {
                    *mutex.lock() += 1;
                    if i < SPIN_INCREMENTS {
                        *spin.lock() += 1;
                    }
                    if i % 1000 == 0 {
                        sched::yield_now();
                    }
                }
                0
            })
        })
        .collect();
    handles.into_iter().for_each(|h| _ = h.join());
    assert_eq!(*mutex.lock(), THREADS * MUTEX_INCREMENTS, "mutex-protected counter");
    assert_eq!(*spin.lock(), THREADS * SPIN_INCREMENTS, "spinlock-protected counter");
    let spin_stats = Lock::stats(&*spin);
    assert_eq!(spin_stats.acquisitions, THREADS * SPIN_INCREMENTS + 1);
    println!(
        "counters: {} under the mutex ({} contended), {} under the {} spinlock ({} contended)",
        THREADS * MUTEX_INCREMENTS,
        mutex.stats().contended,
        THREADS * SPIN_INCREMENTS,
        GuestRuntime.lock_family(),
        spin_stats.contended
    );
}

/// 12 threads x `rounds` rounds: after each barrier, every arrival of the round is counted and
/// none of the next; exactly one leader per generation.
fn barrier_generations_never_mix(kind: BarrierKind, rounds: usize) {
    const PARTIES: usize = 12;
    let barrier = Arc::new(KindedBarrier::new(kind, PARTIES, relax, WaitQueue::new()));
    let arrivals = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..PARTIES)
        .map(|_| {
            let (barrier, arrivals) = (Arc::clone(&barrier), Arc::clone(&arrivals));
            sched::spawn(move || {
                let mut leaders = 0;
                for round in 0..rounds {
                    arrivals.fetch_add(1, Ordering::AcqRel);
                    barrier.wait();
                    let seen = arrivals.load(Ordering::Acquire);
                    assert_eq!(seen, (round + 1) * PARTIES, "{kind:?} barrier mixed generations in round {round}");
                    leaders += u64::from(barrier.wait());
                }
                leaders
            })
        })
        .collect();
    let leaders: u64 = handles.into_iter().map(sched::JoinHandle::join).sum();
    assert_eq!(leaders, rounds as u64, "{kind:?} barrier: one leader per generation");
}

/// A producer hands 5 000 items to a consumer through a one-slot mailbox.
fn condvar_hands_over_every_item() {
    const ITEMS: u64 = 5_000;
    let mailbox = Arc::new((Mutex::new(None::<u64>), Condvar::new()));
    let consumer = {
        let mailbox = Arc::clone(&mailbox);
        sched::spawn(move || {
            let (slot, changed) = &*mailbox;
            let mut sum = 0;
            for _ in 0..ITEMS {
                let mut guard = slot.lock();
                while guard.is_none() {
                    guard = changed.wait(guard);
                }
                sum += guard.take().expect("checked");
                changed.notify_all();
            }
            sum
        })
    };
    let (slot, changed) = &*mailbox;
    for item in 1..=ITEMS {
        let mut guard = slot.lock();
        while guard.is_some() {
            guard = changed.wait(guard);
        }
        *guard = Some(item);
        changed.notify_all();
    }
    assert_eq!(consumer.join(), ITEMS * (ITEMS + 1) / 2, "items lost or duplicated");
}

fn sleep_lasts_at_least_its_time() {
    const NS: u64 = 5_000_000;
    let start = clock::tsc();
    sched::spawn(|| {
        sched::sleep(NS);
        0
    })
    .join();
    let slept = clock::ticks_to_ns(clock::tsc() - start);
    assert!(slept >= NS, "slept {slept} ns, asked for {NS}");
}

/// Two threads on however many VCPUs: the idle ones must block, not spin, and wake for work.
fn few_threads_on_many_vcpus() {
    for _ in 0..50 {
        let handles: Vec<_> = (0..2u64).map(|i| sched::spawn(move || i + 1)).collect();
        assert_eq!(handles.into_iter().map(sched::JoinHandle::join).sum::<u64>(), 3);
    }
}

/// 16 threads count and yield while the VCPU grant in the shared page (the monitor's word,
/// written here as a `dynamic` monitor would) changes 2 000 times: every count is exact, no
/// thread is lost or stuck on an offline VCPU, and the VCPUs come back when the grant does.
fn threads_survive_grant_changes() {
    const THREADS: usize = 16;
    const ROUNDS: u64 = 2_000;
    const CHANGES: u32 = 2_000;
    let page = boot::shared_page();
    let vcpus = boot::nr_vcpus();
    let counts: Arc<Vec<AtomicU32>> = Arc::new((0..THREADS).map(|_| AtomicU32::new(0)).collect());
    let total = Arc::new(GuestRuntime.spin_lock(0u64));
    let workers: Vec<_> = (0..THREADS)
        .map(|i| {
            let (counts, total) = (Arc::clone(&counts), Arc::clone(&total));
            sched::spawn(move || {
                for round in 0..ROUNDS {
                    counts[i].fetch_add(1, Ordering::AcqRel);
                    // Not every round: spinning families convoy on busy hosts (see above).
                    if round % 8 == 0 {
                        *total.lock() += 1;
                    }
                    sched::yield_now();
                }
                0
            })
        })
        .collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..CHANGES {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let grant = 1 + (rng % u64::from(vcpus)) as u32;
        page.grant_vcpus.store(grant, Ordering::Release);
        page.grant_seq.fetch_add(1, Ordering::AcqRel);
        // Mostly let the VCPUs follow; sometimes change the grant again half-way.
        let deadline = clock::deadline_after_ns(if rng.is_multiple_of(4) { 20_000 } else { 10_000_000 });
        while sched::online_vcpus() != grant && clock::tsc() < deadline {
            sched::yield_now();
        }
    }
    page.grant_vcpus.store(vcpus, Ordering::Release);
    page.grant_seq.fetch_add(1, Ordering::AcqRel);
    workers.into_iter().for_each(|h| _ = h.join());
    for (i, count) in counts.iter().enumerate() {
        assert_eq!(u64::from(count.load(Ordering::Acquire)), ROUNDS, "thread {i}");
    }
    let locked = THREADS as u64 * ROUNDS.div_ceil(8);
    assert_eq!(*total.lock(), locked, "the spinlock-protected total");
    assert_eq!(Lock::stats(&*total).acquisitions, locked + 1);
    let deadline = clock::deadline_after_ns(1_000_000_000);
    while sched::online_vcpus() != vcpus {
        assert!(clock::tsc() < deadline, "{} of {vcpus} VCPUs back online", sched::online_vcpus());
        sched::yield_now();
    }
}

/// With every other thread joined, the shared page must come to show a demand of one (this
/// thread) on this VCPU and none elsewhere; other VCPUs publish theirs when they next go idle.
fn demand_is_published() {
    let me = percpu::vcpu_id();
    let demand = |vcpu: u32| boot::shared_page().vcpus[vcpu as usize].demand.load(Ordering::Relaxed);
    let expected = |vcpu: u32| u32::from(vcpu == me);
    let deadline = clock::deadline_after_ns(1_000_000_000);
    while (0..boot::nr_vcpus()).any(|vcpu| demand(vcpu) != expected(vcpu)) {
        assert!(clock::tsc() < deadline, "demand: {:?}", (0..boot::nr_vcpus()).map(demand).collect::<Vec<_>>());
        sched::yield_now();
    }
}
