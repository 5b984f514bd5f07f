//! The SNAT engine's userspace half: configuring the two roles (node
//! masquerade, load balancer or appliance), collecting expired flows with
//! exact port accounting, and reading translations and port use.
use std::{collections::HashSet, net::Ipv4Addr, path::Path as FsPath, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use netplane_common::nat::{
    FlowKey, NatConfig, NatEntry, NatReverse, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SnatSlot, names,
    owned_key, state,
};
use serde::Serialize;

use crate::{
    config::{Cluster, OutboundType},
    datapath::{Datapath, addr, key},
};

/// Idle timeouts by state and protocol.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp_established: Duration,
    pub tcp_transitory: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Timeouts {
    /// The node's conntrack timeouts.
    pub fn node(c: &Cluster) -> Timeouts {
        let t = &c.timeouts;
        Timeouts {
            tcp_established: Duration::from_secs(t.tcp_established_s.into()),
            tcp_transitory: Duration::from_secs(t.tcp_transitory_s.into()),
            udp: Duration::from_secs(t.udp_s.into()),
            icmp: Duration::from_secs(t.icmp_s.into()),
        }
    }

    /// The load balancer's: established TCP idles out after the outbound
    /// idle timeout (Azure's rule), the rest as on the nodes.
    pub fn load_balancer(c: &Cluster) -> Timeouts {
        Timeouts {
            tcp_established: Duration::from_secs(u64::from(c.outbound.idle_timeout_minutes) * 60),
            ..Timeouts::node(c)
        }
    }

    pub fn of(&self, proto: u8, st: u8) -> Duration {
        match (proto, st) {
            (PROTO_TCP, state::ESTABLISHED) => self.tcp_established,
            (PROTO_TCP, _) => self.tcp_transitory,
            (PROTO_UDP, _) => self.udp,
            _ => self.icmp,
        }
    }
}

/// Addresses of the lab's (and a real deployment's) outbound path.
pub fn gateway(c: &Cluster) -> Ipv4Addr {
    match c.outbound.kind {
        OutboundType::LoadBalancer => {
            Ipv4Addr::from(u32::from(c.network.node_subnet.network()) + 1)
        }
        OutboundType::UserDefinedRouting => c.outbound.appliance_ip.expect("validated"),
    }
}

/// Node role: the masquerade uses the node IP over the configured range.
pub fn configure_node(dp: &mut Datapath, c: &Cluster, node_ip: Ipv4Addr) -> Result<()> {
    let subnet = c.network.node_subnet;
    set_config(
        dp,
        NatConfig {
            gateway_ip: key(gateway(c)),
            subnet: key(subnet.network()),
            subnet_mask: key(subnet.netmask()),
            slots_per_backend: 1,
            ..Default::default()
        },
    )?;
    let [lo, hi] = c.outbound.port_range;
    set_slots(
        dp,
        &[SnatSlot {
            nat_ip: key(node_ip),
            port_lo: lo,
            port_hi: hi,
        }],
    )
}

/// The load balancer's (or appliance's) port layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbPlan {
    /// Translated-to addresses.
    pub frontends: Vec<Ipv4Addr>,
    /// Slot index = backend index x frontends + frontend index.
    pub slots: Vec<LbSlot>,
    /// Backend node IP -> its first slot.
    pub backends: Vec<(Ipv4Addr, u32)>,
    pub slots_per_backend: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbSlot {
    pub nat_ip: Ipv4Addr,
    pub port_lo: u16,
    pub port_hi: u16,
    /// The node whose block this is; None: shared (appliance).
    pub node: Option<String>,
}

/// First port of the load balancer's blocks.
pub const LB_FIRST_PORT: u16 = netplane_common::limits::SNAT_PORT_MIN;

/// Azure's layout: each node a fixed, disjoint block of `ports_per_node`
/// on every frontend IP. An appliance instead shares its whole range among
/// all nodes, on its own address.
pub fn lb_plan(c: &Cluster, appliance_outside: Option<Ipv4Addr>) -> LbPlan {
    let nodes = c.nodes();
    if let Some(own) = appliance_outside {
        let [lo, hi] = c.outbound.port_range;
        return LbPlan {
            frontends: vec![own],
            slots: vec![LbSlot {
                nat_ip: own,
                port_lo: lo,
                port_hi: hi,
                node: None,
            }],
            backends: nodes.iter().map(|n| (n.ip, 0)).collect(),
            slots_per_backend: 1,
        };
    }
    let ports = c.ports_per_node().expect("validated") as u16;
    let k = c.outbound.frontend_ips.len() as u32;
    let mut slots = Vec::new();
    let mut backends = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        backends.push((n.ip, i as u32 * k));
        let lo = LB_FIRST_PORT + i as u16 * ports;
        for f in &c.outbound.frontend_ips {
            slots.push(LbSlot {
                nat_ip: *f,
                port_lo: lo,
                port_hi: lo + ports - 1,
                node: Some(n.name.clone()),
            });
        }
    }
    LbPlan {
        frontends: c.outbound.frontend_ips.clone(),
        slots,
        backends,
        slots_per_backend: k,
    }
}

