//! `cpu`: independent single-threaded compute with no sharing, the role of SPEC CPU's gobmk.
//! One task is a plain negamax search of the complete tic-tac-toe game tree; the tasks are
//! split statically across the threads.

use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::common::{self, THREADS};
use crate::params::{ParamSpec, Params};
use crate::record::{FNV_OFFSET, Record, fnv1a};
use crate::runtime::Runtime;
use crate::{Error, WorkloadInfo};

/// `cpu` as the registry lists it.
pub const WORKLOAD: WorkloadInfo = WorkloadInfo {
    name: "cpu",
    about: "independent game-tree searches, no sharing (SPEC CPU gobmk)",
    unit: "tasks",
    params: PARAMS,
    matrix_args: Some(&[("tasks", "120")]),
    endless_args: &[("tasks", "16777216")],
    served: false,
};

/// The parameters of `cpu`.
pub const PARAMS: &[ParamSpec] =
    &[THREADS, ParamSpec::int("tasks", "700", "game-tree searches in all, split evenly across the threads")];

/// The game value of tic-tac-toe: a draw.
const VALUE: i64 = 0;
/// Positions in the complete game tree, the empty board included.
const NODES: u64 = 549_946;

/// The eight lines of three, as bit masks over squares 0-8.
const LINES: [u16; 8] = [0o007, 0o070, 0o700, 0o111, 0o222, 0o444, 0o421, 0o124];
const ALL_SQUARES: u16 = 0o777;

/// The game value for the player to move, who holds `mine` (the opponent holds `theirs`);
/// counts every position reached in `nodes`.
fn negamax(mine: u16, theirs: u16, nodes: &mut u64) -> i64 {
    *nodes += 1;
    // The opponent's last move completed a line: no square of it is missing.
    if LINES.iter().any(|&line| line & !theirs == 0) {
        return -1;
    }
    let mut free = ALL_SQUARES & !(mine | theirs);
    if free == 0 {
        return 0;
    }
    let mut best = -1;
    while free != 0 {
        let square = free & free.wrapping_neg();
        free &= !square;
        best = best.max(-negamax(theirs, mine | square, nodes));
    }
    best
}

/// One task: the search from the empty board. Returns the game value and the node count.
fn task() -> (i64, u64) {
    // Opaque, so that the compiler cannot evaluate the search at compile time.
    let (mine, theirs) = core::hint::black_box((0, 0));
    let mut nodes = 0;
    let value = negamax(mine, theirs, &mut nodes);
    (value, nodes)
}

/// Runs `tasks` searches on `threads` threads and checks that each found a draw over the
/// whole tree.
pub fn run<R: Runtime>(rt: &R, params: &Params) -> Result<Record, Error> {
    let threads = common::threads(rt, params)?;
    let tasks = params.u64_in("tasks", 1..=1 << 24, "between 1 and 2^24 tasks")? as usize;
    // Each task's result, in a slot of its own: written by one thread, read after the join.
    let results: Vec<[AtomicU64; 2]> = (0..tasks).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect();

    let start = rt.now_ns();
    let per_thread = rt.parallel(threads, &|i| {
        let mine = common::share(tasks, threads, i);
        for slot in &results[mine.clone()] {
            let (value, nodes) = task();
            slot[0].store(value as u64, Ordering::Relaxed);
            slot[1].store(nodes, Ordering::Relaxed);
        }
        mine.len() as u64
    });
    let elapsed_ns = rt.now_ns() - start;

    let mut checksum = FNV_OFFSET;
    for (index, slot) in results.iter().enumerate() {
        let (value, nodes) = (slot[0].load(Ordering::Relaxed) as i64, slot[1].load(Ordering::Relaxed));
        if (value, nodes) != (VALUE, NODES) {
            return Err(Error::Check(format!(
                "task {index}: game value {value} and {nodes} nodes, expected {VALUE} and {NODES}"
            )));
        }
        checksum = fnv1a(fnv1a(checksum, value as u64), nodes);
    }
    Ok(Record {
        elapsed_ns,
        ops: tasks as u64,
        checksum,
        per_thread,
        ..common::record(rt, WORKLOAD.name, params, WORKLOAD.unit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_finds_a_draw_over_the_whole_tree() {
        assert_eq!(task(), (VALUE, NODES));
    }
}
