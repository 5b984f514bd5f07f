//! The SNAT engine: L4 parsing, translation lookup and creation (port
//! claim), header rewriting. Shared by the node masquerade and the load
//! balancer; which addresses and ports it may use comes from the slots.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
    programs::TcContext,
};
use netplane_common::{
    DropReason, checksum,
    nat::{
        FlowKey, MAX_FRONTENDS, NatEntry, NatReverse, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SnatSlot,
        owned_key, state,
    },
};

use crate::{
    maps::{NAT_IN, NAT_OUT, PORT_HINTS, PORT_OWNED, SNAT_ALLOCS, SNAT_FAILS, SNAT_SLOTS},
    packet::{IP_CHECK_OFF, IP_DST_OFF, IP_SRC_OFF, Ipv4},
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The transport header fields the engine uses.
pub struct L4 {
    pub proto: u8,
    pub off: usize,
    /// TCP/UDP ports; ICMP echo: the identifier as the port on the side
    /// that chose it, 0 on the other.
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
}

/// Which side of an ICMP echo the identifier belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Outbound: requests; the identifier is the source "port".
    Out,
    /// Inbound: replies; the identifier is the destination "port".
    In,
}

/// Reads the transport header with bpf_skb_load_bytes: its offset depends
/// on the IHL, and the verifier refuses packet-pointer math with an offset
/// it cannot bound.
#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ipv4, dir: Dir) -> Result<L4, DropReason> {
    if ip.later_fragment {
        return Err(DropReason::FragmentNotTracked);
    }
    let off = ip.l4_off;
    match ip.proto {
        PROTO_TCP => {
            let h: [u8; 14] = ctx.load(off).map_err(|_| DropReason::MalformedIpv4)?;
            Ok(L4 {
                proto: PROTO_TCP,
                off,
                src_port: u16::from_be_bytes([h[0], h[1]]),
                dst_port: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: h[13],
            })
        }
        PROTO_UDP => {
            let h: [u8; 8] = ctx.load(off).map_err(|_| DropReason::MalformedIpv4)?;
            Ok(L4 {
                proto: PROTO_UDP,
                off,
                src_port: u16::from_be_bytes([h[0], h[1]]),
                dst_port: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: 0,
            })
        }
        PROTO_ICMP => {
            let h: [u8; 8] = ctx.load(off).map_err(|_| DropReason::MalformedIpv4)?;
            let id = u16::from_be_bytes([h[4], h[5]]);
            // Out: only requests start flows. In: replies match them; an
            // echo request coming in gets a tuple no flow has.
            let (src_port, dst_port) = match (dir, h[0]) {
                (Dir::Out, ICMP_ECHO_REQUEST) => (id, 0),
                (Dir::In, ICMP_ECHO_REPLY) => (0, id),
                (Dir::In, ICMP_ECHO_REQUEST) => (id, 0),
                _ => return Err(DropReason::UnsupportedL4),
            };
            Ok(L4 {
                proto: PROTO_ICMP,
                off,
                src_port,
                dst_port,
                tcp_flags: 0,
            })
        }
        _ => Err(DropReason::UnsupportedL4),
    }
}

/// The original tuple of an outbound packet.
#[inline(always)]
pub fn out_key(ip: &Ipv4, l4: &L4) -> FlowKey {
    FlowKey::new(ip.src, ip.dst, l4.src_port, l4.dst_port, l4.proto)
}

/// The reply tuple of an inbound packet.
#[inline(always)]
pub fn in_key(ip: &Ipv4, l4: &L4) -> FlowKey {
    FlowKey::new(ip.src, ip.dst, l4.src_port, l4.dst_port, l4.proto)
}

/// The translation a reply belongs to, if any; refreshes its flow's clock
/// and state.
#[inline(always)]
pub fn reply_of(ip: &Ipv4, l4: &L4) -> Option<NatReverse> {
    let rev = unsafe { NAT_IN.get(in_key(ip, l4)) }.copied()?;
    let out = FlowKey::new(rev.orig_ip, ip.src, rev.orig_port, l4.src_port, l4.proto);
    if let Some(e) = NAT_OUT.get_ptr_mut(out) {
        touch(e, l4, true);
    }
    Some(rev)
}