/// Load balancer role: its frontends, backends, slots and interfaces.
pub fn configure_lb(
    dp: &mut Datapath,
    c: &Cluster,
    plan: &LbPlan,
    inside_ifindex: u32,
    outside_ifindex: u32,
) -> Result<()> {
    let subnet = c.network.node_subnet;
    set_config(
        dp,
        NatConfig {
            subnet: key(subnet.network()),
            subnet_mask: key(subnet.netmask()),
            slots_per_backend: plan.slots_per_backend,
            outside_ifindex,
            outside_gateway: 0,
            inside_ifindex,
            ..Default::default()
        },
    )?;
    let slots: Vec<SnatSlot> = plan
        .slots
        .iter()
        .map(|s| SnatSlot {
            nat_ip: key(s.nat_ip),
            port_lo: s.port_lo,
            port_hi: s.port_hi,
        })
        .collect();
    set_slots(dp, &slots)?;
    {
        let mut fe: HashMap<_, u32, u32> = HashMap::try_from(dp.map(names::LB_FRONTENDS)?)?;
        for f in &plan.frontends {
            fe.insert(key(*f), 1, 0)?;
        }
    }
    let mut be: HashMap<_, u32, u32> = HashMap::try_from(dp.map(names::LB_BACKENDS)?)?;
    let want: Vec<u32> = plan.backends.iter().map(|(ip, _)| key(*ip)).collect();
    let stale: Vec<u32> = be
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains(k))
        .collect();
    for k in stale {
        be.remove(&k)?;
    }
    for (ip, first) in &plan.backends {
        be.insert(key(*ip), *first, 0)?;
    }
    Ok(())
}

fn set_config(dp: &mut Datapath, cfg: NatConfig) -> Result<()> {
    let mut a: Array<_, NatConfig> = Array::try_from(dp.map(names::NAT_CONFIG)?)?;
    a.set(0, cfg, 0)?;
    Ok(())
}

