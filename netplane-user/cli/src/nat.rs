//! `netplane nat`: live translations per agent.
use anyhow::Result;
use netplane::{agent::nat_view::Flow, inspect};

use crate::{
    select::Select,
    table::{self, Column, Row, left, right},
};

impl Row for Flow {
    const COLUMNS: &'static [Column] = &[
        left("proto", 5),
        left("original", 24),
        left("remote", 24),
        left("translated", 24),
        left("state", 12),
        right("age", 6),
        right("idle left", 10),
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.proto.to_string(),
            self.original.clone(),
            self.remote.clone(),
            self.translated.clone(),
            self.state.to_string(),
            format!("{}s", self.age_s),
            format!("{}s", self.idle_left_s),
        ]
    }
}

pub fn run(select: &Select) -> Result<()> {
    let all = inspect::per_agent(&select.agents()?, inspect::translations)?;
    if select.json {
        return table::print_json(&serde_json::json!({ "agents": all }));
    }
    for (n, flows) in &all {
        println!("{n}: {} translations", flows.len());
        if !flows.is_empty() {
            table::print("  ", flows);
        }
    }
    Ok(())
}
