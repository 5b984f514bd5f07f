//! Azure's and kubenet's numbers, and netplane's defaults: defined once.

/// SNAT ports Azure's load balancer gives out per frontend IP.
pub const AZURE_SNAT_PORTS_PER_FRONTEND: u32 = 64_000;
/// Azure's default outbound port allocation per backend node, by backend
/// pool size: (largest pool size, ports per node per frontend IP).
pub const AZURE_DEFAULT_PORT_TABLE: [(u32, u32); 6] = [
    (50, 1024),
    (100, 512),
    (200, 256),
    (400, 128),
    (800, 64),
    (1000, 32),
];
/// allocatedOutboundPorts is given out in blocks of this many ports.
pub const AZURE_PORT_BLOCK: u32 = 8;
/// Load balancer outbound idle timeout range and AKS's default, minutes
/// (Azure's own default is 4).
pub const LB_IDLE_TIMEOUT_MIN: u32 = 4;
pub const LB_IDLE_TIMEOUT_MAX: u32 = 120;
pub const AKS_LB_IDLE_TIMEOUT: u32 = 30;
/// AKS's default pods per node with kubenet.
pub const AKS_KUBENET_MAX_PODS: u32 = 110;

/// Port the lab's agents serve Prometheus metrics on (at their host's IP).
pub const LAB_METRICS_PORT: u16 = 9464;

/// Most instructions the kernel's verifier may process for any one of
/// netplane's programs, under every load option: a quarter of the kernel's
/// own limit (BPF_COMPLEXITY_LIMIT_INSNS, 1,000,000), so that a kernel,
/// compiler or option change has room before a program stops loading
/// (docs/verifier.md).
pub const VERIFIER_BUDGET: u32 = 250_000;
/// The kernel's limit itself, quoted when a program is refused.
pub const VERIFIER_LIMIT: u32 = 1_000_000;

/// Default SNAT port range per SNAT IP (64,512 ports).
pub const SNAT_PORT_MIN: u16 = 1024;
pub const SNAT_PORT_MAX: u16 = 65535;

/// The node stage's timeouts, seconds: a kubenet node's Linux conntrack
/// with kube-proxy's settings (docs/snat.md cites each).
/// kube-proxy `conntrack.tcpEstablishedTimeout`: 24 h.
pub const TCP_ESTABLISHED_TIMEOUT_S: u32 = 86_400;
/// kube-proxy `conntrack.tcpCloseWaitTimeout`: 1 h.
pub const TCP_CLOSE_WAIT_TIMEOUT_S: u32 = 3_600;
/// Linux `nf_conntrack_tcp_timeout_time_wait`.
pub const TCP_TIME_WAIT_TIMEOUT_S: u32 = 120;
/// Linux `nf_conntrack_tcp_timeout_close` (after an RST).
pub const TCP_CLOSE_TIMEOUT_S: u32 = 10;
/// Linux `nf_conntrack_tcp_timeout_fin_wait`.
pub const TCP_FIN_WAIT_TIMEOUT_S: u32 = 120;
/// Linux `nf_conntrack_tcp_timeout_syn_sent`.
pub const TCP_SYN_SENT_TIMEOUT_S: u32 = 120;
/// Linux `nf_conntrack_udp_timeout` (one direction seen).
pub const UDP_TIMEOUT_S: u32 = 30;
/// Linux `nf_conntrack_udp_timeout_stream` (both directions seen).
pub const UDP_STREAM_TIMEOUT_S: u32 = 120;
/// Linux `nf_conntrack_icmp_timeout`.
pub const ICMP_TIMEOUT_S: u32 = 30;

/// Azure's load balancer releases a SNAT port this long after it saw a FIN
/// (Azure docs, "SNAT port release") ...
pub const LB_FIN_RELEASE_S: u32 = 240;
/// ... and this long after an RST.
pub const LB_RST_RELEASE_S: u32 = 15;

/// Most pods per node AKS allows (kubenet and Azure CNI alike).
pub const MAX_PODS_PER_NODE_AKS: u32 = 250;
/// AKS route table limit: one route per node, 400 routes.
pub const AZURE_UDR_ROUTE_LIMIT: usize = 400;

/// Azure's system routes with next hop None: private ranges outside the
/// VNet's address space are dropped by the fabric, not sent to the
/// internet (Azure docs, "Virtual network traffic routing", default
/// routes). (Network address, prefix length.)
pub const AZURE_NONE_ROUTES: [([u8; 4], u8); 4] = [
    ([10, 0, 0, 0], 8),
    ([172, 16, 0, 0], 12),
    ([192, 168, 0, 0], 16),
    ([100, 64, 0, 0], 10),
];

/// Addresses Azure keeps in every subnet: the first four and the last.
pub const AZURE_RESERVED_PER_SUBNET: u32 = 5;

/// Ports per node per frontend IP from Azure's default table, or None when
/// the pool is larger than the table covers.
pub const fn default_ports_per_node(pool_size: u32) -> Option<u32> {
    let mut i = 0;
    while i < AZURE_DEFAULT_PORT_TABLE.len() {
        let (max_pool, ports) = AZURE_DEFAULT_PORT_TABLE[i];
        if pool_size <= max_pool {
            return Some(ports);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_table_at_its_edges() {
        for (pool, ports) in [
            (1, 1024),
            (50, 1024),
            (51, 512),
            (100, 512),
            (101, 256),
            (200, 256),
        ] {
            assert_eq!(default_ports_per_node(pool), Some(ports), "pool {pool}");
        }
        for (pool, ports) in [
            (201, 128),
            (400, 128),
            (401, 64),
            (800, 64),
            (801, 32),
            (1000, 32),
        ] {
            assert_eq!(default_ports_per_node(pool), Some(ports), "pool {pool}");
        }
        assert_eq!(default_ports_per_node(1001), None);
    }

    #[test]
    fn the_default_table_always_fits_one_frontend() {
        for (pool, ports) in AZURE_DEFAULT_PORT_TABLE {
            assert!(
                pool * ports <= AZURE_SNAT_PORTS_PER_FRONTEND,
                "{pool} x {ports}"
            );
        }
    }
}
