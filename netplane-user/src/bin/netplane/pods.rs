//! `netplane pods`: pods per node and whether the data path has them.
use anyhow::Result;
use netplane::{cni::registry, datapath::pinned_pod_ips, paths};
use serde::Serialize;

use crate::{
    select::Select,
    table::{self, Column, Row, left},
};

#[derive(Serialize)]
struct PodRow {
    pod: String,
    ip: String,
    node: String,
    interface: String,
    netns: String,
    in_data_path: bool,
}

impl Row for PodRow {
    const COLUMNS: &'static [Column] = &[
        left("pod", 12),
        left("ip", 14),
        left("node", 10),
        left("interface", 12),
        left("in data path", 0),
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.pod.clone(),
            self.ip.clone(),
            self.node.clone(),
            self.interface.clone(),
            (if self.in_data_path { "yes" } else { "NO" }).to_string(),
        ]
    }
}

pub fn run(select: &Select) -> Result<()> {
    let nodes = select.nodes()?;
    let mut rows = Vec::new();
    for n in &nodes {
        let loaded = pinned_pod_ips(&paths::pins(n)).unwrap_or_default();
        for p in registry::registered(n)? {
            rows.push(PodRow {
                pod: p.name,
                ip: p.ip.to_string(),
                node: p.node,
                interface: p.host_ifname,
                netns: p.netns,
                in_data_path: loaded.contains(&p.ip),
            });
        }
    }
    if select.json {
        return table::print_json(&serde_json::json!({ "pods": rows }));
    }
    table::print("", &rows);
    Ok(())
}
