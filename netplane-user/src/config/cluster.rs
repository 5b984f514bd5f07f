//! The cluster file: addressing, nodes and the lab's workload, with AKS's
//! rules checked before anything is applied.
use std::{collections::HashSet, fmt, net::Ipv4Addr, path::Path};

use ipnet::Ipv4Net;
use netplane_common::limits;
use serde::{Deserialize, Serialize};

/// The lab's cluster: AKS kubenet defaults, two nodes, two pods each.
pub const DEFAULT_CLUSTER: &str = include_str!("default-cluster.toml");

/// Ranges AKS refuses for the VNet, pod and service CIDRs.
pub const RESERVED_RANGES: [&str; 4] = [
    "169.254.0.0/16",
    "172.30.0.0/16",
    "172.31.0.0/16",
    "192.0.2.0/24",
];
pub const MIN_MAX_PODS: u32 = 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    pub network: Network,
    #[serde(default)]
    pub limits: Limits,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub outbound: Outbound,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub lab: Lab,
}

/// How pods' traffic leaves the VNet (AKS's `outboundType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboundType {
    /// The outbound load balancer SNATs node IPs to its frontend IPs.
    #[serde(rename = "loadBalancer")]
    LoadBalancer,
    /// 0.0.0.0/0 goes to an appliance (a firewall), which SNATs.
    #[serde(rename = "userDefinedRouting")]
    UserDefinedRouting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    #[serde(rename = "type")]
    pub kind: OutboundType,
    /// loadBalancer: the frontend public IPs.
    #[serde(default)]
    pub frontend_ips: Vec<Ipv4Addr>,
    /// loadBalancer: ports per node per frontend IP; 0 or absent means
    /// Azure's default table by backend pool size.
    pub allocated_outbound_ports: Option<u32>,
    /// loadBalancer: idle timeout of outbound flows, minutes.
    pub idle_timeout_minutes: u32,
    /// userDefinedRouting: the appliance every packet leaving the VNet goes to.
    pub appliance_ip: Option<Ipv4Addr>,
    /// SNAT port range of the node masquerade (and the appliance).
    pub port_range: [u16; 2],
}

impl Default for Outbound {
    fn default() -> Self {
        Self {
            kind: OutboundType::LoadBalancer,
            frontend_ips: vec![Ipv4Addr::new(198, 51, 100, 10)],
            allocated_outbound_ports: None,
            idle_timeout_minutes: limits::AKS_LB_IDLE_TIMEOUT,
            appliance_ip: None,
            port_range: [limits::SNAT_PORT_MIN, limits::SNAT_PORT_MAX],
        }
    }
}

/// Conntrack idle timeouts, seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub tcp_established_s: u32,
    /// SYN, FIN and RST states.
    pub tcp_transitory_s: u32,
    pub udp_s: u32,
    pub icmp_s: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established_s: limits::TCP_ESTABLISHED_TIMEOUT_S,
            tcp_transitory_s: limits::TCP_TRANSITORY_TIMEOUT_S,
            udp_s: limits::UDP_TIMEOUT_S,
            icmp_s: limits::ICMP_TIMEOUT_S,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub vnet_cidr: Ipv4Net,
    pub node_subnet: Ipv4Net,
    pub pod_cidr: Ipv4Net,
    pub node_pod_prefix: u8,
    pub service_cidr: Ipv4Net,
    pub dns_service_ip: Ipv4Addr,
    pub max_pods: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Azure's route table limit (one route per node).
    pub max_routes: usize,
    /// Lift the route limit for experiments (warned about loudly).
    pub allow_over_route_limit: bool,
    /// Translations each node and the load balancer can hold at once
    /// (netplane's NAT tables; the kernel's would be nf_conntrack_max).
    #[serde(default = "default_nat_table_entries")]
    pub nat_table_entries: u32,
}

fn default_nat_table_entries() -> u32 {
    netplane_common::nat::MAX_NAT_ENTRIES
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_routes: netplane_common::limits::AZURE_UDR_ROUTE_LIMIT,
            allow_over_route_limit: false,
            nat_table_entries: default_nat_table_entries(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Explicit pod CIDR; otherwise allocated in node order.
    pub pod_cidr: Option<Ipv4Net>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lab {
    pub pods_per_node: u32,
}

impl Default for Lab {
    fn default() -> Self {
        Self { pods_per_node: 2 }
    }
}

/// One broken rule: which field, its value, and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub field: String,
    pub value: String,
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.rule)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a valid cluster file: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {} rule(s) broken:\n{}", .violations.len(), list(.violations))]
    Invalid {
        path: String,
        violations: Vec<Violation>,
    },
}

