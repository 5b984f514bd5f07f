//! `netplane ports`: SNAT port use per SNAT IP and block.
use std::collections::BTreeMap;

use anyhow::Result;
use netplane::{
    agent::{
        lb_name,
        nat_view::{self, SlotUse},
    },
    config::outbound::lb_plan,
    lab, paths,
};
use serde::Serialize;

use crate::{
    select::{Select, running_cluster},
    table::{self, Column, Row, left, right},
};

#[derive(Serialize)]
struct PortRow {
    #[serde(flatten)]
    slot: SlotUse,
    /// The highest allocation seen (sampled by the agent), at least now's.
    peak: u64,
    /// Whose block: a node's name, or "all nodes" for a shared slot.
    block_of: String,
}

impl Row for PortRow {
    const COLUMNS: &'static [Column] = &[
        left("SNAT IP", 15),
        left("ports", 12),
        left("block of", 10),
        right("capacity", 9),
        right("allocated", 10),
        right("peak", 8),
        right("failures", 9),
        right("evicted", 8),
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.slot.snat_ip.to_string(),
            self.slot.ports.clone(),
            self.block_of.clone(),
            self.slot.capacity.to_string(),
            self.slot.allocated.to_string(),
            self.peak.to_string(),
            self.slot.failures.to_string(),
            self.slot.evicted.to_string(),
        ]
    }
}

pub fn run(select: &Select) -> Result<()> {
    let cluster = running_cluster()?;
    let lb = lb_name(&cluster);
    let appliance = (lb == "appliance").then_some(lab::APPLIANCE_OUTSIDE_IP);
    let plan = lb_plan(&netplane::source::as_applied_by(lb, &cluster), appliance);
    let mut all = BTreeMap::new();
    for n in select.agents()? {
        let peaks = nat_view::read_peaks(&n);
        // Whose block each slot is: the load balancer's are per node.
        let owner = |slot: u32| -> String {
            if n != lb {
                return n.clone();
            }
            plan.slots
                .get(slot as usize)
                .and_then(|s| s.node.clone())
                .unwrap_or_else(|| "all nodes".into())
        };
        let rows: Vec<PortRow> = nat_view::slot_use(&paths::pins(&n))?
            .into_iter()
            .map(|s| PortRow {
                peak: peaks.get(&s.slot).copied().unwrap_or(0).max(s.allocated),
                block_of: owner(s.slot),
                slot: s,
            })
            .collect();
        if !select.json {
            println!("{n}");
            table::print("  ", &rows);
        }
        all.insert(n, rows);
    }
    if select.json {
        table::print_json(&serde_json::json!({ "agents": all }))?;
    }
    Ok(())
}
