//! What the read-only commands share: which agents to look at, and where
//! the running cluster's file is.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use netplane::{config::Cluster, lab, paths};

/// `--node NAME` and `--json`, flattened into every command that looks
/// inside the running agents.
#[derive(Args, Debug, Clone)]
pub struct Select {
    /// Only this agent: a node's name, or "lb" / "appliance" (default: all).
    #[arg(long)]
    pub node: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

impl Select {
    /// The nodes to report on: the one asked for, or the running
    /// cluster's.
    pub fn nodes(&self) -> Result<Vec<String>> {
        Ok(match &self.node {
            Some(n) => vec![n.clone()],
            None => running_cluster()?
                .nodes()
                .into_iter()
                .map(|n| n.name)
                .collect(),
        })
    }

    /// The agents to report on: the one asked for, or every agent with pins.
    pub fn agents(&self) -> Result<Vec<String>> {
        Ok(match &self.node {
            Some(n) => vec![n.clone()],
            None => {
                let mut v: Vec<String> = std::fs::read_dir(paths::bpffs())
                    .context("no agent is running (no pins under the bpffs)")?
                    .flatten()
                    // Directories only: the kernel puts maps.debug and
                    // progs.debug files in every bpffs.
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            }
        })
    }
}

/// The cluster file the running agents use: the lab's, else the default.
pub fn running_cluster() -> Result<Cluster> {
    let lab_file = lab::load_state()
        .ok()
        .flatten()
        .map(|s| PathBuf::from(s.cluster_file));
    Ok(Cluster::load(lab_file.as_deref())?)
}
