//! Header rewrites with their checksums, for the SNAT engine and the
//! Services' DNAT alike, for CHECKSUM_PARTIAL skbs too
//! (BPF_F_PSEUDO_HDR; BPF_F_MARK_MANGLED_0 keeps a zero UDP checksum zero).
//! Every call here invalidates packet pointers.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netplane_common::{
    DropReason, checksum,
    nat::{FlowKey, NatReverse, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
};

use crate::l4::{L4, be16};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    maps::NAT_IN,
    packet::{self, Ipv4, icmp, tcp, udp},
};

/// The side of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// An address ([`netplane_common::maps::ip_key`] form) and a port (host
/// order; ICMP echo: the identifier).
#[derive(Clone, Copy)]
pub struct Endpoint {
    pub ip: u32,
    pub port: u16,
}

impl Endpoint {
    #[inline(always)]
    pub fn new(ip: u32, port: u16) -> Self {
        Self { ip, port }
    }
}

const fn failed(_: i64) -> DropReason {
    DropReason::RewriteFailed
}

/// The checksum field of the transport header and the flags its updates need.
#[inline(always)]
fn l4_csum(l4: &L4) -> (usize, u64) {
    match l4.proto {
        PROTO_TCP => (l4.off + tcp::CHECK, 0),
        PROTO_UDP => (l4.off + udp::CHECK, BPF_F_MARK_MANGLED_0 as u64),
        _ => (l4.off + icmp::CHECK, 0),
    }
}

/// Where the port of `side` sits: TCP/UDP port, or the ICMP echo identifier.
#[inline(always)]
fn port_off(l4: &L4, side: Side) -> usize {
    match (l4.proto, side) {
        (PROTO_ICMP, _) => l4.off + icmp::ECHO_ID,
        (_, Side::Source) => l4.off + tcp::SRC_PORT,
        (_, Side::Destination) => l4.off + tcp::DST_PORT,
    }
}

/// Rewrites one side's address alone, with the IPv4 header checksum, in
/// place: the header checksum is always a full one, whatever the skb's
/// checksum state, so no helper is needed. A later fragment needs nothing
/// more (its datagram's transport checksum sits in the first fragment).
#[inline(always)]
pub fn address(ctx: &TcContext, side: Side, old: u32, new: u32) -> Result<(), DropReason> {
    let hdr = packet::ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).ok_or(DropReason::RewriteFailed)?;
    // SAFETY: ptr_at checked that the header is in bounds, after the last
    // helper call that could have moved the packet.
    unsafe {
        let check = u16::from_be_bytes((*hdr).check);
        (*hdr).check = checksum::update_addr(check, old, new).to_be_bytes();
        match side {
            Side::Source => (*hdr).src_addr = new.to_ne_bytes(),
            Side::Destination => (*hdr).dst_addr = new.to_ne_bytes(),
        }
    }
    Ok(())
}

/// Writes a port (network order) at `off`: in place when the header is in
/// the linear part, else with a helper.
#[inline(always)]
fn store_port(ctx: &TcContext, off: usize, port: u16) -> Result<(), DropReason> {
    if let Some(p) =
        packet::ptr_at_variable::<[u8; 2]>(ctx, off, packet::MAX_L4_OFF + icmp::ECHO_ID)
    {
        // SAFETY: ptr_at checked the two bytes are in bounds.
        unsafe { *p = port.to_ne_bytes() };
        return Ok(());
    }
    ctx.store(off, &port, 0).map_err(failed)
}

/// Rewrites one side's address and port from `old` to `new`, with the IPv4
/// and transport checksums. The transport checksum goes through
/// bpf_l4_csum_replace, which alone knows the skb's checksum state (a
/// CHECKSUM_PARTIAL field holds only the pseudo-header's sum, which the
/// port is not part of); everything else is written in place.
#[inline(always)]
pub fn endpoint(
    ctx: &TcContext,
    l4: &L4,
    side: Side,
    old: Endpoint,
    new: Endpoint,
) -> Result<(), DropReason> {
    let (csum_off, flags) = l4_csum(l4);
    if old.ip != new.ip {
        if l4.proto != PROTO_ICMP {
            // The pseudo-header holds the addresses.
            let f = flags | BPF_F_PSEUDO_HDR as u64 | 4;
            ctx.l4_csum_replace(csum_off, old.ip as u64, new.ip as u64, f)
                .map_err(failed)?;
        }
        address(ctx, side, old.ip, new.ip)?;
    }
    if old.port != new.port {
        let (o, n) = (old.port.to_be(), new.port.to_be());
        ctx.l4_csum_replace(csum_off, o as u64, n as u64, flags | 2)
            .map_err(failed)?;
        store_port(ctx, port_off(l4, side), n)?;
    }
    Ok(())
}

/// Bytes of the quoted packet the engine reads: an option-less IPv4
/// header and the first 8 bytes of its transport header.
const QUOTE_LEN: usize = 28;
/// Offsets inside the quote.
mod quote {
    pub const VERSION_IHL: usize = 0;
    /// Version 4, IHL 5: no options.
    pub const PLAIN_IPV4: u8 = 0x45;
    pub const PROTO: usize = 9;
    pub const CHECK: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const L4: usize = 20;
}

