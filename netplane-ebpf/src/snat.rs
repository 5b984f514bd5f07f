//! The node's kubenet masquerade: pod traffic leaving the cluster pod CIDR
//! takes the node's IP, and replies find their pod again.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use aya_log_ebpf::warn;
use netplane_common::{DropReason, NodeConfig, Path};

use crate::{
    maps::NAT_CONFIG,
    nat::{self, Dir},
    packet::{self, Ipv4},
    route,
};

/// Pod to outside the cluster: translate the source to the node IP (slot 0)
/// and send it to its next hop: the destination itself inside the node
/// subnet, else the gateway (load balancer or appliance).
#[inline(always)]
pub fn masquerade(ctx: &TcContext, cfg: &NodeConfig, ip: &Ipv4) -> Result<i32, DropReason> {
    let nat = NAT_CONFIG.get(0).ok_or(DropReason::EgressUnavailable)?;
    let on_link = nat.subnet != 0 && ip.dst & nat.subnet_mask == nat.subnet;
    let next_hop = if on_link { ip.dst } else { nat.gateway_ip };
    if next_hop == 0 {
        return Err(DropReason::EgressUnavailable);
    }
    let l4 = nat::l4(ctx, ip, Dir::Out)?;
    if let Some(verdict) = route::routed_hop(ctx) {
        return Ok(verdict);
    }
    let e = nat::translate_out(&nat::out_key(ip, &l4), &l4, 0, 1).inspect_err(|r| {
        if *r == DropReason::NatPortsExhausted {
            warn!(
                ctx,
                "no SNAT port left toward {:i}:{}",
                u32::from_be(ip.dst),
                l4.dst_port
            );
        }
    })?;
    nat::rewrite(ctx, &l4, true, ip.src, e.nat_ip, l4.src_port, e.nat_port)?;
    Ok(route::to_node(ctx, cfg, next_hop, Path::SnatOut))
}

/// To the node IP from the VNet: a reply to a masqueraded flow goes back to
/// its pod; a packet to a translated port from anyone but that flow's
/// remote is dropped; anything else is the node's own and goes to its stack
/// (as with kubenet's iptables, where an unmatched packet is the host's).
#[inline(always)]
pub fn reply_in(ctx: &TcContext, ip: &Ipv4) -> Result<i32, DropReason> {
    match nat::icmp_error_in(ctx, ip)? {
        nat::Icmp::Ours(err) => {
            let pod = route::local_pod(err.rev.orig_ip).ok_or(DropReason::NoLocalPod)?;
            if let Some(verdict) = route::routed_hop(ctx) {
                return Ok(verdict);
            }
            nat::rewrite_icmp_error(ctx, ip, &err)?;
            let eth = packet::eth(ctx)?;
            return Ok(route::deliver_peer(ctx, eth, pod, Path::SnatIn));
        }
        nat::Icmp::NotOurs => return Ok(TC_ACT_OK), // about the node's own traffic
        nat::Icmp::NotAnError => {}
    }
    let Ok(l4) = nat::l4(ctx, ip, Dir::In) else {
        return Ok(TC_ACT_OK);
    };
    let Some(rev) = nat::reply_of(ip, &l4) else {
        if nat::port_owned(ip.dst, l4.dst_port, l4.proto) {
            return Err(DropReason::NatNoMapping);
        }
        return Ok(TC_ACT_OK);
    };
    let pod = route::local_pod(rev.orig_ip).ok_or(DropReason::NoLocalPod)?;
    if let Some(verdict) = route::routed_hop(ctx) {
        return Ok(verdict);
    }
    nat::untranslate(ctx, ip, &l4, &rev)?;
    let eth = packet::eth(ctx)?;
    Ok(route::deliver_peer(ctx, eth, pod, Path::SnatIn))
}
