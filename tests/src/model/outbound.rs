//! The load balancer's stage of SNAT (docs/snat.md, "Load balancer stage"
//! and "Port rules"), with its state: `lb_from_vnet` and
//! `lb_from_internet`.
//!
//! Written from the rules, not the code:
//! - from the VNet side, a packet to the VNet's own subnet, to a multicast
//!   or broadcast address, or that is not IPv4 is the host's own; one to a
//!   private range outside the VNet is dropped where Azure's system routes
//!   drop it (`system_route_none`); one from an address that is no
//!   backend is refused (`lb_unknown_backend`);
//! - a backend's flow takes a frontend IP and a port of that backend's own
//!   block; a port is taken per destination, and for UDP (Azure's
//!   port-restricted cone) per remote address: an inside endpoint keeps
//!   one port toward a remote address for all its ports, and only the
//!   remote ports it sent to may answer;
//! - TCP: a RST or FIN with no translation is invalid;
//! - the load balancer is no routed hop: the TTL is untouched;
//! - from the internet, a packet to a frontend IP must be a reply to a
//!   translation (else `nat_no_mapping`) and goes back to its node;
//!   anything to another address is the host's own.
//!
//! - fragments as at the node: the first translated and remembered, the
//!   later ones by its ports (`fragment_not_tracked` without one).
//!
//! Not modelled here (their packet tables hold them): ICMP errors about
//! translated flows, a full NAT table, time.
use std::{collections::HashSet, net::Ipv4Addr, ops::RangeInclusive};

use ipnet::Ipv4Net;
use netplane_common::{DropReason, Path};

use super::{
    frame::{ETH, Ip, ether_type, ipv4},
    run::{Model, Moves, Outcome, Program, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    snat::{
        FIN, ICMP, RST, SYN, TCP, Table, Tuple, UDP, datagram, icmp_error_about, l4, port_offset,
        rewrite, rewrite_address,
    },
};

/// The private ranges Azure's default routes send nowhere (next hop
/// `None`) when they are outside the VNet.
const NONE_ROUTES: [&str; 4] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];

/// A backend node and its block: (frontend IP, ports) pieces.
#[derive(Clone, Debug)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub blocks: Vec<(Ipv4Addr, RangeInclusive<u16>)>,
}

#[derive(Clone, Debug)]
pub struct LoadBalancer {
    pub vnet: Ipv4Net,
    pub subnet: Ipv4Net,
    pub frontends: Vec<Ipv4Addr>,
    pub backends: Vec<Backend>,
    /// UDP as Azure's load balancer does it (an appliance: per 5-tuple).
    pub udp_cone: bool,
    pub table: Table,
    /// A cone flow's remote ports that may answer it.
    peers: HashSet<(Tuple, u16)>,
}

impl LoadBalancer {
    pub fn new(
        vnet: Ipv4Net,
        subnet: Ipv4Net,
        frontends: Vec<Ipv4Addr>,
        backends: Vec<Backend>,
        udp_cone: bool,
    ) -> LoadBalancer {
        LoadBalancer {
            vnet,
            subnet,
            frontends,
            backends,
            udp_cone,
            table: Table::default(),
            peers: HashSet::new(),
        }
    }

    fn next_hop_none(&self, dst: Ipv4Addr) -> bool {
        !self.vnet.contains(&dst)
            && NONE_ROUTES
                .iter()
                .any(|n| n.parse::<Ipv4Net>().unwrap().contains(&dst))
    }

    fn outbound(
        &mut self,
        f: &mut [u8],
        ip: &Ip,
        pick: &mut dyn FnMut(&[u16]) -> Option<u16>,
    ) -> (u32, Moves) {
        let drop = |r| (TC_ACT_SHOT, Moves::Drop(r));
        if self.subnet.contains(&ip.dst) || ip.dst.is_multicast() || ip.dst.is_broadcast() {
            return (TC_ACT_OK, Moves::Nothing);
        }
        if self.next_hop_none(ip.dst) {
            return drop(DropReason::SystemRouteNone);
        }
        let Some(backend) = self.backends.iter().find(|b| b.ip == ip.src).cloned() else {
            return drop(DropReason::LbUnknownBackend);
        };
        if ip.later_fragment {
            let nat = self.table.translation_of_later(ip);
            let Some((nat_ip, _)) = nat else {
                return drop(DropReason::FragmentNotTracked);
            };
            rewrite_address(f, true, nat_ip);
            return (TC_ACT_REDIRECT, Moves::Path(Path::LbOut));
        }
        let l = match l4(f, ip, true) {
            Ok(l) => l,
            Err(r) => return drop(r),
        };
        let cone = self.udp_cone && l.proto == UDP;
        // A cone flow is one per inside endpoint and remote address.
        let flow = Tuple {
            proto: l.proto,
            inside: (ip.src, l.sport),
            remote: (ip.dst, if cone { 0 } else { l.dport }),
        };
        let nat = match self.table.flows.get(&flow) {
            Some(nat) => *nat,
            None => {
                if l.proto == TCP && l.flags & (RST | FIN) != 0 && l.flags & SYN == 0 {
                    return drop(DropReason::TcpInvalid);
                }
                let mut free = Vec::new();
                for (fe, ports) in &backend.blocks {
                    free.extend(
                        ports
                            .clone()
                            .filter(|p| !self.table.taken(l.proto, flow.remote, (*fe, *p)))
                            .map(|p| (*fe, p)),
                    );
                }
                if free.is_empty() {
                    return drop(DropReason::NatPortsExhausted);
                }
                let ports: Vec<u16> = free.iter().map(|(_, p)| *p).collect();
                let chosen = pick(&ports).unwrap_or(ports[0]);
                let nat = *free
                    .iter()
                    .find(|(_, p)| *p == chosen)
                    .expect("picked a free port");
                self.table.claim(flow, nat);
                nat
            }
        };
        if cone {
            self.peers.insert((flow, l.dport));
        }
        self.table.remember_first(ip, flow.inside.1, flow.remote.1);
        rewrite(f, ip, true, port_offset(l.proto, true), nat);
        (TC_ACT_REDIRECT, Moves::Path(Path::LbOut))
    }

