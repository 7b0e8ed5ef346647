//! The workloads in real guests on 1, 2 and 4 VCPUs and natively: every self-check passes,
//! and nbody's checksum is the same everywhere. Needs /dev/kvm (see e2e.rs).

mod common;

use common::kvm_available;

use std::path::PathBuf;
use std::process::Command;

use workloads::Record;

/// Small parameters: these tests check behaviour, not speed.
const SMALL: &[(&str, &[&str])] = &[
    ("cpu", &["tasks=8"]),
    ("nbody", &["bodies=64", "steps=20"]),
    ("locks", &["ops=2000"]),
    ("pipeline", &["items=2000"]),
    ("phases", &["rounds=3", "phase_ms=5"]),
];

/// Runs `tandem ARGS --json FILE` and returns the records it wrote.
fn records(mut args: Vec<String>, tag: &str) -> Vec<Record> {
    let json = std::env::temp_dir().join(format!("tandem-workloads-{}-{tag}.json", std::process::id()));
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.splice(split..split, ["--json".to_owned(), json.display().to_string()]);
    let output = Command::new(env!("CARGO_BIN_EXE_tandem")).args(&args).output().expect("cannot start tandem");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tandem {args:?} failed:\n{stdout}{stderr}");
    let records: Vec<Record> =
        serde_json::from_slice(&std::fs::read(&json).expect("no JSON written")).expect("bad JSON");
    std::fs::remove_file(PathBuf::from(&json)).unwrap();
    records
}

fn one(records: Vec<Record>) -> Record {
    assert_eq!(records.len(), 1, "one record per run");
    records.into_iter().next().unwrap()
}

fn argv(words: &[&str], params: &[&str]) -> Vec<String> {
    words.iter().chain(["--"].iter()).chain(params).map(|w| w.to_string()).collect()
}

#[test]
fn every_workload_passes_its_checks_in_the_guest_and_natively() {
    if !kvm_available() {
        return;
    }
    for (name, params) in SMALL {
        let native = one(records(argv(&["native", name, "--cpus", "2"], params), &format!("{name}-native")));
        assert_eq!(native.runtime, "native");
        for vcpus in ["1", "2", "4"] {
            let tag = format!("{name}-{vcpus}");
            let guest = one(records(argv(&["run", name, "--vcpus", vcpus, "--timeout", "120"], params), &tag));
            assert_eq!((guest.workload.as_str(), guest.runtime.as_str()), (*name, "guest"));
            assert_eq!(guest.cpus.to_string(), vcpus);
            // One thread per VCPU by default; a pipeline has at least two stages.
            let threads = vcpus.parse::<usize>().unwrap().max(if *name == "pipeline" { 2 } else { 1 });
            assert_eq!(guest.per_thread.len(), threads, "{name} on {vcpus} VCPUs");
            assert!(guest.ops > 0 && guest.elapsed_ns > 0, "{name}: {guest:?}");
            // cpu and nbody compute the same result for any thread count; the digests of locks
            // and pipeline depend on it (per-thread streams, number of stages).
            if matches!(*name, "cpu" | "nbody") {
                assert_eq!(guest.checksum, native.checksum, "{name} on {vcpus} VCPUs vs native");
            }
        }
    }
}

#[test]
fn nbody_checksum_is_identical_across_thread_counts_barriers_and_places() {
    if !kvm_available() {
        return;
    }
    let params = ["bodies=48", "steps=10"];
    let reference = one(records(argv(&["native", "nbody"], &[params[0], params[1], "threads=1"]), "nb-ref")).checksum;
    for (vcpus, threads, barrier) in [("1", "3", "spin"), ("2", "2", "block"), ("4", "4", "spin"), ("2", "5", "block")]
    {
        let (threads_arg, barrier_arg) = (format!("threads={threads}"), format!("barrier={barrier}"));
        let guest_params = [params[0], params[1], &threads_arg, &barrier_arg];
        let tag = format!("nb-{vcpus}-{threads}-{barrier}");
        let guest = one(records(argv(&["run", "nbody", "--vcpus", vcpus, "--timeout", "120"], &guest_params), &tag));
        assert_eq!(guest.checksum, reference, "{vcpus} VCPUs, {threads} threads, {barrier} barrier");
    }
}

