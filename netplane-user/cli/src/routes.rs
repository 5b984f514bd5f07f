//! `netplane routes`: the route table (UDR) each agent loaded, as Azure
//! shows one.
use anyhow::Result;
use netplane::{
    config::outbound::SubnetRoute,
    inspect::{self, RouteRow, route_table},
};

use crate::{
    select::Select,
    table::{self, Column, Row, left},
};

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
    let all = inspect::per_agent(&select.agents()?, route_table)?;
    if select.json {
        return table::print_json(&serde_json::json!({ "nodes": all }));
    }
    for (n, t) in &all {
        let from = t.source.as_ref().map(|s| format!(" ({})", s.describe()));
        println!(
            "{n}: {} of {} routes{}",
            t.count,
            t.limit,
            from.unwrap_or_default()
        );
        for r in t.source.iter().flat_map(|s| &s.refused) {
            println!("  not routed: {}: {}", r.node, r.reason);
        }
        table::print("  ", &t.routes);
        println!("  and the subnet's other effective routes:");
        table::print("    ", &t.system_routes);
    }
    Ok(())
}
