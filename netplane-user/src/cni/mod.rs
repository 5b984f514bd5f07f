//! netplane-cni: a CNI 1.0.0 plugin (ADD, DEL, CHECK, VERSION), run by the
//! container runtime in the node's network namespace. It creates the pod's
//! veth, gives it the next free address of the node's pod CIDR from a
//! host-local style store, sets the gateway route, and registers the pod for
//! the node's agent.
//!
//! Network configuration (stdin):
//! `{"cniVersion":"1.0.0","name":"netplane","type":"netplane-cni",
//!   "cluster":"/path/cluster.toml","node":"node-0"}`
mod netlink;
pub mod registry;
use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::json;

use self::registry::{self as pods, PodRecord};
use crate::{
    config::cluster::{Cluster, pod_gateway},
    sys,
};

pub const CNI_VERSION: &str = "1.0.0";
pub const SUPPORTED_VERSIONS: [&str; 2] = ["0.4.0", "1.0.0"];

/// The spec's well-known error codes, plus netplane's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// The node's pod CIDR has max pods addresses given out.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// CHECK found the pod not as ADD left it.
    pub const CHECK_FAILED: u32 = 101;
}

/// A CNI error: printed as the spec's JSON on stdout, exit code 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({ "cniVersion": CNI_VERSION, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

fn io(msg: &str) -> impl FnOnce(anyhow::Error) -> CniError + '_ {
    move |e| CniError::new(code::IO_FAILURE, msg, format!("{e:#}"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The cluster file; absent: the embedded default. Not read when
    /// `podCidr` is given.
    pub cluster: Option<PathBuf>,
    /// This node's name.
    pub node: String,
    /// The node's pod CIDR, as the agent writes it into the conflist when
    /// the nodes come from the Kubernetes API (kubenet's kubelet passes its
    /// podCIDR the same way): the plugin then needs no cluster file.
    pub pod_cidr: Option<Ipv4Net>,
    /// Pods per node (with `podCidr`; default AKS kubenet's 110).
    pub max_pods: Option<u32>,
}

impl NetConf {
    /// The node facts a pod's networking needs: from the conflist itself,
    /// or from the cluster file.
    fn pod_net(&self) -> Result<PodNet, CniError> {
        if let Some(pod_cidr) = self.pod_cidr {
            return Ok(PodNet {
                node: self.node.clone(),
                pod_cidr,
                max_pods: self
                    .max_pods
                    .unwrap_or(netplane_common::limits::AKS_KUBENET_MAX_PODS),
            });
        }
        let cluster = Cluster::load(self.cluster.as_deref()).map_err(|e| {
            CniError::new(code::INVALID_CONFIG, "invalid cluster file", e.to_string())
        })?;
        let node = cluster.node(&self.node).ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("node {} is not in the cluster file", self.node),
                "",
            )
        })?;
        Ok(PodNet {
            node: self.node.clone(),
            pod_cidr: node.pod_cidr,
            max_pods: cluster.network.max_pods,
        })
    }
}

/// The conflist an agent writes for kubelet once it knows its node's pod
/// CIDR (`--cni-conf-dir`): kubelet then runs netplane-cni for each pod.
pub fn conflist(node: &str, pod_cidr: Ipv4Net, max_pods: u32) -> serde_json::Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": "netplane",
        "plugins": [{
            "type": "netplane-cni",
            "node": node,
            "podCidr": pod_cidr.to_string(),
            "maxPods": max_pods,
        }],
    })
}

/// Its file name: first in kubelet's lexical order.
pub const CONFLIST_FILE: &str = "10-netplane.conflist";

/// The CNI_* environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS, e.g. "K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=default".
    pub args: String,
}

impl Env {
    pub fn from_process() -> Env {
        let get = |k: &str| std::env::var(k).unwrap_or_default();
        Env {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
        }
    }

