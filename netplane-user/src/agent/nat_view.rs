//! What the SNAT engine holds now, read from a running agent's pins: live
//! translations (`netplane nat`), port use per slot (`netplane ports`,
//! metrics) and the peaks the agent samples.
use std::net::Ipv4Addr;

use anyhow::Result;
use netplane_common::{
    nat::{FlowKey, NatEntry, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    registry,
};
use serde::Serialize;

use super::collector::monotonic_ns;
use crate::{
    config::outbound::IdleTimers,
    datapath::{addr, pins::Pins},
};

/// A live translation, for `netplane nat`.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub proto: &'static str,
    pub original: String,
    pub remote: String,
    pub translated: String,
    pub state: &'static str,
    pub age_s: u64,
    pub idle_left_s: u64,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "?",
    }
}

fn endpoint(ip: u32, port: u16, proto: u8) -> String {
    if proto == PROTO_ICMP {
        format!("{} id {port}", addr(ip))
    } else {
        format!("{}:{port}", addr(ip))
    }
}

/// Live translations of a running agent, oldest first.
pub fn flows(pins: &Pins, t: &IdleTimers) -> Result<Vec<Flow>> {
    let out = pins.data(registry::NAT_OUT)?;
    let now = monotonic_ns();
    let mut v: Vec<(u64, Flow)> = crate::datapath::dump_hash::<FlowKey, NatEntry>(&out)?
        .into_iter()
        .map(|(k, e)| {
            let idle = now.saturating_sub(e.last_seen_ns);
            let limit = t.of(k.proto, &e).as_nanos() as u64;
            let flow = Flow {
                proto: proto_name(k.proto),
                original: endpoint(k.src_ip, k.src_port, k.proto),
                remote: if k.proto == PROTO_ICMP {
                    addr(k.dst_ip).to_string()
                } else if k.proto == PROTO_UDP && k.dst_port == 0 {
                    // A UDP cone translation: any port of that remote.
                    format!("{}:*", addr(k.dst_ip))
                } else {
                    endpoint(k.dst_ip, k.dst_port, k.proto)
                },
                translated: endpoint(e.nat_ip, e.nat_port, k.proto),
                state: e.phase().name(),
                age_s: now.saturating_sub(e.created_ns) / 1_000_000_000,
                idle_left_s: limit.saturating_sub(idle) / 1_000_000_000,
            };
            (e.created_ns, flow)
        })
        .collect();
    v.sort_by_key(|(c, _)| *c);
    Ok(v.into_iter().map(|(_, f)| f).collect())
}

/// Port use of one slot.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotUse {
    pub slot: u32,
    pub snat_ip: Ipv4Addr,
    pub ports: String,
    pub capacity: u32,
    pub allocated: u64,
    pub failures: u64,
    /// Ports taken back from unreplied flows to make room in a full table.
    pub evicted: u64,
    /// Live translations holding a port of this slot (for the accounting
    /// check: must equal `allocated`).
    pub live_entries: u64,
}

/// Per-slot port use of a running agent, from its pins.
pub fn slot_use(pins: &Pins) -> Result<Vec<SlotUse>> {
    slot_use_counting(pins, true)
}

/// As `slot_use` from the counters alone (live_entries left 0): no walk
/// of the translations.
fn slot_use_counting(pins: &Pins, count_live: bool) -> Result<Vec<SlotUse>> {
    let slots = pins.array(registry::SNAT_SLOTS)?;
    let allocs = pins.per_cpu_array(registry::SNAT_ALLOCS)?;
    let fails = pins.per_cpu_array(registry::SNAT_FAILS)?;
    let frees = pins.array(registry::SNAT_FREES)?;
    let evicts = pins.per_cpu_array(registry::SNAT_EVICTS)?;
    let mut live: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    let flows = if count_live {
        crate::datapath::dump_hash::<FlowKey, NatEntry>(&pins.data(registry::NAT_OUT)?)?
    } else {
        Vec::new()
    };
    for (_, e) in flows {
        *live.entry(e.slot).or_default() += 1;
    }
    let mut v = Vec::new();
    for i in 0..slots.len() {
        let s = slots.get(&i, 0)?;
        if s.nat_ip == 0 {
            continue;
        }
        let a: u64 = allocs.get(&i, 0)?.iter().sum();
        let f: u64 = frees.get(&i, 0)?;
        let evicted: u64 = evicts.get(&i, 0)?.iter().sum();
        v.push(SlotUse {
            slot: i,
            snat_ip: addr(s.nat_ip),
            ports: format!("{}-{}", s.port_lo, s.port_hi),
            capacity: s.size(),
            allocated: a.saturating_sub(f).saturating_sub(evicted),
            failures: fails.get(&i, 0)?.iter().sum(),
            evicted,
            live_entries: live.get(&i).copied().unwrap_or(0),
        });
    }
    Ok(v)
}

/// Where an agent keeps the peak allocation of each slot (sampled at every
/// collection pass; `ports` shows the larger of it and the live count).
fn peaks_path(agent: &str) -> std::path::PathBuf {
    crate::paths::node_dir(agent).join("port-peaks.json")
}

pub fn read_peaks(agent: &str) -> std::collections::HashMap<u32, u64> {
    std::fs::read(peaks_path(agent))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Samples allocated ports per slot into the agent's peaks file.
pub fn record_peaks(agent: &str, pins: &Pins) -> Result<()> {
    let mut peaks = read_peaks(agent);
    let mut changed = false;
    for s in slot_use_counting(pins, false)? {
        let p = peaks.entry(s.slot).or_default();
        if s.allocated > *p {
            *p = s.allocated;
            changed = true;
        }
    }
    if changed {
        std::fs::write(peaks_path(agent), serde_json::to_vec(&peaks)?)?;
    }
    Ok(())
}
