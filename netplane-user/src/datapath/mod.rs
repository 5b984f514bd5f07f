//! The data path as userspace sees it: the compiled eBPF object, loaded
//! with one options struct; typed map access (`maps`); hooks, pins and link
//! adoption (`hooks`); test runs (`testrun`); the raw bpf() calls aya lacks
//! (`sys`).
pub mod hooks;
pub mod maps;
pub mod memory;
pub mod pins;
pub mod syscall;
mod testrun;
pub mod verifier;

pub use maps::{
    Counters, DropStat, PathStat, list_routes, make_port_bitmaps, pinned_pod_ips, pinned_routes,
    put_route, replace_entries,
};
pub use pins::Pins;
use std::{net::Ipv4Addr, path::PathBuf};
pub use syscall::{HashWalk, delete_batch, dump_hash, put_new, take};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData},
    programs::{SchedClassifier, Xdp},
};
use netplane_common::{
    LocalPod, NodeConfig, PodSlot, RouteTarget,
    maps::{ip_key, names, pod_slot},
    registry::{self, MapDef, kind},
};

/// The object built by build.rs, aligned as the ELF parser wants.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netplane"))
}

/// An IPv4 address in the maps' key form.
pub fn key(ip: Ipv4Addr) -> u32 {
    ip_key(ip.octets())
}

/// The address behind a map key.
pub fn addr(key: u32) -> Ipv4Addr {
    Ipv4Addr::from(key.to_ne_bytes())
}

/// How to load the object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Pin every map here by name, or adopt the pin of that name if it
    /// exists (an agent's maps outlive it). None: private maps.
    pub pin_dir: Option<PathBuf>,
    /// Whether the programs report flow events (the benchmark compares).
    pub flow_events: bool,
    /// The programs' own log (aya-log) from this level; info keeps debug
    /// messages off the packet path.
    pub log_level: aya_log::Level,
    /// Capacity of the NAT tables (maps already pinned keep their size).
    pub nat_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: None,
            flow_events: true,
            log_level: aya_log::Level::Info,
            nat_entries: netplane_common::nat::MAX_NAT_ENTRIES,
        }
    }
}

/// The loaded object: programs plus maps, optionally pinned in a directory
/// (reused if the pins already exist). Its maps are reached by their
/// registry entries (`netplane_common::registry`), typed as declared.
pub struct Datapath {
    bpf: Ebpf,
}

