//! The node stage of SNAT (docs/snat.md, "Node stage" and "Port rules"),
//! with its state carried from frame to frame: which translation a packet
//! finds or makes, which port it takes, and what the reply finds.
//!
//! Written from the rules, not the code:
//! - pod traffic leaving the cluster pod CIDR takes the node IP; the next
//!   hop is the destination itself inside the node subnet, else the
//!   gateway; the TTL is checked and decremented before the translation
//!   (Linux forwards, then NATs on the way out);
//! - a replying pod's packets to a flow opened from the node subnet leave
//!   untranslated (`reply_to_outside`);
//! - a port is taken per destination: free when no translation to the
//!   same remote address and port (and protocol) holds it; the pod's own
//!   port when it is free, else any free port of the range (the model
//!   accepts the program's choice when it is one of the free ones);
//! - TCP: a RST or FIN with no translation is invalid and claims nothing;
//!   anything else with no translation opens one (loose pick-up);
//! - ICMP echo uses its identifier as the port;
//! - a reply to a translation goes back to its pod; any other packet to
//!   the node IP is the node's, also one to a port a translation claimed
//!   (Linux: no conntrack entry matches, the node's sockets answer).
//!
//! - a datagram's first fragment is translated as any packet and its
//!   ports remembered; its later fragments find the translation by them
//!   and have only their address rewritten, or are dropped
//!   (`fragment_not_tracked`) when no first fragment came.
//!
//! Not modelled here (their packet tables hold them): ICMP errors about
//! translated flows, a full NAT table, and time (nothing expires within a
//! run; nothing collects).
use std::{collections::HashSet, net::Ipv4Addr, ops::RangeInclusive};

use ipnet::Ipv4Net;
use netplane_common::{DropReason, Path};

