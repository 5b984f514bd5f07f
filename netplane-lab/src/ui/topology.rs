//! The cluster as the web page draws it: the VNet, each node with its pod
//! CIDR, pods and agent, the outbound load balancer (or appliance) with
//! its frontend IPs, and `inet`.
use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::Ipv4Net;
use serde::Serialize;

use netplane::{
    agent::{applied, lb_name},
    cni::registry,
    config::{Cluster, OutboundType, outbound::lb_plan},
    paths,
};

use crate::Role;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Topology {
    /// The lab is up (else: a node of a real cluster, from its pins).
    pub lab: bool,
    /// "netplane", "kubenet-classic" or "routed".
    pub datapath: String,
    pub vnet_cidr: Ipv4Net,
    pub node_subnet: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub nodes: Vec<NodeView>,
    pub outbound: OutboundView,
    /// The internet host of the lab.
    pub inet: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub pods: Vec<PodView>,
    pub agent: AgentView,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AgentView {
    /// The agent's process is alive (lab), or its pins exist (elsewhere).
    pub running: bool,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutboundView {
    /// "lb" or "appliance": the agent's name too.
    pub name: String,
    /// AKS's outboundType.
    pub outbound_type: OutboundType,
    /// Its address on the VNet (the next hop of egress).
    pub ip: Option<Ipv4Addr>,
    /// Addresses pods' egress is translated to.
    pub frontends: Vec<Ipv4Addr>,
    pub agent: AgentView,
}

/// The running cluster of `cluster` (the cluster as the agents applied
/// it, see `crate::running_cluster`), with the lab's state when it is up.
pub fn topology(cluster: &Cluster) -> Result<Topology> {
    let state = crate::load_state()?;
    let agents = crate::status()?.agents;
    let agent = |name: &str| -> AgentView {
        match agents.iter().find(|a| a.node == name) {
            Some(a) => AgentView {
                running: a.running,
                pid: Some(a.pid),
            },
            None => AgentView {
                running: state.is_none() && paths::pins(name).exists(),
                pid: None,
            },
        }
    };
    let host = |role: Role| {
        state
            .as_ref()
            .and_then(|s| s.hosts.iter().find(|h| h.role == role))
            .cloned()
    };
    let lb = lb_name(cluster);
    let nodes = cluster
        .nodes()
        .into_iter()
        .map(|n| NodeView {
            pods: pods_of(&n.name, state.as_ref()),
            agent: agent(&n.name),
            name: n.name,
            ip: n.ip,
            pod_cidr: n.pod_cidr,
        })
        .collect();
    let outbound_ip = host(Role::Lb).or_else(|| host(Role::Appliance));
    // The frontends as the outbound agent published them; the lab's plan
    // when it has not (the classic lab has no agents).
    let frontends = applied::read(lb)
        .ok()
        .and_then(|a| a.outbound)
        .unwrap_or_else(|| {
            let appliance = (lb == "appliance").then_some(crate::APPLIANCE_OUTSIDE_IP);
            lb_plan(cluster, appliance)
        })
        .frontends;
    Ok(Topology {
        lab: state.is_some(),
        datapath: state.as_ref().map_or_else(
            || "netplane".into(),
            |s| {
                serde_json::to_value(s.datapath)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            },
        ),
        vnet_cidr: cluster.network.vnet_cidr,
        node_subnet: cluster.network.node_subnet,
        service_cidr: cluster.network.service_cidr,
        nodes,
        outbound: OutboundView {
            name: lb.into(),
            outbound_type: cluster.outbound.kind,
            ip: outbound_ip.map(|h| h.ip),
            frontends,
            agent: agent(lb),
        },
        inet: host(Role::Inet).map(|h| h.ip),
    })
}

/// A node's pods: its CNI registry (pods come and go through the plugin),
/// and the lab's own pods when the registry does not hold them.
fn pods_of(node: &str, state: Option<&crate::LabState>) -> Vec<PodView> {
    let mut pods: Vec<PodView> = registry::registered(node)
        .unwrap_or_default()
        .into_iter()
        .map(|p| PodView {
            name: p.name,
            ip: p.ip,
        })
        .collect();
    for h in state.iter().flat_map(|s| &s.hosts) {
        if h.role == Role::Pod
            && h.node.as_deref() == Some(node)
            && !pods.iter().any(|p| p.ip == h.ip)
        {
            pods.push(PodView {
                name: h.name.clone(),
                ip: h.ip,
            });
        }
    }
    pods.sort_by_key(|p| p.ip);
    pods
}
