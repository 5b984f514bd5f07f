//! SNAT port use per SNAT IP and block (`netplane ports`).
use anyhow::Result;
use serde::Serialize;

use crate::{
    agent::{
        lb_name,
        nat_view::{self, SlotUse},
    },
    config::{Cluster, outbound::lb_plan},
    lab, paths,
    source::as_applied_by,
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
pub fn port_use(cluster: &Cluster, agent: &str) -> Result<Vec<PortRow>> {
    let lb = lb_name(cluster);
    let appliance = (lb == "appliance").then_some(lab::APPLIANCE_OUTSIDE_IP);
    let peaks = nat_view::read_peaks(agent);
    // Whose block each slot is: the load balancer's are per node.
    let owner = |slot: u32| -> String {
        if agent != lb {
            return agent.to_string();
        }
        lb_plan(&as_applied_by(lb, cluster), appliance)
            .slots
            .get(slot as usize)
            .and_then(|s| s.node.clone())
            .unwrap_or_else(|| "all nodes".into())
    };
    Ok(nat_view::slot_use(&paths::pins(agent))?
        .into_iter()
        .map(|s| PortRow {
            peak: peaks.get(&s.slot).copied().unwrap_or(0).max(s.allocated),
            block_of: owner(s.slot),
            slot: s,
        })
        .collect())
}
