//! The TAP backend: the guest's frames go to an existing TAP device of the host, and the
//! device's frames to the guest, copied both ways. The device is the host's to set up
//! (`ip tuntap add NAME mode tap`, an address or a bridge); the monitor only attaches to it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, ensure};
use pv_abi::net::NET_SLOTS;

use crate::net::nic::{Nic, frame_buffer};
use crate::net::wait::{READ, Token, WaitSet};

/// Longest frame read from the device: a device with a larger MTU than the guest's may
/// hand longer frames, which are read whole and dropped rather than cut.
const READ_MAX: usize = 64 << 10;

#[derive(Debug)]
pub struct Tap {
    file: File,
    from_guest: Box<[u8]>,
    from_tap: Box<[u8]>,
    token: Option<Token>,
}

impl Tap {
    /// Attaches to TAP device `ifname`, nonblocking, frames without a packet-information
    /// header.
    pub fn open(ifname: &str) -> anyhow::Result<Tap> {
        // TUNSETIFF would create a missing device (as root); the monitor only attaches.
        ensure!(
            Path::new("/sys/class/net").join(ifname).exists(),
            "TAP device {ifname} does not exist (create it first, e.g. `ip tuntap add {ifname} mode tap`)"
        );
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .context("cannot open /dev/net/tun for a TAP device")?;
        // SAFETY: an all-zero `ifreq` is a valid one: an empty name and zero flags.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (to, from) in request.ifr_name.iter_mut().zip(ifname.bytes()) {
            *to = from as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the `ifreq` passed, which lives across the call;
        // `core` checked the name to be at most 15 bytes, so it ends with a NUL.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &raw mut request) } < 0 {
            let error = std::io::Error::last_os_error();
            anyhow::bail!("cannot attach to TAP device {ifname}: {error} (is it a TAP device this user may use?)");
        }
        Ok(Tap { file, from_guest: frame_buffer(), from_tap: vec![0; READ_MAX].into_boxed_slice(), token: None })
    }

    pub fn interest(&mut self, waits: &mut WaitSet) {
        self.token = Some(waits.add(self.file.as_raw_fd(), READ));
    }

    /// Copies up to a ring's worth of frames each way; whether any moved.
    pub fn pump(&mut self, nic: &mut Nic, waits: &WaitSet) -> bool {
        let mut moved = false;
        for _ in 0..NET_SLOTS {
            let Some(len) = nic.take_tx(&mut self.from_guest) else {
                break;
            };
            // A TAP device takes a whole frame or none.
            if self.file.write(&self.from_guest[..len]).is_err() {
                nic.counters().tx_dropped();
            }
            moved = true;
        }
        if self.token.take().is_some_and(|token| waits.ready(token, READ)) {
            for _ in 0..NET_SLOTS {
                match self.file.read(&mut self.from_tap) {
                    Ok(len) if len > 0 => {
                        // Dropped (and counted) if the guest has no buffer posted.
                        nic.deliver(&self.from_tap[..len]);
                        moved = true;
                    }
                    _ => break,
                }
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_named_with_how_to_make_one() {
        let error = Tap::open("tandem-none0").unwrap_err().to_string();
        assert_eq!(
            error,
            "TAP device tandem-none0 does not exist (create it first, e.g. `ip tuntap add tandem-none0 mode tap`)"
        );
    }

    #[test]
    fn a_device_that_is_not_a_tap_device_is_refused() {
        // Every Linux host has a loopback device, and it is no TAP device.
        if Path::new("/dev/net/tun").exists() {
            let error = Tap::open("lo").unwrap_err().to_string();
            assert!(error.starts_with("cannot attach to TAP device lo: "), "{error}");
        }
    }
}
