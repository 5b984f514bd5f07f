//! The node agent: loads the data path into a node, keeps its maps equal to
//! the desired state (routes from the cluster file, pods from the registry)
//! by diffs, and survives its own restarts: maps and program attachments
//! are pinned, so traffic flows while no agent runs, and a new agent adopts
//! them (hooks.rs).
pub mod flows;
pub mod metrics;
pub mod snat;
use std::{
    collections::HashMap as StdHashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use aya::programs::TcAttachType;
use ipnet::Ipv4Net;
use netplane_common::{LocalPod, NodeConfig, maps::programs};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use crate::{
    cni::registry::{self as pods, PodRecord},
    config::{Cluster, NodePlan, OutboundType},
    datapath::{
        Datapath, LoadOptions,
        hooks::{self, Attach, Hooks},
        key, list_routes, put_route,
    },
    paths, sys,
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
}

/// How the agent runs, besides which node it is.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The cluster file (None: the embedded default). Re-read on SIGHUP and
    /// when it changes.
    pub config: Option<PathBuf>,
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
}

impl Options {
    fn log_level(&self) -> aya_log::Level {
        self.bpf_log_level.unwrap_or(aya_log::Level::Info)
    }
}

/// A pod the agent has registered in the data path, by container ID.
struct Attached {
    ip: Ipv4Addr,
    host_ifname: String,
}

/// How often expired translations are collected.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(1);
/// Entries a collection step looks at per tick: a table up to this size is
/// collected in one tick every COLLECT_INTERVAL as before; a larger one a
/// piece per tick (1M translations: a pass every ~6 s, each tick a few ms
/// of CPU instead of one burst the pods' latency feels).
pub const COLLECT_BUDGET: usize = 32_768;

/// What differs between the two kinds of agent: how they apply a cluster
/// file and what they reconcile on every tick.
trait Role {
    /// Applies (re-read) desired state; called at start and on reload.
    fn apply(&mut self, dp: &mut Datapath, cluster: &Cluster) -> Result<()>;
    /// Runs every RECONCILE_INTERVAL.
    fn tick(&mut self, dp: &mut Datapath, hooks: &Hooks) -> Result<()>;
    fn timeouts(&self, cluster: &Cluster) -> snat::Timeouts;
}

/// A node: routes from the cluster file, pods from the registry, the
/// masquerade.
struct NodeRole {
    name: String,
    uplink_ifindex: u32,
    attached: StdHashMap<String, Attached>,
}

impl Role for NodeRole {
    fn apply(&mut self, dp: &mut Datapath, cluster: &Cluster) -> Result<()> {
        let node = cluster
            .node(&self.name)
            .with_context(|| format!("node {} is not in the cluster file", self.name))?;
        set_node(dp, cluster, &node, self.uplink_ifindex)?;
        snat::configure_node(dp, cluster, node.ip)?;
        reconcile_routes(dp, &cluster.nodes())
    }

    fn tick(&mut self, dp: &mut Datapath, hooks: &Hooks) -> Result<()> {
        reconcile_pods(dp, hooks, &self.name, &mut self.attached).map(|_| ())
    }

    fn timeouts(&self, cluster: &Cluster) -> snat::Timeouts {
        snat::Timeouts::node(cluster)
    }
}

/// The outbound load balancer, or with userDefinedRouting the appliance.
struct LbRole {
    inside_ifindex: u32,
    outside_ifindex: u32,
    /// The appliance's own outside address (it SNATs to it).
    appliance: Option<Ipv4Addr>,
}

impl Role for LbRole {
    fn apply(&mut self, dp: &mut Datapath, cluster: &Cluster) -> Result<()> {
        let plan = snat::lb_plan(cluster, self.appliance);
        snat::configure_lb(
            dp,
            cluster,
            &plan,
            self.inside_ifindex,
            self.outside_ifindex,
        )
    }

    fn tick(&mut self, _dp: &mut Datapath, _hooks: &Hooks) -> Result<()> {
        Ok(())
    }

    fn timeouts(&self, cluster: &Cluster) -> snat::Timeouts {
        match self.appliance {
            Some(_) => snat::Timeouts::node(cluster),
            None => snat::Timeouts::load_balancer(cluster),
        }
    }
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
    let cluster = Cluster::load(opts.config.as_deref())?;
    for w in cluster.warnings() {
        warn!("{w}");
    }
    let node = cluster
        .node(node_name)
        .with_context(|| format!("node {node_name} is not in the cluster file"))?;
    if let Some(ns) = &opts.netns {
        sys::enter_netns(ns)?;
    }
    let uplink = sys::interfaces()?
        .into_iter()
        .find(|i| i.ipv4.contains(&node.ip))
        .with_context(|| format!("no interface holds the node IP {}", node.ip))?;
    let (mut dp, hooks, pins) = load(node_name, opts.log_level(), &cluster)?;
    let mut role = NodeRole {
        name: node_name.to_string(),
        uplink_ifindex: uplink.index,
        attached: StdHashMap::new(),
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
    };
    serve(dp, hooks, &status, cluster, opts, role)
}