    fn pod_name(&self) -> String {
        self.args
            .split(';')
            .find_map(|kv| kv.strip_prefix("K8S_POD_NAME="))
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.container_id)
            .to_string()
    }

    fn require(&self, names: &[&str]) -> Result<(), CniError> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| match *n {
                "CNI_CONTAINERID" => self.container_id.is_empty(),
                "CNI_NETNS" => self.netns.is_empty(),
                "CNI_IFNAME" => self.ifname.is_empty(),
                _ => false,
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                code::INVALID_ENV,
                format!("missing {}", missing.join(", ")),
                "",
            ))
        }
    }
}

/// What a call asks for, decoded and checked before anything is touched
/// (what the fuzz target `cni_call` drives with arbitrary input).
pub enum Call {
    Version,
    Add(NetConf, PodNet),
    Del(PodNet),
    Check(PodNet),
}

/// Decodes and checks one call: its command, its configuration and the
/// node facts it names. Touches nothing.
pub fn decide(env: &Env, stdin: &str) -> Result<Call, CniError> {
    if env.command == "VERSION" {
        return Ok(Call::Version);
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let pod = conf.pod_net()?;
    match env.command.as_str() {
        "ADD" => Ok(Call::Add(conf, pod)),
        "DEL" => Ok(Call::Del(pod)),
        "CHECK" => Ok(Call::Check(pod)),
        "" => Err(CniError::new(code::INVALID_ENV, "missing CNI_COMMAND", "")),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other}"),
            "",
        )),
    }
}

/// Runs one CNI command; returns the JSON to print on success.
pub fn run(env: &Env, stdin: &str) -> Result<Option<serde_json::Value>, CniError> {
    match decide(env, stdin)? {
        Call::Version => Ok(Some(
            json!({ "cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS }),
        )),
        Call::Add(conf, pod) => add(env, &pod, &conf).map(Some),
        Call::Del(pod) => del(env, &pod).map(|_| None),
        Call::Check(pod) => check(env, &pod).map(|_| None),
    }
}

/// The node facts a pod's networking needs.
pub struct PodNet {
    pub node: String,
    pub pod_cidr: Ipv4Net,
    pub max_pods: u32,
}

/// The host side of a pod's veth: stable per (container, ifname), at most
/// 15 characters.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!("np{:08x}", veth_hash(container_id, ifname))
}

/// The host side's MAC, set when the pair is made: locally administered,
/// stable per (container, ifname). Set, not random: udev's
/// MACAddressPolicy=persistent (systemd's default .link) replaces a random
/// MAC on a new veth after the pod has already learned its gateway's, and
/// the node's stack then drops the pod's packets to the node as another
/// host's (found on the `vm k8s` cluster; decisions.md §50).
pub fn host_veth_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let h = veth_hash(container_id, ifname).to_be_bytes();
    [0x0a, 0x6e, h[0], h[1], h[2], h[3]]
}

/// FNV-1a of (container, ifname): a short stable hash, not security.
fn veth_hash(container_id: &str, ifname: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

fn add(env: &Env, pod: &PodNet, conf: &NetConf) -> Result<serde_json::Value, CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    if !Path::new(&env.netns).exists() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS {} does not exist", env.netns),
            "",
        ));
    }
    let ip = ipam::allocate(
        &pod.node,
        pod.pod_cidr,
        pod.max_pods,
        &env.container_id,
        &env.ifname,
    )?;
    let host = host_veth_name(&env.container_id, &env.ifname);
    let result = plumb(env, pod, ip, &host);
    if result.is_err() {
        // Leave nothing behind: the runtime may not call DEL after a failed
        // ADD (plumb removes a pair it made; a link of that name it did not
        // make is not ours to remove).
        let _ = ipam::release(&pod.node, &env.container_id, &env.ifname);
    }
    let (host_mac, pod_mac) = result?;
    let gateway = pod_gateway(pod.pod_cidr);
    Ok(json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            { "name": host, "mac": host_mac },
            { "name": env.ifname, "mac": pod_mac, "sandbox": env.netns },
        ],
        "ips": [{ "address": format!("{ip}/{}", pod.pod_cidr.prefix_len()), "gateway": gateway.to_string(), "interface": 1 }],
        "routes": [{ "dst": "0.0.0.0/0", "gw": gateway.to_string() }],
        "dns": {},
    }))
}

