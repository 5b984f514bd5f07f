//! The lab's topology: its hosts, their roles and addresses, and the state
//! file that records what was built. Every other part of the lab imports
//! these types.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use netplane::{
    config::{Cluster, OutboundType},
    paths,
    sys::{self, ip_in, sysctl_in},
};

/// Every lab namespace starts with this.
pub const NETNS_PREFIX: &str = "np-";

pub const VNET_NETNS: &str = "np-vnet";

/// The VNet's L2 segment (Azure's fabric); see docs/decisions.md.
pub const VNET_BRIDGE: &str = "vnet0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Node,
    Pod,
    Lb,
    Inet,
    Appliance,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub role: Role,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Owning node, for pods.
    pub node: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentProc {
    pub node: String,
    pub pid: u32,
    pub log: String,
}

/// What `up` built; `status`, `exec` and `down` read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub cluster_file: String,
    /// Agents run with --uplink-xdp.
    #[serde(default)]
    pub uplink_xdp: bool,
    #[serde(default)]
    pub datapath: DataPathKind,
    /// Agents run with this --tc-attach (None: they probe).
    #[serde(default)]
    pub tc_attach: Option<netplane::datapath::hooks::TcMode>,
    pub vnet: Vnet,
    pub hosts: Vec<Host>,
    pub agents: Vec<AgentProc>,
    /// The Kubernetes control plane, with `--source kubernetes`.
    #[serde(default)]
    pub kubernetes: Option<ControlPlane>,
    /// The web page, with `--ui`.
    #[serde(default)]
    pub ui: Option<PageProc>,
}

/// The Kubernetes control plane `up --source kubernetes` started
/// (control_plane.rs), kept in the lab's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlPlane {
    pub ip: Ipv4Addr,
    pub server: String,
    /// Admin (system:masters) kubeconfig, for the user and the tests.
    pub kubeconfig: String,
    /// The agents' kubeconfig: the ServiceAccount's token.
    pub agent_kubeconfig: String,
    pub etcd_pid: u32,
    pub apiserver_pid: u32,
    /// The API server's command line, for `lab apiserver start`.
    pub apiserver_args: Vec<String>,
    /// The DNS pod's dnsmasq (0: none).
    #[serde(default)]
    pub dns_pid: u32,
    /// kube-proxy on each node of the kubenet-classic lab.
    #[serde(default)]
    pub kube_proxy_pids: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vnet {
    pub netns: String,
    pub bridge: String,
    pub gateway: Ipv4Addr,
}

/// Choices for `lab up` beyond the cluster file.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Agents also attach the XDP early-drop program to node uplinks.
    pub uplink_xdp: bool,
    pub datapath: DataPathKind,
    /// Run a Kubernetes control plane and have the agents take the nodes
    /// from its API.
    pub kubernetes: bool,
    /// Start the web page (`netplane ui`) listening here.
    pub ui: Option<std::net::SocketAddr>,
    /// The agents' `--tc-attach` (None: they probe the kernel).
    pub tc_attach: Option<netplane::datapath::hooks::TcMode>,
}

/// Which data path the lab's nodes and load balancer run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DataPathKind {
    /// netplane's eBPF programs and agents.
    #[default]
    Netplane,
    /// kubenet's classic path: CNI bridge plugin, cbr0, kernel routes,
    /// iptables (for comparison and teaching).
    KubenetClassic,
    /// Plain kernel routing and no netfilter rule anywhere (CNI ptp plugin,
    /// kernel routes, no translation): the benchmarks' floor for the kernel.
    Routed,
}

/// The hosts the lab builds for a cluster, in creation order.
pub fn plan(cluster: &Cluster) -> Vec<Host> {
    let mut hosts = Vec::new();
    for (n, node) in cluster.nodes().iter().enumerate() {
        hosts.push(Host {
            name: node.name.clone(),
            role: Role::Node,
            netns: format!("{NETNS_PREFIX}{}", node.name),
            ip: node.ip,
            node: None,
        });
        // Pod IPs from .2 up: .1 is the gateway, as with kubenet's cbr0.
        let first = u32::from(node.pod_cidr.network()) + 2;
        for p in 0..cluster.lab.pods_per_node {
            let name = format!("pod-{n}-{p}");
            hosts.push(Host {
                netns: format!("{NETNS_PREFIX}{name}"),
                name,
                role: Role::Pod,
                ip: Ipv4Addr::from(first + p),
                node: Some(node.name.clone()),
            });
        }
    }
    let (name, role) = match cluster.outbound.kind {
        OutboundType::LoadBalancer => ("lb", Role::Lb),
        OutboundType::UserDefinedRouting => ("appliance", Role::Appliance),
    };
    hosts.push(Host {
        name: name.into(),
        role,
        netns: format!("{NETNS_PREFIX}{name}"),
        ip: netplane::config::outbound::gateway(cluster),
        node: None,
    });
    hosts.push(Host {
        name: "inet".into(),
        role: Role::Inet,
        netns: format!("{NETNS_PREFIX}inet"),
        ip: INET_IP,
        node: None,
    });
    hosts
}

/// The lab's internet: a /24 of documentation addresses between the
/// outbound host and the `inet` server.
pub const INTERNET_NET: &str = "203.0.113.0/24";

pub const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// The load balancer's (or appliance's) address on that link; the
/// appliance translates to it.
pub const LB_OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

pub const APPLIANCE_OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

/// The load balancer's (or appliance's) address on the link to `inet`.
pub fn outside_ip(host: &Host) -> Ipv4Addr {
    if host.role == Role::Lb {
        LB_OUTSIDE_IP
    } else {
        APPLIANCE_OUTSIDE_IP
    }
}

/// A host by name or IP.
pub fn find_host<'a>(state: &'a LabState, name_or_ip: &str) -> Option<&'a Host> {
    state
        .hosts
        .iter()
        .find(|h| h.name == name_or_ip || h.ip.to_string() == name_or_ip)
}

pub(super) fn state_path() -> PathBuf {
    paths::lab_dir().join("state.json")
}

pub fn load_state() -> Result<Option<LabState>> {
    match std::fs::read(state_path()) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).context("reading lab state")?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn save_state(state: &LabState) -> Result<()> {
    std::fs::create_dir_all(paths::lab_dir())?;
    std::fs::write(state_path(), serde_json::to_vec_pretty(state)?)?;
    Ok(())
}

pub(super) fn lab_namespaces() -> Result<Vec<String>> {
    let out = sys::run(&["ip", "netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .map(str::to_string)
        .collect())
}

/// A lab namespace: IPv4 only, loopback up.
pub(super) fn new_netns(ns: &str) -> Result<()> {
    sys::run(&["ip", "netns", "add", ns])?;
    // IPv4 only: no IPv6 router solicitations counted as drops.
    sysctl_in(
        ns,
        &[
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// The web page's process (`lab up --ui`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageProc {
    pub pid: u32,
    pub url: String,
    pub log: String,
}
