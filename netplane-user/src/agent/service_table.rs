//! Services' userspace half: the frontends the Kubernetes watch reports,
//! written to the maps the programs read (netplane_common::services).
//!
//! A frontend's backends are written before its count, and a shrinking
//! count before the backends it drops, so a program never indexes past
//! what is there. When a backend goes, the UDP flows that point at it are
//! removed (kube-proxy clears such UDP conntrack entries; TCP connections
//! live on until their pod ends them). A frontend's ClientIP affinities
//! follow its list: one whose backend left that frontend is forgotten, one
//! whose backend moved gets its new index (kube-proxy's `recent` rule goes
//! and stays with its endpoint).
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::Ipv4Addr,
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, MapData};
use netplane_common::{
    nat::{FlowKey, PROTO_UDP},
    registry,
    services::{
        Affinity, AffinityKey, Backend, BackendKey, MAX_BACKENDS_PER_SERVICE, MAX_SERVICES,
        Service, ServiceConfig, ServiceFlow, ServiceKey, ServiceReply,
    },
};
use tracing::{info, warn};

use crate::{
    config::{Cluster, NodePlan, cluster::pod_gateway},
    datapath::{Datapath, key},
    source::service_watch::Frontend,
};

/// What is written for one frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    id: u32,
    backends: Vec<Backend>,
}

/// The frontends in the maps, by key.
#[derive(Debug, Default)]
pub struct ServiceTable {
    written: BTreeMap<ServiceKey, Written>,
}

impl ServiceTable {
    /// What an earlier agent left in the pinned maps (ids and backends),
    /// so a restart changes nothing that has not changed.
    pub fn adopt(dp: &mut Datapath) -> Result<Self> {
        let services: HashMap<_, ServiceKey, Service> = dp.hash(registry::SERVICES)?;
        let found: Vec<(ServiceKey, Service)> = services.iter().filter_map(Result::ok).collect();
        let backends: HashMap<_, BackendKey, Backend> = dp.hash(registry::SERVICE_BACKENDS)?;
        let mut written = BTreeMap::new();
        for (k, svc) in found {
            let list = (0..svc.backends)
                .filter_map(|index| {
                    backends
                        .get(
                            &BackendKey {
                                service: svc.id,
                                index,
                            },
                            0,
                        )
                        .ok()
                })
                .collect();
            written.insert(
                k,
                Written {
                    id: svc.id,
                    backends: list,
                },
            );
        }
        Ok(Self { written })
    }

    pub fn frontends(&self) -> usize {
        self.written.len()
    }

    /// Makes the maps hold exactly `frontends`.
    pub fn apply(&mut self, dp: &mut Datapath, frontends: &[Frontend]) -> Result<()> {
        let mut want: BTreeMap<ServiceKey, (Vec<Backend>, u32, &str)> = BTreeMap::new();
        for f in frontends.iter().take(MAX_SERVICES as usize) {
            if f.backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
                warn!(
                    service = f.name,
                    backends = f.backends.len(),
                    "only the first {MAX_BACKENDS_PER_SERVICE} backends are used"
                );
            }
            let backends = f
                .backends
                .iter()
                .take(MAX_BACKENDS_PER_SERVICE as usize)
                .map(|&(ip, port)| backend(ip, port))
                .collect();
            want.insert(
                ServiceKey::new(key(f.ip), f.port, f.proto),
                (backends, f.affinity_secs, &f.name),
            );
        }
        if frontends.len() > MAX_SERVICES as usize {
            warn!("only the first {MAX_SERVICES} service ports are carried");
        }
        let mut gone_backends: HashSet<Backend> = HashSet::new();
        // Frontends whose list changed, with the list they have now.
        let mut relisted: BTreeMap<ServiceKey, Vec<Backend>> = BTreeMap::new();
        // Frontends no longer wanted: the frontend first, then its backends.
        let removed: Vec<ServiceKey> = self
            .written
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in removed {
            let old = self.written.remove(&k).expect("listed above");
            services_map(dp)?.remove(&k).ok();
            let mut b = backends_map(dp)?;
            for index in 0..old.backends.len() as u32 {
                b.remove(&BackendKey {
                    service: old.id,
                    index,
                })
                .ok();
            }
            gone_backends.extend(old.backends);
            relisted.insert(k, Vec::new());
        }
        for (k, (backends, affinity_secs, name)) in want {
            let id = match self.written.get(&k) {
                Some(w) => w.id,
                None => self.free_id()?,
            };
            let old = self.written.get(&k).map(|w| w.backends.clone());
            let old_count = old.as_ref().map_or(0, Vec::len) as u32;
            let svc = Service {
                id,
                backends: backends.len() as u32,
                affinity_secs,
                _pad: 0,
            };
            let unchanged =
                old.as_ref() == Some(&backends) && services_map(dp)?.get(&k, 0).ok() == Some(svc);
            if unchanged {
                continue;
            }
            {
                let mut b = backends_map(dp)?;
                for (index, be) in backends.iter().enumerate() {
                    let slot = BackendKey {
                        service: id,
                        index: index as u32,
                    };
                    b.insert(slot, *be, 0)
                        .with_context(|| format!("writing a backend of {name}"))?;
                }
            }
            services_map(dp)?
                .insert(k, svc, 0)
                .with_context(|| format!("writing the service {name}"))?;
            {
                let mut b = backends_map(dp)?;
                for index in backends.len() as u32..old_count {
                    b.remove(&BackendKey { service: id, index }).ok();
                }
            }
            if let Some(old) = old {
                gone_backends.extend(old.into_iter().filter(|o| !backends.contains(o)));
                relisted.insert(k, backends.clone());
            }
            info!(
                service = name,
                backends = backends.len(),
                affinity_secs,
                "service applied"
            );
            self.written.insert(k, Written { id, backends });
        }
        // A backend may have left one frontend and stayed in another.
        let still: HashSet<Backend> = self
            .written
            .values()
            .flat_map(|w| w.backends.iter().copied())
            .collect();
        let gone: HashSet<Backend> = gone_backends.difference(&still).copied().collect();
        if !gone.is_empty() {
            forget_udp_flows(dp, &gone)?;
        }
        if !relisted.is_empty() {
            follow_affinities(dp, &relisted)?;
        }
        set_frontends(dp, self.written.len() as u32)
    }

    fn free_id(&self) -> Result<u32> {
        let used: BTreeSet<u32> = self.written.values().map(|w| w.id).collect();
        (0..MAX_SERVICES)
            .find(|id| !used.contains(id))
            .context("no free service id")
    }
}

