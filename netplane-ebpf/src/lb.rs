//! The outbound load balancer (or, with userDefinedRouting, the appliance):
//! node IPs become frontend IPs, each node using only its own port block.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use aya_log_ebpf::warn;
use netplane_common::{DropReason, Path};

use crate::{
    counters::{count, drop},
    maps::{LB_BACKENDS, LB_FRONTENDS, NAT_CONFIG},
    nat::{self, Dir},
    packet::{self, ETH_P_IP},
    route,
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
    if cfg.subnet != 0 && ip.dst & cfg.subnet_mask == cfg.subnet {
        return Ok(PASS); // inside the VNet: for this host itself
    }
    if packet::multicast_or_broadcast(ip.dst) {
        return Ok(PASS); // the segment's own chatter (IGMP, ...), not egress
    }
    let first = unsafe { LB_BACKENDS.get(ip.src) }
        .copied()
        .ok_or(DropReason::LbUnknownBackend)?;
    let l4 = nat::l4(ctx, &ip, Dir::Out)?;
    let e = nat::translate_out(&nat::out_key(&ip, &l4), &l4, first, cfg.slots_per_backend)
        .inspect_err(|r| {
            if *r == DropReason::NatPortsExhausted {
                warn!(
                    ctx,
                    "backend {:i} has no SNAT port left toward {:i}:{}",
                    u32::from_be(ip.src),
                    u32::from_be(ip.dst),
                    l4.dst_port
                );
            }
        })?;
    nat::rewrite(ctx, &l4, true, ip.src, e.nat_ip, l4.src_port, e.nat_port)?;
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
    if unsafe { LB_FRONTENDS.get(ip.dst) }.is_none() {
        return Ok(PASS); // this host's own address
    }
    match nat::icmp_error_in(ctx, &ip)? {
        nat::Icmp::Ours(err) => {
            nat::rewrite_icmp_error(ctx, &ip, &err)?;
            count(ctx, Path::LbIn);
            return Ok(route::redirect_neigh(cfg.inside_ifindex, err.rev.orig_ip));
        }
        nat::Icmp::NotOurs => return Err(DropReason::NatNoMapping),
        nat::Icmp::NotAnError => {}
    }
    let l4 = nat::l4(ctx, &ip, Dir::In)?;
    let rev = nat::reply_of(&ip, &l4).ok_or(DropReason::NatNoMapping)?;
    nat::untranslate(ctx, &ip, &l4, &rev)?;
    count(ctx, Path::LbIn);
    Ok(route::redirect_neigh(cfg.inside_ifindex, rev.orig_ip))
}