fn list(v: &[Violation]) -> String {
    v.iter()
        .map(|v| format!("  - {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A node with its pod CIDR resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePlan {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

impl Cluster {
    /// Reads and validates a cluster file, or the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Cluster, ConfigError> {
        let (name, text) = match path {
            Some(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: name.clone(),
                    source,
                })?;
                (name, text)
            }
            None => (
                "<embedded default>".to_string(),
                DEFAULT_CLUSTER.to_string(),
            ),
        };
        Self::parse(&name, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Cluster, ConfigError> {
        let cluster: Cluster = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_string(),
            message: e.to_string(),
        })?;
        let violations = cluster.violations();
        if violations.is_empty() {
            Ok(cluster)
        } else {
            Err(ConfigError::Invalid {
                path: name.to_string(),
                violations,
            })
        }
    }

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

    /// Ports each node gets per frontend IP: explicit, or Azure's default
    /// table by pool size. None when the pool is too big for the table.
    pub fn ports_per_node(&self) -> Option<u32> {
        match self.outbound.allocated_outbound_ports {
            Some(p) if p > 0 => Some(p),
            _ => limits::default_ports_per_node(self.nodes.len() as u32),
        }
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
                        let capacity = u64::from(max) * o.frontend_ips.len() as u64;
                        if nodes * u64::from(ports) > capacity {
                            bad("outbound.allocated_outbound_ports", &ports, format!("{nodes} nodes x {ports} ports = {} > {max} x {} frontend IP(s) = {capacity}: add frontend IPs or allocate fewer ports", nodes * u64::from(ports), o.frontend_ips.len()));
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
        for (field, v) in [
            ("timeouts.tcp_established_s", t.tcp_established_s),
            ("timeouts.tcp_transitory_s", t.tcp_transitory_s),
            ("timeouts.udp_s", t.udp_s),
            ("timeouts.icmp_s", t.icmp_s),
        ] {
            if v == 0 {
                bad(field, &v, "must be at least 1 second".into());
            }
        }
        if t.tcp_transitory_s > t.tcp_established_s {
            bad(
                "timeouts.tcp_transitory_s",
                &t.tcp_transitory_s,
                format!(
                    "must not exceed timeouts.tcp_established_s ({})",
                    t.tcp_established_s
                ),
            );
        }
    }

    fn node_violations(&self, bad: &mut dyn FnMut(&str, &dyn fmt::Display, String)) {
        let n = &self.network;
        if self.nodes.is_empty() {
            bad("nodes", &"[]", "a cluster needs at least one node".into());
        }
        let nat = self.limits.nat_table_entries;
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

    /// Nodes with their pod CIDRs: explicit ones kept, the others given the
    /// lowest free /node_pod_prefix of the cluster pod CIDR, in node order.
    pub fn nodes(&self) -> Vec<NodePlan> {
        self.try_plan().expect("validated cluster")
    }

    fn try_plan(&self) -> Result<Vec<NodePlan>, String> {
        let n = &self.network;
        let taken: Vec<Ipv4Net> = self.nodes.iter().filter_map(|x| x.pod_cidr).collect();
        let mut free = n
            .pod_cidr
            .subnets(n.node_pod_prefix)
            .map_err(|e| e.to_string())?
            .filter(|s| !taken.iter().any(|t| overlaps(*t, *s)));
        self.nodes
            .iter()
            .map(|node| {
                let pod_cidr = match node.pod_cidr {
                    Some(c) => c,
                    None => free.next().ok_or_else(|| {
                        format!(
                            "network.pod_cidr {} has no /{} left for {}",
                            n.pod_cidr, n.node_pod_prefix, node.name
                        )
                    })?,
                };
                Ok(NodePlan {
                    name: node.name.clone(),
                    ip: node.ip,
                    pod_cidr,
                })
            })
            .collect()
    }

    pub fn node(&self, name: &str) -> Option<NodePlan> {
        self.nodes().into_iter().find(|n| n.name == name)
    }

    /// Printed when the route limit is lifted.
    pub fn warnings(&self) -> Vec<String> {
        let limit = self.limits.max_routes;
        if self.nodes.len() > limit {
            vec![format!(
                "WARNING: {} nodes need {} routes, over the route table limit of {limit}; allowed only because limits.allow_over_route_limit = true. Real AKS refuses this.",
                self.nodes.len(),
                self.nodes.len()
            )]
        } else {
            Vec::new()
        }
    }
}

/// Pods a /prefix can hold: minus network, broadcast and the .1 gateway.
pub fn pod_capacity(prefix: u8) -> u32 {
    (1u32 << (32 - prefix as u32)).saturating_sub(3)
}

/// The gateway address pods use: the first host of the node's pod CIDR
/// (kubenet's cbr0 address; answered by the ARP responder here).
pub fn pod_gateway(pod_cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr.network()) + 1)
}

pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with(edit: impl Fn(&mut Cluster)) -> Vec<Violation> {
        let mut c: Cluster = toml::from_str(DEFAULT_CLUSTER).unwrap();
        edit(&mut c);
        c.violations()
    }

    fn rules(v: &[Violation]) -> Vec<(String, String)> {
        v.iter()
            .map(|v| (v.field.clone(), v.rule.clone()))
            .collect()
    }

    #[test]
    fn the_embedded_default_is_valid_and_matches_aks_defaults() {
        let c = Cluster::load(None).unwrap();
        assert_eq!(c.network.pod_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(c.network.service_cidr.to_string(), "10.0.0.0/16");
        assert_eq!(c.network.dns_service_ip.to_string(), "10.0.0.10");
        assert_eq!(c.network.max_pods, 110);
        let plan = c.nodes();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].pod_cidr.to_string(), "10.244.0.0/24");
        assert_eq!(plan[1].pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(pod_gateway(plan[1].pod_cidr).to_string(), "10.244.1.1");
    }

    #[test]
    fn allocation_skips_explicit_pod_cidrs() {
        let mut c: Cluster = toml::from_str(DEFAULT_CLUSTER).unwrap();
        c.nodes[1].pod_cidr = Some("10.244.0.0/24".parse().unwrap());
        let plan = c.nodes();
        assert_eq!(plan[0].pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(plan[1].pod_cidr.to_string(), "10.244.0.0/24");
        assert!(c.violations().is_empty());
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let v = with(|c| c.network.pod_cidr = "172.30.0.0/16".parse().unwrap());
        assert_eq!(
            rules(&v),
            vec![(
                "network.pod_cidr".into(),
                "overlaps 172.30.0.0/16, which AKS reserves".into()
            )]
        );

        let v = with(|c| c.network.dns_service_ip = "10.0.0.1".parse().unwrap());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "network.dns_service_ip");
        assert!(v[0].rule.contains("first address"), "{}", v[0].rule);

        let v = with(|c| c.nodes[1].ip = c.nodes[0].ip);
        assert_eq!(
            rules(&v),
            vec![("nodes[1].ip".into(), "duplicate node IP".into())]
        );

        let v = with(|c| c.nodes[0].ip = "10.224.0.2".parse().unwrap());
        assert_eq!(v.len(), 1);
        assert!(v[0].rule.contains("Azure reserves"));

        let v = with(|c| c.network.max_pods = 251);
        assert!(
            v.iter()
                .any(|v| v.field == "network.max_pods" && v.rule.contains("10 to 250"))
        );

        let v = with(|c| c.network.pod_cidr = "10.244.0.5/16".parse().unwrap());
        assert!(v.iter().any(|v| v.rule.starts_with("host bits set")));
    }

    #[test]
    fn overlapping_node_pod_cidrs_are_refused() {
        let v = with(|c| {
            c.nodes[0].pod_cidr = Some("10.244.3.0/24".parse().unwrap());
            c.nodes[1].pod_cidr = Some("10.244.3.0/24".parse().unwrap());
        });
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "nodes.pod_cidr");
    }

    #[test]
    fn more_nodes_than_routes_needs_the_explicit_switch() {
        let grow = |c: &mut Cluster| {
            // 401 /24s need more than a /16.
            c.network.pod_cidr = "10.100.0.0/15".parse().unwrap();
            c.nodes = (0..401)
                .map(|i| Node {
                    name: format!("n{i}"),
                    ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 224, 1, 0)) + i),
                    pod_cidr: None,
                })
                .collect();
        };
        let v = with(grow);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].rule.contains("at most 400"));
        let v = with(|c| {
            grow(c);
            c.limits.allow_over_route_limit = true;
        });
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for text in [
            "not toml at all [",
            "name = 1",
            "name = \"x\"\nbogus = true",
            &DEFAULT_CLUSTER.replace("10.224.0.4", "fd00::4"),
        ] {
            assert!(
                matches!(Cluster::parse("t", text), Err(ConfigError::Parse { .. })),
                "{text}"
            );
        }
    }
}
