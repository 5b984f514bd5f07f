//! TC hooks on the node's NIC in the VNet.
use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    programs::{TcContext, XdpContext},
};
use netplane_common::{DropReason, Path, maps::MARK_ROUTED};

use crate::{
    counters::{count_drop, drop},
    packet::{self, ETH_P_IP},
    route, service,
};

const PASS: i32 = TC_ACT_OK;

/// Ingress: packets from the VNet. Local pods get them (a routed hop);
/// other pod CIDRs are not ours; everything else is the node's own.
pub fn from_uplink(ctx: &TcContext) -> i32 {
    match try_from_uplink(ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop(ctx, reason),
    }
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<i32, DropReason> {
    let eth = packet::eth(ctx)?;
    if packet::ether_type(eth) != ETH_P_IP {
        return Ok(PASS); // ARP and friends belong to the node
    }
    let cfg = route::node_config()?;
    let ip = packet::ipv4(ctx)?;
    if ip.dst == cfg.node_ip {
        return crate::masquerade::reply_in(ctx, &ip);
    }
    if let Some(client) = service::restore_reply(ctx, &ip)? {
        let pod = route::local_pod(client).ok_or(DropReason::NoLocalPod)?;
        if let Some(verdict) = route::routed_hop(ctx) {
            return Ok(verdict);
        }
        let eth = packet::eth(ctx)?;
        return Ok(route::deliver_peer(ctx, eth, pod, Path::ServiceReply));
    }
    if let Some(pod) = route::local_pod(ip.dst) {
        if !cfg.in_cluster(ip.src) {
            if !route::in_node_subnet(ip.src) {
                return Err(DropReason::UnsolicitedToPod);
            }
            // A node (or hostNetwork pod) opening a flow to this pod: its
            // replies must leave untranslated.
            crate::inbound::opened_from_outside(ctx, &ip);
        }
        if let Some(verdict) = route::routed_hop(ctx) {
            return Ok(verdict);
        }
        return Ok(route::deliver_peer(ctx, eth, pod, Path::FromRemoteNode));
    }
    if cfg.in_cluster(ip.dst) {
        return Err(DropReason::NotForThisNode);
    }
    Ok(PASS)
}

/// Egress: the node's own stack (including the kernel's ICMP errors) sending
/// to a pod. Without kernel routes for pod CIDRs such packets follow the
/// default route to this NIC; here they are sent where the pod lives.
pub fn to_uplink(ctx: &TcContext) -> i32 {
    match try_to_uplink(ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop(ctx, reason),
    }
}

#[inline(always)]
fn try_to_uplink(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: the skb pointer is valid for the whole program run.
    if unsafe { (*ctx.skb.skb).mark } == MARK_ROUTED {
        return Ok(PASS); // routed by from_pod, already has its next hop
    }
    let Ok(eth) = packet::eth(ctx) else {
        return Ok(PASS);
    };
    if packet::ether_type(eth) != ETH_P_IP {
        return Ok(PASS);
    }
    let cfg = route::node_config()?;
    let Ok(ip) = packet::ipv4(ctx) else {
        return Ok(PASS);
    };
    if let Some(verdict) = service::from_host(ctx, cfg, &ip)? {
        return Ok(verdict);
    }
    service::direct_connection(ctx, &ip);
    if let Some(client) = service::restore_reply(ctx, &ip)? {
        let pod = route::local_pod(client).ok_or(DropReason::NoLocalPod)?;
        let eth = packet::eth(ctx)?;
        return Ok(route::deliver_egress(ctx, eth, pod, Path::ServiceReply));
    }
    if let Some(pod) = route::local_pod(ip.dst) {
        return Ok(route::deliver_egress(ctx, eth, pod, Path::HostToPod));
    }
    if cfg.in_cluster(ip.dst) {
        let owner = route::owner_node(cfg, &ip)?;
        return Ok(route::to_node(ctx, cfg, owner, Path::HostToRemoteNode));
    }
    Ok(PASS)
}

/// XDP on the uplink: the drops of `from_uplink` before an skb exists.
/// Everything else passes on to the TC programs.
pub fn uplink_xdp(ctx: &XdpContext) -> u32 {
    match uplink_xdp_verdict(ctx) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(reason) => {
            count_drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn uplink_xdp_verdict(ctx: &XdpContext) -> Result<(), DropReason> {
    let eth = packet::eth(ctx)?;
    if packet::ether_type(eth) != ETH_P_IP {
        return Ok(());
    }
    let cfg = route::node_config()?;
    let ip = packet::ipv4(ctx)?;
    if cfg.in_cluster(ip.dst) && route::local_pod(ip.dst).is_none() {
        return Err(DropReason::NotForThisNode);
    }
    Ok(())
}
