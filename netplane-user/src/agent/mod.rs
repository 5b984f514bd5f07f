//! The agent: loads the data path into a node (or the load balancer),
//! keeps its maps equal to the desired state by diffs, and survives its own
//! restarts: maps and program attachments are pinned, so traffic flows
//! while no agent runs, and a new agent adopts them (datapath::hooks).
//!
//! - `roles`: what a node and the load balancer each apply and reconcile;
//! - `reconcile`: routes and pods, one change at a time;
//! - `serve`: the agent's life after attaching, on tokio (signals, the
//!   cluster file watched by inotify, ticks, the ring buffer and the eBPF
//!   log through `AsyncFd`, the HTTP server for metrics);
//! - `snat`, `collector`, `nat_view`: the SNAT engine's configuration,
//!   collection and state; `flows`, `metrics`: what the agent reports.
pub mod applied;
pub mod collector;
pub mod flows;
pub mod metrics;
pub mod nat_view;
mod reconcile;
mod reset;
mod roles;
mod serve;
pub mod service_table;
pub mod snat;

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use aya::programs::TcAttachType;
use netplane_common::maps::programs;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use self::reconcile::reconcile_routes;
use self::{
    reconcile::reconcile_pods,
    roles::{LbRole, NodeRole, Role},
};
use crate::{
    config::{Cluster, OutboundType},
    datapath::{
        Datapath, LoadOptions,
        hooks::{self, Attach, Hooks, TcMode},
    },
    paths,
    source::{NodeSource, NodeView, service_watch::ServiceView},
    sys,
};

/// How often the agent compares the pod registry and the cluster file with
/// its maps.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(200);

/// Written to paths::agent_status once the programs are attached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub pid: u32,
    pub node_ip: Ipv4Addr,
    pub uplink: String,
    pub netns: Option<String>,
    pub pins: String,
    /// Hooks found pinned by an earlier agent and adopted.
    pub adopted: Vec<String>,
    /// How its TC programs are attached (None: an agent from before the
    /// choice existed, which used tcx).
    #[serde(default)]
    pub tc_attach: Option<TcMode>,
}

/// How the agent runs, besides which node it is.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The cluster file (None: the embedded default). Re-read on SIGHUP and
    /// when it changes.
    pub config: Option<PathBuf>,
    /// Where the nodes come from (the cluster file, or the Kubernetes API).
    pub source: NodeSource,
    /// Where to write the CNI conflist for kubelet (node agents).
    pub cni_conf_dir: Option<PathBuf>,
    /// Network namespace of the node (the lab's nodes live in one).
    pub netns: Option<String>,
    /// Also attach `uplink_xdp` (native XDP) to the uplink: early drops, at
    /// the price measured in docs/decisions.md.
    pub uplink_xdp: bool,
    /// On exit, detach every program and remove every pin. Otherwise the
    /// data path keeps running without the agent.
    pub detach_on_exit: bool,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Level of the programs' own messages (aya-log) in the agent's log.
    pub bpf_log_level: Option<aya_log::Level>,
    /// The load balancer's internet side, by name (None: the one interface
    /// with an address outside the node subnet; a VM with a management
    /// NIC has two).
    pub outside_interface: Option<String>,
    /// The NAT tables' size, over the cluster file's (the lab's share).
    pub nat_table_entries: Option<u32>,
    /// How TC programs attach (None: probe the kernel).
    pub tc_attach: Option<TcMode>,
}

impl Options {
    fn log_level(&self) -> aya_log::Level {
        self.bpf_log_level.unwrap_or(aya_log::Level::Info)
    }
}

/// How often expired translations are collected.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(1);
/// Every this many passes, a sweep for orphan claims (collector.rs).
pub const SWEEP_EVERY: u64 = 30;
/// A new agent's first passes are sweeps too. Orphans appear only when an
/// agent dies in the middle of a removal, so its successor is the one to
/// find them: two sweeps a pass apart confirm and remove them about two
/// seconds after the restart, not 30 (and not never, for an agent killed
/// more often than every 30 s, as the soak kills them; decisions §47).
pub const SWEEPS_AT_START: u64 = 2;

