//! Bounds-checked access to the headers the programs read and rewrite, for
//! TC (skb) and XDP contexts alike.
use aya_ebpf::programs::{TcContext, XdpContext};
use netplane_common::{DropReason, checksum, maps::ip_key};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// Ethernet types in host order (network-types' EtherType holds them
/// byte-swapped for comparing raw fields).
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;

/// What the parsers need of a program context.
pub trait Frame {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
    /// Whole frame length (for an skb, including non-linear data).
    fn frame_len(&self) -> usize;
}

impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len() as usize
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.data_end() - self.data()
    }
}

/// A pointer to a `T` at `offset`, if the packet holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Frame, offset: usize) -> Option<*mut T> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// A pointer to a `T` at a variable offset of at most `max` (a transport
/// header's), if the packet holds it. The verifier must know the bound of
/// the very register added to the packet pointer, and older verifiers
/// (6.1) forget a bound learned on one copy of a value when the compiler
/// reloads another copy from the stack. So once checked, the offset passes
/// through memory the compiler cannot see through (it could otherwise drop
/// the mask as redundant) and is masked: the bound comes from the mask, on
/// the value used.
#[inline(always)]
pub fn ptr_at_variable<T>(ctx: &impl Frame, offset: usize, max: usize) -> Option<*mut T> {
    if offset > max {
        return None;
    }
    // SAFETY: a volatile read of a live local.
    let opaque = unsafe { core::ptr::read_volatile(&offset) };
    ptr_at(ctx, opaque & ((max + 1).next_power_of_two() - 1))
}

#[inline(always)]
pub fn eth(ctx: &impl Frame) -> Result<*mut EthHdr, DropReason> {
    ptr_at::<EthHdr>(ctx, 0).ok_or(DropReason::TruncatedEthernet)
}

/// The Ethernet type as a host-order number.
#[inline(always)]
pub fn ether_type(eth: *const EthHdr) -> u16 {
    // SAFETY: `eth` came from `eth()`, which checked the header is in bounds.
    u16::from_be(unsafe { (*eth).ether_type })
}

/// The IPv4 header after the Ethernet header, checked for version, IHL and
/// total length.
pub struct Ipv4 {
    /// Source and destination in map-key form.
    pub src: u32,
    pub dst: u32,
    /// Offset of the L4 header.
    pub l4_off: usize,
    pub proto: u8,
    /// Fragment offset non-zero: no L4 header here.
    pub later_fragment: bool,
    /// More fragments follow (with `later_fragment` false: a first fragment).
    pub more_fragments: bool,
    /// The IP identification, which ties a datagram's fragments together.
    pub id: u16,
}

#[inline(always)]
pub fn ipv4(ctx: &impl Frame) -> Result<Ipv4, DropReason> {
    let hdr = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).ok_or(DropReason::MalformedIpv4)?;
    // SAFETY: ptr_at checked that the whole fixed header is in bounds.
    let (version, ihl, tot_len) = unsafe { ((*hdr).version(), (*hdr).ihl(), (*hdr).tot_len()) };
    let frame_len = ctx.frame_len();
    if version != 4
        || ihl < Ipv4Hdr::LEN as u8
        || (tot_len as usize) < ihl as usize
        || EthHdr::LEN + tot_len as usize > frame_len
    {
        return Err(DropReason::MalformedIpv4);
    }
    // SAFETY: as above; nothing has moved the packet since.
    let (src, dst, proto, frags, id) = unsafe {
        (
            ip_key((*hdr).src_addr),
            ip_key((*hdr).dst_addr),
            (*hdr).proto,
            u16::from_be_bytes((*hdr).frags),
            u16::from_be_bytes((*hdr).id),
        )
    };
    Ok(Ipv4 {
        src,
        dst,
        l4_off: EthHdr::LEN + ihl as usize,
        proto,
        later_fragment: frags & ip::FRAG_OFFSET_MASK != 0,
        more_fragments: frags & ip::MORE_FRAGMENTS != 0,
        id,
    })
}