#[test]
fn bad_workload_arguments_are_refused_before_boot() {
    let output = Command::new(env!("CARGO_BIN_EXE_tandem")).args(["run", "cpu", "--", "bogus=1"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad arguments for workload cpu") && stderr.contains("bogus"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_tandem")).args(["native", "nosuch"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn workloads_are_listed_with_their_parameters() {
    for args in [&["workloads"][..], &["run", "--list"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_tandem")).args(args).output().unwrap();
        assert!(output.status.success());
        let stdout = String::from_utf8_lossy(&output.stdout);
        for text in
            ["cpu", "nbody", "locks", "pipeline", "threads=", "barrier=spin|block", "locks=spin|pv", "pv_block_us="]
        {
            assert!(stdout.contains(text), "{args:?} lacks {text:?}:\n{stdout}");
        }
    }
}

#[test]
fn every_lock_family_does_the_same_work_in_the_guest_and_the_spinning_ones_natively() {
    if !kvm_available() {
        return;
    }
    let run = |words: &[&str], locks: &str| {
        let params = [&format!("locks={locks}"), "ops=20000"];
        let record = one(records(argv(words, &params), &format!("family-{}-{locks}", words[0])));
        assert_eq!(record.locks, locks);
        assert_eq!(record.lock_stats.expect("lock counters").acquisitions, record.ops);
        record
    };
    let guest = ["run", "locks", "--vcpus", "2", "--timeout", "120"];
    let spin = run(&guest, "spin");
    for locks in ["pv", "qspin", "pvqspin"] {
        assert_eq!(run(&guest, locks).checksum, spin.checksum, "{locks}: the same work as spin");
    }
    for locks in ["spin", "qspin"] {
        assert_eq!(run(&["native", "locks", "--cpus", "2"], locks).checksum, spin.checksum, "native {locks}");
    }
    let output =
        Command::new(env!("CARGO_BIN_EXE_tandem")).args(["native", "locks", "--", "locks=pv"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("natively only the spinning families run"), "{stderr}");
}

/// The lock counters of one 2-VCPU `locks` VM on one pCPU under credit, with the family
/// `locks`: each VCPU runs 30 ms slices while the other is preempted. With the lock held five
/// sixths of the time (cs=2000, think=400), nearly every slice ends inside a critical section;
/// held a fifth of the time (the defaults), a run of a few slices could end outside one each
/// time and never contend.
fn preempted_holder_stats(locks: &str) -> workloads::record::LockStats {
    let dir = std::env::temp_dir().join(format!("tandem-{locks}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, json) = (dir.join("pv.toml"), dir.join("pv.json"));
    let scenario = format!(
        "pcpus = 1\n[policy]\nname = \"credit\"\n[[vm]]\nname = \"a\"\nvcpus = 2\nworkload = \"locks\"\n\
         locks = \"{locks}\"\nargs = {{ ops = 20000, cs = 2000, think = 400 }}\n"
    );
    std::fs::write(&file, scenario).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["scenario", &file.display().to_string(), "--no-reference", "--json", &json.display().to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stats: workloads::record::LockStats =
        serde_json::from_value(result["vms"][0]["record"]["lock_stats"].clone()).expect("lock counters reported");
    assert_eq!(stats.acquisitions, 2 * 20_000, "{locks}");
    assert!(stats.spurious_wakeups <= stats.blocks, "{locks}: {stats:?}");
    stats
}

#[test]
fn pv_locks_take_their_slow_path_when_the_holder_is_preempted() {
    if !kvm_available() {
        return;
    }
    let pv = preempted_holder_stats("pv");
    assert!(pv.slow_paths > 0 && pv.directed_yields > 0, "{pv:?}");
    // The queued waiter behind a preempted VCPU blocks; its wait went slow, was hashed once and
    // woken once.
    let pvq = preempted_holder_stats("pvqspin");
    assert!(pvq.slow_paths > 0 && pvq.blocks > 0 && pvq.directed_yields == 0, "{pvq:?}");
    assert!(pvq.kicks <= pvq.slow_paths, "{pvq:?}");
}
