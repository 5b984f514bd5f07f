//! `netplane plan`: the address and SNAT-port arithmetic of an AKS cluster,
//! each number with the formula that gave it.
use netplane_common::limits;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Nodes take VNet addresses; pods use a separate pod CIDR and routes.
    Kubenet,
    /// Every pod takes a VNet address (Azure CNI's flat "Pod Subnet"/legacy
    /// mode).
    AzureCni,
    /// Azure CNI Overlay: nodes take VNet addresses; pods come from a
    /// private pod CIDR, a /24 per node, with no route table.
    AzureCniOverlay,
}

#[derive(Debug, Clone, Serialize)]
pub struct Input {
    pub nodes: u32,
    pub max_pods: u32,
    pub mode: Mode,
    pub surge: u32,
    pub outbound_ips: u32,
    pub allocated_outbound_ports: Option<u32>,
}

/// One derived number and how it was derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Figure {
    pub value: u64,
    pub formula: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub input: Input,
    /// Addresses the nodes (and, with Azure CNI, the pods) take.
    pub addresses: Figure,
    /// The same plus the addresses Azure reserves in every subnet.
    pub subnet_addresses: Figure,
    /// Smallest subnet prefix that holds them.
    pub subnet_prefix: Figure,
    /// kubenet and Overlay: the cluster pod CIDR prefix for one /24 per node.
    pub pod_cidr_prefix: Option<Figure>,
    /// kubenet: route table entries, against Azure's limit (Overlay: 0).
    pub routes: Option<Figure>,
    pub route_limit: usize,
    pub ports_per_node: Figure,
    pub nodes_served: Figure,
    pub connections_per_destination: Figure,
    /// Problems with this plan (it still prints).
    pub problems: Vec<String>,
}

/// Smallest prefix whose block holds `n` addresses.
pub fn smallest_prefix(n: u64) -> u8 {
    (0..=32u8)
        .rev()
        .find(|p| 1u64 << (32 - p) >= n)
        .unwrap_or(0)
}

