//! End-to-end tests: real guests booted by the real `tandem` binary under KVM.
//!
//! They need /dev/kvm and fail loudly without it, unless TANDEM_SKIP_KVM=1 says to skip them.

mod common;

use common::kvm_available;
use common::process::{Run, Tandem};

use std::time::Duration;

/// Runs `tandem ARGS`, killing it if it outlives `limit` (which fails the test).
fn tandem(args: &[&str], limit: Duration) -> Run {
    Tandem::start(args).finish(limit)
}

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn hello_brings_every_vcpu_online() {
    if !kvm_available() {
        return;
    }
    for vcpus in [1, 2, 4, 8] {
        let run = tandem(&["run", "hello", "--vcpus", &vcpus.to_string()], LIMIT);
        assert_eq!(run.status, Some(0), "{vcpus} VCPUs: {}", run.stderr);
        for id in 0..vcpus {
            let line = format!("[hello vcpu{id}] hello from VCPU {id} of {vcpus}\n");
            assert_eq!(run.stdout.matches(&line).count(), 1, "{vcpus} VCPUs, missing {line:?} in:\n{}", run.stdout);
        }
        assert!(run.stdout.contains(&format!("all {vcpus} VCPUs online")));
    }
}

#[test]
fn thread_runtime_selftest_passes() {
    if !kvm_available() {
        return;
    }
    for locks in workloads::LOCK_FAMILIES {
        for vcpus in [1, 2, 4, 8] {
            let (vcpus_arg, locks_arg) = (vcpus.to_string(), format!("locks={locks}"));
            let run = tandem(&["run", "selftest", "--vcpus", &vcpus_arg, "--", &locks_arg], Duration::from_secs(120));
            let what = format!("{locks}, {vcpus} VCPUs");
            assert_eq!(run.status, Some(0), "{what}: {}{}", run.stdout, run.stderr);
            assert!(run.stdout.contains("counters: 800000 under the mutex"), "{what}: {}", run.stdout);
            assert!(run.stdout.contains(&format!("2000 under the {locks} spinlock")), "{what}: {}", run.stdout);
            assert!(run.stdout.contains(&format!("all 10 checks passed on {vcpus} VCPUs")), "{what}: {}", run.stdout);
        }
    }
}

#[test]
fn vcpus_go_down_and_come_back_up() {
    if !kvm_available() {
        return;
    }
    for vcpus in [2, 4, 8] {
        let run = tandem(&["run", "updown", "--vcpus", &vcpus.to_string(), "--", "rounds=100"], LIMIT);
        assert_eq!(run.status, Some(0), "{vcpus} VCPUs: {}{}", run.stdout, run.stderr);
        let expected =
            format!("100 rounds: {} VCPU(s) started and stopped {} times in all", vcpus - 1, 100 * (vcpus - 1));
        assert!(run.stdout.contains(&expected), "{vcpus} VCPUs: {}", run.stdout);
    }
}

#[test]
fn stats_split_each_vcpus_time_into_run_ready_wait() {
    if !kvm_available() {
        return;
    }
    // Half a second of work: a host hiccup of a few ms does not move the shares much.
    let run = tandem(&["run", "nbody", "--vcpus", "2", "--stats", "--", "steps=4000", "bodies=256"], LIMIT);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    let rows: Vec<Vec<f64>> = run
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("vcpu"))
        .skip(1)
        .take_while(|line| line.starts_with(|c: char| c.is_ascii_digit()))
        .map(|line| line.split_whitespace().skip(1).take(3).map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{}", run.stdout);
    for row in &rows {
        let total: f64 = row.iter().sum();
        assert!(row.iter().all(|p| *p >= 0.0) && total <= 101.0, "{row:?}");
    }
    // VCPU 0 computes or spins at barriers from its start to the end, never blocked for long
    // (its start comes a little after the run's, more so on a loaded machine).
    assert!(rows[0][0] + rows[0][1] > 50.0 && rows[0][2] < 10.0, "{:?}", rows[0]);
}

/// Exits of `kind` over all VCPUs in the `--stats` table of `run`.
fn exits_of(run: &Run, kind: &str) -> u64 {
    let key = format!("{kind}=");
    run.stdout
        .lines()
        .skip_while(|line| !line.starts_with("vcpu"))
        .flat_map(str::split_whitespace)
        .filter_map(|word| word.strip_prefix(&key)?.parse::<u64>().ok())
        .sum()
}