/// Rewrites a reply's destination back to the original address and port.
/// Invalidates packet pointers.
#[inline(always)]
pub fn untranslate(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    rev: &NatReverse,
) -> Result<(), DropReason> {
    rewrite(
        ctx,
        l4,
        false,
        ip.dst,
        rev.orig_ip,
        l4.dst_port,
        rev.orig_port,
    )
}

/// Updates an entry's clock and state for a packet; a SYN reopens a
/// closing entry (TIME_WAIT reuse).
#[inline(always)]
pub fn touch(e: *mut NatEntry, l4: &L4, reply: bool) {
    unsafe {
        (*e).last_seen_ns = bpf_ktime_get_ns();
        let f = l4.tcp_flags;
        let st = (*e).state;
        (*e).state = if l4.proto == PROTO_TCP && f & (TCP_FIN | TCP_RST) != 0 {
            state::CLOSING
        } else if l4.proto == PROTO_TCP && !reply && f & TCP_SYN != 0 && f & TCP_ACK == 0 {
            if st == state::CLOSING { state::NEW } else { st }
        } else if reply && st == state::NEW {
            state::ESTABLISHED
        } else {
            st
        };
    }
}

/// The translation of an outbound flow: found, or made from the first
/// slot in `first..first + count` (tried from a per-flow rotation) that has
/// a free port for this destination.
#[inline(always)]
pub fn translate_out(
    key: &FlowKey,
    l4: &L4,
    first: u32,
    count: u32,
) -> Result<NatEntry, DropReason> {
    if let Some(e) = NAT_OUT.get_ptr_mut(key) {
        touch(e, l4, false);
        return Ok(unsafe { *e });
    }
    let spread = mix(key);
    let mut i = 0;
    while i < MAX_FRONTENDS {
        if i >= count {
            break;
        }
        let slot = first + (spread.wrapping_add(i)) % count;
        if let Some(e) = claim(key, l4, slot, spread)? {
            return Ok(e);
        }
        i += 1;
    }
    if let Some(fails) = SNAT_FAILS.get_ptr_mut(first) {
        unsafe { *fails += 1 };
    }
    Err(DropReason::NatPortsExhausted)
}

