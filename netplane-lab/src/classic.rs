//! The lab with kubenet's classic data path, for comparison and teaching:
//! pods attached by the real CNI `bridge` plugin with `host-local` IPAM
//! (Debian's containernetworking-plugins, run as kubelet runs them) on a
//! `cbr0` bridge, kernel routes between nodes (the UDR), iptables
//! MASQUERADE for traffic leaving the cluster pod CIDR, and the load
//! balancer's SNAT with iptables. No netplane program is loaded.
//!
//! Also the plain routed lab (`--datapath routed`), the benchmarks' floor
//! for the kernel: the same routes, pods on veth pairs with /32 host routes
//! (the CNI `ptp` plugin), and no netfilter rule and no translation.
use anyhow::{Result, bail};
use serde_json::json;

use netplane::{
    config::cluster::{Cluster, NodePlan, OutboundType, pod_gateway},
    paths,
    sys::{self, ip_in},
};

use crate::topology::{DataPathKind, Host, NETNS_PREFIX, outside_ip};

/// Where Debian's containernetworking-plugins installs the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

fn iptables(ns: &str, rule: &[&str]) -> Result<()> {
    let mut argv = vec!["ip", "netns", "exec", ns, "iptables", "-w"];
    argv.extend_from_slice(rule);
    sys::run(&argv).map(|_| ())
}

/// A node's kernel routes to every other node's pod CIDR (the route table).
pub fn node_routes(cluster: &Cluster, node: &NodePlan) -> Result<()> {
    let ns = format!("{NETNS_PREFIX}{}", node.name);
    for other in cluster.nodes().iter().filter(|n| n.name != node.name) {
        ip_in(
            &ns,
            &[
                "route",
                "add",
                &other.pod_cidr.to_string(),
                "via",
                &other.ip.to_string(),
            ],
        )?;
    }
    Ok(())
}

/// kubenet's masquerade rule on a node.
pub fn node_masquerade(cluster: &Cluster, node: &NodePlan) -> Result<()> {
    let ns = format!("{NETNS_PREFIX}{}", node.name);
    let cluster_cidr = cluster.network.pod_cidr.to_string();
    iptables(
        &ns,
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &node.pod_cidr.to_string(),
            "!",
            "-d",
            &cluster_cidr,
            "-j",
            "MASQUERADE",
        ],
    )
}

/// The load balancer: kernel forwarding, and per node an SNAT rule to the
/// first frontend IP within the node's port block (TCP and UDP; ICMP to the
/// frontend IP).
pub fn load_balancer(cluster: &Cluster, lb: &Host) -> Result<()> {
    let ns = lb.netns.as_str();
    sys::sysctl_in(ns, &["net.ipv4.ip_forward=1"])?;
    let plan = netplane::config::outbound::lb_plan(cluster, None);
    let k = plan.slots_per_backend as usize;
    for (i, (node_ip, _)) in plan.backends.iter().enumerate() {
        let slot = &plan.slots[i * k];
        let src = node_ip.to_string();
        // TCP and UDP into the node's port block; ICMP to the address.
        let to_ports = format!("{}:{}-{}", slot.nat_ip, slot.port_lo, slot.port_hi);
        let to_ip = slot.nat_ip.to_string();
        for (proto, to) in [("tcp", &to_ports), ("udp", &to_ports), ("icmp", &to_ip)] {
            let rule = [
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "eth1",
                "-s",
                &src,
                "-p",
                proto,
            ];
            iptables(
                ns,
                &[&rule[..], &["-j", "SNAT", "--to-source", to]].concat(),
            )?;
        }
    }
    Ok(())
}

/// An appliance: kernel forwarding and MASQUERADE to its own address.
pub fn appliance(host: &Host) -> Result<()> {
    sys::sysctl_in(&host.netns, &["net.ipv4.ip_forward=1"])?;
    iptables(
        &host.netns,
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "eth1",
            "-j",
            "MASQUERADE",
        ],
    )
}

pub fn outbound(cluster: &Cluster, host: &Host) -> Result<()> {
    match cluster.outbound.kind {
        OutboundType::LoadBalancer => load_balancer(cluster, host),
        OutboundType::UserDefinedRouting => appliance(host),
    }
}

/// The plain routed lab's load balancer: kernel forwarding, a route to
/// each node's pod CIDR via the node (as Azure's UDR would), and `inet`
/// routing the cluster pod CIDR back to it. Nothing is translated.
pub fn routed_outbound(cluster: &Cluster, host: &Host) -> Result<()> {
    sys::sysctl_in(&host.netns, &["net.ipv4.ip_forward=1"])?;
    for node in cluster.nodes() {
        let (cidr, via) = (node.pod_cidr.to_string(), node.ip.to_string());
        ip_in(&host.netns, &["route", "add", &cidr, "via", &via])?;
    }
    ip_in(
        &format!("{NETNS_PREFIX}inet"),
        &[
            "route",
            "add",
            &cluster.network.pod_cidr.to_string(),
            "via",
            &outside_ip(host).to_string(),
        ],
    )?;
    Ok(())
}

/// Attaches a pod as kubelet would, with host-local IPAM over the node's
/// pod CIDR: kubenet's CNI `bridge` plugin (cbr0, gateway .1), or for the
/// routed lab the `ptp` plugin (a veth pair and a /32 host route, no
/// bridge).
pub fn attach_pod(pod: &Host, node: &NodePlan, datapath: DataPathKind) -> Result<()> {
    let node_name = pod.node.as_deref().expect("pods have nodes");
    let routed = datapath == DataPathKind::Routed;
    let plugin = std::path::Path::new(CNI_BIN_DIR).join(if routed { "ptp" } else { "bridge" });
    if !plugin.exists() {
        bail!(
            "{} missing: install Debian's containernetworking-plugins (cargo xtask setup does)",
            plugin.display()
        );
    }
    let ipam = json!({
        "type": "host-local",
        "subnet": node.pod_cidr.to_string(),
        "gateway": pod_gateway(node.pod_cidr).to_string(),
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": paths::node_dir(node_name).join("classic-ipam").display().to_string(),
    });
    let conf = if routed {
        json!({
            "cniVersion": "1.0.0",
            "name": "routed",
            "type": "ptp",
            "ipMasq": false,
            "ipam": ipam,
        })
    } else {
        json!({
            "cniVersion": "1.0.0",
            "name": "kubenet",
            "type": "bridge",
            "bridge": "cbr0",
            "isGateway": true,
            "hairpinMode": true, // kubelet's promiscuous-bridge hairpin mode
            "ipMasq": false,
            "ipam": ipam,
        })
    };
    super::cni::cni_add(&plugin, pod, &conf)
}