/// Runs the load balancer's (or appliance's) agent: its inside interface
/// holds an address of the node subnet, its outside interface the other.
pub fn run_lb(opts: &Options) -> Result<()> {
    let cluster = Cluster::load(opts.config.as_deref())?;
    let name = lb_name(&cluster);
    if let Some(ns) = &opts.netns {
        sys::enter_netns(ns)?;
    }
    let subnet = cluster.network.node_subnet;
    let ifs = sys::interfaces()?;
    let inside = ifs
        .iter()
        .find(|i| i.ipv4.iter().any(|a| subnet.contains(a)))
        .with_context(|| format!("no interface with an address in {subnet}"))?;
    let outside = ifs
        .iter()
        .find(|i| i.name != "lo" && i.index != inside.index && !i.ipv4.is_empty())
        .context("no outside interface with an address")?;
    let appliance =
        (cluster.outbound.kind == OutboundType::UserDefinedRouting).then(|| outside.ipv4[0]);
    let (mut dp, hooks, pins) = load(name, opts.log_level(), &cluster)?;
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
    };
    serve(dp, hooks, &status, cluster, opts, role)
}

/// Loads the object with maps pinned (or adopted) under the agent's name.
fn load(
    name: &str,
    log_level: aya_log::Level,
    cluster: &Cluster,
) -> Result<(Datapath, Hooks, PathBuf)> {
    sys::ensure_bpffs(&paths::bpffs())?;
    let pins = paths::pins(name);
    std::fs::create_dir_all(&pins)?;
    let want = cluster.limits.nat_table_entries;
    let mut dp = Datapath::load(&LoadOptions {
        pin_dir: Some(pins.clone()),
        log_level,
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
    let hooks = Hooks::new(&pins)?;
    Ok((dp, hooks, pins))
}

/// The agent's life after attaching: status file, signals, reloads,
/// reconcile ticks, collection of expired translations, and the exit.
fn serve(
    mut dp: Datapath,
    hooks: Hooks,
    status: &AgentStatus,
    mut cluster: Cluster,
    opts: &Options,
    mut role: impl Role,
) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))?;
    let name = status.node.as_str();
    let own = Arc::new(crate::agent::metrics::AgentCounters::default());
    if let Some(addr) = opts.metrics_addr {
        crate::agent::metrics::serve(addr, PathBuf::from(&status.pins), Arc::clone(&own))?;
        info!(%addr, "metrics on /metrics");
    }
    let status_path = paths::agent_status(name);
    std::fs::create_dir_all(paths::node_dir(name))?;
    std::fs::write(&status_path, serde_json::to_vec_pretty(status)?)?;
    info!(
        agent = name,
        uplink = status.uplink,
        pins = status.pins,
        adopted = status.adopted.len(),
        "data path attached"
    );

    let mut events = crate::agent::flows::EventLog::open(name, &mut dp)?;
    // The programs' own messages, into this log (tracing picks up `log`).
    let mut bpf_log = match aya_log::EbpfLogger::init(&mut dp.bpf) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("no eBPF log: {e}");
            None
        }
    };
    let mut config_mtime = mtime(opts.config.as_deref());
    let mut last_collect = Instant::now();
    let mut collector = snat::Collector::default();
    let result = (|| {
        while !stop.load(Ordering::Relaxed) {
            let now = mtime(opts.config.as_deref());
            if reload.swap(false, Ordering::Relaxed) || now != config_mtime {
                config_mtime = now;
                match Cluster::load(opts.config.as_deref())
                    .map_err(anyhow::Error::from)
                    .and_then(|c| {
                        role.apply(&mut dp, &c)?;
                        Ok(c)
                    }) {
                    Ok(c) => {
                        cluster = c;
                        info!("cluster file applied");
                    }
                    Err(e) => error!("cluster file not applied, keeping the previous one: {e:#}"),
                }
            }
            role.tick(&mut dp, &hooks)?;
            events.drain();
            if let Some(l) = bpf_log.as_mut() {
                l.flush();
            }
            if last_collect.elapsed() >= COLLECT_INTERVAL && collector.idle() {
                last_collect = Instant::now();
                collector.start();
                own.collection_runs.fetch_add(1, Ordering::Relaxed);
                snat::record_peaks(name, Path::new(&status.pins))?;
            }
            if !collector.idle() {
                let (t, now) = (role.timeouts(&cluster), snat::monotonic_ns());
                let expired = collector.step(&mut dp, COLLECT_BUDGET, &mut |k, e| {
                    snat::expired_at(&t, now, k, e)
                })?;
                own.expired
                    .fetch_add(expired.len() as u64, Ordering::Relaxed);
                if !expired.is_empty() {
                    debug!(
                        expired = expired.len(),
                        "translations expired, ports returned"
                    );
                    events.expired(&expired);
                }
            }
            std::thread::sleep(RECONCILE_INTERVAL);
        }
        Ok(())
    })();

    let _ = std::fs::remove_file(&status_path);
    if opts.detach_on_exit {
        info!(agent = name, "stopping: detaching programs, removing pins");
        hooks.remove_all()?;
        drop(dp);
        let _ = std::fs::remove_dir_all(&status.pins);
    } else {
        info!(
            agent = name,
            "stopping: programs stay attached, maps pinned (--detach-on-exit to remove)"
        );
    }
    result
}

