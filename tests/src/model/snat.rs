//! What both SNAT stages share (docs/snat.md, "Port rules"): the
//! transport fields a translation is keyed by, the rewrite with its
//! checksums, and the table of translations with the ports they hold.
use std::{collections::HashMap, net::Ipv4Addr};

use netplane_common::{DropReason, checksum};

use super::frame::{ETH, Ip};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// A flow's ends, inside and remote (ICMP echo: the identifier as the
/// inside port, remote port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub proto: u8,
    pub inside: (Ipv4Addr, u16),
    pub remote: (Ipv4Addr, u16),
}

/// The transport fields a translation works with.
pub struct L4 {
    pub proto: u8,
    /// Source and destination ports (ICMP echo: identifier, 0).
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 otherwise).
    pub flags: u8,
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;

/// The transport header as the engine reads it, `out` for a pod's packet
/// (ICMP: an echo request) or else for a reply (an echo reply).
pub fn l4(f: &[u8], ip: &Ip, out: bool) -> Result<L4, DropReason> {
    let at = ETH + ip.ihl;
    let need = match ip.proto {
        TCP => 20,
        UDP | ICMP => 8,
        _ => return Err(DropReason::UnsupportedL4),
    };
    let h = f.get(at..at + need).ok_or(DropReason::TruncatedL4)?;
    let be16 = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    Ok(match ip.proto {
        ICMP => {
            let echo = if out { 8 } else { 0 };
            if h[0] != echo {
                return Err(DropReason::UnsupportedL4);
            }
            let id = be16(4);
            if out {
                L4 {
                    proto: ICMP,
                    sport: id,
                    dport: 0,
                    flags: 0,
                }
            } else {
                L4 {
                    proto: ICMP,
                    sport: 0,
                    dport: id,
                    flags: 0,
                }
            }
        }
        p => L4 {
            proto: p,
            sport: be16(0),
            dport: be16(2),
            flags: if p == TCP { h[13] } else { 0 },
        },
    })
}

/// A quoted packet's (protocol, source, destination).
pub type Quoted = (u8, (Ipv4Addr, u16), (Ipv4Addr, u16));

/// The flow an ICMP error (unreachable, time exceeded) is about, as its
/// quote shows the packet that caused it: (protocol, the quoted source,
/// the quoted destination). None: not such an error. `Ok(None)`: an error
/// quoting what no translation makes (an option-less IPv4 header and 8
/// bytes of TCP, UDP or ICMP are what the engine reads; GRE, ESP, SCTP or
/// a header with options are someone else's). A quote too short to read
/// is refused.
pub fn icmp_error_about(f: &[u8], ip: &Ip) -> Option<Result<Option<Quoted>, DropReason>> {
    if ip.proto != ICMP || ip.later_fragment {
        return None;
    }
    let at = ETH + ip.ihl;
    let icmp_type = *f.get(at)?;
    if icmp_type != 3 && icmp_type != 11 {
        return None;
    }
    let Some(q) = f.get(at + 8..at + 8 + 28) else {
        return Some(Err(DropReason::TruncatedL4));
    };
    if q[0] != 0x45 || ![ICMP, TCP, UDP].contains(&q[9]) {
        return Some(Ok(None));
    }
    let addr = |i: usize| Ipv4Addr::new(q[i], q[i + 1], q[i + 2], q[i + 3]);
    let be16 = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
    let (sport, dport) = if q[9] == ICMP {
        (be16(24), 0)
    } else {
        (be16(20), be16(22))
    };
    Some(Ok(Some((q[9], (addr(12), sport), (addr(16), dport)))))
}

/// Where the transport checksum is, and whether the pseudo-header (the
/// addresses) is in it.
pub fn l4_checksum_at(proto: u8) -> (usize, bool) {
    match proto {
        TCP => (16, true),
        UDP => (6, true),
        _ => (2, false),
    }
}

pub fn get16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

