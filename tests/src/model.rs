//! A reference model of the node programs, in plain Rust, written from the
//! specification (docs/cluster-spec.md §§ on routing and anti-spoofing,
//! docs/snat.md's ICMP error rules, docs/services.md), not from the eBPF
//! code: given a node's state and a frame, the verdict, the frame that
//! leaves, and the counter that moves. tests/tests/differential.rs holds it
//! against the real programs on random frames.
//!
//! This first slice models a node without egress SNAT configured and
//! without Services: `from_pod`, `from_uplink` and `to_uplink` routing,
//! ARP, anti-spoofing, TTL, header validation and the node-IP side's ICMP
//! error checks. The SNAT stages and Services come next (the list).
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netplane_common::{DropReason, Path, checksum, maps::MARK_ROUTED};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// A pod of the node: where its veth is and its MACs.
#[derive(Clone, Copy, Debug)]
pub struct Pod {
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub host_mac: [u8; 6],
}

/// What the node's maps hold.
#[derive(Clone, Debug)]
pub struct Node {
    pub ip: Ipv4Addr,
    pub cluster: Ipv4Net,
    /// UDR: pod CIDR -> owner node.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub pods: Vec<Pod>,
}

/// Which program, and the skb's metadata it sees.
#[derive(Clone, Copy, Debug)]
pub enum Program {
    /// On a pod's veth; `ifindex` is the skb's.
    FromPod {
        ifindex: u32,
    },
    FromUplink,
    ToUplink {
        mark: u32,
    },
}

/// The counter a run moves (at most one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moves {
    Path(Path),
    Drop(DropReason),
    Nothing,
}

/// What the model says a run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: u32,
    pub frame: Vec<u8>,
    pub moves: Moves,
}

const ETH: usize = 14;

struct Ip {
    ihl: usize,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    later_fragment: bool,
}

impl Node {
    fn pod(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.pods.iter().find(|p| p.ip == ip)
    }

    /// Longest prefix match in the UDR.
    fn owner(&self, ip: Ipv4Addr) -> Option<Ipv4Addr> {
        self.routes
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, node)| *node)
    }

    /// Runs `frame` through `program`.
    pub fn run(&self, program: Program, frame: &[u8]) -> Outcome {
        let mut out = frame.to_vec();
        let (verdict, moves) = match program {
            Program::FromPod { ifindex } => self.pod_program(ifindex, &mut out),
            Program::FromUplink => self.uplink_ingress(&mut out),
            Program::ToUplink { mark } => self.uplink_egress(mark, &mut out),
        };
        Outcome {
            verdict,
            frame: out,
            moves,
        }
    }

    fn pod_program(&self, ifindex: u32, f: &mut [u8]) -> (u32, Moves) {
        let drop = |r| (TC_ACT_SHOT, Moves::Drop(r));
        if f.len() < ETH {
            return drop(DropReason::TruncatedEthernet);
        }
        match ether_type(f) {
            0x0800 => {}
            0x0806 => return self.arp(ifindex, f),
            _ => return drop(DropReason::UnsupportedProtocol),
        }
        let Some(ip) = ipv4(f) else {
            return drop(DropReason::MalformedIpv4);
        };
        // Anti-spoofing: a pod of this node, from its own veth.
        if self.pod(ip.src).is_none_or(|p| p.ifindex != ifindex) {
            return drop(DropReason::SpoofedSource);
        }
        // Same node: bridged, TTL kept.
        if let Some(p) = self.pod(ip.dst) {
            set_macs(f, p.mac, p.host_mac);
            return (TC_ACT_REDIRECT, Moves::Path(Path::SameNode));
        }
        if ip.dst == self.ip {
            return (TC_ACT_OK, Moves::Path(Path::PodToHost));
        }
        if !self.cluster.contains(&ip.dst) {
            // No SNAT configured on this node.
            return drop(DropReason::EgressUnavailable);
        }
        match self.owner(ip.dst) {
            None => drop(DropReason::NoRoute),
            Some(o) if o == self.ip => drop(DropReason::NoLocalPod),
            Some(_) => routed(f, Path::ToRemoteNode),
        }
    }

    fn uplink_ingress(&self, f: &mut [u8]) -> (u32, Moves) {
        let drop = |r| (TC_ACT_SHOT, Moves::Drop(r));
        if f.len() < ETH {
            return drop(DropReason::TruncatedEthernet);
        }
        if ether_type(f) != 0x0800 {
            return (TC_ACT_OK, Moves::Nothing); // ARP and the rest: the node's
        }
        let Some(ip) = ipv4(f) else {
            return drop(DropReason::MalformedIpv4);
        };
        if ip.dst == self.ip {
            // No translation exists: only an ICMP error whose quote cannot
            // be read is refused; everything else is the node's.
            return match icmp_error_check(f, &ip) {
                Some(r) => drop(r),
                None => (TC_ACT_OK, Moves::Nothing),
            };
        }
        if let Some(p) = self.pod(ip.dst) {
            let ttl = f[ETH + 8];
            if ttl <= 1 {
                return (TC_ACT_OK, Moves::Path(Path::TtlExpired));
            }
            decrement_ttl(f);
            set_macs(f, p.mac, p.host_mac);
            return (TC_ACT_REDIRECT, Moves::Path(Path::FromRemoteNode));
        }
        if self.cluster.contains(&ip.dst) {
            return drop(DropReason::NotForThisNode);
        }
        (TC_ACT_OK, Moves::Nothing)
    }

    fn uplink_egress(&self, mark: u32, f: &mut [u8]) -> (u32, Moves) {
        if mark == MARK_ROUTED || f.len() < ETH || ether_type(f) != 0x0800 {
            return (TC_ACT_OK, Moves::Nothing);
        }
        let Some(ip) = ipv4(f) else {
            return (TC_ACT_OK, Moves::Nothing);
        };
        if let Some(p) = self.pod(ip.dst) {
            set_macs(f, p.mac, p.host_mac);
            return (TC_ACT_REDIRECT, Moves::Path(Path::HostToPod));
        }
        if self.cluster.contains(&ip.dst) {
            return match self.owner(ip.dst) {
                None => (TC_ACT_SHOT, Moves::Drop(DropReason::NoRoute)),
                Some(o) if o == self.ip => (TC_ACT_SHOT, Moves::Drop(DropReason::NoLocalPod)),
                // The node's own traffic: no routed hop of netplane's.
                Some(_) => (TC_ACT_REDIRECT, Moves::Path(Path::HostToRemoteNode)),
            };
        }
        (TC_ACT_OK, Moves::Nothing)
    }

    /// ARP from a pod: a well-formed request from the pod's own address on
    /// its own veth is answered with the host veth's MAC, whatever it asks
    /// for (there is no bridge); a gratuitous one is no question.
    fn arp(&self, ifindex: u32, f: &mut [u8]) -> (u32, Moves) {
        let not_request = (TC_ACT_SHOT, Moves::Drop(DropReason::ArpNotRequest));
        if f.len() < ETH + 28 {
            return not_request;
        }
        let a = &f[ETH..ETH + 28];
        let be16 = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
        let (sha, spa, tpa) = (
            <[u8; 6]>::try_from(&a[8..14]).unwrap(),
            <[u8; 4]>::try_from(&a[14..18]).unwrap(),
            <[u8; 4]>::try_from(&a[24..28]).unwrap(),
        );
        if be16(0) != 1 || be16(2) != 0x0800 || a[4] != 6 || a[5] != 4 || be16(6) != 1 || spa == tpa
        {
            return not_request;
        }
        let Some(p) = self.pod(spa.into()).filter(|p| p.ifindex == ifindex) else {
            return (TC_ACT_SHOT, Moves::Drop(DropReason::SpoofedSource));
        };
        let r = &mut f[ETH..ETH + 28];
        r[6..8].copy_from_slice(&2u16.to_be_bytes());
        r[8..14].copy_from_slice(&p.host_mac);
        r[14..18].copy_from_slice(&tpa);
        r[18..24].copy_from_slice(&sha);
        r[24..28].copy_from_slice(&spa);
        set_macs(f, sha, p.host_mac);
        (TC_ACT_REDIRECT, Moves::Path(Path::ArpReply))
    }
}