fn set_node(
    dp: &mut Datapath,
    cluster: &Cluster,
    node: &NodePlan,
    uplink_ifindex: u32,
) -> Result<()> {
    dp.set_node(NodeConfig {
        node_ip: key(node.ip),
        uplink_ifindex,
        cluster_cidr: key(cluster.network.pod_cidr.network()),
        cluster_mask: key(cluster.network.pod_cidr.netmask()),
    })
}

fn mtime(path: Option<&Path>) -> Option<SystemTime> {
    std::fs::metadata(path?).and_then(|m| m.modified()).ok()
}

/// Makes ROUTES equal to the cluster's routes, touching only what differs.
pub fn reconcile_routes(dp: &mut Datapath, nodes: &[NodePlan]) -> Result<()> {
    let mut routes = dp.routes_map()?;
    let current = list_routes(&routes)?;
    let desired: Vec<(Ipv4Net, Ipv4Addr)> = nodes.iter().map(|n| (n.pod_cidr, n.ip)).collect();
    for (cidr, ip) in &desired {
        if !current.contains(&(*cidr, *ip)) {
            put_route(&mut routes, *cidr, *ip)?;
            info!(%cidr, next_hop = %ip, "route added");
        }
    }
    for (cidr, ip) in &current {
        if !desired.iter().any(|(c, _)| c == cidr) {
            let k =
                aya::maps::lpm_trie::Key::new(u32::from(cidr.prefix_len()), key(cidr.network()));
            routes.remove(&k)?;
            info!(%cidr, next_hop = %ip, "route removed");
        }
    }
    Ok(())
}

/// Registers new pods (attach `from_pod`, add to LOCAL_PODS) and forgets
/// gone ones, one by one. Returns the hooks adopted from pins.
fn reconcile_pods(
    dp: &mut Datapath,
    hooks: &Hooks,
    node: &str,
    attached: &mut StdHashMap<String, Attached>,
) -> Result<Vec<String>> {
    let desired = pods::registered(node)?;
    let gone: Vec<String> = attached
        .iter()
        .filter(|(id, a)| {
            !desired
                .iter()
                .any(|r| &r.container_id == *id && r.ip == a.ip && r.host_ifname == a.host_ifname)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in gone {
        let a = attached.remove(&id).expect("listed above");
        dp.pods_map()?.remove(&key(a.ip)).ok();
        hooks.remove(&hooks::pod_hook(&id))?;
        info!(container = id, ip = %a.ip, "pod removed");
    }
    let mut adopted = Vec::new();
    for rec in &desired {
        if attached.contains_key(&rec.container_id) {
            continue;
        }
        match attach_pod(dp, hooks, rec) {
            Ok(how) => {
                info!(pod = rec.name, ip = %rec.ip, veth = rec.host_ifname, ?how, "pod registered");
                if how == Attach::Adopted {
                    adopted.push(hooks::pod_hook(&rec.container_id));
                }
                attached.insert(
                    rec.container_id.clone(),
                    Attached {
                        ip: rec.ip,
                        host_ifname: rec.host_ifname.clone(),
                    },
                );
            }
            Err(e) => warn!(pod = rec.name, "cannot register yet: {e:#}"),
        }
    }
    // What no registered pod owns (left while no agent ran) goes too.
    let owned: Vec<u32> = attached.values().map(|a| key(a.ip)).collect();
    let mut map = dp.pods_map()?;
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !owned.contains(k))
        .collect();
    for k in stale {
        map.remove(&k).ok();
    }
    for hook in hooks.pinned() {
        let pod_of = hook.strip_prefix("pod-");
        if pod_of.is_some_and(|id| !attached.contains_key(id)) {
            hooks.remove(&hook)?;
        }
    }
    Ok(adopted)
}

fn attach_pod(dp: &mut Datapath, hooks: &Hooks, rec: &PodRecord) -> Result<Attach> {
    let veth = sys::interface(&rec.host_ifname)?;
    let pod = LocalPod {
        ifindex: veth.index,
        pod_mac: sys::parse_mac(&rec.pod_mac)?,
        host_mac: veth.mac,
    };
    // Map first: from the moment the program sees packets, the pod is known.
    dp.pods_map()?.insert(key(rec.ip), pod, 0)?;
    hooks.tc(
        dp,
        programs::FROM_POD,
        &rec.host_ifname,
        TcAttachType::Ingress,
        &hooks::pod_hook(&rec.container_id),
    )
}
