//! netplane's lab: the cluster of the cluster file, built in network
//! namespaces on this machine, with its control plane, its web page (`ui`)
//! and the tools its traffic uses (`tools`). It is built on the production
//! crate (`netplane`), which never depends on it. A VNet segment (np-vnet) joins the nodes; each node runs an
//! agent; pods hang off their node by veth pairs.
//!
//! Safety: everything lives in `np-` namespaces the lab creates; nothing is
//! added to the root namespace; `down` removes it all and is idempotent.
//!
//! - `topology`: hosts, roles, addresses, the state file (what everyone
//!   imports);
//! - `build`: `lab up` for each data path; `classic`: the kubenet-classic
//!   and routed comparison labs; `cni`: pods attached through CNI plugins;
//! - `agents`: the agents' processes; `page`: the web page's process;
//!   `trace`: a packet's walk.
mod agents;
mod build;
pub mod classic;
mod cni;
pub mod control_plane;
pub mod kube_services;
mod page;
pub mod tools;
mod topology;
pub mod trace;
pub mod ui;

use anyhow::Result;
use serde::Serialize;

use netplane::sys::{self};

pub(crate) use self::agents::is_our_agent;
pub use self::{
    agents::{
        AGENT_READY_TIMEOUT, AGENT_STOP_TIMEOUT, metrics_url, pid_alive, reload, restart_agent,
    },
    build::{down, up},
    cni::{cni_add, cni_plugin, run_cni},
    topology::*,
};

/// `lab status --json` shape: hosts plus agents and the VNet.
#[derive(Debug, Serialize)]
pub struct Status {
    pub up: bool,
    pub hosts: Vec<HostStatus>,
    pub agents: Vec<AgentStatusLine>,
    pub vnet: Option<Vnet>,
    /// With `--source kubernetes`: the admin kubeconfig (the API server is
    /// reachable from the lab's namespaces: `ip netns exec np-control-plane
    /// kubectl --kubeconfig PATH get nodes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesStatus>,
    /// The web page's URL, while `lab up --ui`'s page runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ui: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct KubernetesStatus {
    pub kubeconfig: String,
    pub agent_kubeconfig: String,
    pub server: String,
    pub netns: String,
    pub apiserver_pid: u32,
    pub apiserver_running: bool,
    pub etcd_pid: u32,
}

#[derive(Debug, Serialize)]
pub struct HostStatus {
    #[serde(flatten)]
    pub host: Host,
    pub netns_present: bool,
    /// The agent's metrics URL (nodes and the outbound host), for `lab
    /// exec HOST -- curl URL`.
    pub metrics: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AgentStatusLine {
    pub node: String,
    pub pid: u32,
    pub running: bool,
    pub log: String,
}

pub fn status() -> Result<Status> {
    let Some(state) = load_state()? else {
        return Ok(Status {
            up: false,
            hosts: Vec::new(),
            agents: Vec::new(),
            vnet: None,
            kubernetes: None,
            ui: None,
        });
    };
    Ok(Status {
        up: true,
        hosts: state
            .hosts
            .iter()
            .map(|h| HostStatus {
                host: h.clone(),
                netns_present: sys::netns_exists(&h.netns),
                metrics: metrics_url(h, state.datapath),
            })
            .collect(),
        agents: state
            .agents
            .iter()
            .map(|a| AgentStatusLine {
                node: a.node.clone(),
                pid: a.pid,
                running: pid_alive(a.pid) && is_our_agent(a.pid, &a.node),
                log: a.log.clone(),
            })
            .collect(),
        ui: state
            .ui
            .as_ref()
            .filter(|p| page::running(p))
            .map(|p| p.url.clone()),
        vnet: Some(state.vnet),
        kubernetes: state.kubernetes.map(|cp| KubernetesStatus {
            apiserver_running: pid_alive(cp.apiserver_pid),
            kubeconfig: cp.kubeconfig,
            agent_kubeconfig: cp.agent_kubeconfig,
            server: cp.server,
            netns: control_plane::netns(),
            apiserver_pid: cp.apiserver_pid,
            etcd_pid: cp.etcd_pid,
        }),
    })
}

/// The cluster the page and the lab's views show: what the running agents
/// published (with the Kubernetes API's nodes when that is their source),
/// else the lab's cluster file (the classic lab runs no agents), else the
/// embedded default.
pub fn running_cluster() -> Result<netplane::config::Cluster> {
    if let Some(c) = netplane::inspect::published_cluster() {
        return Ok(c);
    }
    let lab_file = load_state()
        .ok()
        .flatten()
        .map(|s| std::path::PathBuf::from(s.cluster_file));
    Ok(netplane::config::Cluster::load(lab_file.as_deref())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netplane::config::Cluster;

    #[test]
    fn the_default_lab_has_two_nodes_with_two_pods_each_a_load_balancer_and_inet() {
        let hosts = plan(&Cluster::load(None).unwrap());
        let names: Vec<(&str, Role, String, Option<&str>)> = hosts
            .iter()
            .map(|h| (h.name.as_str(), h.role, h.ip.to_string(), h.node.as_deref()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("node-0", Role::Node, "10.224.0.4".into(), None),
                ("pod-0-0", Role::Pod, "10.244.0.2".into(), Some("node-0")),
                ("pod-0-1", Role::Pod, "10.244.0.3".into(), Some("node-0")),
                ("node-1", Role::Node, "10.224.0.5".into(), None),
                ("pod-1-0", Role::Pod, "10.244.1.2".into(), Some("node-1")),
                ("pod-1-1", Role::Pod, "10.244.1.3".into(), Some("node-1")),
                ("lb", Role::Lb, "10.224.0.1".into(), None),
                ("inet", Role::Inet, "203.0.113.10".into(), None),
            ]
        );
        assert!(hosts.iter().all(|h| h.netns.starts_with(NETNS_PREFIX)));
    }

    #[test]
    fn host_json_has_the_documented_shape() {
        let h = &plan(&Cluster::load(None).unwrap())[1];
        let v = serde_json::to_value(HostStatus {
            host: h.clone(),
            netns_present: true,
            metrics: metrics_url(h, DataPathKind::Netplane),
        })
        .unwrap();
        assert_eq!(v["name"], "pod-0-0");
        assert_eq!(v["role"], "pod");
        assert_eq!(v["netns"], "np-pod-0-0");
        assert_eq!(v["ip"], "10.244.0.2");
        assert_eq!(v["node"], "node-0");
        let n = serde_json::to_value(&plan(&Cluster::load(None).unwrap())[0]).unwrap();
        assert!(n["node"].is_null());
    }
}
