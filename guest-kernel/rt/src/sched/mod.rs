//! Cooperative threads on per-VCPU run queues with work stealing.
//!
//! Every online VCPU runs `scheduler_loop` on its own stack. It takes the next thread from
//! its queue (or steals one from another VCPU's), switches to it, and when the thread switches
//! back (it yielded, blocked, slept or exited) files it accordingly. A VCPU with nothing to run
//! polls for work briefly, then blocks in the monitor until kicked or until its next timer;
//! whoever queues work for a blocked VCPU kicks it. Each VCPU keeps its demand (queued +
//! running threads) current in the shared page.
//!
//! The scheduler also keeps the network going (if the VM has a NIC, see `crate::net`): each
//! pass polls the stack when it has work (a cheap check first), a VCPU polling for work
//! also watches for received frames, and one about to block declares itself to the NIC's
//! backend, to be kicked when frames arrive, and wakes by the stack's next deadline.
//!
//! When the monitor asks the VM to end (`stop_requested` in the shared page, then a kick), the
//! next scheduler pass starts the application's stop handler ([`on_stop`]) on a thread.
//!
//! The VCPUs online are the first `ONLINE` ones, and they follow the monitor's grant in the
//! shared page (dynamic VCPU allocation): when it falls, `ONLINE` falls first, so no new
//! work is queued for the surplus VCPUs; each of them, at its next scheduling point, hands
//! its queued threads and timers to the VCPUs that stay and goes down. A running thread on a
//! surplus VCPU reaches that point at its next yield (spin-waits yield there too). When the
//! grant rises, a VCPU at a scheduling point raises `ONLINE` and brings the next VCPU up.
//! VCPU 0 always stays. A queue of a VCPU going down refuses new threads (under its lock),
//! so a thread queued by a waker that read `ONLINE` before it fell is redirected, not lost.
//!
//! Blocking is race-free through a per-thread state: a thread that is about to block marks
//! itself `BLOCKING` *before* it publishes itself on a wait queue; a waker that finds it still
//! `BLOCKING` marks it `WOKEN`, and the scheduler, once the thread is off its stack, requeues
//! it instead of parking it.

mod context;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use pv_abi::MAX_VCPUS;
use pv_abi::hypercall::{HcError, NO_DEADLINE};
use spinning_top::Spinlock;
use workloads::timing::IDLE_POLL_NS;

use crate::net::stack as net;
use crate::{boot, clock, hypercall, percpu, smp};

/// Stack of every thread.
const STACK_SIZE: usize = 64 * 1024;

const RUNNABLE: u8 = 0;
const RUNNING: u8 = 1;
const BLOCKING: u8 = 2;
const BLOCKED: u8 = 3;
const WOKEN: u8 = 4;
const EXITED: u8 = 5;

/// A guest thread.
pub(crate) struct Thread {
    state: AtomicU8,
    /// Saved stack pointer while switched out; touched only by the VCPU switching it.
    sp: UnsafeCell<usize>,
    _stack: Box<[u8]>,
    entry: UnsafeCell<Option<Box<dyn FnOnce() -> u64 + Send>>>,
    result: AtomicU64,
    done: AtomicBool,
    joiner: Spinlock<Option<Arc<Thread>>>,
    /// The VCPU it runs or last ran on; wake-ups queue it there.
    cpu: AtomicU32,
}

// SAFETY: `sp` and `entry` are only accessed by the one VCPU that runs or switches the
// thread at a time (ownership passes through the run queues' locks); the rest is atomic.
unsafe impl Sync for Thread {}
// SAFETY: as above; the entry closure is `Send`.
unsafe impl Send for Thread {}

