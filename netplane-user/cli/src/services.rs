//! `netplane services`: the ClusterIP Services each node's agent holds
//! (from the Kubernetes API), their ready backends, and the flows open
//! through them on that node.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use netplane::{
    agent::SERVICES_STATUS_FILE,
    datapath::{Pins, key},
    paths,
    source::service_watch::Frontend,
};
use netplane_common::{nat::PROTO_TCP, registry};
use serde::Serialize;

use crate::{
    select::Select,
    table::{self, Column, Row, left, right},
};

#[derive(Serialize)]
struct ServiceRow {
    node: String,
    service: String,
    frontend: String,
    backends: Vec<String>,
    affinity_secs: u32,
    /// Flows from this node's pods (and itself) through the frontend.
    flows: usize,
}

impl Row for ServiceRow {
    const COLUMNS: &'static [Column] = &[
        left("node", 8),
        left("service", 28),
        left("frontend", 20),
        right("flows", 6),
        left("backends", 0),
    ];
    fn cells(&self) -> Vec<String> {
        let mut backends = if self.backends.is_empty() {
            "none: refused (ICMP port unreachable)".to_string()
        } else {
            self.backends.join(", ")
        };
        if self.affinity_secs > 0 {
            backends.push_str(&format!(" (ClientIP affinity {} s)", self.affinity_secs));
        }
        vec![
            self.node.clone(),
            self.service.clone(),
            self.frontend.clone(),
            self.flows.to_string(),
            backends,
        ]
    }
}

/// Open flows per frontend (address, port, protocol) in a node's pinned
/// SERVICE_FLOWS.
fn flows_per_frontend(node: &str) -> Result<BTreeMap<(u32, u16, u8), usize>> {
    let flows = Pins::of(node).lru_hash(registry::SERVICE_FLOWS)?;
    let mut out = BTreeMap::new();
    for e in flows.iter() {
        let (k, _) = e?;
        *out.entry((k.dst_ip, k.dst_port, k.proto)).or_insert(0) += 1;
    }
    Ok(out)
}

pub fn run(select: &Select) -> Result<()> {
    let nodes = select.nodes()?;
    let mut rows = Vec::new();
    for node in &nodes {
        let status = paths::node_dir(node).join(SERVICES_STATUS_FILE);
        let Ok(bytes) = std::fs::read(&status) else {
            continue; // no Services: the node's agent reads none (file source)
        };
        let frontends: Vec<Frontend> = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", status.display()))?;
        let flows = flows_per_frontend(node)?;
        for f in frontends {
            let proto = if f.proto == PROTO_TCP { "tcp" } else { "udp" };
            rows.push(ServiceRow {
                node: node.clone(),
                service: f.name.clone(),
                frontend: format!("{}:{}/{proto}", f.ip, f.port),
                backends: f
                    .backends
                    .iter()
                    .map(|(ip, port)| format!("{ip}:{port}"))
                    .collect(),
                affinity_secs: f.affinity_secs,
                flows: flows
                    .get(&(key(f.ip), f.port, f.proto))
                    .copied()
                    .unwrap_or(0),
            });
        }
    }
    if select.json {
        return table::print_json(&serde_json::json!({ "services": rows }));
    }
    if rows.is_empty() {
        println!(
            "no Services: they come from the Kubernetes API (agent --source kubernetes, or `lab up --source kubernetes`)"
        );
        return Ok(());
    }
    table::print("", &rows);
    Ok(())
}