fn set_slots(dp: &mut Datapath, slots: &[SnatSlot]) -> Result<()> {
    let mut a: Array<_, SnatSlot> = Array::try_from(dp.map(names::SNAT_SLOTS)?)?;
    for (i, s) in slots.iter().enumerate() {
        a.set(i as u32, *s, 0)?;
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns: bpf_ktime_get_ns's clock.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The reply tuple of a translation.
pub fn reply_key(k: &FlowKey, e: &NatEntry) -> FlowKey {
    FlowKey::new(k.dst_ip, e.nat_ip, k.dst_port, e.nat_port, k.proto)
}

/// A flow idle past its timeout at `now_ns`.
pub fn expired_at(t: &Timeouts, now_ns: u64, k: &FlowKey, e: &NatEntry) -> bool {
    now_ns.saturating_sub(e.last_seen_ns) > t.of(k.proto, e.state).as_nanos() as u64
}

/// One whole collection pass: the flows `expired` picks are removed and
/// their ports returned exactly (SNAT_FREES, which only this collector
/// writes); owned-port marks no flow holds any more are cleared. Returns
/// the removed flows. The agent runs the same pass a piece per tick
/// (`Collector`).
pub fn collect_where(
    dp: &mut Datapath,
    mut expired: impl FnMut(&FlowKey, &NatEntry) -> bool,
) -> Result<Vec<(FlowKey, NatEntry)>> {
    let mut c = Collector::default();
    c.start();
    let mut all = Vec::new();
    while !c.idle() {
        all.extend(c.step(dp, usize::MAX, &mut expired)?);
    }
    Ok(all)
}

/// Collection a piece at a time, so that a large table costs the agent a
/// little CPU on each tick rather than a burst the pods' traffic feels
/// (the kernel's conntrack collects in steps the same way). A pass walks
/// NAT_OUT removing expired flows, then, if any expired, NAT_IN to learn
/// which translated ports are held and PORT_OWNED to clear the rest.
#[derive(Default)]
pub struct Collector {
    phase: Phase,
    walk: crate::datapath::HashWalk,
    expired_this_pass: bool,
    held: HashSet<FlowKey>,
}

#[derive(Default, PartialEq, Eq, Debug)]
enum Phase {
    #[default]
    Idle,
    Expire,
    LearnHeldPorts,
    ClearStaleMarks,
}

impl Collector {
    /// No pass in progress.
    pub fn idle(&self) -> bool {
        self.phase == Phase::Idle
    }

    /// Starts a pass (if none is in progress).
    pub fn start(&mut self) {
        if self.idle() {
            self.enter(Phase::Expire);
            self.expired_this_pass = false;
        }
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.walk = Default::default();
    }

    /// Goes on with the pass over about `budget` entries; returns the flows
    /// this step removed.
    pub fn step(
        &mut self,
        dp: &mut Datapath,
        budget: usize,
        expired: &mut impl FnMut(&FlowKey, &NatEntry) -> bool,
    ) -> Result<Vec<(FlowKey, NatEntry)>> {
        let mut removed = Vec::new();
        let mut left = budget;
        while left > 0 && !self.idle() {
            let before = left;
            match self.phase {
                Phase::Idle => {}
                Phase::Expire => {
                    let chunk: Vec<(FlowKey, NatEntry)> =
                        self.walk.next(dp.hash_map_data(names::NAT_OUT)?, left)?;
                    left = left.saturating_sub(chunk.len().max(1));
                    let gone: Vec<_> = chunk.into_iter().filter(|(k, e)| expired(k, e)).collect();
                    remove_flows(dp, &gone)?;
                    self.expired_this_pass |= !gone.is_empty();
                    removed.extend(gone);
                    if self.walk.done() {
                        if self.expired_this_pass {
                            self.enter(Phase::LearnHeldPorts);
                        } else {
                            self.enter(Phase::Idle);
                        }
                    }
                }
                Phase::LearnHeldPorts => {
                    let chunk: Vec<(FlowKey, NatReverse)> =
                        self.walk.next(dp.hash_map_data(names::NAT_IN)?, left)?;
                    left = left.saturating_sub(chunk.len().max(1));
                    self.held.extend(
                        chunk
                            .into_iter()
                            .map(|(k, _)| owned_key(k.dst_ip, k.dst_port, k.proto)),
                    );
                    if self.walk.done() {
                        self.enter(Phase::ClearStaleMarks);
                    }
                }
                Phase::ClearStaleMarks => {
                    let owned = dp.hash_map_data(names::PORT_OWNED)?;
                    let chunk: Vec<(FlowKey, u32)> = self.walk.next(owned, left)?;
                    left = left.saturating_sub(chunk.len().max(1));
                    let stale: Vec<FlowKey> = chunk
                        .into_iter()
                        .map(|(k, _)| k)
                        .filter(|k| !self.held.contains(k))
                        .collect();
                    crate::datapath::delete_batch(owned, &stale)?;
                    if self.walk.done() {
                        self.held = HashSet::new();
                        self.enter(Phase::Idle);
                    }
                }
            }
            debug_assert!(left < before || self.idle());
        }
        Ok(removed)
    }
}

/// Removes translations and returns their ports: counted as freed only
/// where this removal took the claim (NAT_IN) away.
fn remove_flows(dp: &mut Datapath, flows: &[(FlowKey, NatEntry)]) -> Result<()> {
    if flows.is_empty() {
        return Ok(());
    }
    let keys: Vec<FlowKey> = flows.iter().map(|(k, _)| *k).collect();
    crate::datapath::delete_batch(dp.hash_map_data(names::NAT_OUT)?, &keys)?;
    let replies: Vec<FlowKey> = flows.iter().map(|(k, e)| reply_key(k, e)).collect();
    let took = crate::datapath::delete_batch(dp.hash_map_data(names::NAT_IN)?, &replies)?;
    let mut freed: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for ((_, e), took) in flows.iter().zip(took) {
        if took {
            *freed.entry(e.slot).or_default() += 1;
        }
    }
    let mut frees: Array<_, u64> = Array::try_from(dp.map(names::SNAT_FREES)?)?;
    for (slot, n) in freed {
        let v = frees.get(&slot, 0)?;
        frees.set(slot, v + n, 0)?;
    }
    Ok(())
}

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

fn open_pinned(pins: &FsPath, name: &str) -> Result<MapData> {
    let path = pins.join(name);
    MapData::from_pin(&path)
        .with_context(|| format!("opening {} (is the agent running?)", path.display()))
}

/// Live translations of a running agent, oldest first.
pub fn flows(pins: &FsPath, t: &Timeouts) -> Result<Vec<Flow>> {
    let out = open_pinned(pins, names::NAT_OUT)?;
    let now = monotonic_ns();
    let mut v: Vec<(u64, Flow)> = crate::datapath::dump_hash::<FlowKey, NatEntry>(&out)?
        .into_iter()
        .map(|(k, e)| {
            let idle = now.saturating_sub(e.last_seen_ns);
            let limit = t.of(k.proto, e.state).as_nanos() as u64;
            let flow = Flow {
                proto: proto_name(k.proto),
                original: endpoint(k.src_ip, k.src_port, k.proto),
                remote: if k.proto == PROTO_ICMP {
                    addr(k.dst_ip).to_string()
                } else {
                    endpoint(k.dst_ip, k.dst_port, k.proto)
                },
                translated: endpoint(e.nat_ip, e.nat_port, k.proto),
                state: match e.state {
                    state::NEW => "new",
                    state::ESTABLISHED => "established",
                    _ => "closing",
                },
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
    /// Live translations holding a port of this slot (for the accounting
    /// check: must equal `allocated`).
    pub live_entries: u64,
}

/// Per-slot port use of a running agent, from its pins.
pub fn slot_use(pins: &FsPath) -> Result<Vec<SlotUse>> {
    slot_use_counting(pins, true)
}

/// As `slot_use` from the counters alone (live_entries left 0): no walk
/// of the translations.
fn slot_use_counting(pins: &FsPath, count_live: bool) -> Result<Vec<SlotUse>> {
    let slots_map = Map::Array(open_pinned(pins, names::SNAT_SLOTS)?);
    let slots: Array<_, SnatSlot> = Array::try_from(&slots_map)?;
    let allocs_map = Map::PerCpuArray(open_pinned(pins, names::SNAT_ALLOCS)?);
    let allocs: PerCpuArray<_, u64> = PerCpuArray::try_from(&allocs_map)?;
    let fails_map = Map::PerCpuArray(open_pinned(pins, names::SNAT_FAILS)?);
    let fails: PerCpuArray<_, u64> = PerCpuArray::try_from(&fails_map)?;
    let frees_map = Map::Array(open_pinned(pins, names::SNAT_FREES)?);
    let frees: Array<_, u64> = Array::try_from(&frees_map)?;
    let mut live: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    let flows = if count_live {
        crate::datapath::dump_hash::<FlowKey, NatEntry>(&open_pinned(pins, names::NAT_OUT)?)?
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
        v.push(SlotUse {
            slot: i,
            snat_ip: addr(s.nat_ip),
            ports: format!("{}-{}", s.port_lo, s.port_hi),
            capacity: s.size(),
            allocated: a.saturating_sub(f),
            failures: fails.get(&i, 0)?.iter().sum(),
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
pub fn record_peaks(agent: &str, pins: &FsPath) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancer_blocks_are_fixed_and_disjoint() {
        let mut c = Cluster::load(None).unwrap();
        c.outbound.frontend_ips = vec![
            "198.51.100.10".parse().unwrap(),
            "198.51.100.11".parse().unwrap(),
        ];
        c.outbound.allocated_outbound_ports = Some(64);
        let p = lb_plan(&c, None);
        assert_eq!(p.slots_per_backend, 2);
        assert_eq!(
            p.backends,
            vec![
                ("10.224.0.4".parse().unwrap(), 0),
                ("10.224.0.5".parse().unwrap(), 2)
            ]
        );
        let ranges: Vec<(String, u16, u16)> = p
            .slots
            .iter()
            .map(|s| (s.nat_ip.to_string(), s.port_lo, s.port_hi))
            .collect();
        assert_eq!(
            ranges,
            vec![
                ("198.51.100.10".into(), 1024, 1087),
                ("198.51.100.11".into(), 1024, 1087),
                ("198.51.100.10".into(), 1088, 1151),
                ("198.51.100.11".into(), 1088, 1151),
            ]
        );
    }

    #[test]
    fn default_table_for_the_lab() {
        let c = Cluster::load(None).unwrap();
        let p = lb_plan(&c, None);
        assert_eq!((p.slots[0].port_lo, p.slots[0].port_hi), (1024, 2047)); // 2 nodes: 1024 each
    }

    #[test]
    fn timeouts_by_state() {
        let c = Cluster::load(None).unwrap();
        let t = Timeouts::load_balancer(&c);
        assert_eq!(
            t.of(PROTO_TCP, state::ESTABLISHED),
            Duration::from_secs(30 * 60)
        );
        assert_eq!(t.of(PROTO_TCP, state::NEW), Duration::from_secs(60));
        assert_eq!(t.of(PROTO_UDP, state::ESTABLISHED), Duration::from_secs(30));
    }
}