/// Whether collection pass `pass` (0 for an agent's first) is a sweep.
pub fn is_sweep(pass: u64) -> bool {
    pass < SWEEPS_AT_START || pass.is_multiple_of(SWEEP_EVERY)
}
/// Entries a collection step looks at per tick: a table up to this size is
/// collected in one tick every COLLECT_INTERVAL as before; a larger one a
/// piece per tick (1M translations: a pass every ~6 s, each tick a few ms
/// of CPU instead of one burst the pods' latency feels).
pub const COLLECT_BUDGET: usize = 32_768;

/// A node's Services as last applied (`netplane services` reads it), in
/// the node's state directory.
pub const SERVICES_STATUS_FILE: &str = "services.json";

/// The names an outbound agent (load balancer or appliance) goes by.
pub const OUTBOUND_AGENTS: [&str; 2] = ["lb", "appliance"];

/// True when `pid` is alive (a zombie is not).
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// True when `pid` is a netplane agent for `agent` (a node's name, or an
/// outbound agent's), so a recycled PID is never taken for one.
pub fn is_agent_of(pid: u32, agent: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let me = if OUTBOUND_AGENTS.contains(&agent) {
        b"--lb".as_slice()
    } else {
        agent.as_bytes()
    };
    args.contains(&b"agent".as_slice()) && args.contains(&me)
}

/// Name of the load balancer's (or appliance's) agent and pin directory.
pub fn lb_name(cluster: &Cluster) -> &'static str {
    match cluster.outbound.kind {
        OutboundType::LoadBalancer => "lb",
        OutboundType::UserDefinedRouting => "appliance",
    }
}

/// Runs a node's agent.
pub fn run(node_name: &str, opts: &Options) -> Result<()> {
    if let Some(ns) = &opts.netns {
        sys::enter_netns(ns)?;
    }
    let runtime = serve::runtime()?;
    let (cluster, nodes) = nodes_from_source(&runtime, opts, Some(node_name))?;
    let node = cluster.node(node_name).with_context(|| match nodes {
        None => format!("node {node_name} is not in the cluster file"),
        Some(_) => format!("node {node_name} was refused (see above)"),
    })?;
    if let Some(dir) = &opts.cni_conf_dir {
        write_conflist(dir, &node, cluster.network.max_pods)?;
    }
    let uplink = sys::interfaces()?
        .into_iter()
        .find(|i| i.ipv4.contains(&node.ip))
        .with_context(|| format!("no interface holds the node IP {}", node.ip))?;
    let (mut dp, hooks, pins) = load(node_name, opts, &cluster)?;
    let mut role = NodeRole {
        name: node_name.to_string(),
        uplink_ifindex: uplink.index,
        attached: HashMap::new(),
    };
    role.apply(&mut dp, &cluster)?;

    let mut adopted = Vec::new();
    for (prog, kind, hook) in [
        (
            programs::FROM_UPLINK,
            TcAttachType::Ingress,
            hooks::UPLINK_INGRESS,
        ),
        (
            programs::TO_UPLINK,
            TcAttachType::Egress,
            hooks::UPLINK_EGRESS,
        ),
    ] {
        if hooks.tc(&mut dp, prog, &uplink.name, kind, hook)? == Attach::Adopted {
            adopted.push(hook.to_string());
        }
    }
    if opts.uplink_xdp {
        hooks.xdp(
            &mut dp,
            programs::UPLINK_XDP,
            &uplink.name,
            hooks::UPLINK_XDP,
        )?;
    } else {
        hooks.remove(hooks::UPLINK_XDP)?;
    }
    // Pods an earlier agent attached are adopted in the first pass.
    adopted.extend(reconcile_pods(
        &mut dp,
        &hooks,
        node_name,
        &mut role.attached,
    )?);
    let status = AgentStatus {
        node: node_name.to_string(),
        pid: std::process::id(),
        node_ip: node.ip,
        uplink: uplink.name.clone(),
        netns: opts.netns.clone(),
        pins: pins.display().to_string(),
        adopted,
        tc_attach: Some(hooks.mode()),
    };
    let services = match &opts.source {
        NodeSource::Kubernetes { kubeconfig } => Some(runtime.block_on(async {
            let client = crate::source::kubernetes::client(kubeconfig.as_deref()).await?;
            let (tx, rx) = tokio::sync::watch::channel(ServiceView::default());
            let own = node_name.to_string();
            tokio::spawn(crate::source::service_watch::watch_services(
                client, own, tx,
            ));
            anyhow::Ok(rx)
        })?),
        NodeSource::File => {
            // No Services without the API: none an earlier agent wrote stay.
            service_table::ServiceTable::adopt(&mut dp)?.apply(&mut dp, &[])?;
            None
        }
    };
    let watches = serve::Watches { nodes, services };
    serve::serve(runtime, dp, hooks, &status, cluster, watches, opts, role)
}

