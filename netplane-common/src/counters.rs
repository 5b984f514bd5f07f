//! Numbered drop reasons and per-path counters (indices into per-CPU arrays).
//!
//! The numbers are part of the interface (CLI, metrics, docs): append, never
//! renumber. Each enum, its list and its names come from one definition
//! ([`numbered!`]), so a variant cannot be left out of `ALL`.

/// Defines a `#[repr(u32)]` enum whose variants carry a stable number and a
/// snake_case name, with `ALL` (every variant, in order), `SLOTS` (the size
/// of the array it indexes) and `name()`. Numbers that do not fit the array
/// fail to compile.
macro_rules! numbered {
    (
        $(#[$meta:meta])*
        pub enum $name:ident, slots $slots:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $num:literal => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $num, )+
        }

        impl $name {
            /// Every variant, in number order.
            pub const ALL: [$name; [$( $num ),+].len()] = [ $( $name::$variant, )+ ];
            /// Size of the array the numbers index.
            pub const SLOTS: u32 = $slots;

            /// Stable snake_case name used by the CLI and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )+
                }
            }
        }

        const _: () = {
            $( assert!($num < $slots, "a number does not fit the array"); )+
        };
    };
}

numbered! {
    /// Why the data path dropped a packet. Index into the `DROPS` per-CPU
    /// array (slot 0 unused).
    pub enum DropReason, slots 32 {
        /// Shorter than an Ethernet header.
        TruncatedEthernet = 1 => "truncated_ethernet",
        /// IPv4 header truncated, version not 4, IHL < 5 or total length
        /// larger than the frame.
        MalformedIpv4 = 2 => "malformed_ipv4",
        /// A pod sent something that is neither IPv4 nor ARP (IPv6, say).
        UnsupportedProtocol = 3 => "unsupported_protocol",
        /// A pod sent with a source address that is not its own, or from an
        /// interface that is not its own.
        SpoofedSource = 4 => "spoofed_source",
        /// Destination inside the cluster pod CIDR that no route covers.
        NoRoute = 5 => "no_route",
        /// Destination inside this node's pod CIDR but no such pod here.
        NoLocalPod = 6 => "no_local_pod",
        /// Destination outside the cluster pod CIDR: egress needs SNAT, which
        /// this node does not provide (yet).
        EgressUnavailable = 7 => "egress_unavailable",
        /// ARP from a pod that is not a well-formed IPv4-over-Ethernet request.
        ArpNotRequest = 8 => "arp_not_request",
        /// Arrived on the uplink for another node's pod CIDR.
        NotForThisNode = 9 => "not_for_this_node",
        /// The node configuration map is empty (agent not running).
        NoNodeConfig = 10 => "no_node_config",
        /// A new flow found no free SNAT port for its destination: existing
        /// flows are untouched.
        NatPortsExhausted = 11 => "nat_ports_exhausted",
        /// A non-first IP fragment on a translated path: no ports to look up.
        FragmentNotTracked = 12 => "fragment_not_tracked",
        /// To a translated address and port from anyone but the flow's remote,
        /// or with no translation at all (endpoint-dependent filtering).
        NatNoMapping = 13 => "nat_no_mapping",
        /// A protocol SNAT cannot translate (not TCP, UDP or ICMP echo).
        UnsupportedL4 = 14 => "unsupported_l4",
        /// The load balancer got traffic from a host outside its backend pool.
        LbUnknownBackend = 15 => "lb_unknown_backend",
        /// The translation tables are full.
        NatTableFull = 16 => "nat_table_full",
        /// To a pod from outside the cluster (neither a pod nor the node
        /// subnet): kubenet pods are not reachable from outside.
        UnsolicitedToPod = 17 => "unsolicited_to_pod",
        /// The transport header the packet claims is not all there (a
        /// translated path must read its ports or ICMP fields).
        TruncatedL4 = 18 => "truncated_l4",
        /// A checksum or store helper refused to rewrite the packet.
        RewriteFailed = 19 => "rewrite_failed",
        /// To a private address outside the VNet (10/8, 172.16/12,
        /// 192.168/16, 100.64/10): Azure's system routes send it to next
        /// hop None.
        SystemRouteNone = 20 => "system_route_none",
        /// A TCP RST or FIN with no translation: nothing to close. Linux's
        /// conntrack calls it INVALID (a mid-stream ACK, by contrast, is
        /// picked up) and kube-proxy drops INVALID packets.
        TcpInvalid = 21 => "tcp_invalid",
        /// To an address of the service CIDR with no Service on that port
        /// and protocol (kube-proxy would let it follow the default route;
        /// docs/services.md says why netplane does not).
        NoService = 22 => "no_service",
    }
}

numbered! {
    /// Which way the data path sent a packet. Index into the `PATHS` array.
    pub enum Path, slots 16 {
        /// Pod to pod on the same node (no routing hop, TTL kept, as kubenet's
        /// bridge does).
        SameNode = 0 => "same_node",
        /// Pod to a pod on another node: looked up in ROUTES, sent to the owner
        /// node's IP (the UDR next hop).
        ToRemoteNode = 1 => "to_remote_node",
        /// Arrived from another node for a local pod.
        FromRemoteNode = 2 => "from_remote_node",
        /// Pod to the node's own address: handed to the node's stack.
        PodToHost = 3 => "pod_to_host",
        /// The node's own stack to a local pod.
        HostToPod = 4 => "host_to_pod",
        /// The node's own stack to a pod on another node.
        HostToRemoteNode = 5 => "host_to_remote_node",
        /// TTL would expire on a routed hop: handed to the kernel, which
        /// answers ICMP time exceeded.
        TtlExpired = 6 => "ttl_expired",
        /// ARP request from a pod answered by the data path.
        ArpReply = 7 => "arp_reply",
        /// Pod egress translated to the node IP (node masquerade).
        SnatOut = 8 => "snat_out",
        /// A reply to a masqueraded flow translated back and delivered.
        SnatIn = 9 => "snat_in",
        /// Load balancer: node IP translated to a frontend IP.
        LbOut = 10 => "lb_out",
        /// Load balancer: a reply translated back to the node.
        LbIn = 11 => "lb_in",
        /// A pod's reply to a flow opened from outside the cluster pod CIDR
        /// (a node, a hostNetwork pod): routed untranslated, as kubenet's
        /// conntrack never masquerades a reply.
        ReplyToOutside = 12 => "reply_to_outside",
        /// A pod's packet to a Service, sent to a backend pod (DNAT).
        ServiceOut = 13 => "service_out",
        /// A backend's reply with the Service's address restored.
        ServiceReply = 14 => "service_reply",
        /// A Service with no ready backend answered with ICMP port
        /// unreachable, as kube-proxy's REJECT rule does.
        ServiceReject = 15 => "service_reject",
    }
}

/// Packets and bytes on one path (one CPU's share).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounter {
    pub packets: u64,
    pub bytes: u64,
}

kernel_abi!(PathCounter => 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), plain integers, no padding (checked above).
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