/// veth pair, address and route in the pod, registry record. Returns the
/// host and pod MACs.
fn plumb(env: &Env, pod: &PodNet, ip: Ipv4Addr, host: &str) -> Result<(String, String), CniError> {
    let made = netlink::plumb(&netlink::PodLink {
        host,
        host_mac: host_veth_mac(&env.container_id, &env.ifname),
        ifname: &env.ifname,
        pod_netns: &env.netns,
        addr: ip,
        prefix: pod.pod_cidr.prefix_len(),
        gateway: pod_gateway(pod.pod_cidr),
    })
    .map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            "configuring the pod's network",
            e.to_string(),
        )
    })?;
    let (host_mac, pod_mac) = (made.host_mac, made.pod_mac);
    let registered = pods::register(&PodRecord {
        container_id: env.container_id.clone(),
        name: env.pod_name(),
        node: pod.node.clone(),
        ip,
        netns: env.netns.clone(),
        host_ifname: host.to_string(),
        pod_mac: pod_mac.clone(),
    });
    if registered.is_err() {
        let _ = netlink::unplumb(host); // the pair this call made
    }
    registered.map_err(io("registering the pod"))?;
    Ok((host_mac, pod_mac))
}

fn del(env: &Env, pod: &PodNet) -> Result<(), CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_IFNAME"])?;
    let host = host_veth_name(&env.container_id, &env.ifname);
    // Deleting the host side removes the pair; already gone is fine.
    netlink::unplumb(&host)
        .map_err(|e| CniError::new(code::IO_FAILURE, "removing the pod's veth", e.to_string()))?;
    pods::unregister(&pod.node, &env.container_id).map_err(io("unregistering the pod"))?;
    ipam::release(&pod.node, &env.container_id, &env.ifname)
}

fn check(env: &Env, pod: &PodNet) -> Result<(), CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    let fail = |m: String| CniError::new(code::CHECK_FAILED, m, "");
    let ip = ipam::allocated(&pod.node, &env.container_id, &env.ifname)
        .ok_or_else(|| fail(format!("no address allocated to {}", env.container_id)))?;
    let host = host_veth_name(&env.container_id, &env.ifname);
    sys::interface(&host).map_err(|_| fail(format!("host veth {host} is missing")))?;
    let held = netlink::pod_addresses(&env.netns, &env.ifname)
        .map_err(|e| fail(format!("{} in {}: {e}", env.ifname, env.netns)))?;
    if !held.contains(&ip) {
        return Err(fail(format!(
            "{} in {} does not hold {ip}",
            env.ifname, env.netns
        )));
    }
    if pods::lookup(&pod.node, &env.container_id).is_none_or(|r| r.ip != ip) {
        return Err(fail(format!(
            "{} is not registered for the agent",
            env.container_id
        )));
    }
    Ok(())
}

/// Prints the outcome as the spec asks and returns the exit code.
pub fn respond(result: Result<Option<serde_json::Value>, CniError>) -> i32 {
    let mut out = std::io::stdout().lock();
    match result {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json());
            1
        }
    }
}

/// Host-local style address store: one file per address holding the
/// container ID and interface, under the node's state directory, changed
/// only under an exclusive lock.
pub mod ipam {
    use std::{fs, net::Ipv4Addr, path::PathBuf};

    use ipnet::Ipv4Net;
    use nix::fcntl::{Flock, FlockArg};

    use super::{CniError, code};
    use crate::paths;

    fn dir(node: &str) -> PathBuf {
        paths::node_dir(node).join("ipam")
    }