pub fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites one end of the packet (the source or the destination) to
/// `to`, with both checksums patched; a zero UDP checksum stays zero (none
/// was computed), and a patched one that comes out zero is sent as
/// 0xffff.
pub fn rewrite(f: &mut [u8], ip: &Ip, source: bool, port_at: usize, to: (Ipv4Addr, u16)) {
    let l4 = ETH + ip.ihl;
    let addr_at = ETH + if source { 12 } else { 16 };
    // Addresses as their octets sit in the packet (update_addr's form).
    let old_ip = u32::from_ne_bytes(f[addr_at..addr_at + 4].try_into().unwrap());
    let new_ip = u32::from_ne_bytes(to.0.octets());
    let old_port = get16(f, l4 + port_at);
    // The IP header's checksum covers the address.
    let check = get16(f, ETH + 10);
    put16(f, ETH + 10, checksum::update_addr(check, old_ip, new_ip));
    f[addr_at..addr_at + 4].copy_from_slice(&to.0.octets());
    let (at, pseudo) = l4_checksum_at(ip.proto);
    let at = l4 + at;
    let mut sum = get16(f, at);
    if ip.proto == UDP && sum == 0 {
        put16(f, l4 + port_at, to.1);
        return;
    }
    if pseudo {
        sum = checksum::update_addr(sum, old_ip, new_ip);
    }
    sum = checksum::update16(sum, old_port, to.1);
    if ip.proto == UDP && sum == 0 {
        sum = 0xffff;
    }
    put16(f, at, sum);
    put16(f, l4 + port_at, to.1);
}

/// Rewrites one address only, with the IP header's checksum: a later
/// fragment carries no transport header (its checksum is in the first).
pub fn rewrite_address(f: &mut [u8], source: bool, to: Ipv4Addr) {
    let at = ETH + if source { 12 } else { 16 };
    let old = u32::from_ne_bytes(f[at..at + 4].try_into().unwrap());
    let check = get16(f, ETH + 10);
    put16(
        f,
        ETH + 10,
        checksum::update_addr(check, old, u32::from_ne_bytes(to.octets())),
    );
    f[at..at + 4].copy_from_slice(&to.octets());
}

/// A datagram, as a stage sees its fragments: (source, destination, IP
/// ID, protocol).
pub type Datagram = (Ipv4Addr, Ipv4Addr, u16, u8);

pub fn datagram(ip: &Ip) -> Datagram {
    (ip.src, ip.dst, ip.id, ip.proto)
}

/// Where the port that is translated sits in the transport header:
/// the source port out, the destination port back (ICMP: the identifier).
pub fn port_offset(proto: u8, out: bool) -> usize {
    match (proto, out) {
        (ICMP, _) => 4,
        (_, true) => 0,
        (_, false) => 2,
    }
}

/// A translation's reply side: (protocol, remote end, translated end).
type ReplyKey = (u8, (Ipv4Addr, u16), (Ipv4Addr, u16));

/// Translations and the ports they hold.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// flow -> its translated source (address, port).
    pub flows: HashMap<Tuple, (Ipv4Addr, u16)>,
    replies: HashMap<ReplyKey, Tuple>,
    /// A fragmented datagram's ports, from its first fragment translated
    /// (either way), for its later fragments.
    pub fragments: HashMap<Datagram, (u16, u16)>,
}

impl Table {
    /// A port is taken per destination: by a translation to the same
    /// remote end (address and port, or the address alone for a cone).
    pub fn taken(&self, proto: u8, remote: (Ipv4Addr, u16), nat: (Ipv4Addr, u16)) -> bool {
        self.replies.contains_key(&(proto, remote, nat))
    }

    pub fn claim(&mut self, flow: Tuple, nat: (Ipv4Addr, u16)) {
        self.flows.insert(flow, nat);
        self.replies.insert((flow.proto, flow.remote, nat), flow);
    }

    pub fn reply(&self, proto: u8, remote: (Ipv4Addr, u16), nat: (Ipv4Addr, u16)) -> Option<Tuple> {
        self.replies.get(&(proto, remote, nat)).copied()
    }

    /// A first fragment (more follow, offset 0) translated: its ports are
    /// remembered for the rest of its datagram.
    pub fn remember_first(&mut self, ip: &Ip, sport: u16, dport: u16) {
        if ip.more_fragments && !ip.later_fragment {
            self.fragments.insert(datagram(ip), (sport, dport));
        }
    }

    /// A later fragment's translation, found by its datagram's first
    /// fragment's ports (None: no first fragment came, or it was not
    /// translated).
    pub fn translation_of_later(&self, ip: &Ip) -> Option<(Ipv4Addr, u16)> {
        let (sport, dport) = self.fragments.get(&datagram(ip))?;
        self.flows
            .get(&Tuple {
                proto: ip.proto,
                inside: (ip.src, *sport),
                remote: (ip.dst, *dport),
            })
            .copied()
    }

    /// The translations as lines, sorted, to compare with NAT_OUT.
    pub fn lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .flows
            .iter()
            .map(|(t, (ip, port))| {
                format!(
                    "{} {}:{} -> {}:{} as {ip}:{port}",
                    t.proto, t.inside.0, t.inside.1, t.remote.0, t.remote.1
                )
            })
            .collect();
        v.sort();
        v
    }
}