pub fn plan(input: Input) -> Result<Plan, String> {
    let Input {
        nodes: n,
        max_pods: p,
        surge: s,
        outbound_ips: k,
        ..
    } = input;
    if n == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if !(10..=limits::MAX_PODS_PER_NODE_AKS).contains(&p) {
        return Err(format!(
            "--max-pods must be 10 to {}",
            limits::MAX_PODS_PER_NODE_AKS
        ));
    }
    if k == 0 {
        return Err("--outbound-ips must be at least 1".into());
    }
    if let Some(x) = input.allocated_outbound_ports
        && (x > limits::AZURE_SNAT_PORTS_PER_FRONTEND || x % limits::AZURE_PORT_BLOCK != 0)
    {
        return Err(format!(
            "--allocated-outbound-ports must be 0 or a multiple of {} up to {}",
            limits::AZURE_PORT_BLOCK,
            limits::AZURE_SNAT_PORTS_PER_FRONTEND
        ));
    }
    let (n64, p64, s64, k64) = (u64::from(n), u64::from(p), u64::from(s), u64::from(k));
    let reserved = u64::from(limits::AZURE_RESERVED_PER_SUBNET);
    let hosts = n64 + s64;
    let mut problems = Vec::new();

    let addresses = match input.mode {
        Mode::Kubenet | Mode::AzureCniOverlay => Figure {
            value: hosts,
            formula: format!("N + S = {n} + {s} (pods use the pod CIDR)"),
        },
        Mode::AzureCni => Figure {
            value: hosts + hosts * p64,
            formula: format!("(N + S) + (N + S) x P = {hosts} + {hosts} x {p}"),
        },
    };
    let subnet_addresses = Figure {
        value: addresses.value + reserved,
        formula: format!("{} + {reserved} Azure reserves per subnet", addresses.value),
    };
    let prefix = smallest_prefix(subnet_addresses.value);
    let subnet_prefix = Figure {
        value: u64::from(prefix),
        formula: format!(
            "smallest /p with 2^(32-p) >= {}: /{prefix} holds {}",
            subnet_addresses.value,
            1u64 << (32 - prefix)
        ),
    };

    let (pod_cidr_prefix, routes) = match input.mode {
        Mode::Kubenet | Mode::AzureCniOverlay => {
            let bits = 64 - (hosts - 1).leading_zeros() as u8; // ceil(log2(N + S))
            let pod_prefix = 24u8.saturating_sub(bits);
            let overlay = input.mode == Mode::AzureCniOverlay;
            let routes = if overlay {
                Figure {
                    value: 0,
                    formula: "none: Azure's overlay carries pod traffic between nodes".into(),
                }
            } else {
                Figure {
                    value: hosts,
                    formula: format!("one route per node: N + S = {hosts}"),
                }
            };
            if !overlay && hosts as usize > limits::AZURE_UDR_ROUTE_LIMIT {
                problems.push(format!(
                    "{hosts} routes exceed the route table limit of {}: kubenet caps the cluster at {} nodes including surge",
                    limits::AZURE_UDR_ROUTE_LIMIT,
                    limits::AZURE_UDR_ROUTE_LIMIT
                ));
            }
            (
                Some(Figure {
                    value: u64::from(pod_prefix),
                    formula: format!(
                        "(N + S) = {hosts} x /24 (one per node) fit in a /{pod_prefix} ({} /24s)",
                        1u64 << bits
                    ),
                }),
                Some(routes),
            )
        }
        Mode::AzureCni => (None, None),
    };

    let pool = n + s;
    let (ports, source) = match input.allocated_outbound_ports {
        Some(x) if x > 0 => (Some(x), "allocated_outbound_ports".to_string()),
        _ => (
            limits::default_ports_per_node(pool),
            format!("Azure's default table for a backend pool of N + S = {pool} nodes"),
        ),
    };
    let Some(ports) = ports else {
        return Err(format!(
            "a backend pool of {pool} nodes is beyond Azure's default table (1000): give --allocated-outbound-ports"
        ));
    };
    let ports64 = u64::from(ports);
    let capacity = u64::from(limits::AZURE_SNAT_PORTS_PER_FRONTEND) * k64;
    let served = capacity / ports64;
    if super::outbound::port_blocks(pool as usize, ports, k as usize).is_err() {
        problems.push(format!(
            "{k} frontend IP(s) serve {served} nodes at {ports} ports each, fewer than the pool of {pool}: add frontend IPs"
        ));
    }
    Ok(Plan {
        input,
        addresses,
        subnet_addresses,
        subnet_prefix,
        pod_cidr_prefix,
        routes,
        route_limit: limits::AZURE_UDR_ROUTE_LIMIT,
        ports_per_node: Figure {
            value: ports64,
            formula: source,
        },
        nodes_served: Figure {
            value: served,
            formula: format!(
                "{} x K / ports = {} x {k} / {ports}",
                limits::AZURE_SNAT_PORTS_PER_FRONTEND,
                limits::AZURE_SNAT_PORTS_PER_FRONTEND
            ),
        },
        connections_per_destination: Figure {
            value: ports64,
            formula: format!(
                "ports = {ports}: a node's allocation is its total over all K frontend IPs (one SNAT port per TCP connection to the same destination IP:port)"
            ),
        },
        problems,
    })
}