    fn lock(node: &str) -> Result<Flock<fs::File>, CniError> {
        let d = dir(node);
        let io =
            |e: std::io::Error| CniError::new(code::IO_FAILURE, "address store", e.to_string());
        fs::create_dir_all(&d).map_err(io)?;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(d.join("lock"))
            .map_err(io)?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| {
            CniError::new(code::IO_FAILURE, "locking the address store", e.to_string())
        })
    }

    fn owner(container_id: &str, ifname: &str) -> String {
        format!("{container_id}\n{ifname}\n")
    }

    /// (address, owner) of every allocation.
    fn entries(node: &str) -> Vec<(Ipv4Addr, String)> {
        let Ok(rd) = fs::read_dir(dir(node)) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                Some((ip, fs::read_to_string(e.path()).ok()?))
            })
            .collect()
    }

    pub fn allocated(node: &str, container_id: &str, ifname: &str) -> Option<Ipv4Addr> {
        let me = owner(container_id, ifname);
        entries(node)
            .into_iter()
            .find(|(_, o)| *o == me)
            .map(|(ip, _)| ip)
    }

    /// The lowest free address from .2 (.1 is the gateway), at most
    /// `max_pods` in use; the same address again for the same container.
    pub fn allocate(
        node: &str,
        cidr: Ipv4Net,
        max_pods: u32,
        container_id: &str,
        ifname: &str,
    ) -> Result<Ipv4Addr, CniError> {
        let _guard = lock(node)?;
        if let Some(ip) = allocated(node, container_id, ifname) {
            return Ok(ip);
        }
        let used: Vec<Ipv4Addr> = entries(node).into_iter().map(|(ip, _)| ip).collect();
        if used.len() as u32 >= max_pods {
            return Err(CniError::new(
                code::POOL_EXHAUSTED,
                format!("node {node} has max pods ({max_pods}) addresses in use"),
                format!("pod CIDR {cidr}"),
            ));
        }
        let first = u32::from(cidr.network()) + 2;
        let last = u32::from(cidr.broadcast()) - 1;
        let ip = (first..=last)
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| {
                CniError::new(code::POOL_EXHAUSTED, format!("pod CIDR {cidr} is full"), "")
            })?;
        // Written aside and renamed into place, so that a failed write (a
        // full disk) or a crash never leaves an address taken by nobody.
        let tmp = dir(node).join(format!(".{ip}.tmp"));
        let written = fs::write(&tmp, owner(container_id, ifname))
            .and_then(|()| fs::rename(&tmp, dir(node).join(ip.to_string())));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(CniError::new(
                code::IO_FAILURE,
                "address store",
                e.to_string(),
            ));
        }
        Ok(ip)
    }

    /// Frees the container's address; nothing allocated is fine.
    pub fn release(node: &str, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let _guard = lock(node)?;
        if let Some(ip) = allocated(node, container_id, ifname) {
            fs::remove_file(dir(node).join(ip.to_string()))
                .map_err(|e| CniError::new(code::IO_FAILURE, "address store", e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("pod-0-0", "eth0");
        assert_eq!(a, host_veth_name("pod-0-0", "eth0"));
        assert!(a.len() <= 15);
        assert_ne!(a, host_veth_name("pod-0-1", "eth0"));
        assert_ne!(a, host_veth_name("pod-0-0", "eth1"));
    }

    #[test]
    fn veth_macs_are_stable_local_unicast_and_distinct() {
        let a = host_veth_mac("pod-0-0", "eth0");
        assert_eq!(a, host_veth_mac("pod-0-0", "eth0"));
        assert_eq!(a[0] & 0b11, 0b10, "locally administered, unicast");
        assert_ne!(a, host_veth_mac("pod-0-1", "eth0"));
    }

    #[test]
    fn version_needs_no_config() {
        let env = Env {
            command: "VERSION".into(),
            ..Env::default()
        };
        let v = run(&env, "").unwrap().unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn bad_config_and_env_get_spec_codes() {
        let env = Env {
            command: "ADD".into(),
            ..Env::default()
        };
        assert_eq!(run(&env, "{").unwrap_err().code, code::DECODE_FAILURE);
        let conf = r#"{"cniVersion":"9.9.9","name":"n","type":"netplane-cni","node":"node-0"}"#;
        assert_eq!(
            run(&env, conf).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"netplane-cni","node":"nope"}"#;
        assert_eq!(run(&env, conf).unwrap_err().code, code::INVALID_CONFIG);
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"netplane-cni","node":"node-0"}"#;
        let err = run(&env, conf).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert!(
            err.msg.contains("CNI_CONTAINERID") && err.msg.contains("CNI_NETNS"),
            "{}",
            err.msg
        );
    }
}
