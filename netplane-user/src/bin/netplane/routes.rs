//! `netplane routes`: the route table (UDR) each agent loaded, as Azure
//! shows one.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Result;
use netplane::source::SourceStatus;
use netplane::{
    config::outbound::{SubnetRoute, subnet_routes},
    datapath::pinned_routes,
    paths,
};
use netplane_common::limits::AZURE_UDR_ROUTE_LIMIT;
use serde::Serialize;

use crate::{
    select::{Select, running_cluster},
    table::{self, Column, Row, left},
};

#[derive(Serialize)]
struct RouteRow {
    address_prefix: String,
    next_hop_type: &'static str,
    next_hop_ip: String,
    node: String,
}

impl Row for RouteRow {
    const COLUMNS: &'static [Column] = &[
        left("address prefix", 18),
        left("next hop type", 17),
        left("next hop IP", 15),
        left("node", 0),
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.address_prefix.clone(),
            self.next_hop_type.to_string(),
            self.next_hop_ip.clone(),
            self.node.clone(),
        ]
    }
}

#[derive(Serialize)]
struct RouteTable {
    /// The UDRs: one per node's pod CIDR.
    routes: Vec<RouteRow>,
    count: usize,
    limit: usize,
    /// Azure's default routes (and the egress UDR of userDefinedRouting).
    system_routes: Vec<SubnetRoute>,
    /// Where the agent's nodes come from (the cluster file or the
    /// Kubernetes API), the watch's state and the nodes it refused.
    source: Option<SourceStatus>,
}

impl Row for SubnetRoute {
    const COLUMNS: &'static [Column] = &[
        left("source", 8),
        left("address prefix", 18),
        left("next hop type", 17),
        left("next hop IP", 0),
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.source.to_string(),
            self.address_prefix.to_string(),
            self.next_hop_type.to_string(),
            self.next_hop_ip.map_or("-".into(), |ip| ip.to_string()),
        ]
    }
}

pub fn run(select: &Select) -> Result<()> {
    // Owner names and Azure's default routes from the running cluster file.
    let cluster = running_cluster()?;
    let system = subnet_routes(&cluster);
    let mut all = BTreeMap::new();
    for n in select.agents()? {
        let source = netplane::source::read_status(&n);
        // The agent's own view of the nodes names them (the API's nodes
        // are not in the cluster file).
        let names: Vec<(Ipv4Addr, String)> = netplane::source::as_applied_by(&n, &cluster)
            .nodes()
            .into_iter()
            .map(|p| (p.ip, p.name))
            .collect();
        let owner = |ip| {
            names
                .iter()
                .find(|(i, _)| *i == ip)
                .map_or("-".to_string(), |(_, n)| n.clone())
        };
        let routes: Vec<RouteRow> = pinned_routes(&paths::pins(&n))?
            .into_iter()
            .map(|(cidr, ip)| RouteRow {
                address_prefix: cidr.to_string(),
                next_hop_type: "VirtualAppliance",
                next_hop_ip: ip.to_string(),
                node: owner(ip),
            })
            .collect();
        if !select.json {
            let from = source.as_ref().map(|s| format!(" ({})", s.describe()));
            println!(
                "{n}: {} of {AZURE_UDR_ROUTE_LIMIT} routes{}",
                routes.len(),
                from.unwrap_or_default()
            );
            for r in source.iter().flat_map(|s| &s.refused) {
                println!("  not routed: {}: {}", r.node, r.reason);
            }
            table::print("  ", &routes);
            println!("  and the subnet's other effective routes:");
            table::print("    ", &system);
        }
        let count = routes.len();
        all.insert(
            n,
            RouteTable {
                routes,
                count,
                limit: AZURE_UDR_ROUTE_LIMIT,
                system_routes: system.clone(),
                source,
            },
        );
    }
    if select.json {
        table::print_json(&serde_json::json!({ "nodes": all }))?;
    }
    Ok(())
}
