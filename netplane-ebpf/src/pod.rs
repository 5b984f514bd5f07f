//! TC ingress on the host side of a pod's veth: everything a pod sends.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use aya_log_ebpf::debug;
use netplane_common::{
    DropReason, Path,
    events::{FlowEvent, kind},
    nat::PROTO_TCP,
};

use crate::{
    arp,
    counters::{count, drop},
    packet::{self, ETH_P_ARP, ETH_P_IP, tcp},
    route,
    service::{self, Forward},
};

#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    match try_from_pod(ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop(ctx, reason),
    }
}

#[inline(always)]
fn try_from_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    let eth = packet::eth(ctx)?;
    match packet::ether_type(eth) {
        ETH_P_IP => {}
        ETH_P_ARP => return arp::answer(ctx, eth),
        _ => return Err(DropReason::UnsupportedProtocol),
    }
    let cfg = route::node_config()?;
    let ip = packet::ipv4(ctx)?;

    // Anti-spoofing: the source must be a pod of this node, sending from its
    // own veth.
    // SAFETY: the skb pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if !route::pod_sends_as(ifindex, ip.src) {
        debug!(
            ctx,
            "spoofed source {:i} on ifindex {}",
            u32::from_be(ip.src),
            ifindex
        );
        return Err(DropReason::SpoofedSource);
    }

    match service::from_client(ctx, cfg, &ip)? {
        None => {}
        Some(Forward::Verdict(verdict)) => return Ok(verdict),
        Some(Forward::Masquerade) => {
            let ip = packet::ipv4(ctx)?; // as translated
            return crate::masquerade::masquerade_or_reply(ctx, cfg, &ip);
        }
    }
    service::direct_connection(ctx, &ip);
    if ip.proto == PROTO_TCP && cfg.in_cluster(ip.dst) {
        report_new_tcp(ctx, &ip);
    }
    // A backend's reply to a client on this node (bridged on kubenet).
    if let Some(client) = service::restore_reply(ctx, &ip)? {
        return service::deliver_reply(ctx, cfg, client);
    }
    if ip.dst == cfg.node_ip {
        count(ctx, Path::PodToHost);
        return Ok(TC_ACT_OK);
    }
    // Pods' addresses are all inside the cluster pod CIDR: egress pays no
    // pod lookup.
    if !cfg.in_cluster(ip.dst) {
        return crate::masquerade::masquerade_or_reply(ctx, cfg, &ip);
    }
    // Same node: kubenet bridges these (L2, TTL kept).
    if let Some(pod) = route::local_pod(ip.dst) {
        return Ok(route::deliver_peer(ctx, eth, pod, Path::SameNode));
    }
    let owner = route::owner_node(cfg, &ip)?;
    if let Some(verdict) = route::routed_hop(ctx) {
        return Ok(verdict);
    }
    Ok(route::to_node(ctx, cfg, owner, Path::ToRemoteNode))
}

/// A pod opening a TCP connection inside the cluster (a SYN without ACK):
/// a new-flow event. Translated flows report their translation instead.
#[inline(always)]
fn report_new_tcp(ctx: &TcContext, ip: &packet::Ipv4) {
    let Some(h) = packet::read::<[u8; tcp::HEAD]>(ctx, ip.l4_off) else {
        return;
    };
    if h[tcp::FLAGS] & (tcp::SYN | tcp::ACK) != tcp::SYN {
        return;
    }
    crate::events::emit(FlowEvent {
        kind: kind::NEW_FLOW,
        proto: PROTO_TCP,
        src_ip: ip.src,
        dst_ip: ip.dst,
        src_port: u16::from_be_bytes([h[tcp::SRC_PORT], h[tcp::SRC_PORT + 1]]),
        dst_port: u16::from_be_bytes([h[tcp::DST_PORT], h[tcp::DST_PORT + 1]]),
        ..Default::default()
    });
}