/// Tries to claim a port in `slot` for `key`'s destination.
#[inline(always)]
fn claim(key: &FlowKey, l4: &L4, slot: u32, spread: u32) -> Result<Option<NatEntry>, DropReason> {
    let Some(s) = SNAT_SLOTS.get(slot) else {
        return Ok(None);
    };
    let size = s.size();
    if s.nat_ip == 0 || size == 0 {
        return Ok(None);
    }
    // The reply tuple with the port left open; its destination part keys
    // the hint.
    let dest = FlowKey::new(key.dst_ip, s.nat_ip, key.dst_port, 0, key.proto);
    let start = match unsafe { PORT_HINTS.get(dest) } {
        Some(h) => *h % size,
        None => spread % size,
    };
    let mut probe = Probe {
        key: dest,
        rev: NatReverse {
            orig_ip: key.src_ip,
            orig_port: key.src_port,
            _pad: 0,
        },
        slot: *s,
        start,
        found: 0,
    };
    // Walks every port of the slot at most once: bounded by the slot size,
    // and a free port is found whenever one exists.
    unsafe {
        bpf_loop(
            size,
            probe_port as *mut c_void,
            &mut probe as *mut Probe as *mut c_void,
            0,
        );
    }
    if probe.found == 0 {
        return Ok(None);
    }
    let port = probe.found as u16;
    let mut rev_key = dest;
    rev_key.dst_port = port;
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = NatEntry {
        nat_ip: s.nat_ip,
        nat_port: port,
        state: state::NEW,
        _pad: 0,
        slot,
        _pad2: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    if NAT_OUT.insert(key, entry, BPF_NOEXIST as u64).is_err() {
        // Another CPU made this flow first (or the table is full): give the
        // port back and use theirs.
        let _ = NAT_IN.remove(rev_key);
        return match NAT_OUT.get_ptr_mut(key) {
            Some(e) => {
                touch(e, l4, false);
                Ok(Some(unsafe { *e }))
            }
            None => Err(DropReason::NatTableFull),
        };
    }
    if let Some(allocs) = SNAT_ALLOCS.get_ptr_mut(slot) {
        unsafe { *allocs += 1 };
    }
    let next = (port as u32 - s.port_lo as u32 + 1) % size;
    let _ = PORT_HINTS.insert(dest, next, 0);
    let _ = PORT_OWNED.insert(owned_key(s.nat_ip, port, key.proto), 1, 0);
    crate::events::emit(netplane_common::events::FlowEvent {
        kind: netplane_common::events::kind::TRANSLATION,
        proto: key.proto,
        src_ip: key.src_ip,
        dst_ip: key.dst_ip,
        src_port: key.src_port,
        dst_port: key.dst_port,
        nat_ip: s.nat_ip,
        nat_port: port,
        ..Default::default()
    });
    Ok(Some(entry))
}

#[repr(C)]
struct Probe {
    key: FlowKey,
    rev: NatReverse,
    slot: SnatSlot,
    start: u32,
    found: u32,
}

/// bpf_loop callback: claims port (start + i) of the slot if no flow to the
/// same destination holds it. Returns 1 to stop.
unsafe extern "C" fn probe_port(i: u32, ctx: *mut c_void) -> i64 {
    let p = unsafe { &mut *(ctx as *mut Probe) };
    let size = p.slot.size();
    if size == 0 {
        return 1;
    }
    let port = p.slot.port_lo as u32 + (p.start + i) % size;
    p.key.dst_port = port as u16;
    if NAT_IN.insert(p.key, p.rev, BPF_NOEXIST as u64).is_ok() {
        p.found = port;
        return 1;
    }
    0
}

/// A cheap mix of the tuple: where a flow starts probing.
#[inline(always)]
fn mix(k: &FlowKey) -> u32 {
    let mut h =
        k.src_ip ^ k.dst_ip.rotate_left(7) ^ ((k.src_port as u32) << 16 | k.dst_port as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

/// The checksum field of the transport header and the flags its updates need.
#[inline(always)]
fn l4_csum(l4: &L4) -> (usize, u64) {
    match l4.proto {
        PROTO_TCP => (l4.off + 16, 0),
        PROTO_UDP => (l4.off + 6, BPF_F_MARK_MANGLED_0 as u64),
        _ => (l4.off + 2, 0),
    }
}

/// Where the port sits: TCP/UDP source or destination port, or the ICMP
/// echo identifier.
#[inline(always)]
fn port_off(l4: &L4, src: bool) -> usize {
    match (l4.proto, src) {
        (PROTO_ICMP, _) => l4.off + 4,
        (_, true) => l4.off,
        (_, false) => l4.off + 2,
    }
}

/// Rewrites the source (`src`) or destination address and port, with the
/// IPv4 and transport checksums. Works for CHECKSUM_PARTIAL skbs too
/// (BPF_F_PSEUDO_HDR). Invalidates packet pointers.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    l4: &L4,
    src: bool,
    old_ip: u32,
    new_ip: u32,
    old_port: u16,
    new_port: u16,
) -> Result<(), DropReason> {
    let bad = |_| DropReason::MalformedIpv4;
    let (csum_off, flags) = l4_csum(l4);
    if old_ip != new_ip {
        ctx.l3_csum_replace(IP_CHECK_OFF, old_ip as u64, new_ip as u64, 4)
            .map_err(bad)?;
        if l4.proto != PROTO_ICMP {
            // The pseudo-header holds the addresses.
            ctx.l4_csum_replace(
                csum_off,
                old_ip as u64,
                new_ip as u64,
                flags | BPF_F_PSEUDO_HDR as u64 | 4,
            )
            .map_err(bad)?;
        }
        let off = if src { IP_SRC_OFF } else { IP_DST_OFF };
        ctx.store(off, &new_ip, 0).map_err(bad)?;
    }
    if old_port != new_port {
        let (o, n) = (old_port.to_be(), new_port.to_be());
        ctx.l4_csum_replace(csum_off, o as u64, n as u64, flags | 2)
            .map_err(bad)?;
        ctx.store(port_off(l4, src), &n, 0).map_err(bad)?;
    }
    Ok(())
}

/// True when some flow holds this translated address and port.
#[inline(always)]
pub fn port_owned(nat_ip: u32, port: u16, proto: u8) -> bool {
    unsafe { PORT_OWNED.get(owned_key(nat_ip, port, proto)) }.is_some()
}

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Bytes of the quoted packet the engine reads: an option-less IPv4
/// header and the first 8 bytes of its transport header.
const QUOTE_LEN: usize = 28;

/// An ICMP error (unreachable, fragmentation needed, time exceeded) that
/// quotes a packet this engine translated: where it goes back to.
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
pub fn icmp_error_in(ctx: &TcContext, ip: &Ipv4) -> Result<Icmp, DropReason> {
    if ip.proto != PROTO_ICMP || ip.later_fragment {
        return Ok(Icmp::NotAnError);
    }
    let icmp_type: u8 = ctx.load(ip.l4_off).map_err(|_| DropReason::MalformedIpv4)?;
    if icmp_type != ICMP_DEST_UNREACH && icmp_type != ICMP_TIME_EXCEEDED {
        return Ok(Icmp::NotAnError);
    }
    let q: [u8; QUOTE_LEN] = ctx
        .load(ip.l4_off + 8)
        .map_err(|_| DropReason::MalformedIpv4)?;
    if q[0] != 0x45 {
        return Err(DropReason::UnsupportedL4); // quoted header with options
    }
    let proto = q[9];
    let src = u32::from_ne_bytes([q[12], q[13], q[14], q[15]]);
    let dst = u32::from_ne_bytes([q[16], q[17], q[18], q[19]]);
    // The quoted packet went out: its source is our translated side.
    let (src_port, dst_port) = match proto {
        PROTO_TCP | PROTO_UDP => (
            u16::from_be_bytes([q[20], q[21]]),
            u16::from_be_bytes([q[22], q[23]]),
        ),
        PROTO_ICMP => (u16::from_be_bytes([q[24], q[25]]), 0),
        _ => return Err(DropReason::UnsupportedL4),
    };
    let key = FlowKey::new(dst, src, dst_port, src_port, proto);
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
/// and ports). Invalidates packet pointers.
#[inline(always)]
pub fn rewrite_icmp_error(ctx: &TcContext, ip: &Ipv4, e: &IcmpError) -> Result<(), DropReason> {
    let bad = |_| DropReason::MalformedIpv4;
    let icmp_csum = ip.l4_off + 2;
    let quote = ip.l4_off + 8;
    // Outer destination: only the IPv4 header checksum covers it.
    ctx.l3_csum_replace(IP_CHECK_OFF, ip.dst as u64, e.rev.orig_ip as u64, 4)
        .map_err(bad)?;
    ctx.store(IP_DST_OFF, &e.rev.orig_ip, 0).map_err(bad)?;
    // Quoted source address, and the quoted header's own checksum.
    let old_q_csum: [u8; 2] = ctx.load(quote + 10).map_err(bad)?;
    let old_q_csum = u16::from_be_bytes(old_q_csum);
    let (o, n) = (e.nat_ip.to_ne_bytes(), e.rev.orig_ip.to_ne_bytes());
    let mid = checksum::update16(
        old_q_csum,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([n[0], n[1]]),
    );
    let new_q_csum = checksum::update16(
        mid,
        u16::from_be_bytes([o[2], o[3]]),
        u16::from_be_bytes([n[2], n[3]]),
    );
    ctx.l4_csum_replace(icmp_csum, e.nat_ip as u64, e.rev.orig_ip as u64, 4)
        .map_err(bad)?;
    ctx.store(quote + 12, &e.rev.orig_ip, 0).map_err(bad)?;
    let (oc, nc) = (old_q_csum.to_be(), new_q_csum.to_be());
    ctx.l4_csum_replace(icmp_csum, oc as u64, nc as u64, 2)
        .map_err(bad)?;
    ctx.store(quote + 10, &nc, 0).map_err(bad)?;
    // Quoted source port (or echo identifier).
    if e.nat_port != e.rev.orig_port {
        let port_off = if e.proto == PROTO_ICMP {
            quote + 24
        } else {
            quote + 20
        };
        let (op, np) = (e.nat_port.to_be(), e.rev.orig_port.to_be());
        ctx.l4_csum_replace(icmp_csum, op as u64, np as u64, 2)
            .map_err(bad)?;
        ctx.store(port_off, &np, 0).map_err(bad)?;
    }
    Ok(())
}
