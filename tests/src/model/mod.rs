//! A reference model of the node programs, in plain Rust, written from the
//! specification (docs/cluster-spec.md §§ on routing and anti-spoofing,
//! docs/snat.md's ICMP error rules, docs/services.md), not from the eBPF
//! code: given a node's state and a frame, the verdict, the frame that
//! leaves, and the counter that moves. tests/tests/differential.rs holds it
//! against the real programs on random frames.
//!
//! It models `from_pod`, `from_uplink` and `to_uplink`: routing, ARP,
//! anti-spoofing, TTL, header validation, the node-IP side's ICMP error
//! checks, and, when the node masquerades, the node stage of SNAT with its
//! state (`masquerade`); the load balancer's stage is `outbound`.
//!
//! - `snat`: what both SNAT stages share (transport keys, the rewrite,
//!   the table of translations);
//! - `run`: the programs, what a run gives, and the `Model` trait;
//!   `frame`: reading and patching headers.
mod frame;
pub mod masquerade;
pub mod outbound;
mod run;
mod snat;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netplane_common::{DropReason, Path, maps::MARK_ROUTED};

use self::frame::{ETH, Ip, decrement_ttl, ether_type, ipv4, routed, set_macs};
pub use self::{
    masquerade::Masquerade,
    outbound::LoadBalancer,
    run::{Model, Moves, Outcome, Program, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
};

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
    /// The masquerade, when the node has egress configured.
    pub masquerade: Option<Masquerade>,
}

impl Model for Node {
    fn run(
        &mut self,
        program: Program,
        frame: &[u8],
        pick: &mut dyn FnMut(&[u16]) -> Option<u16>,
    ) -> Outcome {
        let mut out = frame.to_vec();
        let (verdict, moves) = match program {
            Program::FromPod { ifindex } => self.pod_program(ifindex, &mut out, pick),
            Program::FromUplink => self.uplink_ingress(&mut out),
            Program::ToUplink { mark } => self.uplink_egress(mark, &mut out),
            p => unreachable!("a node does not run {p:?}"),
        };
        Outcome {
            verdict,
            frame: out,
            moves,
        }
    }

    fn translations(&self) -> Vec<String> {
        self.masquerade
            .as_ref()
            .map(|m| m.table.lines())
            .unwrap_or_default()
    }
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

    fn pod_program(
        &mut self,
        ifindex: u32,
        f: &mut [u8],
        pick: &mut dyn FnMut(&[u16]) -> Option<u16>,
    ) -> (u32, Moves) {
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
            let node_ip = self.ip;
            return match &mut self.masquerade {
                Some(m) => m.egress(node_ip, f, &ip, pick),
                None => drop(DropReason::EgressUnavailable),
            };
        }
        match self.owner(ip.dst) {
            None => drop(DropReason::NoRoute),
            Some(o) if o == self.ip => drop(DropReason::NoLocalPod),
            Some(_) => routed(f, Path::ToRemoteNode),
        }
    }

    fn uplink_ingress(&mut self, f: &mut [u8]) -> (u32, Moves) {
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
            let pods = self.pods.clone();
            let deliver = |ip: Ipv4Addr| {
                pods.iter()
                    .find(|p| p.ip == ip)
                    .map(|p| (p.mac, p.host_mac))
            };
            if let Some(m) = &mut self.masquerade
                && let Some(done) = m.ingress(self.ip, f, &ip, &deliver)
            {
                return done;
            }
            // No translation: only an ICMP error whose quote cannot be
            // read is refused; everything else is the node's.
            return match icmp_error_check(f, &ip) {
                Some(r) => drop(r),
                None => (TC_ACT_OK, Moves::Nothing),
            };
        }
        if let Some(p) = self.pod(ip.dst).copied() {
            // From outside the cluster: only the node subnet may open a
            // flow to a pod (a node, a hostNetwork pod), and its replies
            // will leave untranslated. Without egress configured the node
            // knows no subnet and delivers.
            if !self.cluster.contains(&ip.src)
                && let Some(m) = &mut self.masquerade
            {
                if !m.subnet.contains(&ip.src) {
                    return drop(DropReason::UnsolicitedToPod);
                }
                m.opened_from_subnet(f, &ip);
            }
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

/// To the node's IP: an ICMP error (unreachable, time exceeded) whose
/// quote is too short to read is dropped; one quoting anything else than
/// an option-less IPv4 header and TCP, UDP or ICMP is no translation's and
/// the node's (docs/snat.md).
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
    if f.len() < l4 + 8 + 28 {
        return Some(DropReason::TruncatedL4);
    }
    None
}
