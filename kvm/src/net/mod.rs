//! The paravirtual NIC's monitor side (see `pv_abi::net` for the contract): the device over
//! guest memory, its backends, and the thread that runs them.
//!
//! - `nic`: the NIC area's rings, every index and descriptor read once and checked ([`check`],
//!   pure, public for the fuzz targets) before use; a breach is the NIC's fault, which ends the VM;
//! - `worker`: the backend thread (poll while traffic flows, then sleep in `poll(2)` with the
//!   guest told to notify), its handle, and what it needs of its VM ([`VmLink`]);
//! - `backend`: one enum over the two backends, `user` (user-mode networking: a host-side
//!   smoltcp stack as the guest's gateway, host ports forwarded to the guest) and `tap` (an
//!   existing TAP device); an enum, since both are known here and a round calls into one
//!   many times a second;
//! - `doorbell`, `wait`: the eventfd a guest's `NetNotify` rings, and `poll(2)`;
//! - `stats`: what the NIC did ([`NicStats`]).
//!
//! Which uses which: `worker` uses `backend`, `nic`, `doorbell`, `wait`, `stats`; `backend`
//! uses `user`, `tap`, `nic`, `wait`; `user` and `tap` use `nic` and `wait`; `nic` uses
//! `check` and `stats`; `check`, `doorbell`, `wait` and `stats` none of the others.

mod backend;
pub mod check;
mod doorbell;
mod nic;
mod stats;
mod tap;
mod user;
mod wait;
mod worker;

#[cfg(test)]
mod tests;

pub use nic::{area_addr, net_info};
pub use stats::NicStats;
pub use worker::{BackendThread, NetDevice, NetHandle, VmLink};
