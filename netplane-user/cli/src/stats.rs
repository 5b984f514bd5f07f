//! `netplane stats`: packets per path, drops per numbered reason, and the
//! memory each data path holds in the kernel beside its agent's own.
use anyhow::Result;
use netplane::{
    datapath::{DropStat, PathStat, memory::MapMemory},
    inspect::{self, Memory},
};

use crate::{
    select::Select,
    table::{self, Column, Row, left, right},
};

impl Row for PathStat {
    const COLUMNS: &'static [Column] =
        &[left("path", 26), right("packets", 12), right("bytes", 14)];
    fn cells(&self) -> Vec<String> {
        vec![
            self.path.to_string(),
            self.packets.to_string(),
            self.bytes.to_string(),
        ]
    }
}

impl Row for DropStat {
    const COLUMNS: &'static [Column] = &[left("drop reason", 26), right("packets", 12)];
    fn cells(&self) -> Vec<String> {
        vec![
            format!("{} ({})", self.reason, self.code),
            self.packets.to_string(),
        ]
    }
}

impl Row for MapMemory {
    const COLUMNS: &'static [Column] = &[
        left("map", 22),
        right("max entries", 12),
        right("kernel MiB", 12),
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.map.to_string(),
            self.max_entries.to_string(),
            mib(self.bytes),
        ]
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// One line, then the maps that hold nine tenths of it.
fn print_memory(m: &Memory) {
    let rss = m
        .agent_rss_bytes
        .map_or("not running".to_string(), |b| format!("{} MiB", mib(b)));
    println!(
        "  kernel memory {} MiB in {} maps; agent RSS {rss}",
        mib(m.kernel.bytes),
        m.kernel.maps.len()
    );
    let mut shown = 0;
    let big: Vec<MapMemory> = m
        .kernel
        .maps
        .iter()
        .take_while(|x| {
            let more = shown * 10 < m.kernel.bytes * 9;
            shown += x.bytes;
            more
        })
        .cloned()
        .collect();
    table::print("  ", &big);
}

pub fn run(select: &Select) -> Result<()> {
    let all = inspect::per_agent(&select.agents()?, inspect::stats)?;
    if select.json {
        return table::print_json(&serde_json::json!({ "nodes": all }));
    }
    for (n, s) in &all {
        match s.tc_attach {
            Some(mode) => println!("{n}  (TC programs: {})", mode.describe()),
            None => println!("{n}"),
        }
        table::print("  ", &s.counters.paths);
        table::print("  ", &s.counters.drops);
        print_memory(&s.memory);
    }
    Ok(())
}