/// A thread as a `core::task::Waker`, for code that must wake threads without calling the
/// scheduler itself: the network stack, which the scheduler calls. Such a wake-up queues the
/// thread on the VCPU that polled the stack (see [`wake_here`]).
impl alloc::task::Wake for Thread {
    fn wake(self: Arc<Self>) {
        wake_here(&self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        wake_here(self);
    }
}

/// Why a thread switched to its scheduler.
#[derive(Clone, Copy)]
enum Reason {
    Yield,
    Block,
    Sleep(u64),
    Exit,
}

struct PerCpu {
    queue: Spinlock<VecDeque<Arc<Thread>>>,
    /// Length of `queue`, readable without its lock.
    queued: AtomicU32,
    /// Whether a thread is running: with `queued`, the VCPU's demand.
    running: AtomicBool,
    /// Set while the VCPU has nothing to run and is about to block or blocked.
    idle: AtomicBool,
    /// Set, under the queue's lock, when the VCPU goes down: its queue takes no threads.
    down: AtomicBool,
    /// The scheduler's saved stack pointer, and the running thread; this VCPU's only.
    scheduler_sp: UnsafeCell<usize>,
    current: UnsafeCell<Option<Arc<Thread>>>,
    reason: UnsafeCell<Reason>,
    timers: Spinlock<Vec<(u64, Arc<Thread>)>>,
    /// Earliest timer deadline (TSC), or `NO_DEADLINE`.
    next_timer: AtomicU64,
}

// SAFETY: the `UnsafeCell` fields are only accessed by the VCPU that owns this entry.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    const fn new() -> Self {
        PerCpu {
            queue: Spinlock::new(VecDeque::new()),
            queued: AtomicU32::new(0),
            running: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            down: AtomicBool::new(false),
            scheduler_sp: UnsafeCell::new(0),
            current: UnsafeCell::new(None),
            reason: UnsafeCell::new(Reason::Yield),
            timers: Spinlock::new(Vec::new()),
            next_timer: AtomicU64::new(NO_DEADLINE),
        }
    }

    /// Queues `thread`, unless the VCPU is going down: then it is handed back.
    fn push(&self, thread: Arc<Thread>) -> Result<(), Arc<Thread>> {
        let mut queue = self.queue.lock();
        if self.down.load(Ordering::Relaxed) {
            return Err(thread);
        }
        queue.push_back(thread);
        self.queued.store(queue.len() as u32, Ordering::SeqCst);
        Ok(())
    }

    /// Refuses threads from now on and returns those queued.
    fn close(&self) -> VecDeque<Arc<Thread>> {
        let mut queue = self.queue.lock();
        self.down.store(true, Ordering::Relaxed);
        self.queued.store(0, Ordering::SeqCst);
        core::mem::take(&mut *queue)
    }

    fn pop(&self) -> Option<Arc<Thread>> {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut queue = self.queue.lock();
        let thread = queue.pop_front();
        self.queued.store(queue.len() as u32, Ordering::SeqCst);
        thread
    }

    fn current(&self) -> Option<&Arc<Thread>> {
        // SAFETY: only this VCPU touches `current`, and not concurrently with this borrow.
        unsafe { (*self.current.get()).as_ref() }
    }
}

static CPUS: [PerCpu; MAX_VCPUS] = [const { PerCpu::new() }; MAX_VCPUS];
/// VCPUs running a scheduler: ids `0..ONLINE`.
static ONLINE: AtomicU32 = AtomicU32::new(0);
static NEXT_SPAWN_CPU: AtomicU32 = AtomicU32::new(0);
/// Set while a VCPU is bringing another one up.
static GROWING: AtomicBool = AtomicBool::new(false);

fn this_cpu() -> &'static PerCpu {
    &CPUS[percpu::vcpu_id() as usize]
}

fn online() -> u32 {
    ONLINE.load(Ordering::Acquire)
}

/// VCPUs taking threads now: ids `0..online_vcpus()`.
pub fn online_vcpus() -> u32 {
    online()
}

