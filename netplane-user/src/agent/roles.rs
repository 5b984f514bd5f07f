//! What differs between a node's agent and the load balancer's: how a
//! cluster file is applied, and what is reconciled on every tick.
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use netplane_common::{
    NodeConfig,
    nat::{FlowKey, NatEntry, PROTO_TCP, Phase},
};

use super::{
    reconcile::{Attached, reconcile_pods, reconcile_routes},
    snat,
};
use crate::{
    config::{
        Cluster, NodePlan,
        outbound::{IdleTimers, LbPlan, lb_plan},
    },
    datapath::{Datapath, hooks::Hooks, key},
};

/// What differs between the two kinds of agent: how they apply a cluster
/// file and what they reconcile on every tick.
pub trait Role {
    /// Applies (re-read) desired state; called at start and on reload.
    fn apply(&mut self, dp: &mut Datapath, cluster: &Cluster) -> Result<()>;
    /// Runs every RECONCILE_INTERVAL.
    fn tick(&mut self, dp: &mut Datapath, hooks: &Hooks) -> Result<()>;
    fn timeouts(&self, cluster: &Cluster) -> IdleTimers;
    /// The port layout it applies (the load balancer's or appliance's).
    fn outbound_plan(&self, _cluster: &Cluster) -> Option<LbPlan> {
        None
    }
    /// Translations the collector has just removed.
    fn expired(&mut self, _cluster: &Cluster, _flows: &[(FlowKey, NatEntry)]) -> Result<()> {
        Ok(())
    }
}

/// A node: routes from the cluster file, pods from the registry, the
/// masquerade.
pub struct NodeRole {
    pub name: String,
    pub uplink_ifindex: u32,
    pub attached: HashMap<String, Attached>,
}

impl Role for NodeRole {
    fn apply(&mut self, dp: &mut Datapath, cluster: &Cluster) -> Result<()> {
        let node = cluster
            .node(&self.name)
            .with_context(|| format!("node {} is not in the cluster file", self.name))?;
        set_node(dp, cluster, &node, self.uplink_ifindex)?;
        snat::configure_node(dp, cluster, node.ip)?;
        super::service_table::configure_node(dp, cluster, &node)?;
        reconcile_routes(dp, &cluster.nodes())
    }

    fn tick(&mut self, dp: &mut Datapath, hooks: &Hooks) -> Result<()> {
        reconcile_pods(dp, hooks, &self.name, &mut self.attached).map(|_| ())
    }

    fn timeouts(&self, cluster: &Cluster) -> IdleTimers {
        IdleTimers::node(cluster)
    }
}

/// The outbound load balancer, or with userDefinedRouting the appliance.
pub struct LbRole {
    pub inside_ifindex: u32,
    pub outside_ifindex: u32,
    /// The appliance's own outside address (it SNATs to it).
    pub appliance: Option<Ipv4Addr>,
}

impl Role for LbRole {
    fn outbound_plan(&self, cluster: &Cluster) -> Option<LbPlan> {
        Some(lb_plan(cluster, self.appliance))
    }

    fn apply(&mut self, dp: &mut Datapath, cluster: &Cluster) -> Result<()> {
        let plan = lb_plan(cluster, self.appliance);
        snat::configure_lb(
            dp,
            cluster,
            &plan,
            self.inside_ifindex,
            self.outside_ifindex,
        )
    }

    fn tick(&mut self, _dp: &mut Datapath, _hooks: &Hooks) -> Result<()> {
        Ok(())
    }

    fn timeouts(&self, cluster: &Cluster) -> IdleTimers {
        match self.appliance {
            Some(_) => IdleTimers::node(cluster),
            None => IdleTimers::load_balancer(cluster),
        }
    }

    /// TCP reset on idle: an established flow the load balancer forgot at
    /// its idle timeout (the other phases leave on their FIN or RST timers)
    /// gets an RST at both ends. Not an appliance's behaviour.
    fn expired(&mut self, cluster: &Cluster, flows: &[(FlowKey, NatEntry)]) -> Result<()> {
        if self.appliance.is_some() || !cluster.outbound.tcp_reset_on_idle {
            return Ok(());
        }
        super::reset::reset_both_ends(
            flows
                .iter()
                .filter(|(k, e)| k.proto == PROTO_TCP && e.phase() == Phase::Established),
        )
    }
}

fn set_node(
    dp: &mut Datapath,
    cluster: &Cluster,
    node: &NodePlan,
    uplink_ifindex: u32,
) -> Result<()> {
    dp.set_node(NodeConfig {
        node_ip: key(node.ip),
        uplink_ifindex,
        cluster_cidr: key(cluster.network.pod_cidr.network()),
        cluster_mask: key(cluster.network.pod_cidr.netmask()),
    })
}
