//! What the read-only commands share: which agents to look at.
use anyhow::Result;
use clap::Args;
use netplane::inspect;

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
        inspect::nodes(self.node.as_deref())
    }

    /// The agents to report on: the one asked for, or every agent with pins.
    pub fn agents(&self) -> Result<Vec<String>> {
        inspect::agents(self.node.as_deref())
    }
}