fn ether_type(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

/// The IPv4 header, if it is one: version 4, a header of at least 20
/// bytes, a total length that holds the header and fits the frame.
fn ipv4(f: &[u8]) -> Option<Ip> {
    let h = f.get(ETH..ETH + 20)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if h[0] >> 4 != 4 || ihl < 20 || tot < ihl || ETH + tot > f.len() {
        return None;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    Some(Ip {
        ihl,
        proto: h[9],
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        later_fragment: frag & 0x1fff != 0,
    })
}

/// To the node's IP: an ICMP error (unreachable, time exceeded) must quote
/// an option-less IPv4 header and 8 bytes of TCP, UDP or ICMP, which the
/// SNAT engine reads to find its flow (docs/snat.md); one it cannot read is
/// dropped.
fn icmp_error_check(f: &[u8], ip: &Ip) -> Option<DropReason> {
    if ip.proto != 1 || ip.later_fragment {
        return None;
    }
    let l4 = ETH + ip.ihl;
    let Some(&icmp_type) = f.get(l4) else {
        return Some(DropReason::TruncatedL4);
    };
    if icmp_type != 3 && icmp_type != 11 {
        return None;
    }
    let Some(quote) = f.get(l4 + 8..l4 + 8 + 28) else {
        return Some(DropReason::TruncatedL4);
    };
    if quote[0] != 0x45 || ![1, 6, 17].contains(&quote[9]) {
        return Some(DropReason::UnsupportedL4);
    }
    None
}

/// A routed hop: TTL expiry goes to the kernel (time exceeded), else the
/// TTL is decremented and the packet goes to the next hop.
fn routed(f: &mut [u8], path: Path) -> (u32, Moves) {
    if f[ETH + 8] <= 1 {
        return (TC_ACT_OK, Moves::Path(Path::TtlExpired));
    }
    decrement_ttl(f);
    (TC_ACT_REDIRECT, Moves::Path(path))
}

/// TTL − 1 with the header checksum patched incrementally (RFC 1624).
fn decrement_ttl(f: &mut [u8]) {
    let old = u16::from_be_bytes([f[ETH + 8], f[ETH + 9]]);
    f[ETH + 8] -= 1;
    let new = u16::from_be_bytes([f[ETH + 8], f[ETH + 9]]);
    let check = u16::from_be_bytes([f[ETH + 10], f[ETH + 11]]);
    let patched = checksum::update16(check, old, new);
    f[ETH + 10..ETH + 12].copy_from_slice(&patched.to_be_bytes());
}

fn set_macs(f: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
}
