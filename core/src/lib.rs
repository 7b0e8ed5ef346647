//! tandem's core, the floor that both the KVM side and the simulator stand on: no KVM, no
//! threads, no command line.
//!
//! - [`scenario`]: which pCPUs, which policy, which VMs running what (and its file format);
//! - [`experiment`]: experiments as values: the comparison's matrix and the sweep's grid;
//! - [`guest`]: what to boot, checked alike for `tandem run` and scenario files;
//! - [`results`]: each VM's result against its ideal, utilization and fairness, for real and
//!   simulated runs alike, and the reference rates behind the ideals;
//! - [`net`]: a VM's network (`--net`, in QEMU's vocabulary);
//! - [`metrics`]: what runs report (VCPU times in esxtop's terms, the dispatcher's figures,
//!   the trace);
//! - [`stats`]: medians, percentiles, Jain's index;
//! - [`validation`]: real against simulated results, and how far they agree;
//! - [`sim_config`]: what a simulation is told beyond the scenario (its costs);
//! - [`host`]: the host CPUs a scenario may use;
//! - [`live`]: what a running monitor serves on its live socket, and the rates between two
//!   snapshots (`tandem top`).

pub mod experiment;
pub mod guest;
pub mod host;
pub mod live;
pub mod metrics;
pub mod net;
pub mod results;
pub mod scenario;
pub mod sim_config;
pub mod stats;
pub mod validation;
