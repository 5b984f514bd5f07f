//! Typed access to the maps: the UDR routes, counters summed over CPUs,
//! and what a running agent's pins hold.
use std::{borrow::Borrow, net::Ipv4Addr};

use anyhow::Result;
use aya::maps::{HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use ipnet::Ipv4Net;
use netplane_common::{
    DropReason, Path, RouteTarget,
    counters::PathCounter,
    nat::{BITMAP_PROTOS, FlowKey, MAX_SNAT_IPS, PortBitmap, SnatSlot},
    registry,
};

use super::{Datapath, addr, key, pins::Pins};

/// Inserts or replaces one UDR route.
pub fn put_route<M: std::borrow::BorrowMut<MapData>>(
    routes: &mut LpmTrie<M, u32, RouteTarget>,
    cidr: Ipv4Net,
    node_ip: Ipv4Addr,
) -> Result<()> {
    let k = Key::new(u32::from(cidr.prefix_len()), key(cidr.network()));
    routes.insert(
        &k,
        RouteTarget {
            node_ip: key(node_ip),
        },
        0,
    )?;
    Ok(())
}

/// Makes a hash map hold exactly `wanted`: keys not in it are removed,
/// then every wanted entry is written (a reader sees old and new values,
/// never a gap for a key that stays).
pub fn replace_entries<K: aya::Pod + PartialEq, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    wanted: &[(K, V)],
) -> Result<()> {
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.iter().any(|(w, _)| w == k))
        .collect();
    for k in stale {
        map.remove(&k)?;
    }
    for (k, v) in wanted {
        map.insert(k, v, 0)?;
    }
    Ok(())
}

/// All UDR routes: (pod CIDR, owner node IP).
pub fn list_routes<M: std::borrow::Borrow<MapData>>(
    routes: &LpmTrie<M, u32, RouteTarget>,
) -> Result<Vec<(Ipv4Net, Ipv4Addr)>> {
    let mut out = Vec::new();
    for entry in routes.iter() {
        let (k, v) = entry?;
        let net = Ipv4Net::new(addr(k.data()), k.prefix_len() as u8)?;
        out.push((net, addr(v.node_ip)));
    }
    out.sort();
    Ok(out)
}

/// Drop and path counters summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub drops: Vec<DropStat>,
    pub paths: Vec<PathStat>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DropStat {
    pub reason: &'static str,
    pub code: u32,
    pub packets: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PathStat {
    pub path: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

impl Counters {
    /// The counters of a loaded object.
    pub fn read(dp: &mut Datapath) -> Result<Self> {
        Ok(Self {
            drops: drop_stats(&dp.per_cpu_array(registry::DROPS)?)?,
            paths: path_stats(&dp.per_cpu_array(registry::PATHS)?)?,
        })
    }

    /// The counters of a running agent, from its pins.
    pub fn read_pinned(pins: &Pins) -> Result<Self> {
        Ok(Self {
            drops: drop_stats(&pins.per_cpu_array(registry::DROPS)?)?,
            paths: path_stats(&pins.per_cpu_array(registry::PATHS)?)?,
        })
    }

    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|d| d.reason == reason.name())
            .map_or(0, |d| d.packets)
    }

    pub fn packets_of(&self, path: Path) -> u64 {
        self.paths
            .iter()
            .find(|p| p.path == path.name())
            .map_or(0, |p| p.packets)
    }
}

/// Drops per reason, summed over CPUs.
fn drop_stats<M: Borrow<MapData>>(drops: &PerCpuArray<M, u64>) -> Result<Vec<DropStat>> {
    DropReason::ALL
        .iter()
        .map(|r| {
            Ok(DropStat {
                reason: r.name(),
                code: *r as u32,
                packets: drops.get(&(*r as u32), 0)?.iter().sum(),
            })
        })
        .collect()
}

/// Packets and bytes per path, summed over CPUs.
fn path_stats<M: Borrow<MapData>>(paths: &PerCpuArray<M, PathCounter>) -> Result<Vec<PathStat>> {
    Path::ALL
        .iter()
        .map(|p| {
            let per_cpu = paths.get(&(*p as u32), 0)?;
            Ok(PathStat {
                path: p.name(),
                packets: per_cpu.iter().map(|c| c.packets).sum(),
                bytes: per_cpu.iter().map(|c| c.bytes).sum(),
            })
        })
        .collect()
}

/// Pod IPs in a running agent's LOCAL_PODS, read from its pins.
pub fn pinned_pod_ips(pins: &Pins) -> Result<Vec<Ipv4Addr>> {
    let pods = pins.hash(registry::LOCAL_PODS)?;
    Ok(pods.keys().filter_map(Result::ok).map(addr).collect())
}

/// UDR routes of a running agent, read from its pins.
pub fn pinned_routes(pins: &Pins) -> Result<Vec<(Ipv4Net, Ipv4Addr)>> {
    list_routes(&pins.lpm_trie(registry::ROUTES)?)
}

/// One port bitmap per SNAT IP of `slots` and protocol, holding the ports
/// the owned-port marks hold (a restarted agent's flows, a snapshot's),
/// and none for IPs no longer in use. An IP beyond MAX_SNAT_IPS gets none:
/// its new flows walk.
pub fn make_port_bitmaps(dp: &mut Datapath, slots: &[SnatSlot]) -> Result<()> {
    let mut ips: Vec<u32> = Vec::new();
    for s in slots.iter().filter(|s| s.nat_ip != 0) {
        if !ips.contains(&s.nat_ip) {
            ips.push(s.nat_ip);
        }
    }
    ips.truncate(MAX_SNAT_IPS as usize);
    let wanted: Vec<u64> = ips
        .iter()
        .flat_map(|ip| BITMAP_PROTOS.map(|p| PortBitmap::key(*ip, p)))
        .collect();
    let mut bitmaps: Vec<(u64, PortBitmap)> =
        wanted.iter().map(|k| (*k, PortBitmap::EMPTY)).collect();
    // Batched: a restarted agent may find 262,144 marks.
    let owned: Vec<(FlowKey, u64)> = super::dump_hash(dp.hash_data(registry::PORT_OWNED)?)?;
    for (k, _) in owned {
        if let Some((_, b)) = bitmaps
            .iter_mut()
            .find(|(key, _)| *key == PortBitmap::key(k.dst_ip, k.proto))
        {
            b.set(k.dst_port);
        }
    }
    replace_entries(&mut dp.hash(registry::PORT_BITMAPS)?, &bitmaps)
}
