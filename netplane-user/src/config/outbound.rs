//! The outbound path's numbers derived from the cluster file: the SNAT
//! stages' timeouts, the gateway address, and the load balancer's port
//! blocks per node.
use std::{net::Ipv4Addr, time::Duration};

use ipnet::Ipv4Net;

use netplane_common::{
    limits,
    nat::{NatEntry, PROTO_TCP, PROTO_UDP, Phase},
};
use serde::{Deserialize, Serialize};

use super::cluster::{Cluster, OutboundType};

/// Idle timers by protocol and phase, for one SNAT stage: the node's from
/// the cluster file's `[timeouts]` (`cluster::Timeouts`), the load
/// balancer's from Azure's idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTimers {
    pub tcp_syn_sent: Duration,
    pub tcp_established: Duration,
    pub tcp_fin_wait: Duration,
    pub tcp_close_wait: Duration,
    pub tcp_time_wait: Duration,
    pub tcp_close: Duration,
    pub udp: Duration,
    pub udp_stream: Duration,
    pub icmp: Duration,
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(s.into())
}

impl IdleTimers {
    /// The node stage: a kubenet node's conntrack (the cluster file's
    /// `[timeouts]`, kube-proxy's settings by default).
    pub fn node(c: &Cluster) -> IdleTimers {
        let t = &c.timeouts;
        IdleTimers {
            tcp_syn_sent: secs(t.tcp_syn_sent_s),
            tcp_established: secs(t.tcp_established_s),
            tcp_fin_wait: secs(t.tcp_fin_wait_s),
            tcp_close_wait: secs(t.tcp_close_wait_s),
            tcp_time_wait: secs(t.tcp_time_wait_s),
            tcp_close: secs(t.tcp_close_s),
            udp: secs(t.udp_s),
            udp_stream: secs(t.udp_stream_s),
            icmp: secs(t.icmp_s),
        }
    }

    /// The load balancer stage, Azure's SNAT port release: after a FIN
    /// (either side) the port goes `fin_release_s` later, after an RST
    /// `rst_release_s` later, otherwise at the idle timeout (UDP too).
    /// ICMP, which Azure does not describe, keeps the node's timeout.
    pub fn load_balancer(c: &Cluster) -> IdleTimers {
        let o = &c.outbound;
        let (idle, fin) = (secs(o.idle_timeout_s()), secs(o.fin_release_s));
        IdleTimers {
            tcp_syn_sent: idle,
            tcp_established: idle,
            tcp_fin_wait: fin,
            tcp_close_wait: fin,
            tcp_time_wait: fin,
            tcp_close: secs(o.rst_release_s),
            udp: idle,
            udp_stream: idle,
            icmp: IdleTimers::node(c).icmp,
        }
    }

    /// How long a flow in this phase may idle.
    pub fn of(&self, proto: u8, e: &NatEntry) -> Duration {
        match (proto, e.phase()) {
            (PROTO_TCP, Phase::New) => self.tcp_syn_sent,
            (PROTO_TCP, Phase::Established) => self.tcp_established,
            (PROTO_TCP, Phase::FinWait) => self.tcp_fin_wait,
            (PROTO_TCP, Phase::CloseWait) => self.tcp_close_wait,
            (PROTO_TCP, Phase::TimeWait) => self.tcp_time_wait,
            (PROTO_TCP, Phase::Close) => self.tcp_close,
            (PROTO_UDP, Phase::New) => self.udp,
            (PROTO_UDP, _) => self.udp_stream,
            _ => self.icmp,
        }
    }
}

/// Addresses of the lab's (and a real deployment's) outbound path.
pub fn gateway(c: &Cluster) -> Ipv4Addr {
    match c.outbound.kind {
        OutboundType::LoadBalancer => {
            Ipv4Addr::from(u32::from(c.network.node_subnet.network()) + 1)
        }
        OutboundType::UserDefinedRouting => c.outbound.appliance_ip.expect("validated"),
    }
}

/// A route of the node subnet's effective routes that is not a pod CIDR's
/// UDR: Azure's defaults ("Default"), and with userDefinedRouting the
/// egress route AKS requires ("User").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubnetRoute {
    pub source: &'static str,
    pub address_prefix: Ipv4Net,
    pub next_hop_type: &'static str,
    pub next_hop_ip: Option<Ipv4Addr>,
}