/// Publishes VCPU `id`'s demand (queued + running threads) in the shared page. Called by
/// whoever changes it: the VCPU itself, a VCPU that queues a thread there or steals one.
/// Each publisher checks after its store that the demand has not changed meanwhile, so that
/// of two racing publishers the later store is never a stale one.
fn publish_demand(id: u32) {
    let cpu = &CPUS[id as usize];
    let demand = || cpu.queued.load(Ordering::SeqCst) + u32::from(cpu.running.load(Ordering::SeqCst));
    let slot = &boot::shared_page().vcpus[id as usize].demand;
    loop {
        let value = demand();
        slot.store(value, Ordering::SeqCst);
        if demand() == value {
            break;
        }
    }
}

/// Brings the granted VCPUs up as schedulers, runs `main` in a thread and exits the VM with
/// its result. Call it once, from the application's main, with no other VCPU started: from
/// then on the VCPUs belong to the scheduler (and follow the monitor's grant), and threads can
/// be spawned.
pub fn start(main: impl FnOnce() -> i64 + Send + 'static) -> ! {
    let vcpus = granted();
    ONLINE.store(vcpus, Ordering::Release);
    for vcpu in 1..vcpus {
        smp::start(vcpu, enter_scheduler).expect("vcpu_up failed");
    }
    spawn(move || {
        let code = main();
        linger();
        hypercall::exit(code)
    });
    scheduler_loop()
}

/// How long the exit waits for closed connections to deliver their last bytes.
const LINGER_NS: u64 = 1_000_000_000;

/// Gives what the application wrote to connections it has closed up to [`LINGER_NS`] to
/// reach the peers (their data and FIN acknowledged): the VM's exit ends the network with it.
fn linger() {
    let deadline = clock::deadline_after_ns(LINGER_NS);
    while net::draining() && clock::tsc() < deadline {
        sleep(1_000_000);
    }
}

/// What the application does when the monitor asks the VM to end, if it said (see
/// [`on_stop`]).
static ON_STOP: Spinlock<Option<Box<dyn FnOnce() + Send>>> = Spinlock::new(None);

/// Runs `handler` on a thread of its own when the monitor asks the VM to end (its process got
/// SIGINT or SIGTERM): a server stops serving and says what it served, say. Without one, or
/// if it takes too long, the monitor stops the VM itself.
pub fn on_stop(handler: impl FnOnce() + Send + 'static) {
    *ON_STOP.lock() = Some(Box::new(handler));
}

/// Starts the stop handler if the monitor asks the VM to end.
fn answer_stop_request() {
    if boot::shared_page().stop_requested.load(Ordering::Acquire) != 0
        && let Some(handler) = ON_STOP.lock().take()
    {
        drop(spawn(move || {
            handler();
            0
        }));
    }
}

fn enter_scheduler(_vcpu: u32) {
    scheduler_loop()
}

/// The VCPUs the monitor grants, within `1..=nr_vcpus`.
fn granted() -> u32 {
    boot::shared_page().grant_vcpus.load(Ordering::SeqCst).clamp(1, boot::nr_vcpus())
}

/// Whether the VCPUs online do not match the grant yet: this VCPU should, at its next
/// scheduling point, go down, or lower `ONLINE` (and wake the idle surplus VCPUs), or bring
/// a VCPU up.
fn off_grant() -> bool {
    let grant = granted();
    percpu::vcpu_id() >= grant || ONLINE.load(Ordering::SeqCst) != grant
}

