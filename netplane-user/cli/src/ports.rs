//! `netplane ports`: SNAT port use per SNAT IP and block.
use anyhow::Result;
use netplane::inspect::{self, PortRow, port_use};

use crate::{
    select::Select,
    table::{self, Column, Row, left, right},
};

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
    let all = inspect::per_agent(&select.agents()?, port_use)?;
    if select.json {
        return table::print_json(&serde_json::json!({ "agents": all }));
    }
    for (n, rows) in &all {
        println!("{n}");
        table::print("  ", rows);
    }
    Ok(())
}
