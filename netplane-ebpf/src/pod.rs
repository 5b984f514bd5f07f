//! TC ingress on the host side of a pod's veth: everything a pod sends.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use netplane_common::{DropReason, Path};

use crate::{
    arp,
    counters::{count, drop},
    packet::{self, ETH_P_ARP, ETH_P_IP},
    route,
};

pub fn from_pod(ctx: &TcContext) -> i32 {
    match try_from_pod(ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop(reason),
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
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match route::local_pod(ip.src) {
        Some(pod) if pod.ifindex == ifindex => {}
        _ => return Err(DropReason::SpoofedSource),
    }

    // Same node: kubenet bridges these (L2, TTL kept).
    if let Some(pod) = route::local_pod(ip.dst) {
        return Ok(route::deliver_peer(ctx, eth, pod, Path::SameNode));
    }
    if ip.dst == cfg.node_ip {
        count(ctx, Path::PodToHost);
        return Ok(TC_ACT_OK);
    }
    if !cfg.in_cluster(ip.dst) {
        return crate::snat::masquerade(ctx, cfg, &ip);
    }
    let owner = route::owner_node(cfg, &ip)?;
    if let Some(verdict) = route::routed_hop(ctx) {
        return Ok(verdict);
    }
    Ok(route::to_node(ctx, cfg, owner, Path::ToRemoteNode))
}
