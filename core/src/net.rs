//! A VM's network, in QEMU's vocabulary: `user` (user-mode networking: host ports forwarded
//! to the guest, no root, no set-up; the default), `tap` (an existing TAP device) or `none`.
//!
//! ```text
//! user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT]...
//! tap,ifname=NAME[,ip=A.B.C.D/N][,gateway=A.B.C.D]
//! none
//! ```
//!
//! A forward's host address defaults to 127.0.0.1 (QEMU's to every address: a monitor should
//! not open a guest to the network unasked). Its guest address, if given, must be the guest's.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use anyhow::{Context, bail, ensure};

/// The guest's MAC address (QEMU's default).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The guest's address under user-mode networking (QEMU's).
pub const USER_GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The monitor's side of the user-mode wire: the guest's gateway (QEMU's).
pub const USER_GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The prefix length of the user-mode network.
pub const USER_PREFIX_LEN: u8 = 24;

/// A VM's network: its backend and the guest's interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub backend: NetBackend,
    pub guest: GuestInterface,
}

/// Where the guest's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// User-mode networking: the monitor accepts host connections and carries them to the
    /// guest.
    User { forwards: Vec<HostForward> },
    /// An existing TAP device.
    Tap { ifname: String },
}

/// A host TCP address whose connections go to a guest port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostForward {
    pub host: SocketAddrV4,
    pub guest_port: u16,
}

/// The guest's interface configuration, handed over in the boot info.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestInterface {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl GuestInterface {
    /// The guest's interface under user-mode networking.
    pub const USER: GuestInterface = GuestInterface {
        mac: GUEST_MAC,
        ip: USER_GUEST_IP,
        prefix_len: USER_PREFIX_LEN,
        gateway: Some(USER_GATEWAY_IP),
    };
}

impl NetConfig {
    /// User-mode networking with no forwards: what a VM gets unless told otherwise.
    pub fn user() -> NetConfig {
        Self::user_forwarding(Vec::new())
    }

    /// User-mode networking with `forwards`.
    pub fn user_forwarding(forwards: Vec<HostForward>) -> NetConfig {
        NetConfig { backend: NetBackend::User { forwards }, guest: GuestInterface::USER }
    }

    /// Parses a `--net` value; `None` for `none`.
    pub fn parse(text: &str) -> anyhow::Result<Option<NetConfig>> {
        let mut parts = text.split(',');
        let kind = parts.next().unwrap_or_default();
        let options: Vec<(&str, &str)> = parts
            .map(|part| part.split_once('=').with_context(|| format!("`{part}` in --net {text} is not key=value")))
            .collect::<anyhow::Result<_>>()?;
        match kind {
            "none" => {
                ensure!(options.is_empty(), "--net none takes no options");
                Ok(None)
            }
            "user" => {
                let mut forwards = Vec::new();
                for (key, value) in options {
                    ensure!(key == "hostfwd", "--net user takes only hostfwd=, not `{key}`");
                    forwards.push(HostForward::parse(value, USER_GUEST_IP)?);
                }
                let taken = |forward: &HostForward| forwards.iter().filter(|f| f.host == forward.host).count() > 1;
                if let Some(twice) = forwards.iter().find(|forward| taken(forward)) {
                    bail!("host address {} is forwarded twice", twice.host);
                }
                Ok(Some(NetConfig::user_forwarding(forwards)))
            }
            "tap" => {
                let mut ifname = None;
                let mut guest = GuestInterface::USER;
                guest.gateway = None;
                for (key, value) in options {
                    match key {
                        "ifname" => ifname = Some(check_ifname(value)?),
                        "ip" => (guest.ip, guest.prefix_len) = parse_cidr(value)?,
                        "gateway" => guest.gateway = Some(parse_ip(value)?),
                        _ => bail!("--net tap takes ifname=, ip= and gateway=, not `{key}`"),
                    }
                }
                let ifname = ifname.context("--net tap needs ifname=NAME (an existing TAP device)")?;
                Ok(Some(NetConfig { backend: NetBackend::Tap { ifname }, guest }))
            }
            _ => bail!("--net is user[,hostfwd=...], tap,ifname=NAME or none, not `{text}`"),
        }
    }
}

