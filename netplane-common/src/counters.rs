//! Numbered drop reasons and per-path counters (indices into per-CPU arrays).
//!
//! The numbers are part of the interface (CLI, metrics, docs): append, never
//! renumber.

/// Why the data path dropped a packet. Index into the `DROPS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    TruncatedEthernet = 1,
    /// IPv4 header truncated, version not 4, IHL < 5 or total length
    /// larger than the frame.
    MalformedIpv4 = 2,
    /// A pod sent something that is neither IPv4 nor ARP (IPv6, say).
    UnsupportedProtocol = 3,
    /// A pod sent with a source address that is not its own, or from an
    /// interface that is not its own.
    SpoofedSource = 4,
    /// Destination inside the cluster pod CIDR that no route covers.
    NoRoute = 5,
    /// Destination inside this node's pod CIDR but no such pod here.
    NoLocalPod = 6,
    /// Destination outside the cluster pod CIDR: egress needs SNAT, which
    /// this node does not provide (yet).
    EgressUnavailable = 7,
    /// ARP from a pod that is not a well-formed IPv4-over-Ethernet request.
    ArpNotRequest = 8,
    /// Arrived on the uplink for another node's pod CIDR.
    NotForThisNode = 9,
    /// The node configuration map is empty (agent not running).
    NoNodeConfig = 10,
    /// A new flow found no free SNAT port for its destination: existing
    /// flows are untouched.
    NatPortsExhausted = 11,
    /// A non-first IP fragment on a translated path: no ports to look up.
    FragmentNotTracked = 12,
    /// To a translated address and port from anyone but the flow's remote,
    /// or with no translation at all (endpoint-dependent filtering).
    NatNoMapping = 13,
    /// A protocol SNAT cannot translate (not TCP, UDP or ICMP echo).
    UnsupportedL4 = 14,
    /// The load balancer got traffic from a host outside its backend pool.
    LbUnknownBackend = 15,
    /// The translation tables are full.
    NatTableFull = 16,
    /// To a pod from outside the cluster (neither a pod nor the node
    /// subnet): kubenet pods are not reachable from outside.
    UnsolicitedToPod = 17,
}

impl DropReason {
    pub const ALL: [DropReason; 17] = [
        DropReason::TruncatedEthernet,
        DropReason::MalformedIpv4,
        DropReason::UnsupportedProtocol,
        DropReason::SpoofedSource,
        DropReason::NoRoute,
        DropReason::NoLocalPod,
        DropReason::EgressUnavailable,
        DropReason::ArpNotRequest,
        DropReason::NotForThisNode,
        DropReason::NoNodeConfig,
        DropReason::NatPortsExhausted,
        DropReason::FragmentNotTracked,
        DropReason::NatNoMapping,
        DropReason::UnsupportedL4,
        DropReason::LbUnknownBackend,
        DropReason::NatTableFull,
        DropReason::UnsolicitedToPod,
    ];
    /// Size of the `DROPS` array: one slot per number, slot 0 unused.
    pub const SLOTS: u32 = 32;

    /// Stable snake_case name used by the CLI and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::TruncatedEthernet => "truncated_ethernet",
            DropReason::MalformedIpv4 => "malformed_ipv4",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NoRoute => "no_route",
            DropReason::NoLocalPod => "no_local_pod",
            DropReason::EgressUnavailable => "egress_unavailable",
            DropReason::ArpNotRequest => "arp_not_request",
            DropReason::NotForThisNode => "not_for_this_node",
            DropReason::NoNodeConfig => "no_node_config",
            DropReason::NatPortsExhausted => "nat_ports_exhausted",
            DropReason::FragmentNotTracked => "fragment_not_tracked",
            DropReason::NatNoMapping => "nat_no_mapping",
            DropReason::UnsupportedL4 => "unsupported_l4",
            DropReason::LbUnknownBackend => "lb_unknown_backend",
            DropReason::NatTableFull => "nat_table_full",
            DropReason::UnsolicitedToPod => "unsolicited_to_pod",
        }
    }
}

/// Which way the data path sent a packet. Index into the `PATHS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Pod to pod on the same node (no routing hop, TTL kept, as kubenet's
    /// bridge does).
    SameNode = 0,
    /// Pod to a pod on another node: looked up in ROUTES, sent to the owner
    /// node's IP (the UDR next hop).
    ToRemoteNode = 1,
    /// Arrived from another node for a local pod.
    FromRemoteNode = 2,
    /// Pod to the node's own address: handed to the node's stack.
    PodToHost = 3,
    /// The node's own stack to a local pod.
    HostToPod = 4,
    /// The node's own stack to a pod on another node.
    HostToRemoteNode = 5,
    /// TTL would expire on a routed hop: handed to the kernel, which
    /// answers ICMP time exceeded.
    TtlExpired = 6,
    /// ARP request from a pod answered by the data path.
    ArpReply = 7,
    /// Pod egress translated to the node IP (node masquerade).
    SnatOut = 8,
    /// A reply to a masqueraded flow translated back and delivered.
    SnatIn = 9,
    /// Load balancer: node IP translated to a frontend IP.
    LbOut = 10,
    /// Load balancer: a reply translated back to the node.
    LbIn = 11,
}

impl Path {
    pub const ALL: [Path; 12] = [
        Path::SameNode,
        Path::ToRemoteNode,
        Path::FromRemoteNode,
        Path::PodToHost,
        Path::HostToPod,
        Path::HostToRemoteNode,
        Path::TtlExpired,
        Path::ArpReply,
        Path::SnatOut,
        Path::SnatIn,
        Path::LbOut,
        Path::LbIn,
    ];
    /// Size of the `PATHS` array.
    pub const SLOTS: u32 = 16;

    pub const fn name(self) -> &'static str {
        match self {
            Path::SameNode => "same_node",
            Path::ToRemoteNode => "to_remote_node",
            Path::FromRemoteNode => "from_remote_node",
            Path::PodToHost => "pod_to_host",
            Path::HostToPod => "host_to_pod",
            Path::HostToRemoteNode => "host_to_remote_node",
            Path::TtlExpired => "ttl_expired",
            Path::ArpReply => "arp_reply",
            Path::SnatOut => "snat_out",
            Path::SnatIn => "snat_in",
            Path::LbOut => "lb_out",
            Path::LbIn => "lb_in",
        }
    }
}

/// Packets and bytes on one path (one CPU's share).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for PathCounter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_are_unique_and_fit_the_array() {
        for (i, a) in DropReason::ALL.iter().enumerate() {
            assert!((*a as u32) > 0 && (*a as u32) < DropReason::SLOTS);
            for b in &DropReason::ALL[i + 1..] {
                assert_ne!(*a as u32, *b as u32);
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn paths_are_unique_and_fit_the_array() {
        for (i, a) in Path::ALL.iter().enumerate() {
            assert!((*a as u32) < Path::SLOTS);
            for b in &Path::ALL[i + 1..] {
                assert_ne!(*a as u32, *b as u32);
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
