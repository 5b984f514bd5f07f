//! The cluster file: addressing, nodes and the lab's workload, with AKS's
//! rules checked before anything is applied.
use std::{fmt, net::Ipv4Addr, path::Path};

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
    /// Empty when the nodes come from the Kubernetes API.
    #[serde(default)]
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
    /// loadBalancer: ports per node, its total over all frontend IPs; 0 or
    /// absent means
    /// Azure's default table by backend pool size.
    pub allocated_outbound_ports: Option<u32>,
    /// loadBalancer: idle timeout of outbound flows, minutes (AKS: 30).
    #[serde(default = "default_idle_timeout_minutes")]
    pub idle_timeout_minutes: u32,
    /// loadBalancer: a SNAT port is released this long after a FIN (Azure:
    /// 240 s). Another value is an experiment, and said so.
    #[serde(default = "default_fin_release_s")]
    pub fin_release_s: u32,
    /// loadBalancer: ... and this long after an RST (Azure: 15 s).
    #[serde(default = "default_rst_release_s")]
    pub rst_release_s: u32,
    /// loadBalancer: when an established TCP flow idles out, send an RST to
    /// both ends (Azure's enableTcpReset; AKS turns it on).
    #[serde(default = "default_true")]
    pub tcp_reset_on_idle: bool,
    /// For experiments only: the idle timeout in seconds, replacing
    /// idle_timeout_minutes so that a test need not wait 4 minutes. Not an
    /// Azure value: every command that loads such a file warns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment_idle_timeout_s: Option<u32>,
    /// userDefinedRouting: the appliance every packet leaving the VNet goes to.
    pub appliance_ip: Option<Ipv4Addr>,
    /// SNAT port range of the node masquerade (and the appliance);
    /// default 1024-65535.
    #[serde(default = "default_port_range")]
    pub port_range: [u16; 2],
}

fn default_idle_timeout_minutes() -> u32 {
    limits::AKS_LB_IDLE_TIMEOUT
}

fn default_port_range() -> [u16; 2] {
    [limits::SNAT_PORT_MIN, limits::SNAT_PORT_MAX]
}

fn default_fin_release_s() -> u32 {
    limits::LB_FIN_RELEASE_S
}

fn default_rst_release_s() -> u32 {
    limits::LB_RST_RELEASE_S
}

fn default_true() -> bool {
    true
}

impl Outbound {
    /// The load balancer's idle timeout: Azure's minutes, or an experiment's
    /// seconds.
    pub fn idle_timeout_s(&self) -> u32 {
        self.experiment_idle_timeout_s
            .unwrap_or(self.idle_timeout_minutes * 60)
    }
}

impl Default for Outbound {
    fn default() -> Self {
        Self {
            kind: OutboundType::LoadBalancer,
            frontend_ips: vec![Ipv4Addr::new(198, 51, 100, 10)],
            allocated_outbound_ports: None,
            idle_timeout_minutes: default_idle_timeout_minutes(),
            fin_release_s: default_fin_release_s(),
            rst_release_s: default_rst_release_s(),
            tcp_reset_on_idle: true,
            experiment_idle_timeout_s: None,
            appliance_ip: None,
            port_range: default_port_range(),
        }
    }
}

/// The node stage's timeouts, seconds: a kubenet node's Linux conntrack
/// with kube-proxy's settings by default (docs/snat.md gives each source).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// SYN sent, no reply yet.
    pub tcp_syn_sent_s: u32,
    pub tcp_established_s: u32,
    /// The pod sent a FIN, the remote not yet.
    pub tcp_fin_wait_s: u32,
    /// The remote sent a FIN, the pod not yet.
    pub tcp_close_wait_s: u32,
    /// Both sent a FIN.
    pub tcp_time_wait_s: u32,
    /// After an RST.
    pub tcp_close_s: u32,
    /// One direction seen.
    pub udp_s: u32,
    /// Both directions seen.
    pub udp_stream_s: u32,
    pub icmp_s: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn_sent_s: limits::TCP_SYN_SENT_TIMEOUT_S,
            tcp_established_s: limits::TCP_ESTABLISHED_TIMEOUT_S,
            tcp_fin_wait_s: limits::TCP_FIN_WAIT_TIMEOUT_S,
            tcp_close_wait_s: limits::TCP_CLOSE_WAIT_TIMEOUT_S,
            tcp_time_wait_s: limits::TCP_TIME_WAIT_TIMEOUT_S,
            tcp_close_s: limits::TCP_CLOSE_TIMEOUT_S,
            udp_s: limits::UDP_TIMEOUT_S,
            udp_stream_s: limits::UDP_STREAM_TIMEOUT_S,
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
    /// Unset: a node's default, and the lab's own share (netplane-lab's
    /// `lab_nat_entries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_table_entries: Option<u32>,
}

