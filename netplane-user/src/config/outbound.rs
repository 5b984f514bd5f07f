//! The outbound path's numbers derived from the cluster file: the SNAT
//! stages' timeouts, the gateway address, and the load balancer's port
//! blocks per node.
use std::{net::Ipv4Addr, time::Duration};

use netplane_common::nat::{PROTO_TCP, PROTO_UDP, state};
use serde::Serialize;

use super::cluster::{Cluster, OutboundType};

/// Idle timeouts by state and protocol.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp_established: Duration,
    pub tcp_transitory: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Timeouts {
    /// The node's conntrack timeouts.
    pub fn node(c: &Cluster) -> Timeouts {
        let t = &c.timeouts;
        Timeouts {
            tcp_established: Duration::from_secs(t.tcp_established_s.into()),
            tcp_transitory: Duration::from_secs(t.tcp_transitory_s.into()),
            udp: Duration::from_secs(t.udp_s.into()),
            icmp: Duration::from_secs(t.icmp_s.into()),
        }
    }

    /// The load balancer's: established TCP idles out after the outbound
    /// idle timeout (Azure's rule), the rest as on the nodes.
    pub fn load_balancer(c: &Cluster) -> Timeouts {
        Timeouts {
            tcp_established: Duration::from_secs(u64::from(c.outbound.idle_timeout_minutes) * 60),
            ..Timeouts::node(c)
        }
    }

    pub fn of(&self, proto: u8, st: u8) -> Duration {
        match (proto, st) {
            (PROTO_TCP, state::ESTABLISHED) => self.tcp_established,
            (PROTO_TCP, _) => self.tcp_transitory,
            (PROTO_UDP, _) => self.udp,
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

/// The load balancer's (or appliance's) port layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbPlan {
    /// Translated-to addresses.
    pub frontends: Vec<Ipv4Addr>,
    /// Slot index = backend index x frontends + frontend index.
    pub slots: Vec<LbSlot>,
    /// Backend node IP -> its first slot.
    pub backends: Vec<(Ipv4Addr, u32)>,
    pub slots_per_backend: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbSlot {
    pub nat_ip: Ipv4Addr,
    pub port_lo: u16,
    pub port_hi: u16,
    /// The node whose block this is; None: shared (appliance).
    pub node: Option<String>,
}

/// First port of the load balancer's blocks.
pub const LB_FIRST_PORT: u16 = netplane_common::limits::SNAT_PORT_MIN;

/// Azure's layout: each node a fixed, disjoint block of `ports_per_node`
/// on every frontend IP. An appliance instead shares its whole range among
/// all nodes, on its own address.
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
        };
    }
    let ports = c.ports_per_node().expect("validated") as u16;
    let k = c.outbound.frontend_ips.len() as u32;
    let mut slots = Vec::new();
    let mut backends = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        backends.push((n.ip, i as u32 * k));
        let lo = LB_FIRST_PORT + i as u16 * ports;
        for f in &c.outbound.frontend_ips {
            slots.push(LbSlot {
                nat_ip: *f,
                port_lo: lo,
                port_hi: lo + ports - 1,
                node: Some(n.name.clone()),
            });
        }
    }
    LbPlan {
        frontends: c.outbound.frontend_ips.clone(),
        slots,
        backends,
        slots_per_backend: k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancer_blocks_are_fixed_and_disjoint() {
        let mut c = Cluster::load(None).unwrap();
        c.outbound.frontend_ips = vec![
            "198.51.100.10".parse().unwrap(),
            "198.51.100.11".parse().unwrap(),
        ];
        c.outbound.allocated_outbound_ports = Some(64);
        let p = lb_plan(&c, None);
        assert_eq!(p.slots_per_backend, 2);
        assert_eq!(
            p.backends,
            vec![
                ("10.224.0.4".parse().unwrap(), 0),
                ("10.224.0.5".parse().unwrap(), 2)
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
                ("198.51.100.11".into(), 1024, 1087),
                ("198.51.100.10".into(), 1088, 1151),
                ("198.51.100.11".into(), 1088, 1151),
            ]
        );
    }

    #[test]
    fn default_table_for_the_lab() {
        let c = Cluster::load(None).unwrap();
        let p = lb_plan(&c, None);
        assert_eq!((p.slots[0].port_lo, p.slots[0].port_hi), (1024, 2047)); // 2 nodes: 1024 each
    }

    #[test]
    fn timeouts_by_state() {
        let c = Cluster::load(None).unwrap();
        let t = Timeouts::load_balancer(&c);
        assert_eq!(
            t.of(PROTO_TCP, state::ESTABLISHED),
            Duration::from_secs(30 * 60)
        );
        assert_eq!(t.of(PROTO_TCP, state::NEW), Duration::from_secs(60));
        assert_eq!(t.of(PROTO_UDP, state::ESTABLISHED), Duration::from_secs(30));
    }
}
