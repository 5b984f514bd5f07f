//! Flows opened toward a pod from outside the cluster pod CIDR (another
//! node, a hostNetwork pod, NodePort traffic after kube-proxy's SNAT). A
//! kubenet node's conntrack knows their replies as replies and never
//! masquerades them; here `from_uplink` remembers such flows by the pod
//! side's tuple, and `from_pod` routes their replies untranslated.
use aya_ebpf::programs::TcContext;
use netplane_common::nat::{FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use crate::{
    maps::INBOUND_FLOWS,
    packet::{self, Ipv4, icmp, tcp},
};

/// The pod side's tuple of a packet to (`to_pod`) or from the pod: pod
/// address and port first. ICMP echo: the identifier as the remote's
/// "port" — requests coming in, replies going out.
#[inline(always)]
fn pod_side(ctx: &TcContext, ip: &Ipv4, to_pod: bool) -> Option<FlowKey> {
    if ip.later_fragment {
        return None;
    }
    let (pod, remote) = if to_pod {
        (ip.dst, ip.src)
    } else {
        (ip.src, ip.dst)
    };
    let (pod_port, remote_port) = match ip.proto {
        PROTO_TCP | PROTO_UDP => {
            let h: [u8; 4] = packet::read(ctx, ip.l4_off)?;
            let src = u16::from_be_bytes([h[tcp::SRC_PORT], h[tcp::SRC_PORT + 1]]);
            let dst = u16::from_be_bytes([h[tcp::DST_PORT], h[tcp::DST_PORT + 1]]);
            if to_pod { (dst, src) } else { (src, dst) }
        }
        PROTO_ICMP => {
            let h: [u8; icmp::HEAD] = packet::read(ctx, ip.l4_off)?;
            let want = if to_pod {
                icmp::ECHO_REQUEST
            } else {
                icmp::ECHO_REPLY
            };
            if h[icmp::TYPE] != want {
                return None;
            }
            (
                0,
                u16::from_be_bytes([h[icmp::ECHO_ID], h[icmp::ECHO_ID + 1]]),
            )
        }
        _ => return None,
    };
    Some(FlowKey::new(pod, remote, pod_port, remote_port, ip.proto))
}

/// A packet from outside the cluster pod CIDR to a local pod: remember
/// (or refresh) its flow.
#[inline(always)]
pub fn opened_from_outside(ctx: &TcContext, ip: &Ipv4) {
    if let Some(k) = pod_side(ctx, ip, true) {
        let now = crate::clock::coarse();
        let _ = INBOUND_FLOWS.insert(k, now, 0);
    }
}

/// A pod's packet that answers a flow opened from outside.
#[inline(always)]
pub fn is_reply(ctx: &TcContext, ip: &Ipv4) -> bool {
    // SAFETY: only presence is read.
    pod_side(ctx, ip, false).is_some_and(|k| unsafe { INBOUND_FLOWS.get(k) }.is_some())
}
