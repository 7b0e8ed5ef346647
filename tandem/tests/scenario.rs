//! End-to-end tests of scenarios: several VMs at once under each policy, on real KVM.

mod common;

use std::path::Path;
use std::process::Command;

use sched::PolicyKind;
use tandem_core::host::available_cores;
use tandem_core::results::{References, ScenarioResult};
use tandem_core::scenario::Scenario;
use tandem_kvm::image::DEFAULT_GUEST;
use tandem_kvm::open_kvm;
use tandem_kvm::runner::{measure_references, run_scenario};

/// Two small VMs on (at most) 2 pCPUs: a barrier-synchronized one and an independent one,
/// both checking their own results.
const TWO_VMS: &str = r#"
pcpus = 2
timeout_s = 120

[policy]
name = "credit"
slice_ms = 5

[[vm]]
name = "sync"
vcpus = 2
workload = "nbody"
args = { bodies = 48, steps = 300, barrier = "spin" }

[[vm]]
name = "indep"
vcpus = 2
workload = "cpu"
args = { tasks = 40 }
"#;

fn two_vms() -> Scenario {
    let pcpus = available_cores().len().min(2);
    Scenario::parse(Path::new("two-vms.toml"), &TWO_VMS.replace("pcpus = 2", &format!("pcpus = {pcpus}"))).unwrap()
}

/// Checks that no two spans of the trace overlap on one pCPU.
fn assert_one_vcpu_per_pcpu(result: &ScenarioResult) {
    for pcpu in 0..result.cores.len() as u32 {
        let mut spans: Vec<_> = result.dispatch.trace.iter().filter(|s| s.pcpu == Some(pcpu)).collect();
        spans.sort_by_key(|s| s.start_ns);
        for pair in spans.windows(2) {
            assert!(pair[0].end_ns <= pair[1].start_ns, "{} overlaps on pCPU {pcpu}: {pair:?}", result.policy);
        }
    }
}

#[test]
fn two_vms_complete_under_every_policy_with_no_gate_violation() {
    if !common::kvm_available() {
        return;
    }
    let kvm = open_kvm().unwrap();
    let base = two_vms();
    for policy in PolicyKind::ALL {
        let scenario = base.with(Some(policy), None).unwrap();
        let result = run_scenario(&kvm, DEFAULT_GUEST, &scenario, None).unwrap();
        for vm in &result.vms {
            assert!(vm.ok, "{policy}: {}", vm.outcome);
            let record = vm.record.as_ref().expect("a workload record");
            assert!(record.ops > 0, "{policy}: {record:?}");
        }
        assert_eq!(result.dispatch.gate_violations, 0, "{policy}");
        if policy != PolicyKind::Host {
            assert!(result.dispatch.trace.iter().all(|span| span.pcpu.is_some()), "{policy}: ungated span");
            assert_one_vcpu_per_pcpu(&result);
            assert!(result.dispatch.decision_ns.count > 0, "{policy}: no decisions measured");
        }
    }
}

#[test]
fn ideal_results_come_from_a_reference_run_alone() {
    if !common::kvm_available() {
        return;
    }
    let kvm = open_kvm().unwrap();
    let scenario = two_vms();
    let mut references = References::default();
    measure_references(&kvm, DEFAULT_GUEST, &scenario, &mut references, false).unwrap();
    let result = run_scenario(&kvm, DEFAULT_GUEST, &scenario, Some(&references)).unwrap();
    for vm in &result.vms {
        let (ideal, ratio) = (vm.ideal_rate.unwrap(), vm.ratio.unwrap());
        assert!(ideal > 0.0 && ratio > 0.0, "{}: ideal {ideal}, ratio {ratio}", vm.name);
        assert!((vm.rate().unwrap() / ideal - ratio).abs() < 1e-9);
    }
    let fairness = result.fairness.unwrap();
    assert!(fairness > 0.0 && fairness <= 1.0 + 1e-12, "{fairness}");
}

