//! What this host gives the process: the CPUs it may use (what `pcpus` in a scenario to run
//! here is checked against), its memory and how many more threads it may start (what a
//! scenario's VMs are checked against before any starts).

/// The host CPUs this process may run on, in order.
pub fn available_cores() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set for sched_getaffinity to fill.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return (0..host_cpus()).collect();
    }
    // SAFETY: CPU_ISSET reads within the set for indexes below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// How many host CPUs this process may run on.
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Bytes of memory the host has (`MemTotal`), if /proc/meminfo says.
pub fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Threads this process may still start under its user's process limit (`RLIMIT_NPROC`,
/// which counts threads), if it is limited: the limit less the threads running now.
pub fn threads_left() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the rlimit passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let threads: u64 = status.lines().find_map(|line| line.strip_prefix("Threads:"))?.trim().parse().ok()?;
    Some(limit.rlim_cur.saturating_sub(threads))
}