use super::{
    frame::{ETH, Ip, decrement_ttl, routed, set_macs},
    run::{Moves, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    snat::{
        FIN, ICMP, RST, SYN, TCP, Table, Tuple, datagram, icmp_error_about, l4, port_offset,
        rewrite, rewrite_address,
    },
};

/// The node's masquerade: its configuration and what it holds.
#[derive(Clone, Debug)]
pub struct Masquerade {
    pub gateway: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub ports: RangeInclusive<u16>,
    pub table: Table,
    /// Flows opened toward a pod from the node subnet, by their reply's
    /// tuple as the pod sends it.
    inbound: HashSet<Tuple>,
}

impl Masquerade {
    pub fn new(gateway: Ipv4Addr, subnet: Ipv4Net, ports: RangeInclusive<u16>) -> Masquerade {
        Masquerade {
            gateway,
            subnet,
            ports,
            table: Table::default(),
            inbound: HashSet::new(),
        }
    }

    /// A pod's packet leaving the cluster pod CIDR. `pick` chooses among
    /// the free ports when the pod's own is taken (the model accepts any
    /// of them; the test passes the program's choice).
    pub fn egress(
        &mut self,
        node_ip: Ipv4Addr,
        f: &mut [u8],
        ip: &Ip,
        pick: &mut dyn FnMut(&[u16]) -> Option<u16>,
    ) -> (u32, Moves) {
        let drop = |r| (TC_ACT_SHOT, Moves::Drop(r));
        let on_link = self.subnet.contains(&ip.dst);
        // A reply (an echo reply, for ICMP) to a flow the subnet opened.
        if on_link
            && let Ok(l) = l4(f, ip, false)
            && self.inbound.contains(&Tuple {
                proto: l.proto,
                inside: (ip.src, if l.proto == ICMP { l.dport } else { l.sport }),
                remote: (ip.dst, if l.proto == ICMP { 0 } else { l.dport }),
            })
        {
            return routed(f, Path::ReplyToOutside);
        }
        let parsed = l4(f, ip, true);
        // Forwarded first (the TTL checked and decremented), then
        // translated, as Linux does.
        if f[ETH + 8] <= 1 {
            return (TC_ACT_OK, Moves::Path(Path::TtlExpired));
        }
        decrement_ttl(f);
        if ip.later_fragment {
            // Its first fragment made (or found) the translation.
            let nat = self.table.translation_of_later(ip);
            let Some((nat_ip, _)) = nat else {
                return drop(DropReason::FragmentNotTracked);
            };
            rewrite_address(f, true, nat_ip);
            return (TC_ACT_REDIRECT, Moves::Path(Path::SnatOut));
        }
        let l = match parsed {
            Ok(l) => l,
            Err(r) => return drop(r),
        };
        let flow = Tuple {
            proto: l.proto,
            inside: (ip.src, l.sport),
            remote: (ip.dst, l.dport),
        };
        let port = match self.table.flows.get(&flow) {
            Some((_, p)) => *p,
            None => {
                if l.proto == TCP && l.flags & (RST | FIN) != 0 && l.flags & SYN == 0 {
                    return drop(DropReason::TcpInvalid);
                }
                let taken = |p: u16| self.table.taken(l.proto, flow.remote, (node_ip, p));
                let own = l.sport;
                let port = if self.ports.contains(&own) && !taken(own) {
                    Some(own)
                } else {
                    let free: Vec<u16> = self.ports.clone().filter(|p| !taken(*p)).collect();
                    if free.is_empty() {
                        None
                    } else {
                        Some(pick(&free).unwrap_or(free[0]))
                    }
                };
                let Some(port) = port else {
                    return drop(DropReason::NatPortsExhausted);
                };
                self.table.claim(flow, (node_ip, port));
                port
            }
        };
        self.table.remember_first(ip, flow.inside.1, flow.remote.1);
        rewrite(f, ip, true, port_offset(l.proto, true), (node_ip, port));
        (TC_ACT_REDIRECT, Moves::Path(Path::SnatOut))
    }

    /// A packet to the node IP from outside: a reply goes back to its pod
    /// (`deliver` gives the pod's MACs by its address); `None` when it is
    /// the node's own.
    pub fn ingress(
        &mut self,
        node_ip: Ipv4Addr,
        f: &mut [u8],
        ip: &Ip,
        deliver: &dyn Fn(Ipv4Addr) -> Option<([u8; 6], [u8; 6])>,
    ) -> Option<(u32, Moves)> {
        if ip.later_fragment {
            // Its first fragment's ports, if it was translated back; none
            // known: the node's own.
            let (sport, dport) = *self.table.fragments.get(&datagram(ip))?;
            let flow = self
                .table
                .reply(ip.proto, (ip.src, sport), (node_ip, dport))?;
            let Some((mac, host_mac)) = deliver(flow.inside.0) else {
                return Some((TC_ACT_SHOT, Moves::Drop(DropReason::NoLocalPod)));
            };
            rewrite_address(f, false, flow.inside.0);
            return Some(self.deliver_back(f, mac, host_mac));
        }
        match icmp_error_about(f, ip) {
            Some(Err(r)) => return Some((TC_ACT_SHOT, Moves::Drop(r))),
            Some(Ok(Some((proto, source, remote)))) => {
                assert!(
                    self.table.reply(proto, remote, source).is_none(),
                    "ICMP errors about translated flows are not modelled (the packet tables hold them)"
                );
                return None; // about no translation: the node's
            }
            Some(Ok(None)) => return None, // quoting the node's own: the node's
            None => {}
        }
        let l = l4(f, ip, false).ok()?;
        let nat = (node_ip, l.dport);
        let flow = self.table.reply(l.proto, (ip.src, l.sport), nat)?;
        let Some((mac, host_mac)) = deliver(flow.inside.0) else {
            return Some((TC_ACT_SHOT, Moves::Drop(DropReason::NoLocalPod)));
        };
        self.table.remember_first(ip, l.sport, l.dport);
        rewrite(f, ip, false, port_offset(l.proto, false), flow.inside);
        Some(self.deliver_back(f, mac, host_mac))
    }

    /// A reply translated back goes to its pod. Translated before the TTL
    /// check: one whose TTL runs out reaches the kernel addressed to the
    /// pod.
    fn deliver_back(&self, f: &mut [u8], mac: [u8; 6], host_mac: [u8; 6]) -> (u32, Moves) {
        if f[ETH + 8] <= 1 {
            return (TC_ACT_OK, Moves::Path(Path::TtlExpired));
        }
        decrement_ttl(f);
        set_macs(f, mac, host_mac);
        (TC_ACT_REDIRECT, Moves::Path(Path::SnatIn))
    }

    /// A flow toward a pod from the node subnet (an echo request, for
    /// ICMP): its replies will leave untranslated.
    pub fn opened_from_subnet(&mut self, f: &[u8], ip: &Ip) {
        if let Ok(l) = l4(f, ip, true) {
            let flow = if l.proto == ICMP {
                Tuple {
                    proto: ICMP,
                    inside: (ip.dst, l.sport),
                    remote: (ip.src, 0),
                }
            } else {
                Tuple {
                    proto: l.proto,
                    inside: (ip.dst, l.dport),
                    remote: (ip.src, l.sport),
                }
            };
            self.inbound.insert(flow);
        }
    }
}
