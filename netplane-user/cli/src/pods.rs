//! `netplane pods`: pods per node and whether the data path has them.
use anyhow::Result;
use netplane::inspect::{self, PodRow};

use crate::{
    select::Select,
    table::{self, Column, Row, left},
};

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
    let rows = inspect::pods(&select.nodes()?)?;
    if select.json {
        return table::print_json(&serde_json::json!({ "pods": rows }));
    }
    table::print("", &rows);
    Ok(())
}
