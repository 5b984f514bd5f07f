//! IPv4 fragments through the engine. Only a datagram's first fragment
//! carries its ports; the engine remembers them (FRAGMENTS, by addresses,
//! protocol and IP ID, as this program sees the datagram) so the later
//! fragments find the same translation and have their address rewritten.
//! A later fragment that arrives before its first has no ports to go by
//! and is dropped (`fragment_not_tracked`): Linux's conntrack would
//! reassemble and wait; the datagram is lost here (docs/decisions.md).
use netplane_common::nat::{FlowKey, FragKey, FragPorts};

use crate::{maps::FRAGMENTS, packet::Ipv4};

/// A fragment's datagram, as FRAGMENTS keys it.
#[inline(always)]
pub fn key(ip: &Ipv4) -> FragKey {
    FragKey {
        src_ip: ip.src,
        dst_ip: ip.dst,
        id: ip.id,
        proto: ip.proto,
        _pad: 0,
    }
}

/// A first fragment (more follow, offset 0): remember its ports.
#[inline(always)]
pub fn remember_first(ip: &Ipv4, src_port: u16, dst_port: u16) {
    if ip.more_fragments && !ip.later_fragment {
        let ports = FragPorts { src_port, dst_port };
        let _ = FRAGMENTS.insert(key(ip), ports, 0);
    }
}

/// A later fragment's tuple, from its first fragment's ports. Built from
/// `ip`'s own fields, not through [`tuple_of`]: that way Linux 6.1's
/// verifier walked `lb_from_vnet` twice as long (22,906 → 43,210).
#[inline(always)]
pub fn tuple_of_later(ip: &Ipv4) -> Option<FlowKey> {
    // SAFETY: the value is copied out at once.
    let ports = unsafe { FRAGMENTS.get(key(ip)) }.copied()?;
    Some(FlowKey::new(
        ip.src,
        ip.dst,
        ports.src_port,
        ports.dst_port,
        ip.proto,
    ))
}

/// The tuple of a datagram whose first fragment was seen (for a global
/// function, which has the datagram's key but not the packet).
#[inline(always)]
pub fn tuple_of(d: &FragKey) -> Option<FlowKey> {
    // SAFETY: the value is copied out at once.
    let ports = unsafe { FRAGMENTS.get(d) }.copied()?;
    Some(FlowKey::new(
        d.src_ip,
        d.dst_ip,
        ports.src_port,
        ports.dst_port,
        d.proto,
    ))
}