/// The furthest a transport header can start: after the longest IPv4
/// header (60 bytes). Bounds offsets for in-place access.
pub const MAX_L4_OFF: usize = EthHdr::LEN + 60;

/// Reads a `T` at `off` (a transport header, whose offset depends on the
/// IHL): in place when it lies in the skb's linear part, else with
/// bpf_skb_load_bytes (a header in paged data).
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    if let Some(p) = ptr_at_variable::<T>(ctx, off, MAX_L4_OFF) {
        // SAFETY: ptr_at checked that the whole `T` is in bounds; packet
        // data has no alignment.
        return Some(unsafe { core::ptr::read_unaligned(p) });
    }
    ctx.load(off).ok()
}

/// 224.0.0.0/4 or 255.255.255.255 (a map-key form address).
#[inline(always)]
pub fn multicast_or_broadcast(ip: u32) -> bool {
    let first = ip.to_ne_bytes()[0];
    (224..240).contains(&first) || ip == u32::MAX
}

/// The TTL as seen by this hop (0 if the header is gone).
#[inline(always)]
pub fn ttl(ctx: &impl Frame) -> u8 {
    match ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) {
        // SAFETY: ptr_at checked the header is in bounds.
        Some(hdr) => unsafe { (*hdr).ttl },
        None => 0,
    }
}

/// Decrements the TTL and patches the header checksum incrementally.
/// The caller checked `ttl > 1`. (The header is looked up again rather than
/// kept: a packet pointer kept across code the compiler spills breaks the
/// verifier.)
#[inline(always)]
pub fn decrement_ttl(ctx: &impl Frame) {
    let Some(hdr) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return;
    };
    // SAFETY: ptr_at checked the header is in bounds; the caller checked
    // ttl > 1, so the decrement cannot wrap.
    unsafe {
        let old = u16::from_be_bytes([(*hdr).ttl, (*hdr).proto]);
        (*hdr).ttl -= 1;
        let new = u16::from_be_bytes([(*hdr).ttl, (*hdr).proto]);
        let check = u16::from_be_bytes((*hdr).check);
        (*hdr).check = checksum::update16(check, old, new).to_be_bytes();
    }
}

/// Sets the Ethernet addresses for delivery on a link.
#[inline(always)]
pub fn set_macs(eth: *mut EthHdr, dst: [u8; 6], src: [u8; 6]) {
    // SAFETY: `eth` came from `eth()` after the last helper that could move
    // the packet, so it is in bounds.
    unsafe {
        (*eth).dst_addr = dst;
        (*eth).src_addr = src;
    }
}

/// IPv4 header fields, as offsets from the start of the frame (the
/// programs only rewrite headers that follow an Ethernet header).
pub mod ip {
    use network_types::eth::EthHdr;
    pub const PROTO: usize = EthHdr::LEN + 9;
    pub const SRC: usize = EthHdr::LEN + 12;
    /// The flags and fragment offset field's offset bits, and the MF flag.
    pub const FRAG_OFFSET_MASK: u16 = 0x1fff;
    pub const MORE_FRAGMENTS: u16 = 0x2000;
}

/// TCP header fields, as offsets from the start of the TCP header, and flags.
pub mod tcp {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const ACK_SEQ: usize = 8;
    pub const FLAGS: usize = 13;
    pub const CHECK: usize = 16;
    /// Bytes read to get the ports and the flags.
    pub const HEAD: usize = 14;
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// UDP header fields, as offsets from the start of the UDP header.
pub mod udp {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const CHECK: usize = 6;
    pub const LEN: usize = 8;
}

/// ICMP header fields (offsets from the start of the ICMP header) and types.
pub mod icmp {
    pub const TYPE: usize = 0;
    pub const CHECK: usize = 2;
    /// Echo identifier; for errors, the quoted packet starts at [`QUOTE`].
    pub const ECHO_ID: usize = 4;
    pub const QUOTE: usize = 8;
    pub const HEAD: usize = 8;
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACH: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
}
