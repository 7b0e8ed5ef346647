//! What to boot: a guest's VCPUs, memory and command line, checked before anything boots,
//! so that a scenario file and `tandem run` refuse the same things with the same words.

use std::time::Duration;

use anyhow::bail;
use pv_abi::boot::CMDLINE_MAX;
use pv_abi::layout::{BOOT_STACK_SIZE, IMAGE_START, LARGE_PAGE_SIZE, MAX_MEM, MIN_HEAP, MIN_MEM};
use pv_abi::net::NET_AREA_SIZE;

use crate::net::NetConfig;

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
    /// Its NIC's backend and interface; `None` for no NIC.
    pub net: Option<NetConfig>,
}

impl VmConfig {
    /// Checks what a VM cannot be built with: VCPU count, memory size (with room for a
    /// NIC's area if it has one), command line length.
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
        // Even an empty image leaves no heap in less.
        let with_nic = IMAGE_START + MIN_HEAP + NET_AREA_SIZE + BOOT_STACK_SIZE;
        if self.net.is_some() && mem_size < with_nic {
            bail!(
                "a VM with a NIC needs at least {} MiB of guest memory, not {} (or no NIC: --net none)",
                with_nic.next_multiple_of(LARGE_PAGE_SIZE) >> 20,
                self.mem_mib
            );
        }
        if self.cmdline.len() > CMDLINE_MAX {
            bail!("the guest command line is {} bytes long; at most {CMDLINE_MAX} fit", self.cmdline.len());
        }
        Ok(())
    }
}

/// The embedded guest's programs that misbehave on purpose (see `tandem run --list`'s test
/// programs): a scenario may run them beside workloads, to show that a VM that faults,
/// panics, hangs, makes bad calls or floods the monitor ends alone and takes no more than its
/// share. They report no result, so they have no reference run and no ideal.
pub const HOSTILE_PROGRAMS: &[&str] = &["fault", "panic", "hang", "badcall", "storm"];

/// Which kernel a VM boots, for what the monitor can check of its command line. Every
/// tandem guest takes the guest runtime's parameters (`locks=`, the PV bounds), which are
/// always checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The embedded guest: a workload's own parameters are checked too.
    Embedded,
    /// A kernel of the user's: its other parameters go to it unchecked, and it reports its
    /// own errors.
    User,
}

/// The guest command line running `program` on `kernel` with `key=value` arguments `args`,
/// checked: one word each, and the parameters the monitor knows.
pub fn cmdline(program: &str, args: &[String], kernel: Kernel) -> anyhow::Result<String> {
    if program.is_empty() || program.contains(char::is_whitespace) {
        bail!("program name {program:?} must be one word");
    }
    for arg in args {
        if !arg.contains('=') || arg.starts_with('=') || arg.contains(char::is_whitespace) {
            bail!("program argument {arg:?} is not key=value");
        }
    }
    check_guest_args(args)?;
    if kernel == Kernel::Embedded {
        check_workload_args(program, args)?;
    }
    Ok(std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" "))
}

/// Checks the guest runtime's arguments, the only ones every tandem guest takes.
fn check_guest_args(args: &[String]) -> anyhow::Result<()> {
    let (guest_args, _) = workloads::split_guest_args(args.iter().map(String::as_str));
    workloads::Params::parse(workloads::GUEST_PARAMS, guest_args)
        .map_err(|error| anyhow::anyhow!("bad arguments for the guest runtime: {error}"))?;
    Ok(())
}

/// Checks a workload's own arguments; other programs check theirs.
fn check_workload_args(name: &str, args: &[String]) -> anyhow::Result<()> {
    let Some(info) = workloads::workload(name) else {
        return Ok(());
    };
    let (_, workload_args) = workloads::split_guest_args(args.iter().map(String::as_str));
    workloads::Params::parse(info.params, workload_args)
        .map_err(|error| anyhow::anyhow!("bad arguments for workload {name}: {error}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mem_mib: u64, net: Option<NetConfig>) -> VmConfig {
        VmConfig {
            name: "t".into(),
            vcpus: 1,
            mem_mib,
            cmdline: "hello".into(),
            timeout: Duration::from_secs(1),
            echo_console: false,
            net,
        }
    }

    #[test]
    fn a_vm_with_a_nic_needs_room_for_its_area_too() {
        assert!(config(4, None).check().is_ok());
        let error = config(4, Some(NetConfig::user())).check().unwrap_err().to_string();
        assert_eq!(error, "a VM with a NIC needs at least 6 MiB of guest memory, not 4 (or no NIC: --net none)");
        assert!(config(6, Some(NetConfig::user())).check().is_ok());
    }
}