    fn inbound(&mut self, f: &mut [u8], ip: &Ip) -> (u32, Moves) {
        let drop = |r| (TC_ACT_SHOT, Moves::Drop(r));
        if !self.frontends.contains(&ip.dst) {
            return (TC_ACT_OK, Moves::Nothing);
        }
        if ip.later_fragment {
            let Some((sport, dport)) = self.table.fragments.get(&datagram(ip)).copied() else {
                return drop(DropReason::FragmentNotTracked);
            };
            let Some(flow) = self.table.reply(ip.proto, (ip.src, sport), (ip.dst, dport)) else {
                return drop(DropReason::NatNoMapping);
            };
            rewrite_address(f, false, flow.inside.0);
            return (TC_ACT_REDIRECT, Moves::Path(Path::LbIn));
        }
        match icmp_error_about(f, ip) {
            Some(Err(r)) => return drop(r),
            Some(Ok(None)) => return drop(DropReason::NatNoMapping),
            Some(Ok(Some((proto, source, remote)))) => {
                let cone = self.udp_cone && proto == UDP;
                let remote = (remote.0, if cone { 0 } else { remote.1 });
                assert!(
                    self.table.reply(proto, remote, source).is_none(),
                    "ICMP errors about translated flows are not modelled (the packet tables hold them)"
                );
                return drop(DropReason::NatNoMapping);
            }
            None => {}
        }
        let l = match l4(f, ip, false) {
            Ok(l) => l,
            // An echo request is echo (the engine reads it) but answers
            // nothing; other ICMP is not translated at all.
            Err(DropReason::UnsupportedL4) if ip.proto == ICMP && f[ETH + ip.ihl] == 8 => {
                return drop(DropReason::NatNoMapping);
            }
            Err(r) => return drop(r),
        };
        let cone = self.udp_cone && l.proto == UDP;
        let remote = (ip.src, if cone { 0 } else { l.sport });
        let flow = self
            .table
            .reply(l.proto, remote, (ip.dst, l.dport))
            .filter(|flow| !cone || self.peers.contains(&(*flow, l.sport)));
        let Some(flow) = flow else {
            return drop(DropReason::NatNoMapping);
        };
        self.table.remember_first(ip, remote.1, l.dport);
        rewrite(f, ip, false, port_offset(l.proto, false), flow.inside);
        (TC_ACT_REDIRECT, Moves::Path(Path::LbIn))
    }
}

impl Model for LoadBalancer {
    fn run(
        &mut self,
        program: Program,
        frame: &[u8],
        pick: &mut dyn FnMut(&[u16]) -> Option<u16>,
    ) -> Outcome {
        let mut f = frame.to_vec();
        let (verdict, moves) = if f.len() < ETH {
            (TC_ACT_SHOT, Moves::Drop(DropReason::TruncatedEthernet))
        } else if ether_type(&f) != 0x0800 {
            (TC_ACT_OK, Moves::Nothing)
        } else if let Some(ip) = ipv4(&f) {
            match program {
                Program::LbFromVnet => self.outbound(&mut f, &ip, pick),
                Program::LbFromInternet => self.inbound(&mut f, &ip),
                p => unreachable!("a load balancer does not run {p:?}"),
            }
        } else {
            (TC_ACT_SHOT, Moves::Drop(DropReason::MalformedIpv4))
        };
        Outcome {
            verdict,
            frame: f,
            moves,
        }
    }

    fn translations(&self) -> Vec<String> {
        self.table.lines()
    }
}
