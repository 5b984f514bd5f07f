//! Reconciling by diffs: the UDR routes from the desired node list, and the
//! pods from the CNI registry, one change at a time (never flush and
//! refill).
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::Result;
use aya::programs::TcAttachType;
use ipnet::Ipv4Net;
use netplane_common::{LocalPod, maps::programs};
use tracing::{info, warn};

use crate::{
    cni::registry::{self as pods, PodRecord},
    config::NodePlan,
    datapath::{
        Datapath,
        hooks::{self, Attach, Hooks},
        key, list_routes, put_route,
    },
    sys,
};

/// A pod the agent has registered in the data path, by container ID.
pub struct Attached {
    pub ip: Ipv4Addr,
    pub host_ifname: String,
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
pub fn reconcile_pods(
    dp: &mut Datapath,
    hooks: &Hooks,
    node: &str,
    attached: &mut HashMap<String, Attached>,
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
        dp.remove_pod(key(a.ip))?;
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
    let stale: Vec<u32> = dp
        .pods_map()?
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !owned.contains(k))
        .collect();
    for k in stale {
        dp.remove_pod(k)?;
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
    dp.add_pod(key(rec.ip), pod)?;
    hooks.tc(
        dp,
        programs::FROM_POD,
        &rec.host_ifname,
        TcAttachType::Ingress,
        &hooks::pod_hook(&rec.container_id),
    )
}