/// The effective routes beside the UDRs, as Azure shows them for a node's
/// NIC: the VNet's address space stays in the VNet, the private ranges
/// outside it go nowhere (next hop None; the load balancer drops them with
/// `system_route_none`), and the rest leaves through the internet
/// (loadBalancer) or the appliance (userDefinedRouting).
pub fn subnet_routes(c: &Cluster) -> Vec<SubnetRoute> {
    let mut out = vec![SubnetRoute {
        source: "Default",
        address_prefix: c.network.vnet_cidr,
        next_hop_type: "VnetLocal",
        next_hop_ip: None,
    }];
    for (net, prefix) in limits::AZURE_NONE_ROUTES {
        out.push(SubnetRoute {
            source: "Default",
            address_prefix: Ipv4Net::new(net.into(), prefix).expect("a valid prefix"),
            next_hop_type: "None",
            next_hop_ip: None,
        });
    }
    let any = Ipv4Net::default();
    out.push(match (c.outbound.kind, c.outbound.appliance_ip) {
        (OutboundType::UserDefinedRouting, Some(ip)) => SubnetRoute {
            source: "User",
            address_prefix: any,
            next_hop_type: "VirtualAppliance",
            next_hop_ip: Some(ip),
        },
        _ => SubnetRoute {
            source: "Default",
            address_prefix: any,
            next_hop_type: "Internet",
            next_hop_ip: None,
        },
    });
    out
}

/// The load balancer's (or appliance's) port layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbPlan {
    /// Translated-to addresses.
    pub frontends: Vec<Ipv4Addr>,
    /// Slot index = backend index x slots_per_backend + piece; a backend
    /// with fewer pieces than that has empty slots (nat_ip 0.0.0.0).
    pub slots: Vec<LbSlot>,
    /// Backend node IP -> its first slot.
    pub backends: Vec<(Ipv4Addr, u32)>,
    pub slots_per_backend: u32,
    /// UDP by Azure's port-restricted cone rule (the load balancer, not an
    /// appliance).
    pub udp_cone: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbSlot {
    pub nat_ip: Ipv4Addr,
    pub port_lo: u16,
    pub port_hi: u16,
    /// The node whose block this is; None: shared (appliance) or empty.
    pub node: Option<String>,
}

/// First port of the load balancer's blocks.
pub const LB_FIRST_PORT: u16 = netplane_common::limits::SNAT_PORT_MIN;

/// A run of ports on one frontend IP (by its index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortBlock {
    pub frontend: usize,
    pub port_lo: u16,
    pub port_hi: u16,
}

impl PortBlock {
    pub fn size(&self) -> u32 {
        u32::from(self.port_hi) - u32::from(self.port_lo) + 1
    }
}

/// Azure's outbound rule, laid out: each of `nodes` nodes gets `ports`
/// ports in total (allocatedOutboundPorts is per VM, not per frontend IP),
/// in fixed, disjoint blocks laid end to end over the frontend IPs in
/// order, each IP giving 64,000 ports from LB_FIRST_PORT. A node whose
/// block reaches past one IP's end continues on the next (two pieces).
/// Err when the nodes do not fit: nodes x ports > 64,000 x IPs. The one
/// layout validation, `plan`, the agent and `netplane ports` all use.
pub fn port_blocks(
    nodes: usize,
    ports: u32,
    frontends: usize,
) -> Result<Vec<Vec<PortBlock>>, String> {
    let per_ip = u64::from(limits::AZURE_SNAT_PORTS_PER_FRONTEND);
    let (need, have) = (nodes as u64 * u64::from(ports), per_ip * frontends as u64);
    if ports == 0 || ports > limits::AZURE_SNAT_PORTS_PER_FRONTEND {
        return Err(format!(
            "{ports} ports per node: Azure allows 1 to {per_ip}"
        ));
    }
    if need > have {
        return Err(format!(
            "{nodes} nodes x {ports} ports = {need} > {per_ip} x {frontends} frontend IP(s) = {have}"
        ));
    }
    let mut out = Vec::with_capacity(nodes);
    for i in 0..nodes as u64 {
        let (mut from, to) = (i * u64::from(ports), (i + 1) * u64::from(ports));
        let mut pieces = Vec::new();
        while from < to {
            let (ip, offset) = (from / per_ip, from % per_ip);
            let len = (to - from).min(per_ip - offset);
            let lo = u64::from(LB_FIRST_PORT) + offset;
            pieces.push(PortBlock {
                frontend: ip as usize,
                port_lo: lo as u16,
                port_hi: (lo + len - 1) as u16,
            });
            from += len;
        }
        out.push(pieces);
    }
    Ok(out)
}

