//! AKS's rules for a cluster file, all checked at once: each broken rule a
//! `Violation` naming the field, its value and the rule
//! (docs/cluster-spec.md lists them with their sources).
use std::{collections::HashSet, fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;
use netplane_common::limits;

use super::cluster::{
    Cluster, MIN_MAX_PODS, OutboundType, RESERVED_RANGES, Violation, overlaps, pod_capacity,
};

impl Cluster {
    /// Every rule this file breaks (empty when valid).
    pub fn violations(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        let mut bad = |field: &str, value: &dyn fmt::Display, rule: String| {
            v.push(Violation {
                field: field.into(),
                value: value.to_string(),
                rule,
            })
        };
        let n = &self.network;
        let cidrs = [
            ("network.vnet_cidr", n.vnet_cidr),
            ("network.node_subnet", n.node_subnet),
            ("network.pod_cidr", n.pod_cidr),
            ("network.service_cidr", n.service_cidr),
        ];
        for (field, net) in cidrs {
            if net != net.trunc() {
                bad(
                    field,
                    &net,
                    format!("host bits set; the network is {}", net.trunc()),
                );
            }
        }
        for (field, net) in [cidrs[0], cidrs[2], cidrs[3]] {
            for r in RESERVED_RANGES {
                let r: Ipv4Net = r.parse().expect("constant");
                if overlaps(net, r) {
                    bad(field, &net, format!("overlaps {r}, which AKS reserves"));
                }
            }
        }
        if !n.vnet_cidr.contains(&n.node_subnet) {
            bad(
                "network.node_subnet",
                &n.node_subnet,
                format!("must be inside network.vnet_cidr {}", n.vnet_cidr),
            );
        }
        if overlaps(n.pod_cidr, n.vnet_cidr) {
            bad(
                "network.pod_cidr",
                &n.pod_cidr,
                format!("must not overlap network.vnet_cidr {}", n.vnet_cidr),
            );
        }
        if overlaps(n.service_cidr, n.vnet_cidr) {
            bad(
                "network.service_cidr",
                &n.service_cidr,
                format!("must not overlap network.vnet_cidr {}", n.vnet_cidr),
            );
        }
        if overlaps(n.pod_cidr, n.service_cidr) {
            bad(
                "network.service_cidr",
                &n.service_cidr,
                format!("must not overlap network.pod_cidr {}", n.pod_cidr),
            );
        }
        if !n.service_cidr.contains(&n.dns_service_ip) {
            bad(
                "network.dns_service_ip",
                &n.dns_service_ip,
                format!("must be inside network.service_cidr {}", n.service_cidr),
            );
        } else if u32::from(n.dns_service_ip) <= u32::from(n.service_cidr.network()) + 1 {
            bad("network.dns_service_ip", &n.dns_service_ip, "must not be the network address or the first address (.1 is the kubernetes service)".into());
        }
        let max = netplane_common::limits::MAX_PODS_PER_NODE_AKS;
        if n.node_pod_prefix < n.pod_cidr.prefix_len() || n.node_pod_prefix > 30 {
            bad(
                "network.node_pod_prefix",
                &n.node_pod_prefix,
                format!(
                    "must be between the pod CIDR's /{} and /30",
                    n.pod_cidr.prefix_len()
                ),
            );
        } else if !(MIN_MAX_PODS..=max).contains(&n.max_pods) {
            bad(
                "network.max_pods",
                &n.max_pods,
                format!("kubenet allows {MIN_MAX_PODS} to {max} pods per node"),
            );
        } else if n.max_pods > pod_capacity(n.node_pod_prefix) {
            bad(
                "network.max_pods",
                &n.max_pods,
                format!(
                    "a /{} holds only {} pods (network, broadcast and the .1 gateway excluded)",
                    n.node_pod_prefix,
                    pod_capacity(n.node_pod_prefix)
                ),
            );
        }
        if self.lab.pods_per_node > n.max_pods {
            bad(
                "lab.pods_per_node",
                &self.lab.pods_per_node,
                format!("more than network.max_pods ({})", n.max_pods),
            );
        }
        self.node_violations(&mut bad);
        self.outbound_violations(&mut bad);
        self.timeout_violations(&mut bad);
        v
    }

    fn outbound_violations(&self, bad: &mut dyn FnMut(&str, &dyn fmt::Display, String)) {
        let o = &self.outbound;
        let n = &self.network;
        let [lo, hi] = o.port_range;
        if lo == 0 || lo > hi {
            bad(
                "outbound.port_range",
                &format!("[{lo}, {hi}]"),
                "must be [low, high] with 1 <= low <= high <= 65535".into(),
            );
        }
        match o.kind {
            OutboundType::LoadBalancer => {
                if o.frontend_ips.is_empty() {
                    bad(
                        "outbound.frontend_ips",
                        &"[]",
                        "loadBalancer needs at least one frontend IP".into(),
                    );
                }
                let most = netplane_common::nat::MAX_FRONTENDS as usize;
                if o.frontend_ips.len() > most {
                    bad(
                        "outbound.frontend_ips",
                        &format!("{} IPs", o.frontend_ips.len()),
                        format!(
                            "netplane's data path draws a node's ports from at most {most} \
                             frontend IPs (MAX_FRONTENDS); more would never be used"
                        ),
                    );
                }
                let mut seen = HashSet::new();
                for (i, ip) in o.frontend_ips.iter().enumerate() {
                    let field = format!("outbound.frontend_ips[{i}]");
                    if !seen.insert(ip) {
                        bad(&field, ip, "duplicate frontend IP".into());
                    }
                    for (name, net) in [
                        ("network.vnet_cidr", n.vnet_cidr),
                        ("network.pod_cidr", n.pod_cidr),
                        ("network.service_cidr", n.service_cidr),
                    ] {
                        if net.contains(ip) {
                            bad(
                                &field,
                                ip,
                                format!("a frontend IP is public: must not be inside {name} {net}"),
                            );
                        }
                    }
                }
                if let Some(ip) = o.appliance_ip {
                    bad(
                        "outbound.appliance_ip",
                        &ip,
                        "only for outbound type userDefinedRouting".into(),
                    );
                }
                let max = limits::AZURE_SNAT_PORTS_PER_FRONTEND;
                let mut ports_ok = !o.frontend_ips.is_empty();
                if let Some(p) = o.allocated_outbound_ports
                    && (p > max || p % limits::AZURE_PORT_BLOCK != 0)
                {
                    ports_ok = false;
                    bad(
                        "outbound.allocated_outbound_ports",
                        &p,
                        format!(
                            "must be 0 (Azure's default table) or a multiple of {} up to {max}",
                            limits::AZURE_PORT_BLOCK
                        ),
                    );
                }
                let (lo_t, hi_t) = (limits::LB_IDLE_TIMEOUT_MIN, limits::LB_IDLE_TIMEOUT_MAX);
                if !(lo_t..=hi_t).contains(&o.idle_timeout_minutes) {
                    bad(
                        "outbound.idle_timeout_minutes",
                        &o.idle_timeout_minutes,
                        format!("Azure allows {lo_t} to {hi_t} minutes"),
                    );
                }
                let nodes = self.nodes.len() as u64;
                match self.ports_per_node().filter(|_| ports_ok) {
                    None if !ports_ok => {}
                    None => bad("nodes", &nodes, "Azure's default port table covers backend pools up to 1000 nodes: set outbound.allocated_outbound_ports".into()),
                    Some(ports) => {
                        // The one layout the agent uses: refused here when
                        // the nodes do not fit the frontends.
                        if let Err(why) = super::outbound::port_blocks(
                            self.nodes.len(),
                            ports,
                            o.frontend_ips.len(),
                        ) {
                            bad(
                                "outbound.allocated_outbound_ports",
                                &ports,
                                format!("{why}: add frontend IPs or allocate fewer ports"),
                            );
                        }
                    }
                }
            }
            OutboundType::UserDefinedRouting => match o.appliance_ip {
                None => bad(
                    "outbound.appliance_ip",
                    &"(missing)",
                    "userDefinedRouting needs the appliance's IP".into(),
                ),
                Some(ip) => {
                    if !n.vnet_cidr.contains(&ip) {
                        bad(
                            "outbound.appliance_ip",
                            &ip,
                            format!("must be inside network.vnet_cidr {}", n.vnet_cidr),
                        );
                    }
                    if self.nodes.iter().any(|x| x.ip == ip) {
                        bad("outbound.appliance_ip", &ip, "is a node's IP".into());
                    }
                    if n.node_subnet.contains(&ip) && azure_reserved(n.node_subnet, ip) {
                        bad(
                            "outbound.appliance_ip",
                            &ip,
                            "Azure reserves the first four and the last address of a subnet".into(),
                        );
                    }
                }
            },
        }
    }

    fn timeout_violations(&self, bad: &mut dyn FnMut(&str, &dyn fmt::Display, String)) {
        let t = &self.timeouts;
        let o = &self.outbound;
        for (field, v) in [
            ("timeouts.tcp_syn_sent_s", t.tcp_syn_sent_s),
            ("timeouts.tcp_established_s", t.tcp_established_s),
            ("timeouts.tcp_fin_wait_s", t.tcp_fin_wait_s),
            ("timeouts.tcp_close_wait_s", t.tcp_close_wait_s),
            ("timeouts.tcp_time_wait_s", t.tcp_time_wait_s),
            ("timeouts.tcp_close_s", t.tcp_close_s),
            ("timeouts.udp_s", t.udp_s),
            ("timeouts.udp_stream_s", t.udp_stream_s),
            ("timeouts.icmp_s", t.icmp_s),
            ("outbound.fin_release_s", o.fin_release_s),
            ("outbound.rst_release_s", o.rst_release_s),
        ] {
            if v == 0 {
                bad(field, &v, "must be at least 1 second".into());
            }
        }
        if o.experiment_idle_timeout_s == Some(0) {
            bad(
                "outbound.experiment_idle_timeout_s",
                &0,
                "must be at least 1 second".into(),
            );
        }
    }

    fn node_violations(&self, bad: &mut dyn FnMut(&str, &dyn fmt::Display, String)) {
        let n = &self.network;
        if self.nodes.is_empty() {
            bad("nodes", &"[]", "a cluster needs at least one node".into());
        }
        let nat = self.limits.nat_table_entries();
        let (lo, hi) = (
            netplane_common::nat::NAT_TABLE_ENTRIES_MIN,
            netplane_common::nat::NAT_TABLE_ENTRIES_MAX,
        );
        if !(lo..=hi).contains(&nat) {
            bad(
                "limits.nat_table_entries",
                &nat,
                format!("must be {lo} to {hi} translations"),
            );
        }
        let limit = self.limits.max_routes;
        if self.nodes.len() > limit && !self.limits.allow_over_route_limit {
            bad(
                "nodes",
                &self.nodes.len(),
                format!(
                    "kubenet needs one route per node and the route table holds at most {limit} (set limits.allow_over_route_limit = true to experiment)"
                ),
            );
        }
        let mut names = HashSet::new();
        let mut ips = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let f = |k: &str| format!("nodes[{i}].{k}");
            if !is_dns_label(&node.name) {
                bad(&f("name"), &node.name, "must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'".into());
            }
            if !names.insert(node.name.as_str()) {
                bad(&f("name"), &node.name, "duplicate node name".into());
            }
            if !n.node_subnet.contains(&node.ip) {
                bad(
                    &f("ip"),
                    &node.ip,
                    format!("must be inside network.node_subnet {}", n.node_subnet),
                );
            } else if azure_reserved(n.node_subnet, node.ip) {
                bad(
                    &f("ip"),
                    &node.ip,
                    "Azure reserves the first four and the last address of a subnet".into(),
                );
            }
            if !ips.insert(node.ip) {
                bad(&f("ip"), &node.ip, "duplicate node IP".into());
            }
            if let Some(c) = node.pod_cidr {
                if c != c.trunc() {
                    bad(
                        &f("pod_cidr"),
                        &c,
                        format!("host bits set; the network is {}", c.trunc()),
                    );
                }
                if !n.pod_cidr.contains(&c) {
                    bad(
                        &f("pod_cidr"),
                        &c,
                        format!("must be inside network.pod_cidr {}", n.pod_cidr),
                    );
                }
                if c.prefix_len() != n.node_pod_prefix {
                    bad(
                        &f("pod_cidr"),
                        &c,
                        format!("must be a /{} (network.node_pod_prefix)", n.node_pod_prefix),
                    );
                }
            }
        }
        if n.node_pod_prefix >= n.pod_cidr.prefix_len() && n.node_pod_prefix <= 30 {
            match self.try_plan() {
                Ok(plan) => {
                    for (i, a) in plan.iter().enumerate() {
                        for b in &plan[i + 1..] {
                            if overlaps(a.pod_cidr, b.pod_cidr) {
                                bad(
                                    "nodes.pod_cidr",
                                    &b.pod_cidr,
                                    format!("overlaps {} of {}", a.pod_cidr, a.name),
                                );
                            }
                        }
                    }
                }
                Err(msg) => bad("nodes", &self.nodes.len(), msg),
            }
        }
    }
}

fn azure_reserved(subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    let off = u32::from(ip) - u32::from(subnet.network());
    off < 4 || ip == subnet.broadcast()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
