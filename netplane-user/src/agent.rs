//! The node agent: loads the data path into a node, keeps its maps equal to
//! the desired state (routes from the cluster file, pods from the registry)
//! by diffs, and detaches cleanly on SIGTERM.
use std::{
    collections::HashMap as StdHashMap,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use aya::programs::{TcAttachType, tc::SchedClassifierLinkId};
use ipnet::Ipv4Net;
use netplane_common::{LocalPod, NodeConfig, maps::programs};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    cluster::{Cluster, NodePlan},
    ebpf::{Datapath, key, list_routes, put_route},
    paths,
    pods::{self, PodRecord},
    sys,
};

/// How often the agent compares the pod registry with its maps.
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
}

/// A pod the agent has registered in the data path, by container ID.
struct Attached {
    ip: Ipv4Addr,
    host_ifname: String,
    link: SchedClassifierLinkId,
}

/// How the agent runs, besides which node it is.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Network namespace of the node (the lab's nodes live in one).
    pub netns: Option<String>,
    /// Also attach `uplink_xdp` (native XDP) to the uplink: early drops, at
    /// the price measured in docs/decisions.md.
    pub uplink_xdp: bool,
}

pub fn run(cluster: &Cluster, node_name: &str, opts: &Options) -> Result<()> {
    let netns = opts.netns.as_deref();
    let node = cluster
        .node(node_name)
        .with_context(|| format!("node {node_name} is not in the cluster file"))?;
    if let Some(ns) = netns {
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
    dp.set_node(NodeConfig {
        node_ip: key(node.ip),
        uplink_ifindex: uplink.index,
        cluster_cidr: key(cluster.network.pod_cidr.network()),
        cluster_mask: key(cluster.network.pod_cidr.netmask()),
    })?;
    reconcile_routes(&mut dp, &cluster.nodes())?;
    dp.classifier(programs::FROM_UPLINK)?
        .attach(&uplink.name, TcAttachType::Ingress)
        .with_context(|| format!("attaching {} to {}", programs::FROM_UPLINK, uplink.name))?;
    dp.classifier(programs::TO_UPLINK)?
        .attach(&uplink.name, TcAttachType::Egress)
        .with_context(|| format!("attaching {} to {}", programs::TO_UPLINK, uplink.name))?;
    if opts.uplink_xdp {
        dp.xdp(programs::UPLINK_XDP)?
            .attach(&uplink.name, aya::programs::XdpMode::Driver)
            .with_context(|| format!("attaching {} to {}", programs::UPLINK_XDP, uplink.name))?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let status = AgentStatus {
        node: node_name.to_string(),
        pid: std::process::id(),
        node_ip: node.ip,
        uplink: uplink.name.clone(),
        netns: netns.map(str::to_string),
        pins: pins.display().to_string(),
    };
    let status_path = paths::agent_status(node_name);
    std::fs::create_dir_all(paths::node_dir(node_name))?;
    std::fs::write(&status_path, serde_json::to_vec_pretty(&status)?)?;
    info!(node = node_name, uplink = uplink.name, pins = %pins.display(), "data path attached");

    let mut attached = StdHashMap::new();
    let result = (|| {
        while !stop.load(Ordering::Relaxed) {
            reconcile_pods(&mut dp, node_name, &mut attached)?;
            std::thread::sleep(RECONCILE_INTERVAL);
        }
        Ok(())
    })();

    info!(
        node = node_name,
        "stopping: detaching programs, removing pins"
    );
    let _ = std::fs::remove_file(&status_path);
    drop(dp); // closes the links: programs detach
    remove_pins(&pins);
    result
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
/// gone ones, one by one.
fn reconcile_pods(
    dp: &mut Datapath,
    node: &str,
    attached: &mut StdHashMap<String, Attached>,
) -> Result<()> {
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
        // The link is already gone if the veth was deleted.
        dp.classifier(programs::FROM_POD)?.detach(a.link).ok();
        info!(container = id, ip = %a.ip, "pod removed");
    }
    for rec in &desired {
        if attached.contains_key(&rec.container_id) {
            continue;
        }
        match attach_pod(dp, rec) {
            Ok(a) => {
                info!(pod = rec.name, ip = %rec.ip, veth = rec.host_ifname, "pod registered");
                attached.insert(rec.container_id.clone(), a);
            }
            Err(e) => warn!(pod = rec.name, "cannot register yet: {e:#}"),
        }
    }
    // Entries no pod owns (left by an agent that crashed) go too.
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
    Ok(())
}

fn attach_pod(dp: &mut Datapath, rec: &PodRecord) -> Result<Attached> {
    let veth = sys::interface(&rec.host_ifname)?;
    let pod = LocalPod {
        ifindex: veth.index,
        pod_mac: sys::parse_mac(&rec.pod_mac)?,
        host_mac: veth.mac,
    };
    let link = dp
        .classifier(programs::FROM_POD)?
        .attach(&rec.host_ifname, TcAttachType::Ingress)?;
    dp.pods_map()?.insert(key(rec.ip), pod, 0)?;
    Ok(Attached {
        ip: rec.ip,
        host_ifname: rec.host_ifname.clone(),
        link,
    })
}

fn remove_pins(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}