/// The load balancer's slots: every node's blocks from `port_blocks`. An
/// appliance instead shares its whole range among all nodes, on its own
/// address.
pub fn lb_plan(c: &Cluster, appliance_outside: Option<Ipv4Addr>) -> LbPlan {
    let nodes = c.nodes();
    if let Some(own) = appliance_outside {
        let [lo, hi] = c.outbound.port_range;
        return LbPlan {
            frontends: vec![own],
            slots: vec![LbSlot {
                nat_ip: own,
                port_lo: lo,
                port_hi: hi,
                node: None,
            }],
            backends: nodes.iter().map(|n| (n.ip, 0)).collect(),
            slots_per_backend: 1,
            udp_cone: false,
        };
    }
    let ports = c.ports_per_node().expect("validated");
    let frontends = &c.outbound.frontend_ips;
    let blocks = port_blocks(nodes.len(), ports, frontends.len()).expect("validated");
    let per_backend = blocks.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut slots = Vec::new();
    let mut backends = Vec::new();
    for (n, pieces) in nodes.iter().zip(&blocks) {
        backends.push((n.ip, slots.len() as u32));
        for k in 0..per_backend {
            slots.push(match pieces.get(k) {
                Some(b) => LbSlot {
                    nat_ip: frontends[b.frontend],
                    port_lo: b.port_lo,
                    port_hi: b.port_hi,
                    node: Some(n.name.clone()),
                },
                None => LbSlot {
                    nat_ip: Ipv4Addr::UNSPECIFIED,
                    port_lo: 0,
                    port_hi: 0,
                    node: None,
                },
            });
        }
    }
    LbPlan {
        frontends: frontends.clone(),
        slots,
        backends,
        slots_per_backend: per_backend as u32,
        udp_cone: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_ports_are_its_total_over_all_frontend_ips() {
        let mut c = Cluster::load(None).unwrap();
        c.outbound.frontend_ips = vec![
            "198.51.100.10".parse().unwrap(),
            "198.51.100.11".parse().unwrap(),
        ];
        c.outbound.allocated_outbound_ports = Some(64);
        let p = lb_plan(&c, None);
        // A second IP does not double anyone's ports: 64 each, on the
        // first IP, one after the other.
        assert_eq!(p.slots_per_backend, 1);
        assert_eq!(
            p.backends,
            vec![
                ("10.224.0.4".parse().unwrap(), 0),
                ("10.224.0.5".parse().unwrap(), 1)
            ]
        );
        let ranges: Vec<(String, u16, u16)> = p
            .slots
            .iter()
            .map(|s| (s.nat_ip.to_string(), s.port_lo, s.port_hi))
            .collect();
        assert_eq!(
            ranges,
            vec![
                ("198.51.100.10".into(), 1024, 1087),
                ("198.51.100.10".into(), 1088, 1151),
            ]
        );
    }

    /// The file of the issue: 40 nodes, 2 IPs, 2,048 ports. Nodes 0–30 on
    /// the first IP, node 31 across both, the rest on the second; no port
    /// past 65535 and no two nodes on the same port.
    #[test]
    fn forty_nodes_on_two_ips_do_not_share_ports() {
        let blocks = port_blocks(40, 2048, 2).unwrap();
        assert_eq!(
            blocks[0],
            [PortBlock {
                frontend: 0,
                port_lo: 1024,
                port_hi: 3071
            }]
        );
        assert_eq!(
            blocks[31],
            [
                PortBlock {
                    frontend: 0,
                    port_lo: 64512,
                    port_hi: 65023
                },
                PortBlock {
                    frontend: 1,
                    port_lo: 1024,
                    port_hi: 2559
                },
            ]
        );
        assert_eq!(
            blocks[32],
            [PortBlock {
                frontend: 1,
                port_lo: 2560,
                port_hi: 4607
            }]
        );
        assert_disjoint_and_exact(&blocks, 2048);
    }

    fn assert_disjoint_and_exact(blocks: &[Vec<PortBlock>], ports: u32) {
        let mut used = std::collections::HashSet::new();
        for (node, pieces) in blocks.iter().enumerate() {
            assert_eq!(
                pieces.iter().map(PortBlock::size).sum::<u32>(),
                ports,
                "node {node}"
            );
            for b in pieces {
                assert!(
                    b.port_lo >= LB_FIRST_PORT && b.port_lo <= b.port_hi,
                    "{b:?}"
                );
                assert!(
                    u32::from(b.port_hi)
                        < u32::from(LB_FIRST_PORT) + limits::AZURE_SNAT_PORTS_PER_FRONTEND,
                    "{b:?} past the IP's 64,000 ports"
                );
                for p in b.port_lo..=b.port_hi {
                    assert!(used.insert((b.frontend, p)), "node {node}: port {p} twice");
                }
            }
        }
    }

    /// Random (nodes, IPs, ports): the blocks never overlap, never leave
    /// the range, give each node exactly its ports, and are refused exactly
    /// when nodes x ports > 64,000 x IPs. Seeded, so reproducible.
    #[test]
    fn random_layouts_are_disjoint_in_range_and_exact() {
        let mut seed = 0x5eed_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..300 {
            let frontends = 1 + next(4) as usize;
            let ports = 8 * (1 + next(8000) as u32); // multiples of 8 up to 64,000
            let nodes = 1 + next(60) as usize;
            let fits = nodes as u64 * u64::from(ports) <= 64_000 * frontends as u64;
            match port_blocks(nodes, ports, frontends) {
                Ok(b) => {
                    assert!(fits, "{nodes} x {ports} on {frontends} accepted");
                    assert_disjoint_and_exact(&b, ports);
                }
                Err(_) => assert!(!fits, "{nodes} x {ports} on {frontends} refused"),
            }
        }
    }

    #[test]
    fn default_table_for_the_lab() {
        let c = Cluster::load(None).unwrap();
        let p = lb_plan(&c, None);
        assert_eq!((p.slots[0].port_lo, p.slots[0].port_hi), (1024, 2047)); // 2 nodes: 1024 each
    }

    fn entry(replied: u8, fin_out: u8, fin_in: u8, rst: u8) -> NatEntry {
        NatEntry {
            replied,
            fin_out,
            fin_in,
            rst,
            ..NatEntry::default()
        }
    }

    #[test]
    fn the_node_stage_times_out_as_a_kubenet_nodes_conntrack() {
        let t = IdleTimers::node(&Cluster::load(None).unwrap());
        let of = |p, e: NatEntry| t.of(p, &e).as_secs();
        assert_eq!(of(PROTO_TCP, entry(0, 0, 0, 0)), 120); // syn_sent
        assert_eq!(of(PROTO_TCP, entry(1, 0, 0, 0)), 86_400); // kube-proxy
        assert_eq!(of(PROTO_TCP, entry(1, 1, 0, 0)), 120); // fin_wait
        assert_eq!(of(PROTO_TCP, entry(1, 0, 1, 0)), 3_600); // kube-proxy close-wait
        assert_eq!(of(PROTO_TCP, entry(1, 1, 1, 0)), 120); // time_wait
        assert_eq!(of(PROTO_TCP, entry(1, 1, 1, 1)), 10); // close
        assert_eq!(of(PROTO_UDP, entry(0, 0, 0, 0)), 30);
        assert_eq!(of(PROTO_UDP, entry(1, 0, 0, 0)), 120); // stream
        assert_eq!(of(1, entry(1, 0, 0, 0)), 30); // ICMP
    }

    #[test]
    fn the_load_balancer_releases_ports_on_azures_timers() {
        let c = Cluster::load(None).unwrap();
        let t = IdleTimers::load_balancer(&c);
        let of = |p, e: NatEntry| t.of(p, &e).as_secs();
        assert_eq!(of(PROTO_TCP, entry(1, 0, 0, 0)), 30 * 60); // AKS idle
        assert_eq!(of(PROTO_TCP, entry(0, 0, 0, 0)), 30 * 60);
        for fins in [entry(1, 1, 0, 0), entry(1, 0, 1, 0), entry(1, 1, 1, 0)] {
            assert_eq!(of(PROTO_TCP, fins), 240, "{fins:?}");
        }
        assert_eq!(of(PROTO_TCP, entry(1, 0, 0, 1)), 15);
        assert_eq!(of(PROTO_UDP, entry(0, 0, 0, 0)), 30 * 60);
        assert_eq!(of(PROTO_UDP, entry(1, 0, 0, 0)), 30 * 60);
        let mut c = c;
        c.outbound.experiment_idle_timeout_s = Some(5);
        assert_eq!(IdleTimers::load_balancer(&c).tcp_established.as_secs(), 5);
        assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
    }
}
