//! The lab with kubenet's classic data path, for comparison and teaching:
//! pods attached by the real CNI `bridge` plugin with `host-local` IPAM
//! (Debian's containernetworking-plugins, run as kubelet runs them) on a
//! `cbr0` bridge, kernel routes between nodes (the UDR), iptables
//! MASQUERADE for traffic leaving the cluster pod CIDR, and the load
//! balancer's SNAT with iptables. No netplane program is loaded.
use anyhow::{Result, bail};
use serde_json::json;

use crate::{
    cluster::{Cluster, NodePlan, OutboundType, pod_gateway},
    lab::{Host, NETNS_PREFIX},
    paths,
    sys::{self, ip_in},
};

/// Where Debian's containernetworking-plugins installs the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

fn iptables(ns: &str, rule: &[&str]) -> Result<()> {
    let mut argv = vec!["ip", "netns", "exec", ns, "iptables", "-w"];
    argv.extend_from_slice(rule);
    sys::run(&argv).map(|_| ())
}

/// A node: kernel routes to every other node's pod CIDR (the route
/// table), and kubenet's masquerade rule.
pub fn node(cluster: &Cluster, node: &NodePlan) -> Result<()> {
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
    let plan = crate::snat::lb_plan(cluster, None);
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

/// Attaches a pod with the CNI `bridge` plugin (cbr0, gateway .1,
/// host-local IPAM over the node's pod CIDR), run in the node's namespace
/// as kubelet runs it.
pub fn attach_pod(pod: &Host, node: &NodePlan) -> Result<()> {
    let node_name = pod.node.as_deref().expect("pods have nodes");
    let plugin = std::path::Path::new(CNI_BIN_DIR).join("bridge");
    if !plugin.exists() {
        bail!(
            "{} missing: install Debian's containernetworking-plugins (cargo xtask setup does)",
            plugin.display()
        );
    }
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "kubenet",
        "type": "bridge",
        "bridge": "cbr0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "subnet": node.pod_cidr.to_string(),
            "gateway": pod_gateway(node.pod_cidr).to_string(),
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": paths::node_dir(node_name).join("classic-ipam").display().to_string(),
        },
    });
    crate::lab::cni_add(&plugin, pod, &conf)
}
