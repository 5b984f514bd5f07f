//! The transport fields a translation (SNAT, or a Service's DNAT) is keyed
//! by.
use aya_ebpf::programs::TcContext;
use netplane_common::{
    DropReason,
    nat::{FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
};

use crate::packet::{self, Ipv4, icmp, tcp, udp};

/// The transport header fields the engine uses.
#[derive(Clone, Copy, Default)]
pub struct L4 {
    pub proto: u8,
    /// Offset of the transport header in the frame.
    pub off: usize,
    /// TCP/UDP ports; ICMP echo: the identifier as the port on the side
    /// that chose it, 0 on the other.
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// TCP: the acknowledgment number (host order).
    pub ack: u32,
    /// UDP cone: the remote's real port, which the tuple above holds as 0
    /// (one translation per remote IP, whatever its port).
    pub remote_port: u16,
}

impl L4 {
    /// The packet's tuple as it travels: an outbound packet's original
    /// tuple, or an inbound packet's reply tuple.
    #[inline(always)]
    pub fn key(&self, ip: &Ipv4) -> FlowKey {
        FlowKey::new(ip.src, ip.dst, self.src_port, self.dst_port, self.proto)
    }
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
pub fn parse(ctx: &TcContext, ip: &Ipv4, dir: Dir, cone: bool) -> Result<L4, DropReason> {
    if ip.later_fragment {
        return Err(DropReason::FragmentNotTracked);
    }
    let off = ip.l4_off;
    match ip.proto {
        PROTO_TCP => {
            let h: [u8; tcp::HEAD] = packet::read(ctx, off).ok_or(DropReason::TruncatedL4)?;
            Ok(L4 {
                proto: PROTO_TCP,
                off,
                src_port: be16(&h, tcp::SRC_PORT),
                dst_port: be16(&h, tcp::DST_PORT),
                tcp_flags: h[tcp::FLAGS],
                ack: u32::from_be_bytes([
                    h[tcp::ACK_SEQ],
                    h[tcp::ACK_SEQ + 1],
                    h[tcp::ACK_SEQ + 2],
                    h[tcp::ACK_SEQ + 3],
                ]),
                remote_port: 0,
            })
        }
        PROTO_UDP => {
            let h: [u8; udp::LEN] = packet::read(ctx, off).ok_or(DropReason::TruncatedL4)?;
            let (mut src_port, mut dst_port) = (be16(&h, udp::SRC_PORT), be16(&h, udp::DST_PORT));
            let mut remote_port = 0;
            if cone {
                let remote = if dir == Dir::Out {
                    &mut dst_port
                } else {
                    &mut src_port
                };
                remote_port = core::mem::take(remote);
            }
            Ok(L4 {
                proto: PROTO_UDP,
                off,
                src_port,
                dst_port,
                tcp_flags: 0,
                ack: 0,
                remote_port,
            })
        }
        PROTO_ICMP => {
            let h: [u8; icmp::HEAD] = packet::read(ctx, off).ok_or(DropReason::TruncatedL4)?;
            let id = be16(&h, icmp::ECHO_ID);
            // Out: only requests start flows. In: replies match them; an
            // echo request coming in gets a tuple no flow has.
            let (src_port, dst_port) = match (dir, h[icmp::TYPE]) {
                (Dir::Out, icmp::ECHO_REQUEST) => (id, 0),
                (Dir::In, icmp::ECHO_REPLY) => (0, id),
                (Dir::In, icmp::ECHO_REQUEST) => (id, 0),
                _ => return Err(DropReason::UnsupportedL4),
            };
            Ok(L4 {
                proto: PROTO_ICMP,
                off,
                src_port,
                dst_port,
                tcp_flags: 0,
                ack: 0,
                remote_port: 0,
            })
        }
        _ => Err(DropReason::UnsupportedL4),
    }
}

/// A big-endian u16 at `at` of a header read into a byte array.
#[inline(always)]
pub fn be16<const N: usize>(h: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}