impl HostForward {
    /// Parses `tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`; the guest address, if given,
    /// must be `guest_ip`.
    fn parse(text: &str, guest_ip: Ipv4Addr) -> anyhow::Result<HostForward> {
        let bad = || format!("hostfwd={text} is not tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT");
        let rest = text.strip_prefix("tcp:").with_context(|| format!("{}: only tcp is forwarded", bad()))?;
        let (host, guest) = rest.split_once('-').with_context(bad)?;
        let (host_addr, host_port) = host.rsplit_once(':').with_context(bad)?;
        let (guest_addr, guest_port) = guest.rsplit_once(':').with_context(bad)?;
        let host_ip = if host_addr.is_empty() { Ipv4Addr::LOCALHOST } else { parse_ip(host_addr)? };
        if !guest_addr.is_empty() && parse_ip(guest_addr)? != guest_ip {
            bail!("hostfwd={text}: the guest's address is {guest_ip}");
        }
        let port = |text: &str| text.parse::<u16>().ok().filter(|&port| port != 0);
        let host_port = port(host_port).with_context(|| format!("hostfwd={text}: bad host port `{host_port}`"))?;
        let guest_port = port(guest_port).with_context(|| format!("hostfwd={text}: bad guest port `{guest_port}`"))?;
        Ok(HostForward { host: SocketAddrV4::new(host_ip, host_port), guest_port })
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            NetBackend::User { forwards } => {
                write!(f, "user")?;
                for forward in forwards {
                    write!(f, ",hostfwd=tcp:{}-:{}", forward.host, forward.guest_port)?;
                }
                Ok(())
            }
            NetBackend::Tap { ifname } => {
                write!(f, "tap,ifname={ifname},ip={}/{}", self.guest.ip, self.guest.prefix_len)?;
                match self.guest.gateway {
                    Some(gateway) => write!(f, ",gateway={gateway}"),
                    None => Ok(()),
                }
            }
        }
    }
}

fn parse_ip(text: &str) -> anyhow::Result<Ipv4Addr> {
    Ipv4Addr::from_str(text).with_context(|| format!("`{text}` is not an IPv4 address"))
}

fn parse_cidr(text: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, len) = text.split_once('/').with_context(|| format!("ip={text} is not A.B.C.D/N"))?;
    let len = len.parse::<u8>().ok().filter(|len| (1..=30).contains(len));
    Ok((parse_ip(ip)?, len.with_context(|| format!("ip={text}: the prefix length is 1 to 30"))?))
}

/// A Linux interface name: 1 to 15 bytes, no '/', whitespace or NUL.
fn check_ifname(name: &str) -> anyhow::Result<String> {
    let bad = name.is_empty() || name.len() > 15 || name.contains(['/', '\0']) || name.contains(char::is_whitespace);
    ensure!(!bad, "ifname={name} is not an interface name (1 to 15 bytes, no '/' or spaces)");
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        format!("{:#}", NetConfig::parse(text).unwrap_err())
    }

    #[test]
    fn user_with_forwards() {
        let config = NetConfig::parse("user,hostfwd=tcp:127.0.0.1:6380-:6379,hostfwd=tcp::8080-10.0.2.15:80").unwrap();
        let config = config.unwrap();
        let NetBackend::User { forwards } = &config.backend else { panic!("{config:?}") };
        assert_eq!(forwards[0], HostForward { host: "127.0.0.1:6380".parse().unwrap(), guest_port: 6379 });
        assert_eq!(forwards[1], HostForward { host: "127.0.0.1:8080".parse().unwrap(), guest_port: 80 });
        assert_eq!(config.guest, GuestInterface::USER);
        assert_eq!(config.to_string(), "user,hostfwd=tcp:127.0.0.1:6380-:6379,hostfwd=tcp:127.0.0.1:8080-:80");
        assert_eq!(NetConfig::parse("user").unwrap(), Some(NetConfig::user()));
        assert_eq!(NetConfig::parse("none").unwrap(), None);
    }

    #[test]
    fn tap_with_an_address() {
        let config = NetConfig::parse("tap,ifname=tap0,ip=10.9.0.2/24,gateway=10.9.0.1").unwrap().unwrap();
        assert_eq!(config.backend, NetBackend::Tap { ifname: "tap0".into() });
        assert_eq!(config.guest.ip, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(config.guest.prefix_len, 24);
        assert_eq!(config.guest.gateway, Some(Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(config.to_string(), "tap,ifname=tap0,ip=10.9.0.2/24,gateway=10.9.0.1");
        let plain = NetConfig::parse("tap,ifname=t").unwrap().unwrap();
        assert_eq!((plain.guest.ip, plain.guest.gateway), (USER_GUEST_IP, None));
    }

    #[test]
    fn bad_values_are_named() {
        for (text, says) in [
            ("socket", "user[,hostfwd=...]"),
            ("user,hostfwd=udp::1-:2", "only tcp"),
            ("user,hostfwd=tcp::1", "HOSTPORT-"),
            ("user,hostfwd=tcp::0-:2", "bad host port `0`"),
            ("user,hostfwd=tcp::1-:70000", "bad guest port"),
            ("user,hostfwd=tcp:1.2.3:1-:2", "not an IPv4 address"),
            ("user,hostfwd=tcp::1-10.0.2.16:2", "the guest's address is 10.0.2.15"),
            ("user,hostfwd=tcp::1-:2,hostfwd=tcp::1-:3", "forwarded twice"),
            ("user,restrict=on", "only hostfwd"),
            ("user,hostfwd", "not key=value"),
            ("tap", "needs ifname"),
            ("tap,ifname=a/b", "not an interface name"),
            ("tap,ifname=abcdefghijklmnop", "not an interface name"),
            ("tap,ifname=t,ip=10.0.0.1", "A.B.C.D/N"),
            ("tap,ifname=t,ip=10.0.0.1/31", "prefix length"),
            ("tap,ifname=t,script=no", "not `script`"),
            ("none,x=1", "no options"),
        ] {
            let message = error(text);
            assert!(message.contains(says), "{text}: {message}");
        }
    }
}
