//! SNAT port use per SNAT IP and block (`netplane ports`).
use anyhow::Result;
use serde::Serialize;

use crate::{
    agent::{
        applied,
        nat_view::{self, SlotUse},
    },
    datapath::Pins,
};

#[derive(Debug, Clone, Serialize)]
pub struct PortRow {
    #[serde(flatten)]
    pub slot: SlotUse,
    /// The highest allocation seen (sampled by the agent), at least now's.
    pub peak: u64,
    /// Whose block: a node's name, or "all nodes" for a shared slot.
    pub block_of: String,
}

/// Port use of one agent's slots, each with its peak and its owner.
pub fn port_use(agent: &str) -> Result<Vec<PortRow>> {
    // Whose block each slot is: a node's are its own, the load balancer's
    // as its published layout says.
    let plan = applied::read(agent)?.outbound;
    let peaks = nat_view::read_peaks(agent);
    let owner = |slot: u32| -> String {
        match &plan {
            None => agent.to_string(),
            Some(plan) => plan
                .slots
                .get(slot as usize)
                .and_then(|s| s.node.clone())
                .unwrap_or_else(|| "all nodes".into()),
        }
    };
    Ok(nat_view::slot_use(&Pins::of(agent))?
        .into_iter()
        .map(|s| PortRow {
            peak: peaks.get(&s.slot).copied().unwrap_or(0).max(s.allocated),
            block_of: owner(s.slot),
            slot: s,
        })
        .collect())
}