/// Moves `ONLINE` towards the grant: down by going down if this VCPU is surplus, up by
/// bringing the next VCPU up.
fn follow_grant(id: u32, cpu: &PerCpu) {
    let grant = granted();
    let was = online();
    if grant < was && ONLINE.compare_exchange(was, grant, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
        // Idle surplus VCPUs are blocked: wake them to go down.
        for surplus in (grant..was).filter(|&v| v != id) {
            kick_if_idle(surplus);
        }
    }
    if id >= online() {
        go_down(cpu);
    }
    if grant > was && GROWING.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        // Raised first, so that the new VCPU does not see itself surplus; until it runs,
        // its queue still refuses threads (it is marked down).
        if ONLINE.compare_exchange(was, was + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // A VCPU still on its way down (closed, but not yet offline) cannot be started
            // yet: wait for it to get there. One that never went down is still up.
            while smp::start(was, enter_scheduler) == Err(HcError::BadState)
                && CPUS[was as usize].down.load(Ordering::Relaxed)
            {
                core::hint::spin_loop();
            }
        }
        GROWING.store(false, Ordering::Release);
    }
    let page = boot::shared_page();
    let seq = page.grant_seq.load(Ordering::Acquire);
    if online() == grant && page.grant_ack.load(Ordering::Relaxed) != seq {
        page.grant_ack.store(seq, Ordering::Release);
    }
}

/// Hands this VCPU's threads and timers to the VCPUs that stay, and goes down.
fn go_down(cpu: &PerCpu) -> ! {
    let id = percpu::vcpu_id();
    let threads = cpu.close();
    publish_demand(id);
    for thread in threads {
        enqueue(id % online(), thread);
    }
    let timers = core::mem::take(&mut *cpu.timers.lock());
    cpu.next_timer.store(NO_DEADLINE, Ordering::Release);
    for (deadline, thread) in timers {
        add_timer(&CPUS[0], deadline, thread);
    }
    kick_if_idle(0);
    hypercall::vcpu_down()
}

fn scheduler_loop() -> ! {
    let id = percpu::vcpu_id();
    let cpu = &CPUS[id as usize];
    cpu.down.store(false, Ordering::Relaxed);
    loop {
        follow_grant(id, cpu);
        answer_stop_request();
        fire_timers(cpu);
        net::poll();
        match cpu.pop().or_else(|| steal(id)) {
            Some(thread) => run(id, cpu, thread),
            None => idle(id, cpu),
        }
    }
}

fn run(id: u32, cpu: &PerCpu, thread: Arc<Thread>) {
    thread.state.store(RUNNING, Ordering::Release);
    thread.cpu.store(id, Ordering::Relaxed);
    // SAFETY: the thread was switched out (or never ran), so its saved sp is stable.
    let sp = unsafe { *thread.sp.get() };
    // SAFETY: this VCPU's own field.
    unsafe { *cpu.current.get() = Some(thread) };
    cpu.running.store(true, Ordering::SeqCst);
    publish_demand(id);
    // SAFETY: `sp` was saved by `switch` or prepared by `prepare_stack`, and only this VCPU
    // runs the thread now.
    unsafe { context::switch(cpu.scheduler_sp.get(), sp) };
    // SAFETY: this VCPU's own fields; the thread is off its stack now.
    let (thread, reason) = unsafe { ((*cpu.current.get()).take().expect("a thread ran"), *cpu.reason.get()) };
    cpu.running.store(false, Ordering::SeqCst);
    match reason {
        Reason::Yield => {
            thread.state.store(RUNNABLE, Ordering::Release);
            requeue(cpu, thread);
        }
        Reason::Block => park(cpu, thread),
        Reason::Sleep(deadline) => {
            add_timer(cpu, deadline, Arc::clone(&thread));
            park(cpu, thread);
        }
        Reason::Exit => finish(thread),
    }
    publish_demand(id);
}

/// Files a thread that blocked: parked until woken, or requeued if it was woken already.
fn park(cpu: &PerCpu, thread: Arc<Thread>) {
    if thread.state.compare_exchange(BLOCKING, BLOCKED, Ordering::AcqRel, Ordering::Acquire).is_err() {
        thread.state.store(RUNNABLE, Ordering::Release);
        requeue(cpu, thread);
    }
}

