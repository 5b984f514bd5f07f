//! `netplane nat`: live translations per agent.
use std::collections::BTreeMap;

use anyhow::Result;
use netplane::{
    agent::{
        lb_name,
        nat_view::{self, Flow},
    },
    config::outbound::Timeouts,
    paths,
};

use crate::{
    select::{Select, running_cluster},
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
    let cluster = running_cluster()?;
    let mut all = BTreeMap::new();
    for n in select.agents()? {
        let t = if n == lb_name(&cluster) {
            Timeouts::load_balancer(&cluster)
        } else {
            Timeouts::node(&cluster)
        };
        let flows = nat_view::flows(&paths::pins(&n), &t)?;
        if !select.json {
            println!("{n}: {} translations", flows.len());
            if !flows.is_empty() {
                table::print("  ", &flows);
            }
        }
        all.insert(n, flows);
    }
    if select.json {
        table::print_json(&serde_json::json!({ "agents": all }))?;
    }
    Ok(())
}
