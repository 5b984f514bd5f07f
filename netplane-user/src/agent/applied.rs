//! What an agent publishes of itself for the read-only views: the cluster
//! file it runs with, the cluster as it applies it (the file's settings
//! with the nodes of its source), and, on the load balancer or appliance,
//! its port layout. Rewritten in the node's state directory on every
//! change; `inspect` reads it, so `netplane routes` on a node describes the
//! cluster that node's agent runs, whatever file it was started with.
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Cluster, outbound::LbPlan},
    paths,
};

/// The file, in the agent's state directory (paths::node_dir).
pub const APPLIED_FILE: &str = "applied.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// The cluster file (None: the embedded default).
    pub config: Option<PathBuf>,
    /// The cluster as applied.
    pub cluster: Cluster,
    /// The load balancer's (or appliance's) port layout; None on a node.
    pub outbound: Option<LbPlan>,
}

/// Writes `applied` for `agent`, whole or not at all (a reader never sees
/// half a file).
pub fn publish(agent: &str, applied: &Applied) -> Result<()> {
    let path = paths::node_dir(agent).join(APPLIED_FILE);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(applied)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// What `agent` last published.
pub fn read(agent: &str) -> Result<Applied> {
    let path = paths::node_dir(agent).join(APPLIED_FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "agent {agent} has published no configuration ({} is missing: is it running?)",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
}
