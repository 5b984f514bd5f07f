//! The SNAT engine's userspace half, configuration: the node masquerade's
//! slot, and the load balancer's (or appliance's) blocks, written to the
//! maps. Collection is in `collector`, reading in `nat_view`.
use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::{Array, HashMap};
use netplane_common::nat::{NatConfig, SnatSlot, names};

use crate::{
    config::{
        Cluster,
        outbound::{LbPlan, gateway},
    },
    datapath::{Datapath, key},
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
    set_slots(
        dp,
        &[SnatSlot {
            nat_ip: key(node_ip),
            port_lo: lo,
            port_hi: hi,
        }],
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
