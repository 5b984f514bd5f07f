//! The node's kubenet masquerade: pod traffic leaving the cluster pod CIDR
//! takes the node's IP, and replies find their pod again.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use netplane_common::{DropReason, NodeConfig, Path};

use crate::{
    inbound,
    maps::NAT_CONFIG,
    packet::{self, Ipv4},
    route,
    snat::{self, Reply, Restore, Target},
};

/// The node has one accounting slot: its IP and port range.
const NODE_TARGET: Target = Target {
    first: 0,
    count: 1,
    udp_cone: false,
    keep_port: true,
    search_bitmap: true,
};

/// Pod to outside the cluster pod CIDR: a reply to a flow a node (or a
/// hostNetwork pod) opened goes back untranslated (only node-subnet
/// destinations can have opened one, so egress to the internet pays no
/// extra lookup); anything else is masqueraded.
#[inline(always)]
pub fn masquerade_or_reply(
    ctx: &TcContext,
    cfg: &NodeConfig,
    ip: &Ipv4,
) -> Result<i32, DropReason> {
    let nat = NAT_CONFIG.get(0).ok_or(DropReason::EgressUnavailable)?;
    let on_link = nat.on_link(ip.dst);
    if on_link && inbound::is_reply(ctx, ip) {
        if let Some(verdict) = route::routed_hop(ctx) {
            return Ok(verdict);
        }
        return Ok(route::to_node(ctx, cfg, ip.dst, Path::ReplyToOutside));
    }
    masquerade(ctx, cfg, ip, if on_link { ip.dst } else { nat.gateway_ip })
}

/// Translates the source to the node IP and sends the packet to its next
/// hop: the destination itself inside the node subnet, else the gateway
/// (load balancer or appliance). As in Linux, the TTL is checked when
/// forwarding, before the source NAT.
#[inline(always)]
fn masquerade(
    ctx: &TcContext,
    cfg: &NodeConfig,
    ip: &Ipv4,
    next_hop: u32,
) -> Result<i32, DropReason> {
    if next_hop == 0 {
        return Err(DropReason::EgressUnavailable);
    }
    if let Some(verdict) = route::routed_hop(ctx) {
        return Ok(verdict);
    }
    snat::egress(ctx, ip, NODE_TARGET)?;
    Ok(route::to_node(ctx, cfg, next_hop, Path::SnatOut))
}

/// To the node IP from the VNet: a reply to a masqueraded flow goes back to
/// its pod; anything else is the node's own and goes to its stack, also to
/// a port some pod's flow holds toward another remote (as with kubenet's
/// iptables: a packet that matches no conntrack entry is the host's, and
/// meets its listening sockets; decisions.md §51).
#[inline(always)]
pub fn reply_in(ctx: &TcContext, ip: &Ipv4) -> Result<i32, DropReason> {
    let mut restore = Restore::default();
    match snat::ingress(ctx, ip, &mut restore, false)? {
        Reply::Translated => {}
        Reply::NotTranslated => {
            // The node's own service flow: its backend's reply.
            if crate::service::restore_reply(ctx, ip)?.is_some() {
                crate::counters::count(ctx, Path::ServiceReply);
            }
            return Ok(TC_ACT_OK);
        }
        Reply::Unparsed(_) => return Ok(TC_ACT_OK),
    };
    let pod = route::local_pod(restore.orig.orig_ip).ok_or(DropReason::NoLocalPod)?;
    // Translated back before the TTL check, as Linux reverses the NAT before
    // it forwards: a reply whose TTL runs out goes to the kernel addressed
    // to the pod, which answers the remote with time exceeded. Handed over
    // still addressed to the node, it would meet the node's own sockets,
    // and an RST from the node would end the pod's connection.
    restore.apply(ctx, ip)?;
    // A reply from a Service's backend outside the cluster (the API
    // server's): the Service's address comes back too.
    crate::service::restore_reply(ctx, &packet::ipv4(ctx)?)?;
    if let Some(verdict) = route::routed_hop(ctx) {
        return Ok(verdict);
    }
    let eth = packet::eth(ctx)?;
    Ok(route::deliver_peer(ctx, eth, pod, Path::SnatIn))
}