/// Queues a thread back on the VCPU it ran on (which is not down: it is running).
fn requeue(cpu: &PerCpu, thread: Arc<Thread>) {
    if cpu.push(thread).is_err() {
        unreachable!("a running VCPU's queue is open");
    }
}

fn finish(thread: Arc<Thread>) {
    thread.state.store(EXITED, Ordering::Release);
    thread.done.store(true, Ordering::Release);
    let joiner = thread.joiner.lock().take();
    if let Some(joiner) = joiner {
        wake(&joiner);
    }
}

/// Takes the oldest queued thread of another VCPU.
fn steal(id: u32) -> Option<Arc<Thread>> {
    let n = online();
    (1..n).map(|offset| (id + offset) % n).find_map(|victim| {
        let thread = CPUS[victim as usize].pop()?;
        publish_demand(victim);
        Some(thread)
    })
}

fn work_queued() -> bool {
    (0..online()).any(|cpu| CPUS[cpu as usize].queued.load(Ordering::SeqCst) > 0)
}

/// Nothing to run: poll briefly, then block until kicked, the next timer or the network
/// stack's next deadline (a VCPU whose timer or stack is due by then goes back to the
/// scheduler loop instead). `idle` is set only around the block, so wakers kick just the
/// VCPUs that need it (see [`kick_if_idle`]). Frames received end the poll (the scheduler
/// loop takes them in); before blocking, the VCPU declares itself to the NIC's backend and
/// checks for frames once more (see [`net::await_rx`]), so that frames arriving from then on
/// kick it.
fn idle(id: u32, cpu: &PerCpu) {
    let wake_at = cpu.next_timer.load(Ordering::Acquire).min(net::poll_deadline());
    let poll_until = clock::deadline_after_ns(IDLE_POLL_NS).min(wake_at);
    while clock::tsc() < poll_until {
        if work_queued() || off_grant() || net::rx_pending() {
            return;
        }
        core::hint::spin_loop();
    }
    if clock::tsc() >= wake_at {
        return;
    }
    cpu.idle.store(true, Ordering::SeqCst);
    if net::await_rx(id) && !work_queued() && !off_grant() {
        hypercall::block(wake_at);
    }
    if net::stop_awaiting_rx(id) {
        hand_rx_wait_over(id);
    }
    cpu.idle.store(false, Ordering::SeqCst);
}

/// VCPU `id`, awake for something else than frames, was the one the NIC's backend kicks when
/// frames arrive (the last VCPU to block declares itself, replacing any other): hands that to
/// another VCPU still blocked, so that frames arriving while this one runs threads wake one
/// that takes them in at once. A VCPU waking meanwhile may get the declaration after its own
/// withdrawal; then one kick makes its next block return at once, and it declares itself anew.
fn hand_rx_wait_over(id: u32) {
    if let Some(other) = (0..online()).find(|&v| v != id && CPUS[v as usize].idle.load(Ordering::SeqCst)) {
        net::hand_rx_wait_to(other);
    }
}

fn add_timer(cpu: &PerCpu, deadline: u64, thread: Arc<Thread>) {
    let mut timers = cpu.timers.lock();
    timers.push((deadline, thread));
    cpu.next_timer.fetch_min(deadline, Ordering::AcqRel);
}

fn fire_timers(cpu: &PerCpu) {
    if clock::tsc() < cpu.next_timer.load(Ordering::Acquire) {
        return;
    }
    let now = clock::tsc();
    let expired: Vec<Arc<Thread>> = {
        let mut timers = cpu.timers.lock();
        let (due, pending): (Vec<_>, Vec<_>) = timers.drain(..).partition(|(deadline, _)| *deadline <= now);
        *timers = pending;
        let next = timers.iter().map(|(deadline, _)| *deadline).min().unwrap_or(NO_DEADLINE);
        cpu.next_timer.store(next, Ordering::Release);
        due.into_iter().map(|(_, thread)| thread).collect()
    };
    for thread in expired {
        wake(&thread);
    }
}

