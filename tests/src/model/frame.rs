//! Reading and patching frames, as the model's programs need: the
//! Ethernet and IPv4 headers, TTL, MACs, and checksums patched
//! incrementally (RFC 1624).
use std::net::Ipv4Addr;

use netplane_common::{Path, checksum};

use super::run::{Moves, TC_ACT_OK, TC_ACT_REDIRECT};

pub const ETH: usize = 14;

pub struct Ip {
    pub ihl: usize,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub later_fragment: bool,
    pub more_fragments: bool,
    /// The IP ID (a datagram's fragments share it).
    pub id: u16,
}

pub fn ether_type(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

/// The IPv4 header, if it is one: version 4, a header of at least 20
/// bytes, a total length that holds the header and fits the frame.
pub fn ipv4(f: &[u8]) -> Option<Ip> {
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
        more_fragments: frag & 0x2000 != 0,
        id: u16::from_be_bytes([h[4], h[5]]),
    })
}

/// A routed hop: TTL expiry goes to the kernel (time exceeded), else the
/// TTL is decremented and the packet goes to the next hop.
pub fn routed(f: &mut [u8], path: Path) -> (u32, Moves) {
    if f[ETH + 8] <= 1 {
        return (TC_ACT_OK, Moves::Path(Path::TtlExpired));
    }
    decrement_ttl(f);
    (TC_ACT_REDIRECT, Moves::Path(path))
}

/// TTL − 1 with the header checksum patched incrementally (RFC 1624).
pub fn decrement_ttl(f: &mut [u8]) {
    let old = u16::from_be_bytes([f[ETH + 8], f[ETH + 9]]);
    f[ETH + 8] -= 1;
    let new = u16::from_be_bytes([f[ETH + 8], f[ETH + 9]]);
    let check = u16::from_be_bytes([f[ETH + 10], f[ETH + 11]]);
    let patched = checksum::update16(check, old, new);
    f[ETH + 10..ETH + 12].copy_from_slice(&patched.to_be_bytes());
}

pub fn set_macs(f: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
}
