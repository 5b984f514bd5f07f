//! Typed access to the maps: the UDR routes, counters summed over CPUs,
//! and what a running agent's pins hold.
use std::{net::Ipv4Addr, path::Path as FsPath};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
};
use ipnet::Ipv4Net;
use netplane_common::{
    DropReason, LocalPod, Path, RouteTarget,
    counters::PathCounter,
    maps::names,
    nat::{self, BITMAP_PROTOS, FlowKey, MAX_SNAT_IPS, PortBitmap, SnatSlot},
};

use super::{Datapath, addr, key};

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
    fn from_maps(drops: &aya::maps::Map, paths: &aya::maps::Map) -> Result<Self> {
        let drops: PerCpuArray<_, u64> = PerCpuArray::try_from(drops)?;
        let paths: PerCpuArray<_, PathCounter> = PerCpuArray::try_from(paths)?;
        let mut out = Counters::default();
        for r in DropReason::ALL {
            let packets = drops.get(&(r as u32), 0)?.iter().sum();
            out.drops.push(DropStat {
                reason: r.name(),
                code: r as u32,
                packets,
            });
        }
        for p in Path::ALL {
            let per_cpu = paths.get(&(p as u32), 0)?;
            out.paths.push(PathStat {
                path: p.name(),
                packets: per_cpu.iter().map(|c| c.packets).sum(),
                bytes: per_cpu.iter().map(|c| c.bytes).sum(),
            });
        }
        Ok(out)
    }

    pub fn read(bpf: &Ebpf) -> Result<Self> {
        let get = |n| bpf.map(n).with_context(|| format!("map {n} missing"));
        Self::from_maps(get(names::DROPS)?, get(names::PATHS)?)
    }

    /// Reads the counters of a running agent from its pins.
    pub fn read_pinned(pin_dir: &FsPath) -> Result<Self> {
        let open = |n: &str| -> Result<aya::maps::Map> {
            let path = pin_dir.join(n);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening {} (is the agent running?)", path.display()))?;
            Ok(aya::maps::Map::PerCpuArray(data))
        };
        Self::from_maps(&open(names::DROPS)?, &open(names::PATHS)?)
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

/// Pod IPs in a running agent's LOCAL_PODS, read from its pins.
pub fn pinned_pod_ips(pin_dir: &FsPath) -> Result<Vec<Ipv4Addr>> {
    let data = MapData::from_pin(pin_dir.join(names::LOCAL_PODS))?;
    let map = aya::maps::Map::HashMap(data);
    let pods: HashMap<_, u32, LocalPod> = HashMap::try_from(&map)?;
    Ok(pods.keys().filter_map(Result::ok).map(addr).collect())
}

/// UDR routes of a running agent, read from its pins.
pub fn pinned_routes(pin_dir: &FsPath) -> Result<Vec<(Ipv4Net, Ipv4Addr)>> {
    let path = pin_dir.join(names::ROUTES);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening {} (is the agent running?)", path.display()))?;
    let map = aya::maps::Map::LpmTrie(data);
    let routes: LpmTrie<_, u32, RouteTarget> = LpmTrie::try_from(&map)?;
    list_routes(&routes)
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
    let owned: Vec<(FlowKey, u64)> = super::dump_hash(dp.hash_map_data(nat::names::PORT_OWNED)?)?;
    for (k, _) in owned {
        if let Some((_, b)) = bitmaps
            .iter_mut()
            .find(|(key, _)| *key == PortBitmap::key(k.dst_ip, k.proto))
        {
            b.set(k.dst_port);
        }
    }
    let mut map: HashMap<_, u64, PortBitmap> =
        HashMap::try_from(dp.map(nat::names::PORT_BITMAPS)?)?;
    replace_entries(&mut map, &bitmaps)
}