#[test]
fn the_scenario_command_reports_a_bad_file_clearly_and_writes_json_and_a_trace() {
    let dir = std::env::temp_dir().join(format!("tandem-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, TWO_VMS.replace("vcpus = 2\nworkload = \"cpu\"", "vcpus = 0\nworkload = \"cpu\"")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tandem")).arg("scenario").arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}:17: `vm.vcpus`: a VM has 1 to 64 VCPUs", bad.display())), "{stderr}");

    if !common::kvm_available() {
        return;
    }
    let good = dir.join("good.toml");
    std::fs::write(&good, TWO_VMS).unwrap();
    let (json, trace) = (dir.join("out.json"), dir.join("trace.json"));
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["scenario", "--policy", "cosched-relaxed", "--pcpus", "1", "--no-reference", "--json"])
        .args([&json, &good])
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("policy cosched-relaxed on 1 pCPUs") && stdout.contains("%CSTP"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(json["vms"].as_array().unwrap().len(), 2);
    assert_eq!(json["dispatch"]["gate_violations"], 0);
    let trace: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let slices = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count();
    assert!(slices >= 4, "{slices} trace slices");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_guest_follows_the_grant_as_its_parallelism_changes() {
    if !common::kvm_available() {
        return;
    }
    // One 4-VCPU VM alone on 2 pCPUs, 4 rounds of a 4-thread and a 1-thread phase of 150 ms:
    // under `dynamic` its grant is 2 in each parallel phase and 1 in each serial one.
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/dynamic/phases.toml")).unwrap();
    let text = text.replace("rounds = 20, phase_ms = 200", "rounds = 4, phase_ms = 150");
    let scenario = Scenario::parse(Path::new("phases.toml"), &text).expect("2 host CPUs");
    let result = run_scenario(&open_kvm().unwrap(), DEFAULT_GUEST, &scenario, None).unwrap();
    assert!(result.vms[0].ok, "{}", result.vms[0].outcome);
    // 2 -> 1 in each serial phase and back in each later parallel one: 7 changes, each seen
    // through to the VCPUs going down or up.
    let changes = result.dispatch.reconfiguration_ns.count;
    assert!(changes >= 6, "{changes} grant changes followed");
    assert_eq!(result.dispatch.gate_violations, 0);
}

#[test]
fn vms_of_a_scenario_may_boot_kernels_of_their_own() {
    if !common::kvm_available() {
        return;
    }
    // A kernel file of the VM's own: here a copy of the embedded guest, whose name is the
    // program it runs when the scenario names none.
    let dir = std::env::temp_dir().join(format!("tandem-own-kernel-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("kernels")).unwrap();
    std::fs::write(dir.join("kernels/cpu.elf"), DEFAULT_GUEST).unwrap();
    let pcpus = available_cores().len().min(2);
    let text = format!(
        "pcpus = {pcpus}\ntimeout_s = 120\n[policy]\nname = \"credit\"\n\
         [[vm]]\nname = \"own\"\nvcpus = 2\nkernel = \"kernels/cpu.elf\"\nargs = {{ tasks = 40 }}\nlocks = \"pv\"\n\
         [[vm]]\nname = \"embedded\"\nvcpus = 2\nworkload = \"cpu\"\nargs = {{ tasks = 40 }}\n"
    );
    let scenario = Scenario::parse(&dir.join("own.toml"), &text).unwrap();
    let kvm = open_kvm().unwrap();
    let mut references = References::default();
    measure_references(&kvm, DEFAULT_GUEST, &scenario, &mut references, false).unwrap();
    let result = run_scenario(&kvm, DEFAULT_GUEST, &scenario, Some(&references)).unwrap();
    for vm in &result.vms {
        assert!(vm.ok, "{}: {}", vm.name, vm.outcome);
        let record = vm.record.as_ref().expect("a result record");
        assert_eq!((record.workload.as_str(), record.ops), ("cpu", 40), "{}", vm.name);
        assert!(vm.ratio.is_some_and(|ratio| ratio > 0.0), "{}: a ratio to its ideal", vm.name);
    }
    assert_eq!(result.vms[0].record.as_ref().unwrap().locks, "pv", "the kernel got its arguments");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigint_during_compare_stops_within_two_seconds_and_writes_the_runs_that_finished() {
    if !common::kvm_available() {
        return;
    }
    let json = std::env::temp_dir().join(format!("tandem-interrupted-{}.json", std::process::id()));
    let compare = common::process::Tandem::start(&[
        "compare",
        "--workloads",
        "cpu",
        "--overcommit",
        "1",
        "--locks",
        "spin",
        "--policies",
        "credit",
        "--runs",
        "100",
        "--json",
        json.to_str().unwrap(),
    ]);
    std::thread::sleep(std::time::Duration::from_secs(6));
    let signalled = std::time::Instant::now();
    compare.signal(libc::SIGINT);
    let run = compare.finish(std::time::Duration::from_secs(60));
    let stopping = signalled.elapsed();
    assert_eq!(run.status, Some(130), "{}", run.stderr);
    assert!(stopping < std::time::Duration::from_secs(2), "stopping took {stopping:?}");
    assert!(run.stderr.contains("tandem: interrupted by SIGINT"), "{}", run.stderr);
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    assert_eq!(written["interrupted_by"], "SIGINT");
    let runs = written["runs"].as_array().unwrap();
    assert!(!runs.is_empty() && runs.len() < 100, "{} runs", runs.len());
    for run in runs {
        assert!(run["vms"].as_array().unwrap().iter().all(|vm| vm["ok"] == true), "an unfinished run: {run}");
    }
    assert_eq!(written["cells"][0]["ratios"].as_array().unwrap().len(), runs.len());
}

/// Two `nbody` VMs (blocking barriers, so that no spinning convoy muddles the figures) and a
/// third 2-VCPU VM running `third` with `args`, on (at most) 2 pCPUs under `credit`.
fn beside_two_nbody(third: &str, args: &str, timeout_s: u32) -> Scenario {
    let pcpus = available_cores().len().min(2);
    let nbody = |name: &str| {
        format!(
            "[[vm]]\nname = \"{name}\"\nvcpus = 2\nworkload = \"nbody\"\nargs = {{ steps = 1500, barrier = \"block\" }}\n"
        )
    };
    let text = format!(
        "pcpus = {pcpus}\ntimeout_s = {timeout_s}\n[policy]\nname = \"credit\"\n{}{}\
         [[vm]]\nname = \"third\"\nvcpus = 2\nworkload = \"{third}\"\nargs = {{ {args} }}\n",
        nbody("nbody1"),
        nbody("nbody2")
    );
    Scenario::parse(Path::new(&format!("beside-{third}.toml")), &text).unwrap()
}

/// pCPUs' worth of time a VM's VCPUs ran over its life.
fn pcpus_used(vm: &tandem_core::results::VmResult) -> f64 {
    vm.vcpu_times.iter().map(|times| times.run_ns).sum::<u64>() as f64 / 1e9 / vm.elapsed_s
}

#[test]
fn a_storm_vm_gets_no_more_than_its_share_and_the_good_vms_run_on() {
    if !common::kvm_available() {
        return;
    }
    let kvm = open_kvm().unwrap();
    let good = beside_two_nbody("phases", "rounds = 10, phase_ms = 100", 120);
    let storm = beside_two_nbody("storm", "ms = 2000", 120);
    let mut references = References::default();
    measure_references(&kvm, DEFAULT_GUEST, &good, &mut references, false).unwrap();
    let beside_good = run_scenario(&kvm, DEFAULT_GUEST, &good, Some(&references)).unwrap();
    let beside_storm = run_scenario(&kvm, DEFAULT_GUEST, &storm, Some(&references)).unwrap();
    for result in [&beside_good, &beside_storm] {
        assert!(result.vms.iter().all(|vm| vm.ok), "{:?}", result.vms.iter().map(|vm| &vm.outcome).collect::<Vec<_>>());
        assert_eq!(result.dispatch.gate_violations, 0);
    }
    let (good_third, storm_vm) = (&beside_good.vms[2], &beside_storm.vms[2]);
    assert!(storm_vm.ratio.is_none() && storm_vm.record.is_none(), "a storm has no result");
    // Its fair share is a third of the pCPUs; credit lends it idle time, never another's.
    let share = storm_vm.fair_share;
    assert!(
        pcpus_used(storm_vm) <= share * 1.15,
        "storm used {:.2} pCPUs of a share of {share:.2}",
        pcpus_used(storm_vm)
    );
    for (beside_good, beside_storm) in beside_good.vms[..2].iter().zip(&beside_storm.vms[..2]) {
        let (good, stormy) = (beside_good.ratio.unwrap(), beside_storm.ratio.unwrap());
        assert!(
            stormy >= good * 0.6,
            "{}: {good:.2} of its ideal beside phases, {stormy:.2} beside storm",
            beside_good.name
        );
    }
    eprintln!(
        "nbody beside phases {:.2} {:.2}, beside storm {:.2} {:.2}; third VM used {:.2} / {:.2} pCPUs (share {share:.2})",
        beside_good.vms[0].ratio.unwrap(),
        beside_good.vms[1].ratio.unwrap(),
        beside_storm.vms[0].ratio.unwrap(),
        beside_storm.vms[1].ratio.unwrap(),
        pcpus_used(good_third),
        pcpus_used(storm_vm)
    );
}

#[test]
fn a_vm_that_faults_panics_or_hangs_ends_alone_in_its_row() {
    if !common::kvm_available() {
        return;
    }
    let kvm = open_kvm().unwrap();
    for (program, args, says) in [
        ("fault", "kind = \"page\"", "VCPU 0 faulted: page fault"),
        ("panic", "vcpu = 1", "guest panicked on VCPU 1"),
        ("badcall", "", "outside guest memory"),
        ("hang", "mode = \"spin\"", "timed out after 15.0 s"),
    ] {
        let scenario = beside_two_nbody(program, args, 15);
        let result = run_scenario(&kvm, DEFAULT_GUEST, &scenario, None).unwrap();
        let third = &result.vms[2];
        assert!(!third.ok && third.outcome.contains(says), "{program}: {}", third.outcome);
        for vm in &result.vms[..2] {
            assert!(vm.ok && vm.record.is_some(), "{program}: {}: {}", vm.name, vm.outcome);
        }
        assert_eq!(result.dispatch.gate_violations, 0, "{program}");
    }
}

#[test]
fn a_scenario_past_the_hosts_memory_is_refused_before_any_vm_starts() {
    if !common::kvm_available() {
        return;
    }
    let host_mib = tandem_core::host::memory_bytes().unwrap() >> 20;
    let vms = host_mib / 3072 + 1;
    let mut text = String::from("pcpus = 1\n[policy]\nname = \"credit\"\n");
    for vm in 0..vms {
        text += &format!("[[vm]]\nname = \"vm{vm}\"\nvcpus = 1\nworkload = \"cpu\"\nmem_mib = 3072\n");
    }
    let file = std::env::temp_dir().join(format!("tandem-too-big-{}.toml", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let run = common::process::Tandem::start(&["scenario", file.to_str().unwrap(), "--no-reference"])
        .finish(std::time::Duration::from_secs(30));
    std::fs::remove_file(&file).unwrap();
    assert_eq!(run.status, Some(1), "{}", run.stderr);
    let expected =
        format!("its VMs have {} MiB of guest memory in all, more than this host's {host_mib} MiB", vms * 3072);
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(run.stdout.is_empty() && run.elapsed < std::time::Duration::from_secs(5), "{run:?}", run = run.stdout);
}

#[test]
fn sigint_during_a_sweep_writes_the_points_that_finished_as_incomplete() {
    let out = std::env::temp_dir().join(format!("tandem-sweep-interrupted-{}", std::process::id()));
    let sweep = common::process::Tandem::start(&[
        "sweep",
        "--pcpus",
        "2,8,32",
        "--overcommit",
        "1,2,3,4",
        "--duration",
        "2",
        "--jobs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    sweep.signal(libc::SIGINT);
    let run = sweep.finish(std::time::Duration::from_secs(60));
    assert_eq!(run.status, Some(130), "{}", run.stderr);
    assert!(run.stderr.contains("interrupted by SIGINT: "), "{}", run.stderr);
    let points: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep-incomplete.json")).unwrap()).unwrap();
    assert!(!out.join("sweep.json").exists(), "an interrupted sweep is not written as the whole grid");
    std::fs::remove_dir_all(&out).unwrap();
    let points = points.as_array().unwrap().len();
    assert!(points < 480, "{points} points: the sweep was not interrupted");
}

#[test]
fn sigterm_during_a_simulation_ends_it_at_once_with_143() {
    let file = std::env::temp_dir().join(format!("tandem-long-sim-{}.toml", std::process::id()));
    let endless = "pcpus = 2\n[policy]\nname = \"credit\"\n[[vm]]\nname = \"a\"\nvcpus = 2\nworkload = \"nbody\"\n\
                   args = { steps = 1000000000 }\n[sim]\nduration_s = 86400\n";
    std::fs::write(&file, endless).unwrap();
    let sim = common::process::Tandem::start(&["sim", file.to_str().unwrap()]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let signalled = std::time::Instant::now();
    sim.signal(libc::SIGTERM);
    let run = sim.finish(std::time::Duration::from_secs(30));
    std::fs::remove_file(&file).unwrap();
    assert_eq!(run.status, Some(143), "{}", run.stderr);
    assert!(signalled.elapsed() < std::time::Duration::from_secs(2));
    assert!(run.stderr.contains("interrupted by SIGTERM: nothing had finished"), "{}", run.stderr);
}