/// An ICMP error (unreachable, fragmentation needed, time exceeded) that
/// quotes a packet this engine translated: where it goes back to.
#[derive(Clone, Copy, Default)]
pub struct IcmpError {
    pub rev: NatReverse,
    /// The translated address and port the quoted packet carried as source.
    pub nat_ip: u32,
    pub nat_port: u16,
    /// The quoted packet's protocol.
    pub proto: u8,
}

/// What an inbound packet is, as far as ICMP errors go.
pub enum Icmp {
    /// Not an ICMP error.
    NotAnError,
    /// An error about one of our translations.
    Ours(IcmpError),
    /// An error quoting something no translation made (the host's own).
    NotOurs,
}

/// Recognises an inbound ICMP error about one of our flows.
#[inline(always)]
pub fn icmp_error_in(ctx: &TcContext, ip: &Ipv4, udp_cone: bool) -> Result<Icmp, DropReason> {
    if ip.proto != PROTO_ICMP || ip.later_fragment {
        return Ok(Icmp::NotAnError);
    }
    let truncated = |_| DropReason::TruncatedL4;
    let icmp_type: u8 = ctx.load(ip.l4_off + icmp::TYPE).map_err(truncated)?;
    if icmp_type != icmp::DEST_UNREACH && icmp_type != icmp::TIME_EXCEEDED {
        return Ok(Icmp::NotAnError);
    }
    let q: [u8; QUOTE_LEN] = ctx.load(ip.l4_off + icmp::QUOTE).map_err(truncated)?;
    // Quoting what no translation made (the node's own GRE, ESP or SCTP,
    // or a header with options, which netplane does not restore;
    // docs/snat.md): the node's, as an error Linux's NAT finds no
    // conntrack entry for goes to the host's own sockets.
    if q[quote::VERSION_IHL] != quote::PLAIN_IPV4 {
        return Ok(Icmp::NotOurs);
    }
    let proto = q[quote::PROTO];
    let addr = |at: usize| u32::from_ne_bytes([q[at], q[at + 1], q[at + 2], q[at + 3]]);
    let (src, dst) = (addr(quote::SRC), addr(quote::DST));
    // The quoted packet went out: its source is our translated side.
    let (src_port, dst_port) = match proto {
        PROTO_TCP | PROTO_UDP => (
            be16(&q, quote::L4 + tcp::SRC_PORT),
            be16(&q, quote::L4 + tcp::DST_PORT),
        ),
        PROTO_ICMP => (be16(&q, quote::L4 + icmp::ECHO_ID), 0),
        _ => return Ok(Icmp::NotOurs),
    };
    // A UDP cone translation is keyed without the remote's port.
    let remote_port = if udp_cone && proto == PROTO_UDP {
        0
    } else {
        dst_port
    };
    let key = FlowKey::new(dst, src, remote_port, src_port, proto);
    // SAFETY: the value is copied out at once.
    Ok(match unsafe { NAT_IN.get(key) } {
        Some(rev) => Icmp::Ours(IcmpError {
            rev: *rev,
            nat_ip: src,
            nat_port: src_port,
            proto,
        }),
        None => Icmp::NotOurs,
    })
}

/// Sends an ICMP error back to the inside: the outer destination and the
/// quoted source (address, port, quoted header checksum) become the
/// original ones, with the IPv4 and ICMP checksums patched. The quoted
/// transport checksum is left as is (receivers match errors by addresses
/// and ports).
#[inline(always)]
pub fn icmp_error(ctx: &TcContext, ip: &Ipv4, e: &IcmpError) -> Result<(), DropReason> {
    let icmp_csum = ip.l4_off + icmp::CHECK;
    let q = ip.l4_off + icmp::QUOTE;
    // Outer destination: only the IPv4 header checksum covers it.
    address(ctx, Side::Destination, ip.dst, e.rev.orig_ip)?;
    // Quoted source address, and the quoted header's own checksum.
    let old_q_csum: [u8; 2] = ctx.load(q + quote::CHECK).map_err(failed)?;
    let old_q_csum = u16::from_be_bytes(old_q_csum);
    let new_q_csum = checksum::update_addr(old_q_csum, e.nat_ip, e.rev.orig_ip);
    ctx.l4_csum_replace(icmp_csum, e.nat_ip as u64, e.rev.orig_ip as u64, 4)
        .map_err(failed)?;
    ctx.store(q + quote::SRC, &e.rev.orig_ip, 0)
        .map_err(failed)?;
    let (oc, nc) = (old_q_csum.to_be(), new_q_csum.to_be());
    ctx.l4_csum_replace(icmp_csum, oc as u64, nc as u64, 2)
        .map_err(failed)?;
    ctx.store(q + quote::CHECK, &nc, 0).map_err(failed)?;
    // Quoted source port (or echo identifier).
    if e.nat_port != e.rev.orig_port {
        let port_off = if e.proto == PROTO_ICMP {
            q + quote::L4 + icmp::ECHO_ID
        } else {
            q + quote::L4 + tcp::SRC_PORT
        };
        let (op, np) = (e.nat_port.to_be(), e.rev.orig_port.to_be());
        ctx.l4_csum_replace(icmp_csum, op as u64, np as u64, 2)
            .map_err(failed)?;
        ctx.store(port_off, &np, 0).map_err(failed)?;
    }
    Ok(())
}
