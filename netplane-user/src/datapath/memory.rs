//! What a data path costs the kernel: each pinned map's `memlock` from its
//! fdinfo (the bytes the kernel charges for it, preallocated entries
//! included), and an agent's own resident memory.
use std::{
    collections::BTreeSet,
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{Context, Result};
use aya::{maps::MapInfo, programs::loaded_programs};
use netplane_common::maps::names;
use serde::Serialize;

use super::pins::Pins;

/// One map's size and the kernel memory it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapMemory {
    pub map: String,
    pub max_entries: u32,
    pub bytes: u64,
}

/// The kernel memory of one data path's maps, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelMemory {
    pub bytes: u64,
    pub maps: Vec<MapMemory>,
}

/// Reads every map of the data path pinned under `pins`: the pinned ones,
/// and those only its programs hold (found through the programs that use
/// a pinned one).
pub fn kernel_memory(pins: &Pins) -> Result<KernelMemory> {
    let pinned: BTreeSet<u32> = pins.map_ids()?;
    let mut ids = pinned.clone();
    for prog in loaded_programs().flatten() {
        if let Ok(Some(maps)) = prog.map_ids()
            && maps.iter().any(|id| pinned.contains(id))
        {
            ids.extend(maps);
        }
    }
    let mut out = KernelMemory::default();
    for id in ids {
        // A map can go between listing and reading (an agent stopping).
        let Ok(info) = MapInfo::from_id(id) else {
            continue;
        };
        let fd = info.fd().with_context(|| format!("map {id}"))?;
        let fdinfo = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let text = std::fs::read_to_string(&fdinfo).with_context(|| format!("reading {fdinfo}"))?;
        let bytes = field(&text, "memlock").with_context(|| format!("no memlock in {fdinfo}"))?;
        out.bytes += bytes;
        out.maps.push(MapMemory {
            map: full_name(info.name_as_str().unwrap_or("?")),
            max_entries: field(&text, "max_entries").unwrap_or(0) as u32,
            bytes,
        });
    }
    out.maps
        .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.map.cmp(&b.map)));
    Ok(out)
}

/// The kernel keeps 15 bytes of a map's name: the full name when a pinned
/// one starts so (the unpinned maps' names are all shorter).
fn full_name(kernel: &str) -> String {
    names::ALL
        .iter()
        .find(|n| n.len() > kernel.len() && n.starts_with(kernel))
        .map_or(kernel, |n| *n)
        .to_string()
}

/// A number after `name:` in an fdinfo or /proc status text.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// A process's resident memory in bytes (VmRSS), if it is running.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(field(&text, "VmRSS")? * 1024)
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn fields_are_read_by_exact_name() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nkey_size:\t16\nmax_entries:\t65536\nmemlock:\t7344128\n";
        assert_eq!(field(fdinfo, "memlock"), Some(7_344_128));
        assert_eq!(field(fdinfo, "max_entries"), Some(65_536));
        assert_eq!(field(fdinfo, "map_id"), None);
        assert_eq!(field("VmRSS:\t   10240 kB\n", "VmRSS"), Some(10_240));
    }
}