impl Datapath {
    /// Loads the object as `opts` says.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for map in netplane_common::nat::NAT_TABLE_MAPS {
            loader.map_max_entries(map, opts.nat_entries);
        }
        for (map, compiled) in netplane_common::nat::FLOW_MAPS {
            loader.map_max_entries(map, compiled.min(opts.nat_entries));
        }
        let on = u8::from(opts.flow_events);
        loader.override_global("FLOW_EVENTS_ON", &on, true);
        let level = opts.log_level as u8;
        loader.override_global(aya_log::LEVEL, &level, true);
        let pins: Vec<(&str, PathBuf)> = opts
            .pin_dir
            .as_deref()
            .map(|dir| names::ALL.iter().map(|n| (*n, dir.join(n))).collect())
            .unwrap_or_default();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let bpf = loader.load(object()).context("loading the eBPF object")?;
        Ok(Self { bpf })
    }

    /// The NAT tables' capacity as the kernel made them.
    pub fn nat_table_entries(&mut self) -> Result<u32> {
        Ok(self.hash_data(registry::NAT_OUT)?.info()?.max_entries())
    }

    /// A hash map's own handle, for the batch operations (`sys`).
    pub fn hash_data<K, V>(&mut self, def: MapDef<kind::Hash, K, V>) -> Result<&MapData> {
        match self.map(def.name)? {
            aya::maps::Map::HashMap(m) => Ok(m),
            _ => anyhow::bail!("{} is not a hash map", def.name),
        }
    }

    pub fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        def: MapDef<kind::Hash, K, V>,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        Ok(HashMap::try_from(self.map(def.name)?)?)
    }

    pub fn lru_hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        def: MapDef<kind::LruHash, K, V>,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        Ok(HashMap::try_from(self.map(def.name)?)?)
    }

    pub fn array<V: aya::Pod>(
        &mut self,
        def: MapDef<kind::Array, u32, V>,
    ) -> Result<Array<&mut MapData, V>> {
        Ok(Array::try_from(self.map(def.name)?)?)
    }

    pub fn per_cpu_array<V: aya::Pod>(
        &mut self,
        def: MapDef<kind::PerCpuArray, u32, V>,
    ) -> Result<aya::maps::PerCpuArray<&mut MapData, V>> {
        Ok(aya::maps::PerCpuArray::try_from(self.map(def.name)?)?)
    }

    pub fn lpm_trie<K: aya::Pod, V: aya::Pod>(
        &mut self,
        def: MapDef<kind::LpmTrie, K, V>,
    ) -> Result<LpmTrie<&mut MapData, K, V>> {
        Ok(LpmTrie::try_from(self.map(def.name)?)?)
    }

    /// The flow events' ring, taken out of the object (its reader owns
    /// it); None when already taken.
    pub fn take_ring(
        &mut self,
        def: MapDef<kind::RingBuf, (), ()>,
    ) -> Option<Result<aya::maps::RingBuf<MapData>>> {
        let map = self.bpf.take_map(def.name)?;
        Some(aya::maps::RingBuf::try_from(map).map_err(Into::into))
    }

    /// The programs' own log (aya-log), into `tracing`.
    pub fn logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        Ok(aya_log::EbpfLogger::init(&mut self.bpf)?)
    }

    /// Pins again every pinned map whose pin is missing from `dir` (the
    /// bpffs was unmounted under the agent); the flow ring, taken by its
    /// reader, is left to the next agent.
    pub fn repin_maps(&mut self, dir: &std::path::Path) -> Result<()> {
        for name in names::ALL {
            let path = dir.join(name);
            let Some(map) = self.bpf.map(name) else {
                continue;
            };
            if !path.exists() {
                map.pin(&path)
                    .with_context(|| format!("pinning {name} again"))?;
            }
        }
        Ok(())
    }

    /// A TC program, loaded into the kernel (verified) on first use.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        self.verify(name)?;
        let prog: &mut SchedClassifier = self
            .bpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        Ok(prog)
    }

    /// An XDP program, loaded on first use.
    pub fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        self.verify(name)?;
        let prog: &mut Xdp = self
            .bpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        Ok(prog)
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.bpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the object"))
    }

    pub fn set_node(&mut self, cfg: NodeConfig) -> Result<()> {
        self.array(registry::NODE_CONFIG)?.set(0, cfg, 0)?;
        Ok(())
    }

    pub fn node(&mut self) -> Result<NodeConfig> {
        Ok(self.array(registry::NODE_CONFIG)?.get(&0, 0)?)
    }

    pub fn routes_map(&mut self) -> Result<LpmTrie<&mut MapData, u32, RouteTarget>> {
        self.lpm_trie(registry::ROUTES)
    }

    /// LOCAL_PODS, to read. Pods come and go with [`Self::add_pod`] and
    /// [`Self::remove_pod`], which keep POD_SLOTS in step.
    pub fn pods_map(&mut self) -> Result<HashMap<&mut MapData, u32, LocalPod>> {
        self.hash(registry::LOCAL_PODS)
    }

    fn pod_slots(&mut self) -> Result<Array<&mut MapData, PodSlot>> {
        self.array(registry::POD_SLOTS)
    }

    /// Registers a pod (`ip` in key form), or moves it to another veth:
    /// LOCAL_PODS, then its veth's POD_SLOTS slot, which from then on
    /// answers the anti-spoofing check.
    pub fn add_pod(&mut self, ip: u32, pod: LocalPod) -> Result<()> {
        if let Ok(old) = self.pods_map()?.get(&ip, 0) {
            self.clear_slot(ip, old.ifindex)?;
        }
        self.pods_map()?.insert(ip, pod, 0)?;
        self.write_slot(ip, pod.ifindex)
    }

    /// Makes the slot of `ifindex` vouch for the pod `ip` behind it.
    fn write_slot(&mut self, ip: u32, ifindex: u32) -> Result<()> {
        let slot = PodSlot { ifindex, ip };
        self.pod_slots()?.set(pod_slot(ifindex), slot, 0)?;
        Ok(())
    }

    /// Forgets a pod: its slot first, so that no slot vouches for a pod
    /// LOCAL_PODS no longer has. Forgetting an unknown pod is no error.
    pub fn remove_pod(&mut self, ip: u32) -> Result<()> {
        let Ok(pod) = self.pods_map()?.get(&ip, 0) else {
            return Ok(());
        };
        self.clear_slot(ip, pod.ifindex)?;
        self.pods_map()?.remove(&ip)?;
        Ok(())
    }

    /// Empties the slot of `ifindex` if it holds this pod (a veth sharing
    /// the slot may hold it instead).
    fn clear_slot(&mut self, ip: u32, ifindex: u32) -> Result<()> {
        let mut slots = self.pod_slots()?;
        let at = pod_slot(ifindex);
        if slots.get(&at, 0)? == (PodSlot { ifindex, ip }) {
            slots.set(at, PodSlot::default(), 0)?;
        }
        Ok(())
    }

    /// Writes every LOCAL_PODS pod's slot (a copy made from another
    /// agent's pins starts with LOCAL_PODS alone).
    pub fn refill_pod_slots(&mut self) -> Result<()> {
        let pods: Vec<(u32, LocalPod)> = self.pods_map()?.iter().collect::<Result<_, _>>()?;
        for (ip, pod) in pods {
            self.write_slot(ip, pod.ifindex)?;
        }
        Ok(())
    }

    pub fn counters(&mut self) -> Result<Counters> {
        Counters::read(self)
    }
}