/// Queues a runnable thread on VCPU `target` and makes sure some VCPU will run it: kicks the
/// target if it is idle, or else another idle VCPU, which will steal it.
fn enqueue(target: u32, thread: Arc<Thread>) {
    // A VCPU going down hands the thread back; VCPU 0 never goes down.
    let target = match CPUS[target as usize].push(thread) {
        Ok(()) => target,
        Err(thread) => {
            CPUS[0].push(thread).unwrap_or_else(|_| unreachable!("VCPU 0 never goes down"));
            0
        }
    };
    publish_demand(target);
    let me = percpu::vcpu_id();
    let n = online();
    let candidates = core::iter::once(target).chain((0..n).filter(|&other| other != target));
    let _ = candidates.filter(|&cpu| cpu != me).any(kick_if_idle);
}

/// Kicks VCPU `cpu` if it is idle (blocked or about to block), and takes its idle mark, so
/// that each block gets one kick: a VCPU kicked but not yet running again (it may wait a
/// host time slice for a pCPU) is not kicked again by every later waker, an exit each.
/// Returns whether it kicked. A kick that comes before the block makes the block return at
/// once.
fn kick_if_idle(cpu: u32) -> bool {
    let idle = &CPUS[cpu as usize].idle;
    let kicked = idle.load(Ordering::SeqCst) && idle.swap(false, Ordering::SeqCst);
    if kicked {
        let _ = hypercall::kick(cpu);
    }
    kicked
}

/// Makes a blocked or blocking thread runnable; does nothing to one that is awake.
pub(crate) fn wake(thread: &Arc<Thread>) {
    make_runnable(thread, |thread| {
        let target = thread.cpu.load(Ordering::Relaxed).min(online() - 1);
        enqueue(target, thread);
    });
}

/// Wakes a thread onto this VCPU's queue, kicking no other VCPU for it: the wake-ups of the
/// network stack, whose poller took in the data the thread will read. One polling VCPU then
/// serves the connections it took in; idle VCPUs that still poll steal from its queue, and a
/// blocked one is kicked by the NIC's backend when more frames come. Queuing the thread on
/// the VCPU it last ran on, and kicking that VCPU, cost two exits (the kick, and the block
/// after the VCPU ran out of work again) for a few microseconds of work: at 50 echo
/// connections, 0.10 exits per request against 0.03 this way (`tandem bench net`).
fn wake_here(thread: &Arc<Thread>) {
    make_runnable(thread, |thread| {
        let me = percpu::vcpu_id();
        thread.cpu.store(me, Ordering::Relaxed);
        match CPUS[me as usize].push(thread) {
            Ok(()) => publish_demand(me),
            // This VCPU is going down: place it as any other wake-up.
            Err(thread) => enqueue(0, thread),
        }
    });
}