fn backend(ip: Ipv4Addr, port: u16) -> Backend {
    backend_key(key(ip), port)
}

fn backend_key(ip: u32, port: u16) -> Backend {
    Backend { ip, port, _pad: 0 }
}

fn services_map(dp: &mut Datapath) -> Result<HashMap<&mut MapData, ServiceKey, Service>> {
    dp.hash(registry::SERVICES)
}

fn backends_map(dp: &mut Datapath) -> Result<HashMap<&mut MapData, BackendKey, Backend>> {
    dp.hash(registry::SERVICE_BACKENDS)
}

/// Removes the UDP flows (with their reply entries) that point at backends
/// which are gone.
fn forget_udp_flows(dp: &mut Datapath, gone: &HashSet<Backend>) -> Result<()> {
    let stale: Vec<(FlowKey, ServiceFlow)> = {
        let flows: HashMap<_, FlowKey, ServiceFlow> = dp.lru_hash(registry::SERVICE_FLOWS)?;
        flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, f)| {
                k.proto == PROTO_UDP && gone.contains(&backend_key(f.backend_ip, f.backend_port))
            })
            .collect()
    };
    {
        let mut flows: HashMap<_, FlowKey, ServiceFlow> = dp.lru_hash(registry::SERVICE_FLOWS)?;
        for (k, _) in &stale {
            flows.remove(k).ok();
        }
    }
    {
        let mut replies: HashMap<_, FlowKey, ServiceReply> =
            dp.lru_hash(registry::SERVICE_REPLIES)?;
        for (k, f) in &stale {
            // The reply tuple: from the backend to the source it saw.
            let reply = FlowKey::new(f.backend_ip, f.src_ip, f.backend_port, f.src_port, k.proto);
            replies.remove(&reply).ok();
        }
    }
    if !stale.is_empty() {
        info!(
            flows = stale.len(),
            "UDP service flows to removed backends forgotten"
        );
    }
    Ok(())
}

fn config_map(dp: &mut Datapath) -> Result<Array<&mut MapData, ServiceConfig>> {
    dp.array(registry::SERVICE_CONFIG)
}

/// The service CIDR and this node's hairpin address (its pod gateway),
/// keeping the frontend count.
pub fn configure_node(dp: &mut Datapath, cluster: &Cluster, node: &NodePlan) -> Result<()> {
    let mut arr = config_map(dp)?;
    let old = arr.get(&0, 0)?;
    let cidr = cluster.network.service_cidr;
    arr.set(
        0,
        ServiceConfig {
            cidr: key(cidr.network()),
            mask: key(cidr.netmask()),
            hairpin_ip: key(pod_gateway(node.pod_cidr)),
            frontends: old.frontends,
        },
        0,
    )?;
    Ok(())
}

fn set_frontends(dp: &mut Datapath, frontends: u32) -> Result<()> {
    let mut arr = config_map(dp)?;
    let mut cfg = arr.get(&0, 0)?;
    cfg.frontends = frontends;
    arr.set(0, cfg, 0)?;
    Ok(())
}

/// Makes the affinities of the frontends whose list changed follow it:
/// forgotten when their backend left the frontend, re-indexed when it moved.
fn follow_affinities(
    dp: &mut Datapath,
    relisted: &BTreeMap<ServiceKey, Vec<Backend>>,
) -> Result<()> {
    let mut affinity: HashMap<_, AffinityKey, Affinity> =
        dp.lru_hash(registry::SERVICE_AFFINITY)?;
    let found: Vec<(AffinityKey, Affinity)> = affinity
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| relisted.contains_key(&k.frontend))
        .collect();
    let mut forgotten = 0;
    for (k, mut a) in found {
        match relisted[&k.frontend].iter().position(|b| *b == a.backend) {
            Some(index) if index as u32 == a.index => {}
            Some(index) => {
                a.index = index as u32;
                affinity.insert(k, a, 0).ok();
            }
            None => {
                affinity.remove(&k).ok();
                forgotten += 1;
            }
        }
    }
    if forgotten > 0 {
        info!(
            forgotten,
            "ClientIP affinities to backends that left forgotten"
        );
    }
    Ok(())
}
