//! Lookups and the three ways a packet leaves a program: into a local pod,
//! to another node (the UDR next hop), or up to the node's own stack.
use aya_ebpf::{
    bindings::{TC_ACT_OK, bpf_redir_neigh},
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netplane_common::{
    DropReason, LocalPod, NodeConfig, Path,
    maps::{MARK_ROUTED, pod_slot},
};
use network_types::eth::EthHdr;

use crate::{
    counters::count,
    maps::{LOCAL_PODS, NODE_CONFIG, POD_SLOTS, ROUTES},
    packet::{self, Ipv4},
};

const AF_INET: u32 = 2;

#[inline(always)]
pub fn node_config() -> Result<&'static NodeConfig, DropReason> {
    NODE_CONFIG.get(0).ok_or(DropReason::NoNodeConfig)
}

/// True for addresses of the node subnet (nodes and other hosts the
/// kubenet route table serves). Without SNAT configured: any.
#[inline(always)]
pub fn in_node_subnet(ip: u32) -> bool {
    match crate::maps::NAT_CONFIG.get(0) {
        Some(n) if n.subnet != 0 => n.on_link(ip),
        _ => true,
    }
}

#[inline(always)]
pub fn local_pod(ip: u32) -> Option<&'static LocalPod> {
    // SAFETY: the agent replaces values whole; a reader sees an old or a new
    // one, both valid.
    unsafe { LOCAL_PODS.get(ip) }
}

/// True when `ip` is the pod behind the veth `ifindex`: its POD_SLOTS
/// slot says so, or else LOCAL_PODS does (a slot two veths share, or one
/// not written yet).
#[inline(always)]
pub fn pod_sends_as(ifindex: u32, ip: u32) -> bool {
    if let Some(slot) = POD_SLOTS.get(pod_slot(ifindex))
        && slot.ifindex == ifindex
        && slot.ip == ip
    {
        return true;
    }
    local_pod(ip).is_some_and(|pod| pod.ifindex == ifindex)
}

/// The owner node of `ip` from the UDR table (longest prefix match).
#[inline(always)]
pub fn route_owner(ip: u32) -> Option<u32> {
    ROUTES.get(Key::new(32, ip)).map(|target| target.node_ip)
}

/// Into a local pod from an ingress hook: straight into the pod's namespace
/// (bpf_redirect_peer skips the host veth's backlog queue).
#[inline(always)]
pub fn deliver_peer(ctx: &TcContext, eth: *mut EthHdr, pod: &LocalPod, path: Path) -> i32 {
    packet::set_macs(eth, pod.pod_mac, pod.host_mac);
    count(ctx, path);
    // SAFETY: a helper call with plain integer arguments.
    unsafe { bpf_redirect_peer(pod.ifindex, 0) as i32 }
}

/// Into a local pod from an egress hook, where redirect_peer is not allowed:
/// out of the host side of its veth.
#[inline(always)]
pub fn deliver_egress(ctx: &TcContext, eth: *mut EthHdr, pod: &LocalPod, path: Path) -> i32 {
    packet::set_macs(eth, pod.pod_mac, pod.host_mac);
    count(ctx, path);
    // SAFETY: a helper call with plain integer arguments.
    unsafe { bpf_redirect(pod.ifindex, 0) as i32 }
}

/// To another node: out of the uplink with the owner node's IP as next hop;
/// the kernel's neighbour table fills in the MACs (ARP on the VNet). The mark
/// tells the uplink's egress program that this packet is already routed.
#[inline(always)]
pub fn to_node(ctx: &TcContext, cfg: &NodeConfig, node_ip: u32, path: Path) -> i32 {
    ctx.set_mark(MARK_ROUTED);
    count(ctx, path);
    redirect_neigh(cfg.uplink_ifindex, node_ip)
}

/// Out of `ifindex` towards the IPv4 next hop `next_hop` (map-key form);
/// the kernel's neighbour table supplies the MACs.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32, next_hop: u32) -> i32 {
    let mut nh = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: next_hop },
    };
    // SAFETY: `nh` lives on the stack for the call and its size is passed.
    unsafe {
        bpf_redirect_neigh(
            ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}

/// A routed hop (UDR next hop or into a pod from the VNet): TTL expiry goes
/// to the kernel, which drops the packet and answers ICMP time exceeded, so
/// traceroute shows the node; otherwise decrement.
#[inline(always)]
pub fn routed_hop(ctx: &TcContext) -> Option<i32> {
    if packet::ttl(ctx) <= 1 {
        count(ctx, Path::TtlExpired);
        return Some(TC_ACT_OK);
    }
    packet::decrement_ttl(ctx);
    None
}

/// The node that owns a destination inside the cluster pod CIDR that is not
/// a local pod, from the UDR table.
#[inline(always)]
pub fn owner_node(cfg: &NodeConfig, ip: &Ipv4) -> Result<u32, DropReason> {
    match route_owner(ip.dst) {
        None => Err(DropReason::NoRoute),
        Some(owner) if owner == cfg.node_ip => Err(DropReason::NoLocalPod),
        Some(owner) => Ok(owner),
    }
}
