//! What to boot: a guest's VCPUs, memory and command line, checked before anything boots,
//! so that a scenario file and `tandem run` refuse the same things with the same words.

use std::time::Duration;

use anyhow::bail;
use pv_abi::boot::CMDLINE_MAX;
use pv_abi::layout::{LARGE_PAGE_SIZE, MAX_MEM, MIN_MEM};

/// What to run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Shown in console prefixes and messages.
    pub name: String,
    pub vcpus: u32,
    pub mem_mib: u64,
    /// The guest's command line: program name and `key=value` arguments.
    pub cmdline: String,
    /// The VM is stopped if it runs longer.
    pub timeout: Duration,
    /// Print guest console lines (prefixed with VM and VCPU) on stdout.
    pub echo_console: bool,
}

impl VmConfig {
    /// Checks what a VM cannot be built with: VCPU count, memory size, command line length.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.vcpus == 0 || self.vcpus as usize > pv_abi::MAX_VCPUS {
            bail!("a VM has 1 to {} VCPUs, not {}", pv_abi::MAX_VCPUS, self.vcpus);
        }
        let mem_size = self.mem_mib << 20;
        if !(MIN_MEM..=MAX_MEM).contains(&mem_size) || !mem_size.is_multiple_of(LARGE_PAGE_SIZE) {
            bail!(
                "guest memory must be an even number of MiB from {} to {}, not {}",
                MIN_MEM >> 20,
                MAX_MEM >> 20,
                self.mem_mib
            );
        }
        if self.cmdline.len() > CMDLINE_MAX {
            bail!("the guest command line is {} bytes long; at most {CMDLINE_MAX} fit", self.cmdline.len());
        }
        Ok(())
    }
}

/// The guest command line running `program` with `key=value` arguments `args`, checked:
/// one word each, and for a workload its parameters and the guest runtime's.
pub fn cmdline(program: &str, args: &[String]) -> anyhow::Result<String> {
    if program.is_empty() || program.contains(char::is_whitespace) {
        bail!("program name {program:?} must be one word");
    }
    for arg in args {
        if !arg.contains('=') || arg.starts_with('=') || arg.contains(char::is_whitespace) {
            bail!("program argument {arg:?} is not key=value");
        }
    }
    check_workload_args(program, args)?;
    Ok(std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" "))
}

/// Checks a workload's arguments (and the guest runtime's); other programs check their own.
fn check_workload_args(name: &str, args: &[String]) -> anyhow::Result<()> {
    let Some(info) = workloads::WORKLOADS.iter().find(|w| w.name == name) else {
        return Ok(());
    };
    let (guest_args, workload_args) = workloads::split_guest_args(args.iter().map(String::as_str));
    workloads::Params::parse(workloads::GUEST_PARAMS, guest_args)
        .and_then(|_| workloads::Params::parse(info.params, workload_args))
        .map_err(|error| anyhow::anyhow!("bad arguments for workload {name}: {error}"))?;
    Ok(())
}
