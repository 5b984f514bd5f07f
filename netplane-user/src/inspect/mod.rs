//! What the read-only views see: the rows behind `netplane routes`,
//! `ports`, `nat`, `stats`, `pods` and `flows`, built from the running
//! agents' pins and what each published (`agent::applied`). The CLI prints them as tables
//! or `--json`; `netplane ui` serves the same values, so both show one
//! shape.
pub mod flows;
mod ports;
mod routes;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

pub use self::{
    ports::{PortRow, port_use},
    routes::{RouteRow, RouteTable, route_table},
};
use crate::{
    agent::{applied, is_agent_of, lb_name, nat_view},
    cni::registry,
    config::{Cluster, outbound::IdleTimers},
    datapath::{
        Counters, Pins,
        memory::{self, KernelMemory},
        pinned_pod_ips,
    },
    paths,
};

/// The cluster the running agents applied, as the first of them that
/// published one says (they run one cluster).
pub fn published_cluster() -> Option<Cluster> {
    agents(None)
        .unwrap_or_default()
        .iter()
        .find_map(|a| applied::read(a).ok())
        .map(|a| a.cluster)
}

/// The published cluster; the embedded default when no agent runs.
pub fn running_cluster() -> Result<Cluster> {
    match published_cluster() {
        Some(c) => Ok(c),
        None => Ok(Cluster::load(None)?),
    }
}

/// The agents to report on: `only`, or every agent with pins.
pub fn agents(only: Option<&str>) -> Result<Vec<String>> {
    if let Some(n) = only {
        return Ok(vec![n.to_string()]);
    }
    let mut v: Vec<String> = std::fs::read_dir(paths::bpffs())
        .context("no agent is running (no pins under the bpffs)")?
        .flatten()
        // Directories only: the kernel puts maps.debug and progs.debug
        // files in every bpffs.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// The nodes to report on: `only`, or the running cluster's.
pub fn nodes(only: Option<&str>) -> Result<Vec<String>> {
    Ok(match only {
        Some(n) => vec![n.to_string()],
        None => running_cluster()?
            .nodes()
            .into_iter()
            .map(|n| n.name)
            .collect(),
    })
}

/// Packets per path and drops per reason of one agent.
pub fn counters(agent: &str) -> Result<Counters> {
    Counters::read_pinned(&Pins::of(agent))
}

/// What `netplane stats` shows of one agent: its counters, and what its
/// data path costs in kernel memory beside the agent's own.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    #[serde(flatten)]
    pub counters: Counters,
    pub memory: Memory,
    /// How the agent attached its TC programs (tcx or clsact), as its
    /// status file says; None without one.
    pub tc_attach: Option<crate::datapath::hooks::TcMode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// The maps' memlock, from their fdinfo.
    pub kernel: KernelMemory,
    /// The agent's resident memory; None when it is not running.
    pub agent_rss_bytes: Option<u64>,
}

/// Counters and memory of one agent.
pub fn stats(agent: &str) -> Result<Stats> {
    let status = std::fs::read(paths::agent_status(agent))
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::agent::AgentStatus>(&b).ok());
    let agent_rss_bytes = status
        .as_ref()
        .filter(|s| is_agent_of(s.pid, agent))
        .and_then(|s| memory::rss_bytes(s.pid));
    Ok(Stats {
        tc_attach: status.and_then(|s| s.tc_attach),
        counters: counters(agent)?,
        memory: Memory {
            kernel: memory::kernel_memory(&Pins::of(agent))?,
            agent_rss_bytes,
        },
    })
}

/// Live translations of one agent, with the idle timers of its role in
/// the cluster it published.
pub fn translations(agent: &str) -> Result<Vec<nat_view::Flow>> {
    let cluster = applied::read(agent)?.cluster;
    let t = if agent == lb_name(&cluster) {
        IdleTimers::load_balancer(&cluster)
    } else {
        IdleTimers::node(&cluster)
    };
    nat_view::flows(&Pins::of(agent), &t)
}

/// One pod as its node's CNI registry has it, and whether the node's data
/// path holds it.
#[derive(Debug, Clone, Serialize)]
pub struct PodRow {
    pub pod: String,
    pub ip: String,
    pub node: String,
    pub interface: String,
    pub netns: String,
    pub in_data_path: bool,
}

/// The pods of `nodes`, node by node.
pub fn pods(nodes: &[String]) -> Result<Vec<PodRow>> {
    let mut rows = Vec::new();
    for n in nodes {
        let loaded = pinned_pod_ips(&Pins::of(n)).unwrap_or_default();
        for p in registry::registered(n)? {
            rows.push(PodRow {
                pod: p.name,
                ip: p.ip.to_string(),
                node: p.node,
                interface: p.host_ifname,
                netns: p.netns,
                in_data_path: loaded.contains(&p.ip),
            });
        }
    }
    Ok(rows)
}

/// `f` for every agent, keyed by name: the JSON maps of the CLI's views.
pub fn per_agent<T>(
    agents: &[String],
    mut f: impl FnMut(&str) -> Result<T>,
) -> Result<BTreeMap<String, T>> {
    agents.iter().map(|a| Ok((a.clone(), f(a)?))).collect()
}