impl Limits {
    /// The NAT tables' size for a node: the file's, else the default.
    pub fn nat_table_entries(&self) -> u32 {
        self.nat_table_entries
            .unwrap_or(netplane_common::nat::MAX_NAT_ENTRIES)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_routes: netplane_common::limits::AZURE_UDR_ROUTE_LIMIT,
            allow_over_route_limit: false,
            nat_table_entries: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

impl Cluster {
    /// Reads and validates a cluster file, or the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Cluster, ConfigError> {
        let (name, text) = Self::read(path)?;
        Self::parse(&name, &text)
    }

    /// Reads a cluster file for its cluster-wide settings alone, for an
    /// agent whose nodes come from the Kubernetes API: its `[[nodes]]` are
    /// dropped (the API's replace them, held to the same rules by
    /// `source::admit`), and every other rule is checked.
    pub fn load_settings(path: Option<&Path>) -> Result<Cluster, ConfigError> {
        let (name, text) = Self::read(path)?;
        Self::parse_settings(&name, &text)
    }

    /// `load_settings` of a text.
    pub fn parse_settings(name: &str, text: &str) -> Result<Cluster, ConfigError> {
        let mut cluster = Self::parse_unchecked(name, text)?;
        cluster.nodes.clear();
        let violations: Vec<Violation> = cluster
            .violations()
            .into_iter()
            .filter(|v| v.field != "nodes")
            .collect();
        Self::checked(name, cluster, violations)
    }

    fn read(path: Option<&Path>) -> Result<(String, String), ConfigError> {
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
        Ok((name, text))
    }

    pub fn parse(name: &str, text: &str) -> Result<Cluster, ConfigError> {
        let cluster = Self::parse_unchecked(name, text)?;
        let violations = cluster.violations();
        Self::checked(name, cluster, violations)
    }

    fn parse_unchecked(name: &str, text: &str) -> Result<Cluster, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_string(),
            message: e.to_string(),
        })
    }

    fn checked(
        name: &str,
        cluster: Cluster,
        violations: Vec<Violation>,
    ) -> Result<Cluster, ConfigError> {
        if violations.is_empty() {
            Ok(cluster)
        } else {
            Err(ConfigError::Invalid {
                path: name.to_string(),
                violations,
            })
        }
    }

    /// Ports each node gets, in total over all frontend IPs (Azure's
    /// allocatedOutboundPorts is per VM): explicit, or Azure's default
    /// table by pool size, which more IPs do not raise. None when the pool
    /// is too big for the table.
    pub fn ports_per_node(&self) -> Option<u32> {
        match self.outbound.allocated_outbound_ports {
            Some(p) if p > 0 => Some(p),
            _ => limits::default_ports_per_node(self.nodes.len() as u32),
        }
    }

    /// Nodes with their pod CIDRs: explicit ones kept, the others given the
    /// lowest free /node_pod_prefix of the cluster pod CIDR, in node order.
    pub fn nodes(&self) -> Vec<NodePlan> {
        self.try_plan().expect("validated cluster")
    }

    pub(super) fn try_plan(&self) -> Result<Vec<NodePlan>, String> {
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
        let mut w = Vec::new();
        let limit = self.limits.max_routes;
        if self.nodes.len() > limit {
            w.push(format!(
                "WARNING: {} nodes need {} routes, over the route table limit of {limit}; allowed only because limits.allow_over_route_limit = true. Real AKS refuses this.",
                self.nodes.len(),
                self.nodes.len()
            ));
        }
        let o = &self.outbound;
        if let Some(s) = o.experiment_idle_timeout_s {
            w.push(format!(
                "WARNING: outbound.experiment_idle_timeout_s = {s}: the load balancer's idle timeout is {s} s for this experiment; Azure allows {} to {} minutes.",
                limits::LB_IDLE_TIMEOUT_MIN,
                limits::LB_IDLE_TIMEOUT_MAX
            ));
        }
        for (field, v, azure) in [
            ("fin_release_s", o.fin_release_s, limits::LB_FIN_RELEASE_S),
            ("rst_release_s", o.rst_release_s, limits::LB_RST_RELEASE_S),
        ] {
            if v != azure {
                w.push(format!(
                    "WARNING: outbound.{field} = {v}: Azure releases the port after {azure} s; this is an experiment."
                ));
            }
        }
        w
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
