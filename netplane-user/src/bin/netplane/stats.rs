//! `netplane stats`: packets per path and drops per numbered reason.
use anyhow::Result;
use netplane::{
    datapath::{DropStat, PathStat},
    inspect,
};

use crate::{
    select::Select,
    table::{self, Column, Row, left, right},
};

impl Row for PathStat {
    const COLUMNS: &'static [Column] =
        &[left("path", 22), right("packets", 12), right("bytes", 14)];
    fn cells(&self) -> Vec<String> {
        vec![
            self.path.to_string(),
            self.packets.to_string(),
            self.bytes.to_string(),
        ]
    }
}

impl Row for DropStat {
    const COLUMNS: &'static [Column] = &[left("drop reason", 22), right("packets", 12)];
    fn cells(&self) -> Vec<String> {
        vec![
            format!("{} ({})", self.reason, self.code),
            self.packets.to_string(),
        ]
    }
}

pub fn run(select: &Select) -> Result<()> {
    let all = inspect::per_agent(&select.agents()?, inspect::counters)?;
    if select.json {
        return table::print_json(&serde_json::json!({ "nodes": all }));
    }
    for (n, c) in &all {
        println!("{n}");
        table::print("  ", &c.paths);
        table::print("  ", &c.drops);
    }
    Ok(())
}