impl Plan {
    pub fn render(&self) -> String {
        let i = &self.input;
        let mode = match i.mode {
            Mode::Kubenet => "kubenet",
            Mode::AzureCni => "azure-cni",
            Mode::AzureCniOverlay => "azure-cni-overlay",
        };
        let mut out = format!(
            "plan: N = {} nodes, S = {} surge, P = {} max pods, {mode}, K = {} frontend IP(s)\n\n",
            i.nodes, i.surge, i.max_pods, i.outbound_ips
        );
        let line = |out: &mut String, label: &str, f: &Figure| {
            out.push_str(&format!("  {label:<30} {:>8}   = {}\n", f.value, f.formula));
        };
        out.push_str("node subnet\n");
        line(&mut out, "addresses needed", &self.addresses);
        line(
            &mut out,
            "with the subnet's reserved",
            &self.subnet_addresses,
        );
        line(&mut out, "subnet prefix", &self.subnet_prefix);
        if let (Some(pods), Some(routes)) = (&self.pod_cidr_prefix, &self.routes) {
            out.push_str(&format!("pod CIDR ({mode}: a /24 per node)\n"));
            line(&mut out, "cluster pod CIDR prefix", pods);
            out.push_str(&format!("route table ({mode})\n"));
            line(
                &mut out,
                &format!("routes (limit {})", self.route_limit),
                routes,
            );
        }
        out.push_str("outbound SNAT (load balancer)\n");
        line(
            &mut out,
            "ports per node per frontend",
            &self.ports_per_node,
        );
        line(&mut out, "nodes the frontends serve", &self.nodes_served);
        line(
            &mut out,
            "connections per destination",
            &self.connections_per_destination,
        );
        for p in &self.problems {
            out.push_str(&format!("\nPROBLEM: {p}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(mode: Mode, nodes: u32, max_pods: u32, surge: u32) -> Input {
        Input {
            nodes,
            max_pods,
            mode,
            surge,
            outbound_ips: 1,
            allocated_outbound_ports: None,
        }
    }

    #[test]
    fn azure_cni_50_nodes_30_pods_surge_1_needs_1581_addresses() {
        let p = plan(input(Mode::AzureCni, 50, 30, 1)).unwrap();
        // 51 nodes + 51 x 30 pods = 1581, plus Azure's 5 = 1586 -> a /21.
        assert_eq!(p.addresses.value, 1581);
        assert_eq!(p.subnet_addresses.value, 1586);
        assert_eq!(p.subnet_prefix.value, 21);
        assert!(p.pod_cidr_prefix.is_none());
    }

    #[test]
    fn overlay_takes_node_addresses_and_no_routes() {
        let p = plan(input(Mode::AzureCniOverlay, 500, 250, 1)).unwrap();
        assert_eq!(p.addresses.value, 501);
        assert_eq!(p.routes.as_ref().unwrap().value, 0);
        assert_eq!(p.pod_cidr_prefix.as_ref().unwrap().value, 15, "512 /24s");
        assert!(p.problems.is_empty(), "no route limit: {:?}", p.problems);
        let kubenet = plan(input(Mode::Kubenet, 500, 250, 1)).unwrap();
        assert_eq!(kubenet.problems.len(), 1, "kubenet's 501 routes");
    }

    #[test]
    fn kubenet_50_nodes() {
        let p = plan(input(Mode::Kubenet, 50, 110, 1)).unwrap();
        assert_eq!(p.addresses.value, 51);
        assert_eq!(p.subnet_addresses.value, 56);
        assert_eq!(p.subnet_prefix.value, 26);
        assert_eq!(p.pod_cidr_prefix.as_ref().unwrap().value, 18); // 51 /24s in 64
        assert_eq!(p.routes.as_ref().unwrap().value, 51);
        assert!(p.problems.is_empty());
    }

    #[test]
    fn kubenet_over_400_routes_is_a_problem() {
        let p = plan(input(Mode::Kubenet, 400, 110, 1)).unwrap();
        assert_eq!(p.routes.as_ref().unwrap().value, 401);
        assert!(
            p.problems
                .iter()
                .any(|m| m.contains("route table limit of 400"))
        );
    }

    #[test]
    fn ports_per_node_by_pool_size() {
        for (pool, ports) in [(50, 1024), (51, 512), (400, 128), (401, 64), (1000, 32)] {
            let p = plan(Input {
                surge: 0,
                ..input(Mode::Kubenet, pool, 30, 0)
            })
            .unwrap();
            assert_eq!(p.ports_per_node.value, ports, "pool {pool}");
        }
        assert!(plan(input(Mode::Kubenet, 1001, 30, 0)).is_err());
    }

    #[test]
    fn frontends_and_explicit_ports() {
        let p = plan(Input {
            outbound_ips: 2,
            allocated_outbound_ports: Some(4000),
            ..input(Mode::Kubenet, 20, 30, 1)
        })
        .unwrap();
        assert_eq!(p.ports_per_node.value, 4000);
        assert_eq!(p.nodes_served.value, 32); // 128000 / 4000
        // The node's total: more frontend IPs serve more nodes, never more
        // ports per node.
        assert_eq!(p.connections_per_destination.value, 4000);
        let p = plan(Input {
            allocated_outbound_ports: Some(8000),
            ..input(Mode::Kubenet, 10, 30, 0)
        })
        .unwrap();
        assert_eq!(p.nodes_served.value, 8);
        assert!(p.problems.iter().any(|m| m.contains("add frontend IPs")));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(plan(input(Mode::Kubenet, 0, 30, 1)).is_err());
        assert!(plan(input(Mode::Kubenet, 5, 9, 1)).is_err());
        assert!(plan(input(Mode::Kubenet, 5, 251, 1)).is_err());
        assert!(
            plan(Input {
                allocated_outbound_ports: Some(100),
                ..input(Mode::Kubenet, 5, 30, 1)
            })
            .is_err()
        );
    }

    #[test]
    fn smallest_prefixes() {
        assert_eq!(smallest_prefix(1), 32);
        assert_eq!(smallest_prefix(256), 24);
        assert_eq!(smallest_prefix(257), 23);
    }
}