/// Runs the load balancer's (or appliance's) agent: its inside interface
/// holds an address of the node subnet, its outside interface the other.
pub fn run_lb(opts: &Options) -> Result<()> {
    if let Some(ns) = &opts.netns {
        sys::enter_netns(ns)?;
    }
    let runtime = serve::runtime()?;
    let (cluster, nodes) = nodes_from_source(&runtime, opts, None)?;
    let name = lb_name(&cluster);
    let subnet = cluster.network.node_subnet;
    let ifs = sys::interfaces()?;
    let inside = ifs
        .iter()
        .find(|i| i.ipv4.iter().any(|a| subnet.contains(a)))
        .with_context(|| format!("no interface with an address in {subnet}"))?;
    let outside = match &opts.outside_interface {
        Some(name) => ifs
            .iter()
            .find(|i| &i.name == name)
            .with_context(|| format!("no interface {name}"))?,
        None => ifs
            .iter()
            .find(|i| i.name != "lo" && i.index != inside.index && !i.ipv4.is_empty())
            .context("no outside interface with an address (--outside-interface names one)")?,
    };
    let appliance =
        (cluster.outbound.kind == OutboundType::UserDefinedRouting).then(|| outside.ipv4[0]);
    let (mut dp, hooks, pins) = load(name, opts, &cluster)?;
    let mut role = LbRole {
        inside_ifindex: inside.index,
        outside_ifindex: outside.index,
        appliance,
    };
    role.apply(&mut dp, &cluster)?;
    let mut adopted = Vec::new();
    for (prog, iface, hook) in [
        (programs::LB_FROM_VNET, &inside.name, hooks::LB_INSIDE),
        (programs::LB_FROM_INTERNET, &outside.name, hooks::LB_OUTSIDE),
    ] {
        if hooks.tc(&mut dp, prog, iface, TcAttachType::Ingress, hook)? == Attach::Adopted {
            adopted.push(hook.to_string());
        }
    }
    let status = AgentStatus {
        node: name.to_string(),
        pid: std::process::id(),
        node_ip: inside.ipv4[0],
        uplink: inside.name.clone(),
        netns: opts.netns.clone(),
        pins: pins.display().to_string(),
        adopted,
        tc_attach: Some(hooks.mode()),
    };
    let watches = serve::Watches {
        nodes,
        services: None,
    };
    serve::serve(runtime, dp, hooks, &status, cluster, watches, opts, role)
}

/// Writes the CNI conflist for kubelet, whole or not at all (a temporary
/// file renamed over it). A node's pod CIDR never changes once set
/// (Kubernetes makes spec.podCIDR immutable), so once at start suffices.
fn write_conflist(
    dir: &std::path::Path,
    node: &crate::config::NodePlan,
    max_pods: u32,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = crate::cni::conflist(&node.name, node.pod_cidr, max_pods);
    let path = dir.join(crate::cni::CONFLIST_FILE);
    let tmp = dir.join(format!(".{}.tmp", crate::cni::CONFLIST_FILE));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&conf)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    info!(path = %path.display(), pod_cidr = %node.pod_cidr, "CNI configuration written for kubelet");
    Ok(())
}

