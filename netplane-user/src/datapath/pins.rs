//! The one way userspace opens the data path's maps: by their entries in
//! `netplane_common::registry` (the name, and the kind, key and value as
//! types), from a running agent's pins (`Pins`) or a loaded object
//! (`Datapath`'s methods of the same names). Nothing else opens a map by a
//! string.
use std::{collections::BTreeSet, path::PathBuf};

use anyhow::{Context, Result};
use aya::{
    Pod,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapInfo, PerCpuArray},
};
use netplane_common::{
    maps::names,
    registry::{MapDef, kind},
};

use crate::paths;

/// One agent's pinned maps (paths::pins).
#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// The pins of the agent `agent` (a node's name, "lb" or "appliance").
    pub fn of(agent: &str) -> Self {
        Self::at(paths::pins(agent))
    }

    /// The pins in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The kernel's IDs of every pinned map of the registry (a map an
    /// agent does not pin is left out).
    pub fn map_ids(&self) -> Result<BTreeSet<u32>> {
        let mut ids = BTreeSet::new();
        for name in names::ALL {
            let path = self.dir.join(name);
            if path.exists() {
                let info = MapInfo::from_pin(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                ids.insert(info.id());
            }
        }
        Ok(ids)
    }

    /// The map's own handle: batch operations, its fdinfo.
    pub fn data<Kind, K, V>(&self, def: MapDef<Kind, K, V>) -> Result<MapData> {
        let path = self.dir.join(def.name);
        MapData::from_pin(&path)
            .with_context(|| format!("opening {} (is the agent running?)", path.display()))
    }

    pub fn hash<K: Pod, V: Pod>(
        &self,
        def: MapDef<kind::Hash, K, V>,
    ) -> Result<HashMap<MapData, K, V>> {
        Ok(HashMap::try_from(Map::HashMap(self.data(def)?))?)
    }

    pub fn lru_hash<K: Pod, V: Pod>(
        &self,
        def: MapDef<kind::LruHash, K, V>,
    ) -> Result<HashMap<MapData, K, V>> {
        Ok(HashMap::try_from(Map::LruHashMap(self.data(def)?))?)
    }

    pub fn array<V: Pod>(&self, def: MapDef<kind::Array, u32, V>) -> Result<Array<MapData, V>> {
        Ok(Array::try_from(Map::Array(self.data(def)?))?)
    }

    pub fn per_cpu_array<V: Pod>(
        &self,
        def: MapDef<kind::PerCpuArray, u32, V>,
    ) -> Result<PerCpuArray<MapData, V>> {
        Ok(PerCpuArray::try_from(Map::PerCpuArray(self.data(def)?))?)
    }

    pub fn lpm_trie<K: Pod, V: Pod>(
        &self,
        def: MapDef<kind::LpmTrie, K, V>,
    ) -> Result<LpmTrie<MapData, K, V>> {
        Ok(LpmTrie::try_from(Map::LpmTrie(self.data(def)?))?)
    }
}
