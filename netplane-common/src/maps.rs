//! Map names, sizes, keys and values.
//!
//! IPv4 addresses are stored as they sit in the packet (network byte order):
//! `u32::from_ne_bytes(octets)`; see [`ip_key`].

/// Map names as they appear in the eBPF object and as pin file names.
pub mod names {
    pub const ROUTES: &str = "ROUTES";
    pub const LOCAL_PODS: &str = "LOCAL_PODS";
    pub const POD_SLOTS: &str = "POD_SLOTS";
    pub const NODE_CONFIG: &str = "NODE_CONFIG";
    pub const DROPS: &str = "DROPS";
    pub const PATHS: &str = "PATHS";
    /// Not pinned: flows to pods opened from outside, remembered for their
    /// replies (refreshed by traffic).
    pub const INBOUND_FLOWS: &str = "INBOUND_FLOWS";
    pub use crate::{events::names::*, nat::names::*, services::names::*};
    /// Pinned maps (PORT_HINTS, PORT_BITMAPS and EVENT_BUDGET are per load:
    /// two hints and a rate limiter).
    pub const ALL: [&str; 26] = [
        ROUTES,
        LOCAL_PODS,
        POD_SLOTS,
        NODE_CONFIG,
        DROPS,
        PATHS,
        NAT_OUT,
        NAT_IN,
        NAT_CONFIG,
        SNAT_SLOTS,
        SNAT_ALLOCS,
        SNAT_FREES,
        SNAT_FAILS,
        SNAT_EVICTS,
        EVICTION_QUEUE,
        LB_BACKENDS,
        LB_FRONTENDS,
        PORT_OWNED,
        FLOW_EVENTS,
        EVENTS_SUPPRESSED,
        SERVICE_CONFIG,
        SERVICES,
        SERVICE_BACKENDS,
        SERVICE_FLOWS,
        SERVICE_REPLIES,
        SERVICE_AFFINITY,
    ];
}

/// Program names in the eBPF object.
pub mod programs {
    /// TC ingress on the host side of every pod veth.
    pub const FROM_POD: &str = "from_pod";
    /// TC ingress on the node uplink.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// TC egress on the node uplink (the node's own traffic to pods).
    pub const TO_UPLINK: &str = "to_uplink";
    /// Optional XDP on the node uplink (early drops); off by default.
    pub const UPLINK_XDP: &str = "uplink_xdp";
    /// Load balancer / appliance: TC ingress from the VNet (SNAT out).
    pub const LB_FROM_VNET: &str = "lb_from_vnet";
    /// Load balancer / appliance: TC ingress from the internet (replies).
    pub const LB_FROM_INTERNET: &str = "lb_from_internet";
    /// Parse-and-redirect floor that `cargo xtask bench` times the paths against.
    pub const BENCH_FLOOR: &str = "bench_floor";
    /// The collector's release of claims (XDP, run with BPF_PROG_TEST_RUN
    /// on a frame of `nat::ClaimRelease`s; never attached).
    pub const RELEASE_CLAIMS: &str = "release_claims";
    /// Every program in the object: the verifier's budget test loads each
    /// and checks that the object holds no other.
    pub const ALL: [&str; 8] = [
        FROM_POD,
        FROM_UPLINK,
        TO_UPLINK,
        UPLINK_XDP,
        LB_FROM_VNET,
        LB_FROM_INTERNET,
        BENCH_FLOOR,
        RELEASE_CLAIMS,
    ];
}

/// ROUTES capacity. Azure's UDR limit (400) is enforced by validation; the
/// map leaves room for experiments that lift it.
pub const MAX_ROUTES: u32 = 1024;
/// LOCAL_PODS capacity (above limits::MAX_PODS_PER_NODE_AKS).
pub const MAX_LOCAL_PODS: u32 = 256;

/// POD_SLOTS length: a power of two, so that the slot is the ifindex's low
/// bits. Two live veths whose ifindexes share a slot are correct but slower
/// (the later one's packets take the LOCAL_PODS lookup).
pub const POD_SLOTS_LEN: u32 = 1024;

/// POD_SLOTS index of a veth's ifindex.
#[inline(always)]
pub const fn pod_slot(ifindex: u32) -> u32 {
    ifindex & (POD_SLOTS_LEN - 1)
}

/// POD_SLOTS value: the pod behind a host-side veth, so that `from_pod`'s
/// anti-spoofing check is an array read rather than a hash lookup. A slot
/// only ever confirms: a packet whose (ifindex, source) it does not hold
/// takes the LOCAL_PODS check, which decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodSlot {
    /// The veth's ifindex (0: empty).
    pub ifindex: u32,
    /// The pod's IP ([`ip_key`] form).
    pub ip: u32,
}

/// Flows opened toward this node's pods from outside the cluster pod CIDR
/// (another node, a hostNetwork pod) that INBOUND_FLOWS remembers so that
/// their replies leave untranslated; least recently used go first.
pub const MAX_INBOUND_FLOWS: u32 = 16_384;

/// skb->mark bit set on packets netplane has already routed, so the uplink's
/// egress program lets them through instead of routing them again.
pub const MARK_ROUTED: u32 = 0x0000_4e50; // "NP"

/// The key under which an IPv4 address is stored in the maps.
#[inline(always)]
pub const fn ip_key(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// LOCAL_PODS value: where a pod on this node lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalPod {
    /// ifindex of the host side of the pod's veth.
    pub ifindex: u32,
    /// MAC of the pod's eth0.
    pub pod_mac: [u8; 6],
    /// MAC of the host side of the veth (the pod's gateway MAC).
    pub host_mac: [u8; 6],
}

/// ROUTES value: the UDR route's next hop (next hop type VirtualAppliance).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    /// Owner node's IP ([`ip_key`] form).
    pub node_ip: u32,
}

/// NODE_CONFIG[0]: this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's IP ([`ip_key`] form).
    pub node_ip: u32,
    /// ifindex of the uplink (the NIC in the VNet).
    pub uplink_ifindex: u32,
    /// Cluster pod CIDR network address and mask ([`ip_key`] form).
    pub cluster_cidr: u32,
    pub cluster_mask: u32,
}

impl NodeConfig {
    #[inline(always)]
    pub fn in_cluster(&self, ip: u32) -> bool {
        ip & self.cluster_mask == self.cluster_cidr
    }
}

kernel_abi!(LocalPod => 16, PodSlot => 8, RouteTarget => 4, NodeConfig => 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::LocalPod {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PodSlot {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::RouteTarget {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::NodeConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_membership_uses_network_order_keys() {
        let cfg = NodeConfig {
            node_ip: ip_key([10, 224, 0, 4]),
            uplink_ifindex: 2,
            cluster_cidr: ip_key([10, 244, 0, 0]),
            cluster_mask: ip_key([255, 255, 0, 0]),
        };
        assert!(cfg.in_cluster(ip_key([10, 244, 7, 9])));
        assert!(!cfg.in_cluster(ip_key([10, 245, 0, 1])));
        assert!(!cfg.in_cluster(ip_key([10, 224, 0, 5])));
    }
}
