//! The node agent: loads the data path into a node, keeps its maps equal to
//! the desired state (routes from the cluster file, pods from the registry)
//! by diffs, and survives its own restarts: maps and program attachments
//! are pinned, so traffic flows while no agent runs, and a new agent adopts
//! them (hooks.rs).
use std::{
    collections::HashMap as StdHashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use aya::programs::TcAttachType;
use ipnet::Ipv4Net;
use netplane_common::{LocalPod, NodeConfig, maps::programs};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::{
    cluster::{Cluster, NodePlan},
    ebpf::{Datapath, key, list_routes, put_route},
    hooks::{self, Attach, Hooks},
    paths,
    pods::{self, PodRecord},
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
}

/// A pod the agent has registered in the data path, by container ID.
struct Attached {
    ip: Ipv4Addr,
    host_ifname: String,
}

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

    sys::ensure_bpffs(&paths::bpffs())?;
    let pins = paths::pins(node_name);
    std::fs::create_dir_all(&pins)?;
    let mut dp = Datapath::load(Some(&pins))?;
    let hooks = Hooks::new(&pins)?;
    set_node(&mut dp, &cluster, &node, uplink.index)?;
    reconcile_routes(&mut dp, &cluster.nodes())?;

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

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))?;

    let mut attached = StdHashMap::new();
    // Pods an earlier agent attached are adopted in the first pass.
    adopted.extend(reconcile_pods(&mut dp, &hooks, node_name, &mut attached)?);
    let status = AgentStatus {
        node: node_name.to_string(),
        pid: std::process::id(),
        node_ip: node.ip,
        uplink: uplink.name.clone(),
        netns: opts.netns.clone(),
        pins: pins.display().to_string(),
        adopted: adopted.clone(),
    };
    let status_path = paths::agent_status(node_name);
    std::fs::create_dir_all(paths::node_dir(node_name))?;
    std::fs::write(&status_path, serde_json::to_vec_pretty(&status)?)?;
    info!(node = node_name, uplink = uplink.name, pins = %pins.display(), adopted = adopted.len(), "data path attached");

    let mut config_mtime = mtime(opts.config.as_deref());
    let result = (|| {
        while !stop.load(Ordering::Relaxed) {
            let now = mtime(opts.config.as_deref());
            if reload.swap(false, Ordering::Relaxed) || now != config_mtime {
                config_mtime = now;
                if let Err(e) =
                    reload_cluster(&mut dp, opts.config.as_deref(), node_name, uplink.index)
                {
                    error!("cluster file not applied, keeping the previous one: {e:#}");
                }
            }
            reconcile_pods(&mut dp, &hooks, node_name, &mut attached)?;
            std::thread::sleep(RECONCILE_INTERVAL);
        }
        Ok(())
    })();

    let _ = std::fs::remove_file(&status_path);
    if opts.detach_on_exit {
        info!(
            node = node_name,
            "stopping: detaching programs, removing pins"
        );
        drop(dp);
        remove_dir_contents(&pins);
    } else {
        info!(
            node = node_name,
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

/// Re-reads the cluster file and applies what changed. An invalid file, or
/// one without this node, changes nothing.
fn reload_cluster(
    dp: &mut Datapath,
    config: Option<&Path>,
    node_name: &str,
    uplink_ifindex: u32,
) -> Result<()> {
    let cluster = Cluster::load(config)?;
    let node = cluster
        .node(node_name)
        .with_context(|| format!("node {node_name} is no longer in the cluster file"))?;
    set_node(dp, &cluster, &node, uplink_ifindex)?;
    reconcile_routes(dp, &cluster.nodes())?;
    info!("cluster file applied");
    Ok(())
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

fn remove_dir_contents(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