/// Makes a blocked thread runnable and hands it to `queue`; marks a blocking one woken (its
/// scheduler requeues it); does nothing to one that is awake.
fn make_runnable(thread: &Arc<Thread>, queue: impl FnOnce(Arc<Thread>)) {
    loop {
        match thread.state.load(Ordering::Acquire) {
            BLOCKED => {
                if thread.state.compare_exchange(BLOCKED, RUNNABLE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    queue(Arc::clone(thread));
                    return;
                }
            }
            BLOCKING => {
                if thread.state.compare_exchange(BLOCKING, WOKEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// The running thread.
pub(crate) fn current() -> Arc<Thread> {
    Arc::clone(this_cpu().current().expect("not called from a thread"))
}

/// Marks the running thread as about to block. Call before publishing it on a wait queue;
/// then either [`block`] or, if it turned out not to be needed, [`cancel_block`].
pub(crate) fn prepare_block(thread: &Thread) {
    thread.state.store(BLOCKING, Ordering::Release);
}

/// Undoes [`prepare_block`] for a thread that was not published anywhere.
pub(crate) fn cancel_block(thread: &Thread) {
    thread.state.store(RUNNING, Ordering::Release);
}

/// Switches to the scheduler until the thread is woken.
pub(crate) fn block() {
    switch_to_scheduler(Reason::Block);
}

fn switch_to_scheduler(reason: Reason) {
    let cpu = this_cpu();
    let thread = cpu.current().expect("not called from a thread");
    let save = thread.sp.get();
    // SAFETY: this VCPU's own fields; `save` points into a thread kept alive by `current`
    // until the scheduler files it, and the scheduler's sp was saved when it switched here.
    unsafe {
        *cpu.reason.get() = reason;
        context::switch(save, *cpu.scheduler_sp.get());
    }
    // Resumed, possibly on another VCPU: `cpu` is stale from here on.
}

/// Lets other runnable threads of this VCPU run (or due timers fire).
pub fn yield_now() {
    let cpu = this_cpu();
    if cpu.current().is_some()
        && (cpu.queued.load(Ordering::Relaxed) > 0
            || clock::tsc() >= cpu.next_timer.load(Ordering::Relaxed)
            || off_grant())
    {
        switch_to_scheduler(Reason::Yield);
    }
}

/// Whether other threads wait for this VCPU, or the grant asks it to act (either way a
/// spinning thread should yield).
pub(crate) fn others_waiting() -> bool {
    this_cpu().queued.load(Ordering::Relaxed) > 0 || off_grant()
}

/// Blocks the running thread for at least `ns` nanoseconds.
pub fn sleep(ns: u64) {
    let deadline = clock::deadline_after_ns(ns);
    prepare_block(&current());
    switch_to_scheduler(Reason::Sleep(deadline));
}

/// A spawned thread; [`JoinHandle::join`] waits for it and returns its result.
pub struct JoinHandle(Arc<Thread>);

/// Starts a thread running `body`, queued round-robin on the online VCPUs.
pub fn spawn(body: impl FnOnce() -> u64 + Send + 'static) -> JoinHandle {
    let mut stack = vec![0u8; STACK_SIZE].into_boxed_slice();
    let sp = context::prepare_stack(&mut stack, thread_start, 0);
    let cpu = NEXT_SPAWN_CPU.fetch_add(1, Ordering::Relaxed) % online();
    let thread = Arc::new(Thread {
        state: AtomicU8::new(RUNNABLE),
        sp: UnsafeCell::new(sp),
        _stack: stack,
        entry: UnsafeCell::new(Some(Box::new(body))),
        result: AtomicU64::new(0),
        done: AtomicBool::new(false),
        joiner: Spinlock::new(None),
        cpu: AtomicU32::new(cpu),
    });
    enqueue(cpu, Arc::clone(&thread));
    JoinHandle(thread)
}

extern "C" fn thread_start(_: usize) -> ! {
    let entry = {
        let thread = current();
        // SAFETY: only the thread itself takes its entry, once, while it runs.
        unsafe { (*thread.entry.get()).take() }.expect("a thread starts once")
    };
    let result = entry();
    current().result.store(result, Ordering::Release);
    // Nothing may be left on this stack that needs dropping: it is never unwound.
    switch_to_scheduler(Reason::Exit);
    unreachable!("an exited thread was resumed")
}

impl JoinHandle {
    /// Waits for the thread to finish and returns its result.
    pub fn join(self) -> u64 {
        let thread = self.0;
        if !thread.done.load(Ordering::Acquire) {
            let me = current();
            prepare_block(&me);
            let mut joiner = thread.joiner.lock();
            if thread.done.load(Ordering::Acquire) {
                drop(joiner);
                cancel_block(&me);
            } else {
                *joiner = Some(me);
                drop(joiner);
                block();
            }
        }
        debug_assert!(thread.done.load(Ordering::Acquire));
        thread.result.load(Ordering::Acquire)
    }
}