/// The cluster to start with, and for the Kubernetes source the watch
/// that goes on feeding it. The Kubernetes source waits for the initial
/// list of nodes (and, for a node's agent, for its own node to be routable:
/// a node gets its pod CIDR from the controller manager some time after it
/// registers), saying what it waits for.
fn nodes_from_source(
    runtime: &tokio::runtime::Runtime,
    opts: &Options,
    own: Option<&str>,
) -> Result<(Cluster, Option<tokio::sync::watch::Receiver<NodeView>>)> {
    let NodeSource::Kubernetes { kubeconfig } = &opts.source else {
        let cluster = Cluster::load(opts.config.as_deref())?;
        for w in cluster.warnings() {
            warn!("{w}");
        }
        return Ok((cluster, None));
    };
    let settings = Cluster::load_settings(opts.config.as_deref())?;
    for w in settings.warnings() {
        warn!("{w}");
    }
    runtime.block_on(async {
        let client = crate::source::kubernetes::client(kubeconfig.as_deref()).await?;
        let (tx, mut rx) = tokio::sync::watch::channel(NodeView::default());
        tokio::spawn(crate::source::kubernetes::watch_nodes(client, tx));
        let mut said = String::new();
        loop {
            rx.changed().await.context("the Kubernetes watch ended")?;
            let view = rx.borrow_and_update().clone();
            if !view.listed {
                continue;
            }
            let (cluster, refused) = crate::source::admit(&settings, &view);
            let waiting = match own {
                Some(name) if cluster.node(name).is_none() => {
                    let why = refused
                        .iter()
                        .find(|r| r.node == name)
                        .map(|r| r.reason.as_str())
                        .unwrap_or("no Node object yet");
                    Some(format!(
                        "waiting for node {name} in the Kubernetes API: {why}"
                    ))
                }
                _ => None,
            };
            match waiting {
                Some(text) => {
                    if text != said {
                        info!("{text}");
                        said = text;
                    }
                }
                None => return Ok((cluster, Some(rx))),
            }
        }
    })
}

/// Loads the object with maps pinned (or adopted) under the agent's name.
fn load(name: &str, opts: &Options, cluster: &Cluster) -> Result<(Datapath, Hooks, PathBuf)> {
    sys::ensure_bpffs(&paths::bpffs())?;
    let pins = paths::pins(name);
    std::fs::create_dir_all(&pins)?;
    let want = opts
        .nat_table_entries
        .unwrap_or(cluster.limits.nat_table_entries());
    let lo_hi =
        netplane_common::nat::NAT_TABLE_ENTRIES_MIN..=netplane_common::nat::NAT_TABLE_ENTRIES_MAX;
    anyhow::ensure!(
        lo_hi.contains(&want),
        "--nat-table-entries {want}: must be {} to {} translations",
        lo_hi.start(),
        lo_hi.end()
    );
    let mut dp = Datapath::load(&LoadOptions {
        pin_dir: Some(pins.clone()),
        log_level: opts.log_level(),
        nat_entries: want,
        ..LoadOptions::default()
    })?;
    // Adopted maps keep the size they were made with.
    let have = dp.nat_table_entries()?;
    if have != want {
        tracing::warn!(
            have,
            want,
            "the pinned NAT tables keep their size until the data path is removed (lab down, or --detach-on-exit)"
        );
    }
    // The collector's release program, verified now: a kernel that refused
    // it should stop the agent at start, not fail every collection.
    dp.xdp(netplane_common::maps::programs::RELEASE_CLAIMS)?;
    let mode = opts.tc_attach.unwrap_or_else(TcMode::probe);
    let why = match (opts.tc_attach, mode) {
        (Some(_), _) => "as --tc-attach says",
        (None, TcMode::Tcx) => "the kernel has tcx",
        (None, TcMode::Clsact) => "the kernel has no tcx (Linux 6.6 brought it)",
    };
    tracing::info!(
        kernel = %crate::datapath::verifier::kernel_release(),
        "TC programs attach through {}: {why}",
        mode.describe()
    );
    let hooks = Hooks::new(&pins, &paths::node_dir(name), mode)?;
    Ok((dp, hooks, pins))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_agent_sweeps_twice_then_every_thirty_passes() {
        let sweeps: Vec<u64> = (0..100).filter(|&p| is_sweep(p)).collect();
        assert_eq!(sweeps, [0, 1, 30, 60, 90]);
    }
}