#[test]
fn each_block_of_an_idle_vcpu_takes_one_kick() {
    if !kvm_available() {
        return;
    }
    // Four pipeline stages on four VCPUs: a stage whose queue runs empty or full blocks, and
    // its VCPU, idle, blocks in the monitor until the stage on the other side kicks it. With
    // more VCPUs than host CPUs a kicked VCPU can wait long for one; wakers meanwhile must
    // not kick it again (they once did, an exit each: three kicks per block, 9x slower).
    let run = tandem(&["run", "pipeline", "--vcpus", "4", "--stats", "--", "items=100000"], LIMIT);
    assert_eq!(run.status, Some(0), "{}{}", run.stdout, run.stderr);
    let (kicks, blocks) = (exits_of(&run, "kick"), exits_of(&run, "block"));
    assert!(blocks > 0, "no VCPU ever blocked:\n{}", run.stdout);
    // A kick that lands just before its block is consumed by a later one: a few spare.
    assert!(kicks <= blocks + blocks / 10 + 4, "{kicks} kicks for {blocks} blocks:\n{}", run.stdout);
}
#[test]
fn faults_are_reported_with_vector_and_address() {
    if !kvm_available() {
        return;
    }
    let cases: [(&[&str], &str); 5] = [
        (&["kind=page"], "VCPU 0 faulted: page fault (#PF) at rip 0x"),
        (&["kind=gp"], "VCPU 0 faulted: general protection (#GP) at rip 0x"),
        (&["kind=ud"], "VCPU 0 faulted: invalid opcode (#UD) at rip 0x"),
        (&["kind=div"], "VCPU 0 faulted: divide error (#DE) at rip 0x"),
        (&["kind=page", "vcpu=1"], "VCPU 1 faulted: page fault (#PF) at rip 0x"),
    ];
    for (args, expected) in cases {
        let mut argv = vec!["run", "fault", "--vcpus", "2", "--"];
        argv.extend_from_slice(args);
        let run = tandem(&argv, LIMIT);
        assert_eq!(run.status, Some(102), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: expected {expected:?} in {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "one clear line: {}", run.stderr);
    }
    let run = tandem(&["run", "fault"], LIMIT);
    assert!(run.stderr.contains("error code 0x4, address 0x8"), "user read of the null page: {}", run.stderr);
}

#[test]
fn panic_reports_location_and_message() {
    if !kvm_available() {
        return;
    }
    for (vcpus, on) in [("1", "0"), ("3", "2")] {
        let run = tandem(&["run", "panic", "--vcpus", vcpus, "--", &format!("vcpu={on}")], LIMIT);
        assert_eq!(run.status, Some(101), "{}", run.stderr);
        let expected = format!("guest panicked on VCPU {on}: src/programs/misbehave.rs:");
        assert!(run.stderr.contains(&expected), "{}", run.stderr);
        assert!(run.stderr.contains(&format!("deliberate panic on VCPU {on}")), "{}", run.stderr);
    }
}

#[test]
fn hangs_end_at_the_timeout() {
    if !kvm_available() {
        return;
    }
    for mode in ["spin", "block"] {
        let run = tandem(&["run", "hang", "--vcpus", "2", "--timeout", "1", "--", &format!("mode={mode}")], LIMIT);
        assert_eq!(run.status, Some(124), "{mode}: {}", run.stderr);
        assert!(run.stderr.contains("timed out after 1.0 s"), "{mode}: {}", run.stderr);
        assert!(run.elapsed < Duration::from_secs(10), "{mode}: stopping took {:?}", run.elapsed);
    }
}

#[test]
fn sigint_and_sigterm_stop_a_guest_that_does_not_end_when_asked_after_a_second() {
    if !kvm_available() {
        return;
    }
    for (signal, status, name) in [(libc::SIGINT, 130, "SIGINT"), (libc::SIGTERM, 143, "SIGTERM")] {
        let hang = Tandem::start(&["run", "hang", "--vcpus", "2", "--timeout", "0", "--", "mode=block"]);
        std::thread::sleep(Duration::from_millis(500));
        hang.signal(signal);
        let run = hang.finish(Duration::from_secs(10));
        assert_eq!(run.status, Some(status), "{name}: {}", run.stderr);
        assert!(run.stderr.contains(&format!("was stopped on {name}: asked to end, it had not")), "{}", run.stderr);
    }
}

#[test]
fn bad_hypercalls_are_refused_then_the_unanswerable_one_ends_the_vm() {
    if !kvm_available() {
        return;
    }
    let run = tandem(&["run", "badcall", "--vcpus", "2"], LIMIT);
    assert!(
        run.stdout.contains("all 14 bad hypercalls were refused with the right error, and reports are capped"),
        "{}",
        &run.stdout[..run.stdout.len().min(4000)]
    );
    assert_eq!(run.status, Some(102), "{}", run.stderr);
    assert!(run.stderr.contains("argument block at 0x8001000, outside guest memory"), "{}", run.stderr);
}

#[test]
fn guest_usage_errors_exit_64() {
    if !kvm_available() {
        return;
    }
    let run = tandem(&["run", "nosuch"], LIMIT);
    assert_eq!(run.status, Some(64));
    assert!(
        run.stdout.contains("unknown program \"nosuch\"; the guest has: cpu nbody locks pipeline phases kv hello"),
        "{}",
        run.stdout
    );
    let run = tandem(&["run", "hello", "--", "bogus=1"], LIMIT);
    assert_eq!(run.status, Some(64));
    assert!(run.stdout.contains("hello: unknown parameter \"bogus\" (takes none)"), "{}", run.stdout);
}

#[test]
fn a_kernel_of_ones_own_needs_no_program_name() {
    if !kvm_available() {
        return;
    }
    // A copy of the embedded guest under a program's name: the name is its command line's
    // first word, and its other arguments go to it unchecked.
    let dir = std::env::temp_dir().join(format!("tandem-e2e-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hello = dir.join("hello.elf");
    std::fs::write(&hello, tandem_kvm::image::DEFAULT_GUEST).unwrap();
    let run = tandem(&["run", "--kernel", hello.to_str().unwrap(), "--vcpus", "2"], LIMIT);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("[hello vcpu1] hello from VCPU 1 of 2"), "{}", run.stdout);
    let run = tandem(&["run", "--kernel", hello.to_str().unwrap(), "--", "bogus=1"], LIMIT);
    assert_eq!(run.status, Some(64), "the kernel itself refuses what it does not know: {}", run.stderr);
    let run = tandem(&["run", "--kernel", hello.to_str().unwrap(), "--", "locks=ticket"], LIMIT);
    assert_eq!(run.status, Some(1), "the guest runtime's parameters are checked: {}", run.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_kernel_images_are_refused_clearly() {
    let dir = std::env::temp_dir().join(format!("tandem-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_elf = dir.join("not-an-elf");
    std::fs::write(&not_elf, b"#!/bin/sh\necho hello\n").unwrap();
    let missing = dir.join("missing.elf");
    let host_elf = "/bin/true";
    // The embedded guest, its ABI note saying a version this monitor does not speak.
    let newer = dir.join("newer.elf");
    let mut guest = tandem_kvm::image::DEFAULT_GUEST.to_vec();
    let at = guest.windows(7).position(|w| w == pv_abi::note::NOTE_NAME).expect("the guest's note");
    guest[at + 8..at + 12].copy_from_slice(&(pv_abi::ABI_VERSION + 1).to_le_bytes());
    std::fs::write(&newer, guest).unwrap();
    let mismatch = format!(
        "built for tandem ABI version {}, this monitor speaks version {}",
        pv_abi::ABI_VERSION + 1,
        pv_abi::ABI_VERSION
    );
    let cases = [
        (not_elf.to_str().unwrap(), "not a usable guest kernel: not an ELF file"),
        (missing.to_str().unwrap(), "cannot read kernel image"),
        (host_elf, "not a tandem guest"),
        (newer.to_str().unwrap(), mismatch.as_str()),
    ];
    for (path, expected) in cases {
        let run = tandem(&["run", "hello", "--kernel", path], LIMIT);
        assert_eq!(run.status, Some(1), "{path}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{path}: expected {expected:?} in {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{path}: one line, not {}", run.stderr);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_command_lines_are_refused_clearly() {
    let cases: [(&[&str], i32, &str); 6] = [
        (&["run", "hello", "--vcpus", "0"], 2, "--vcpus"),
        (&["run", "hello", "--vcpus", "65"], 2, "--vcpus"),
        (&["run", "hello", "--timeout", "inf"], 2, "not a number of seconds"),
        (&["run"], 2, "<PROGRAM>"),
        (&["run", "hello", "--mem", "3"], 1, "even number of MiB"),
        (&["run", "hello", "--", "novalue"], 1, "is not key=value"),
    ];
    for (args, status, expected) in cases {
        let run = tandem(args, LIMIT);
        assert_eq!(run.status, Some(status), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: expected {expected:?} in {}", run.stderr);
    }
}

#[test]
fn run_help_documents_the_exit_statuses() {
    let run = tandem(&["run", "--help"], LIMIT);
    assert_eq!(run.status, Some(0));
    for text in ["--vcpus", "--mem", "--kernel", "--timeout", "101", "102", "124"] {
        assert!(run.stdout.contains(text), "help lacks {text:?}:\n{}", run.stdout);
    }
}

/// The record a run wrote with `--json`.
fn record_of(path: &std::path::Path) -> workloads::Record {
    let text = std::fs::read_to_string(path).unwrap();
    let mut records: Vec<workloads::Record> = serde_json::from_str(&text).unwrap();
    assert_eq!(records.len(), 1, "{text}");
    records.remove(0)
}

#[test]
fn an_application_of_ones_own_is_laid_out_built_run_and_compared() {
    if !kvm_available() {
        return;
    }
    let root = std::env::temp_dir().join(format!("tandem-app-{}", std::process::id()));
    let app = root.join("myapp");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let run = tandem(&["new", &path(&app)], LIMIT);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert!(tandem(&["new", &path(&app)], LIMIT).stderr.contains("not empty"), "an application is not overwritten");
    let build = Duration::from_secs(600);
    let run = tandem(&["build", &path(&app)], build);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    let elf = run.stdout.lines().last().expect("the ELF's path, last").to_owned();
    assert!(std::path::Path::new(&elf).is_file(), "{elf}");

    let json = root.join("record.json");
    // Little work per run: a spinning lock on 4 VCPUs over 2 busy pCPUs can collapse for seconds
    // (lock-holder preemption), which is what the lock families are measured on, not this test.
    for vcpus in ["1", "2", "4"] {
        for locks in ["spin", "pv"] {
            let locks_arg = format!("locks={locks}");
            let args = [
                "run",
                "--kernel",
                &elf,
                "--vcpus",
                vcpus,
                "--json",
                &path(&json),
                "--",
                &locks_arg,
                "rounds=10",
                "updates=100",
            ];
            let run = tandem(&args, LIMIT);
            assert_eq!(run.status, Some(0), "{vcpus} VCPUs, {locks}: {}", run.stderr);
            let record = record_of(&json);
            assert_eq!((record.workload.as_str(), record.locks.as_str()), ("myapp", locks));
            assert_eq!(record.cpus.to_string(), vcpus);
            assert_eq!(record.ops, record.per_thread.iter().sum::<u64>());
            assert!(run.stdout.contains("] myapp: ") && run.stdout.contains(" updates/s "), "{}", run.stdout);
        }
    }
    let run = tandem(&["run", "--kernel", &elf, "--", "bogus=1"], LIMIT);
    assert_eq!(run.status, Some(64), "its own parameters, its own errors: {}", run.stderr);

    // Two VMs of it in a scenario, each against its ideal.
    let scenario = app.join("two.toml");
    let relative = std::path::Path::new(&elf).strip_prefix(&app).expect("the ELF is in the crate").to_owned();
    let vm = |name: &str| {
        format!("[[vm]]\nname = \"{name}\"\nvcpus = 2\nkernel = \"{}\"\nargs = {{ rounds = 40 }}\n", relative.display())
    };
    std::fs::write(
        &scenario,
        format!("pcpus = 2\ntimeout_s = 60\n[policy]\nname = \"credit\"\n{}{}", vm("a"), vm("b")),
    )
    .unwrap();
    for policy in ["credit", "dynamic"] {
        let out = root.join(format!("{policy}.json"));
        let run = tandem(&["scenario", &path(&scenario), "--policy", policy, "--json", &path(&out)], LIMIT);
        assert_eq!(run.status, Some(0), "{policy}: {}", run.stderr);
        let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        for vm in result["vms"].as_array().unwrap() {
            assert!(vm["ratio"].as_f64().is_some_and(|ratio| ratio > 0.0), "{policy}: {vm}");
        }
    }

    // An application that panics is reported as a built-in one is.
    let main = app.join("src/main.rs");
    let text = std::fs::read_to_string(&main).unwrap();
    std::fs::write(
        &main,
        text.replace(
            "    let params = match",
            "    assert!(args.words().is_empty(), \"no arguments, please\");\n    let params = match",
        ),
    )
    .unwrap();
    let run = tandem(&["build", &path(&app)], build);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    let run = tandem(&["run", "--kernel", &elf, "--", "rounds=1"], LIMIT);
    assert_eq!(run.status, Some(101), "{}", run.stderr);
    assert!(run.stderr.contains("guest panicked on VCPU 0") && run.stderr.contains("src/main.rs:"), "{}", run.stderr);
    assert!(run.stderr.contains("no arguments, please"), "{}", run.stderr);

    // And one that faults.
    let null = "    // SAFETY: none: it reads page 0, which is not mapped, to fault.\n    \
                let _ = unsafe { core::ptr::read_volatile(8 as *const u64) };\n    let params = match";
    std::fs::write(&main, text.replace("    let params = match", null)).unwrap();
    let run = tandem(&["build", &path(&app)], build);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    let run = tandem(&["run", "--kernel", &elf], LIMIT);
    assert_eq!(run.status, Some(102), "{}", run.stderr);
    assert!(run.stderr.contains("VCPU 0 faulted: page fault") && run.stderr.contains("address 0x8"), "{}", run.stderr);
    std::fs::remove_dir_all(&root).unwrap();
}
