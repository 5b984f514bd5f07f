//! The outbound load balancer (or, with userDefinedRouting, the appliance):
//! node IPs become frontend IPs, each node using only its own port block.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use netplane_common::{DropReason, Path};

use crate::{
    counters::{count, drop},
    maps::{LB_BACKENDS, LB_FRONTENDS, NAT_CONFIG},
    packet::{self, ETH_P_IP},
    route,
    snat::{self, Reply, Restore, Target},
};

const PASS: i32 = TC_ACT_OK;

/// TC ingress on the VNet side: backends' traffic to the internet.
pub fn lb_from_vnet(ctx: &TcContext) -> i32 {
    try_from_vnet(ctx).unwrap_or_else(|r| drop(ctx, r))
}

#[inline(always)]
fn try_from_vnet(ctx: &TcContext) -> Result<i32, DropReason> {
    let eth = packet::eth(ctx)?;
    if packet::ether_type(eth) != ETH_P_IP {
        return Ok(PASS);
    }
    let cfg = NAT_CONFIG.get(0).ok_or(DropReason::NoNodeConfig)?;
    let ip = packet::ipv4(ctx)?;
    if cfg.on_link(ip.dst) {
        return Ok(PASS); // inside the VNet: for this host itself
    }
    if packet::multicast_or_broadcast(ip.dst) {
        return Ok(PASS); // the segment's own chatter (IGMP, ...), not egress
    }
    if cfg.next_hop_none(ip.dst) {
        return Err(DropReason::SystemRouteNone); // Azure's fabric drops it
    }
    // SAFETY: the value is copied out at once.
    let first = unsafe { LB_BACKENDS.get(ip.src) }
        .copied()
        .ok_or(DropReason::LbUnknownBackend)?;
    // The backend's block on each frontend IP.
    let target = Target {
        first,
        count: cfg.slots_per_backend,
        udp_cone: cfg.udp_cone != 0,
        keep_port: false,
        search_bitmap: false,
    };
    snat::egress(ctx, &ip, target)?;
    count(ctx, Path::LbOut);
    let next_hop = if cfg.outside_gateway != 0 {
        cfg.outside_gateway
    } else {
        ip.dst
    };
    Ok(route::redirect_neigh(cfg.outside_ifindex, next_hop))
}

/// TC ingress on the internet side: replies to frontend IPs go back to
/// their node; anything else sent to a frontend IP is dropped.
pub fn lb_from_internet(ctx: &TcContext) -> i32 {
    try_from_internet(ctx).unwrap_or_else(|r| drop(ctx, r))
}

#[inline(always)]
fn try_from_internet(ctx: &TcContext) -> Result<i32, DropReason> {
    let eth = packet::eth(ctx)?;
    if packet::ether_type(eth) != ETH_P_IP {
        return Ok(PASS);
    }
    let cfg = NAT_CONFIG.get(0).ok_or(DropReason::NoNodeConfig)?;
    let ip = packet::ipv4(ctx)?;
    // SAFETY: only presence is read.
    if unsafe { LB_FRONTENDS.get(ip.dst) }.is_none() {
        return Ok(PASS); // this host's own address
    }
    let mut restore = Restore::default();
    match snat::ingress(ctx, &ip, &mut restore, cfg.udp_cone != 0)? {
        Reply::Translated => {}
        Reply::Unparsed(reason) => return Err(reason),
        Reply::NotTranslated => return Err(DropReason::NatNoMapping),
    };
    restore.apply(ctx, &ip)?;
    count(ctx, Path::LbIn);
    Ok(route::redirect_neigh(
        cfg.inside_ifindex,
        restore.orig.orig_ip,
    ))
}
