//! The SNAT engine's userspace half, configuration: the node masquerade's
//! slot, and the load balancer's (or appliance's) blocks, written to the
//! maps. Collection is in `collector`, reading in `nat_view`.
use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::{Array, HashMap};
use netplane_common::{
    nat::{FlowKey, NatConfig, PortBitmap, SnatSlot},
    registry,
};

use crate::{
    config::{
        Cluster,
        outbound::{LbPlan, gateway},
    },
    datapath::{Datapath, key, make_port_bitmaps, replace_entries},
};

/// Node role: the masquerade uses the node IP over the configured range.
pub fn configure_node(dp: &mut Datapath, c: &Cluster, node_ip: Ipv4Addr) -> Result<()> {
    let subnet = c.network.node_subnet;
    set_config(
        dp,
        NatConfig {
            gateway_ip: key(gateway(c)),
            subnet: key(subnet.network()),
            subnet_mask: key(subnet.netmask()),
            vnet: key(c.network.vnet_cidr.network()),
            vnet_mask: key(c.network.vnet_cidr.netmask()),
            slots_per_backend: 1,
            ..Default::default()
        },
    )?;
    let [lo, hi] = c.outbound.port_range;
    set_masquerade_slot(
        dp,
        SnatSlot {
            nat_ip: key(node_ip),
            port_lo: lo,
            port_hi: hi,
        },
    )
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
            vnet: key(c.network.vnet_cidr.network()),
            vnet_mask: key(c.network.vnet_cidr.netmask()),
            slots_per_backend: plan.slots_per_backend,
            // Azure's load balancer; an appliance is a Linux-style NAT.
            udp_cone: u32::from(plan.udp_cone),
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
        let mut fe: HashMap<_, u32, u32> = dp.hash(registry::LB_FRONTENDS)?;
        for f in &plan.frontends {
            fe.insert(key(*f), 1, 0)?;
        }
    }
    let mut be: HashMap<_, u32, u32> = dp.hash(registry::LB_BACKENDS)?;
    let want: Vec<(u32, u32)> = plan
        .backends
        .iter()
        .map(|(ip, first)| (key(*ip), *first))
        .collect();
    replace_entries(&mut be, &want)
}

fn set_config(dp: &mut Datapath, cfg: NatConfig) -> Result<()> {
    let mut a: Array<_, NatConfig> = dp.array(registry::NAT_CONFIG)?;
    a.set(0, cfg, 0)?;
    Ok(())
}

fn set_slots(dp: &mut Datapath, slots: &[SnatSlot]) -> Result<()> {
    let mut a: Array<_, SnatSlot> = dp.array(registry::SNAT_SLOTS)?;
    for (i, s) in slots.iter().enumerate() {
        a.set(i as u32, *s, 0)?;
    }
    Ok(())
}

/// The node's one slot, and its SNAT IP's port bitmaps (the node searches
/// them; the load balancer walks its blocks).
pub fn set_masquerade_slot(dp: &mut Datapath, slot: SnatSlot) -> Result<()> {
    set_slots(dp, &[slot])?;
    make_port_bitmaps(dp, &[slot])
}

/// Clears the bits of ports no flow holds any more (the collector's
/// cleared owned-port marks). A bit a claim sets between this read and
/// write is lost: a stale zero, which the search repairs.
pub fn release_ports(dp: &mut Datapath, ports: &[FlowKey]) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    let mut map: HashMap<_, u64, PortBitmap> = dp.hash(registry::PORT_BITMAPS)?;
    let mut keys: Vec<u64> = ports
        .iter()
        .map(|k| PortBitmap::key(k.dst_ip, k.proto))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let Ok(mut b) = map.get(&key, 0) else {
            continue; // no bitmap for this IP
        };
        for k in ports {
            if PortBitmap::key(k.dst_ip, k.proto) == key {
                b.clear(k.dst_port);
            }
        }
        map.insert(key, b, 0)?;
    }
    Ok(())
}
