//! Small system helpers: network namespaces, the bpffs mount, interfaces,
//! and running iproute2 for the lab.
use std::{
    fs::File,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, setns},
    sys::statfs::statfs,
};

/// statfs magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Moves the calling thread into the named network namespace
/// (/run/netns/NAME, as `ip netns add` creates). Call before spawning threads:
/// threads inherit it.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    setns(f, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {name}"))?;
    Ok(())
}

/// Makes `cmd` start inside the network namespace `ns` (a /run/netns or
/// /proc/PID/ns/net file), as a container runtime starts a CNI plugin.
/// `ns` must stay open until the command is spawned.
pub fn spawn_in_netns(cmd: &mut Command, ns: &File) {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe, and the fd is open at spawn time.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Mounts a bpffs at `dir` unless one is there already.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if is_bpffs(dir) {
        return Ok(());
    }
    mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {}", dir.display()))?;
    Ok(())
}

pub fn is_bpffs(dir: &Path) -> bool {
    statfs(dir).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// An interface in the current network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub ipv4: Vec<Ipv4Addr>,
}

/// All interfaces of the current network namespace (getifaddrs).
pub fn interfaces() -> Result<Vec<Interface>> {
    let mut out: Vec<Interface> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
        let name = ifa.interface_name.clone();
        let idx = match out.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                let index = nix::net::if_::if_nametoindex(name.as_str()).unwrap_or(0);
                out.push(Interface {
                    name,
                    index,
                    mac: [0; 6],
                    ipv4: Vec::new(),
                });
                out.len() - 1
            }
        };
        let Some(addr) = ifa.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr() {
                out[idx].mac = mac;
            }
        } else if let Some(sin) = addr.as_sockaddr_in() {
            out[idx].ipv4.push(sin.ip());
        }
    }
    Ok(out)
}

pub fn interface(name: &str) -> Result<Interface> {
    interfaces()?
        .into_iter()
        .find(|i| i.name == name)
        .with_context(|| format!("no interface {name}"))
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {s}"))?;
    parts.try_into().map_err(|_| anyhow::anyhow!("bad MAC {s}"))
}

/// Runs a command, failing with its stderr. Returns stdout.
pub fn run(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS ...`
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    run(&argv)
}

/// Sets sysctls inside a namespace (the /proc/sys of that netns).
pub fn sysctl_in(ns: &str, settings: &[&str]) -> Result<()> {
    let mut argv = vec!["ip", "netns", "exec", ns, "sysctl", "-qw"];
    argv.extend_from_slice(settings);
    run(&argv).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let mac = [0x02, 0xab, 0, 1, 0xff, 0x10];
        assert_eq!(parse_mac(&mac_string(mac)).unwrap(), mac);
        assert!(parse_mac("02:ab").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }
}
