//! The route table (UDR) an agent loaded, as Azure shows one
//! (`netplane routes`).
use std::net::Ipv4Addr;

use anyhow::Result;
use netplane_common::limits::AZURE_UDR_ROUTE_LIMIT;
use serde::Serialize;

use crate::{
    agent::applied,
    config::outbound::{SubnetRoute, subnet_routes},
    datapath::{Pins, pinned_routes},
    source::{SourceStatus, read_status},
};

#[derive(Debug, Clone, Serialize)]
pub struct RouteRow {
    pub address_prefix: String,
    pub next_hop_type: &'static str,
    pub next_hop_ip: String,
    pub node: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteTable {
    /// The UDRs: one per node's pod CIDR.
    pub routes: Vec<RouteRow>,
    pub count: usize,
    pub limit: usize,
    /// Azure's default routes (and the egress UDR of userDefinedRouting).
    pub system_routes: Vec<SubnetRoute>,
    /// Where the agent's nodes come from (the cluster file or the
    /// Kubernetes API), the watch's state and the nodes it refused.
    pub source: Option<SourceStatus>,
}

/// The routes `agent` has pinned, each named by the node it leads to in
/// the cluster the agent published (the API's nodes are not in any file).
pub fn route_table(agent: &str) -> Result<RouteTable> {
    let cluster = applied::read(agent)?.cluster;
    let names: Vec<(Ipv4Addr, String)> = cluster
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
    let routes: Vec<RouteRow> = pinned_routes(&Pins::of(agent))?
        .into_iter()
        .map(|(cidr, ip)| RouteRow {
            address_prefix: cidr.to_string(),
            next_hop_type: "VirtualAppliance",
            next_hop_ip: ip.to_string(),
            node: owner(ip),
        })
        .collect();
    Ok(RouteTable {
        count: routes.len(),
        routes,
        limit: AZURE_UDR_ROUTE_LIMIT,
        system_routes: subnet_routes(&cluster),
        source: read_status(agent),
    })
}
