//! The lab: the cluster of the cluster file, built in network namespaces on
//! this machine. A VNet segment (np-vnet) joins the nodes; each node runs an
//! agent; pods hang off their node by veth pairs.
//!
//! Safety: everything lives in `np-` namespaces the lab creates; nothing is
//! added to the root namespace; `down` removes it all and is idempotent.
pub mod classic;
pub mod trace;
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Cluster, OutboundType},
    datapath, paths,
    sys::{self, ip_in, sysctl_in},
};

/// Every lab namespace starts with this.
pub const NETNS_PREFIX: &str = "np-";
pub const VNET_NETNS: &str = "np-vnet";
/// The VNet's L2 segment (Azure's fabric); see docs/decisions.md.
pub const VNET_BRIDGE: &str = "vnet0";
/// How long `up` waits for an agent to attach, and for pods to register.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `down` waits after SIGTERM before SIGKILL.
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

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
    pub vnet: Vnet,
    pub hosts: Vec<Host>,
    pub agents: Vec<AgentProc>,
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
        ip: crate::agent::snat::gateway(cluster),
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

/// What the lab needs of a cluster file beyond its validity.
fn lab_violations(cluster: &Cluster) -> Result<()> {
    let inside = cluster.network.node_subnet;
    if let Some(ip) = cluster.outbound.appliance_ip
        && !inside.contains(&ip)
    {
        bail!(
            "the lab puts the appliance on the node subnet {inside}: outbound.appliance_ip {ip} is outside it"
        );
    }
    for f in &cluster.outbound.frontend_ips {
        if [INET_IP, LB_OUTSIDE_IP, APPLIANCE_OUTSIDE_IP].contains(f) {
            bail!("frontend IP {f} is one of the lab's own addresses");
        }
    }
    Ok(())
}

fn state_path() -> PathBuf {
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

fn save_state(state: &LabState) -> Result<()> {
    std::fs::create_dir_all(paths::lab_dir())?;
    std::fs::write(state_path(), serde_json::to_vec_pretty(state)?)?;
    Ok(())
}

fn lab_namespaces() -> Result<Vec<String>> {
    let out = sys::run(&["ip", "netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .map(str::to_string)
        .collect())
}

/// Builds the lab. On any failure what was built is torn down again.
pub fn up(
    cluster_file: Option<&std::path::Path>,
    opts: &UpOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<LabState> {
    let cluster = Cluster::load(cluster_file)?;
    for w in cluster.warnings() {
        progress(&w);
    }
    if load_state()?.is_some() || !lab_namespaces()?.is_empty() {
        bail!("a lab is already up (or left over): run `netplane lab down` first");
    }
    match build(&cluster, opts, progress) {
        Ok(state) => Ok(state),
        Err(e) => {
            progress("failed; tearing down what was built");
            let _ = down(&mut |_| {});
            Err(e)
        }
    }
}

fn build(cluster: &Cluster, opts: &UpOptions, progress: &mut dyn FnMut(&str)) -> Result<LabState> {
    let hosts = plan(cluster);
    let nodes = cluster.nodes();
    std::fs::create_dir_all(paths::lab_dir())?;
    // The agents read the same file the lab was built from.
    let cluster_copy = paths::lab_dir().join("cluster.toml");
    std::fs::write(&cluster_copy, toml::to_string(cluster)?)?;
    lab_violations(cluster)?;
    let gateway = crate::agent::snat::gateway(cluster);
    let mut state = LabState {
        cluster_file: cluster_copy.display().to_string(),
        uplink_xdp: opts.uplink_xdp,
        datapath: opts.datapath,
        vnet: Vnet {
            netns: VNET_NETNS.into(),
            bridge: VNET_BRIDGE.into(),
            gateway,
        },
        hosts: hosts.clone(),
        agents: Vec::new(),
    };
    save_state(&state)?;

    progress(&format!(
        "VNet segment {} in {VNET_NETNS}",
        cluster.network.node_subnet
    ));
    new_netns(VNET_NETNS)?;
    ip_in(VNET_NETNS, &["link", "add", VNET_BRIDGE, "type", "bridge"])?;
    ip_in(VNET_NETNS, &["link", "set", VNET_BRIDGE, "up"])?;
    // The VNet segment is Azure's fabric, not a Linux host: where
    // br_netfilter is loaded (Docker loads it), bridged frames would go
    // through netfilter's hooks in this namespace for every data path.
    if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        sysctl_in(
            VNET_NETNS,
            &[
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ],
        )?;
    }
    let outbound = hosts
        .iter()
        .find(|h| matches!(h.role, Role::Lb | Role::Appliance))
        .expect("planned");
    build_outbound(cluster, outbound, progress)?;

    let prefix = cluster.network.node_subnet.prefix_len();
    for (i, node) in nodes.iter().enumerate() {
        let ns = format!("{NETNS_PREFIX}{}", node.name);
        progress(&format!(
            "node {} {} (pod CIDR {}) in {ns}",
            node.name, node.ip, node.pod_cidr
        ));
        new_netns(&ns)?;
        // Forwarding only so the kernel can answer TTL expiry with ICMP;
        // netplane's programs do the forwarding itself.
        sysctl_in(
            &ns,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        let port = format!("vn-{i}");
        ip_in(
            VNET_NETNS,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        ip_in(
            VNET_NETNS,
            &["link", "set", &port, "master", VNET_BRIDGE, "up"],
        )?;
        ip_in(
            &ns,
            &[
                "addr",
                "add",
                &format!("{}/{prefix}", node.ip),
                "dev",
                "eth0",
            ],
        )?;
        ip_in(&ns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &ns,
            &["route", "add", "default", "via", &gateway.to_string()],
        )?;
    }

    if opts.datapath != DataPathKind::Netplane {
        return build_classic(cluster, &hosts, outbound, state, progress);
    }
    // Mounted once here: agents starting together could each mount one.
    sys::ensure_bpffs(&paths::bpffs())?;
    let agents = nodes
        .iter()
        .map(|n| n.name.clone())
        .chain([outbound.name.clone()]);
    for name in agents {
        let ip = hosts.iter().find(|h| h.name == name).expect("planned").ip;
        let agent = start_agent(&state.cluster_file, &name, ip, opts)?;
        progress(&format!(
            "agent for {name} started (pid {}, log {})",
            agent.pid, agent.log
        ));
        state.agents.push(agent);
        save_state(&state)?;
    }
    for agent in &state.agents {
        wait_for_agent(agent)?;
    }

    for host in hosts.iter().filter(|h| h.role == Role::Pod) {
        let node = nodes
            .iter()
            .find(|n| Some(&n.name) == host.node.as_ref())
            .expect("planned");
        progress(&format!(
            "pod {} {} on {} (netplane-cni ADD)",
            host.name, host.ip, node.name
        ));
        attach_pod(host, &state.cluster_file)?;
    }
    wait_for_pods(&hosts)?;
    progress("all pods registered in their node's data path");
    Ok(state)
}

/// The rest of a lab on the kernel's own data path: kubenet's classic one
/// (routes and MASQUERADE on the nodes, iptables SNAT on the load balancer,
/// pods through the CNI bridge plugin), or plain routing (routes only, pods
/// through the CNI ptp plugin, no netfilter rule).
fn build_classic(
    cluster: &Cluster,
    hosts: &[Host],
    outbound: &Host,
    state: LabState,
    progress: &mut dyn FnMut(&str),
) -> Result<LabState> {
    let routed = state.datapath == DataPathKind::Routed;
    let nodes = cluster.nodes();
    for node in &nodes {
        progress(&format!(
            "{}: kernel routes to the other pod CIDRs{}",
            node.name,
            if routed { "" } else { ", iptables MASQUERADE" }
        ));
        crate::lab::classic::node_routes(cluster, node)?;
        if !routed {
            crate::lab::classic::node_masquerade(cluster, node)?;
        }
    }
    if routed {
        progress(&format!(
            "{}: kernel forwarding and routes to every pod CIDR, no translation",
            outbound.name
        ));
        crate::lab::classic::routed_outbound(cluster, outbound)?;
    } else {
        progress(&format!(
            "{}: kernel forwarding and iptables SNAT",
            outbound.name
        ));
        crate::lab::classic::outbound(cluster, outbound)?;
    }
    for host in hosts.iter().filter(|h| h.role == Role::Pod) {
        let node = nodes
            .iter()
            .find(|n| Some(&n.name) == host.node.as_ref())
            .expect("planned");
        progress(&format!(
            "pod {} on {} ({})",
            host.name,
            node.name,
            if routed {
                "CNI ptp plugin ADD"
            } else {
                "CNI bridge plugin ADD, cbr0"
            }
        ));
        new_netns(&host.netns)?;
        crate::lab::classic::attach_pod(host, node, state.datapath)?;
    }
    progress(if routed {
        "plain routed data path ready (no netfilter rule, no netplane program)"
    } else {
        "classic kubenet data path ready (no netplane program loaded)"
    });
    Ok(state)
}

/// The load balancer (or appliance) between the VNet and the `inet` host:
/// inside on the VNet segment with the nodes' gateway address, outside on a
/// link to `inet`. No kernel forwarding: its agent's programs translate and
/// forward.
fn build_outbound(cluster: &Cluster, host: &Host, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let ns = host.netns.as_str();
    let inet = format!("{NETNS_PREFIX}inet");
    let outside_ip = outside_ip(host);
    progress(&format!(
        "{} {} (outside {outside_ip}) and inet {INET_IP}, in {ns} and {inet}",
        host.name, host.ip
    ));
    new_netns(ns)?;
    new_netns(&inet)?;
    let port = format!("vn-{}", host.name);
    ip_in(
        VNET_NETNS,
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    ip_in(
        VNET_NETNS,
        &["link", "set", &port, "master", VNET_BRIDGE, "up"],
    )?;
    let inside = format!("{}/{}", host.ip, cluster.network.node_subnet.prefix_len());
    // Needed by the classic data path (kernel forwarding, iptables); the
    // netplane one never hands a packet to this kernel to forward.
    ip_in(ns, &["addr", "add", &inside, "dev", "eth0"])?;
    ip_in(ns, &["link", "set", "eth0", "up"])?;
    ip_in(
        ns,
        &[
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &inet,
        ],
    )?;
    ip_in(
        ns,
        &["addr", "add", &format!("{outside_ip}/24"), "dev", "eth1"],
    )?;
    ip_in(ns, &["link", "set", "eth1", "up"])?;
    ip_in(
        &inet,
        &["addr", "add", &format!("{INET_IP}/24"), "dev", "eth0"],
    )?;
    ip_in(&inet, &["link", "set", "eth0", "up"])?;
    // The frontend IPs are the load balancer's: the internet routes them to it.
    if host.role == Role::Lb {
        for f in &cluster.outbound.frontend_ips {
            ip_in(
                &inet,
                &[
                    "route",
                    "add",
                    &format!("{f}/32"),
                    "via",
                    &LB_OUTSIDE_IP.to_string(),
                ],
            )?;
        }
    }
    Ok(())
}

/// The load balancer's (or appliance's) address on the link to `inet`.
pub fn outside_ip(host: &Host) -> Ipv4Addr {
    if host.role == Role::Lb {
        LB_OUTSIDE_IP
    } else {
        APPLIANCE_OUTSIDE_IP
    }
}

fn new_netns(ns: &str) -> Result<()> {
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

/// Creates a pod as kubelet would: the runtime makes the pod's network
/// namespace, then runs the CNI plugin (netplane-cni) in the node's
/// namespace with the CNI_* environment and the network configuration on
/// stdin.
fn attach_pod(pod: &Host, cluster_file: &str) -> Result<()> {
    let node = pod.node.as_deref().expect("pods have nodes");
    new_netns(&pod.netns)?;
    let conf = serde_json::json!({
        "cniVersion": crate::cni::CNI_VERSION,
        "name": "netplane",
        "type": "netplane-cni",
        "cluster": cluster_file,
        "node": node,
    });
    cni_add(&cni_plugin()?, pod, &conf)
}

/// The CNI plugin binary next to this one.
pub fn cni_plugin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name("netplane-cni"))
}

/// CNI ADD for a lab pod (in its own, existing namespace); the address the
/// plugin gives must be the one the lab planned.
pub fn cni_add(plugin: &std::path::Path, pod: &Host, conf: &serde_json::Value) -> Result<()> {
    let node = pod.node.as_deref().expect("pods have nodes");
    let netns = format!("/run/netns/{}", pod.netns);
    let result = run_cni(plugin, node, "ADD", &pod.name, &netns, conf)?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .with_context(|| format!("no address in the CNI result: {result}"))?;
    if ip != pod.ip {
        bail!(
            "{} gave {} the address {ip}, the lab planned {}",
            plugin.display(),
            pod.name,
            pod.ip
        );
    }
    Ok(())
}

/// Runs a CNI plugin in a node's namespace, as a container runtime would:
/// CNI_* in the environment (CNI_ARGS as kubelet sends them, with
/// IgnoreUnknown=1 so plugins that know no K8S_* keys accept them), the network configuration on stdin, the
/// result (or the spec's error) on stdout.
pub fn run_cni(
    plugin: &std::path::Path,
    node: &str,
    command: &str,
    container_id: &str,
    netns_path: &str,
    conf: &serde_json::Value,
) -> Result<serde_json::Value> {
    use std::io::Write as _;
    let node_ns = std::fs::File::open(format!("/run/netns/{NETNS_PREFIX}{node}"))?;
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns_path)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id}"),
        )
        .env(
            "CNI_PATH",
            plugin.parent().unwrap_or(std::path::Path::new("/")),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    sys::spawn_in_netns(&mut cmd, &node_ns);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} {command} for {container_id} failed: {}",
            plugin.display(),
            text.trim()
        );
    }
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("{} printed {text}", plugin.display()))
}

/// Agents that are not a node's.
const OUTBOUND_AGENTS: [&str; 2] = ["lb", "appliance"];

/// Where a lab host's agent serves metrics (nodes, load balancer,
/// appliance), reachable through `lab exec`.
pub fn metrics_url(host: &Host, datapath: DataPathKind) -> Option<String> {
    (datapath == DataPathKind::Netplane
        && matches!(host.role, Role::Node | Role::Lb | Role::Appliance))
    .then(|| {
        format!(
            "http://{}:{}/metrics",
            host.ip,
            netplane_common::limits::LAB_METRICS_PORT
        )
    })
}

fn start_agent(
    cluster_file: &str,
    node: &str,
    ip: Ipv4Addr,
    opts: &UpOptions,
) -> Result<AgentProc> {
    let exe = std::env::current_exe()?;
    let log = paths::lab_dir().join(format!("agent-{node}.log"));
    let out = std::fs::File::create(&log)?;
    let who = if OUTBOUND_AGENTS.contains(&node) {
        ["--lb", ""]
    } else {
        ["--node", node]
    };
    let mut cmd = Command::new(exe);
    cmd.args(["agent", "--config", cluster_file])
        .args(who.iter().filter(|a| !a.is_empty()))
        .args(["--netns", &format!("{NETNS_PREFIX}{node}")])
        .args([
            "--metrics-addr",
            &format!("{ip}:{}", netplane_common::limits::LAB_METRICS_PORT),
        ]);
    if !OUTBOUND_AGENTS.contains(&node) {
        cmd.args(opts.uplink_xdp.then_some("--uplink-xdp"));
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group: the agent outlives `lab up` and a ^C there.
        .process_group(0)
        .spawn()
        .context("starting the agent")?;
    Ok(AgentProc {
        node: node.to_string(),
        pid: child.id(),
        log: log.display().to_string(),
    })
}

use std::os::unix::process::CommandExt as _;

fn wait_for_agent(agent: &AgentProc) -> Result<()> {
    let deadline = Instant::now() + AGENT_READY_TIMEOUT;
    let status = paths::agent_status(&agent.node);
    loop {
        if let Ok(b) = std::fs::read(&status)
            && serde_json::from_slice::<crate::agent::AgentStatus>(&b)
                .is_ok_and(|s| s.pid == agent.pid)
        {
            return Ok(());
        }
        if !pid_alive(agent.pid) || Instant::now() > deadline {
            let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
            bail!("agent for {} did not come up; its log:\n{log}", agent.node);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_pods(hosts: &[Host]) -> Result<()> {
    let deadline = Instant::now() + AGENT_READY_TIMEOUT;
    for pod in hosts.iter().filter(|h| h.role == Role::Pod) {
        let node = pod.node.as_deref().expect("pods have nodes");
        loop {
            if datapath::pinned_pod_ips(&paths::pins(node)).is_ok_and(|ips| ips.contains(&pod.ip)) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {} was not registered by the agent of {node} in time",
                    pod.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; only count running ones.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// True when PID is a netplane agent for `node` (so a recycled PID is never
/// signalled).
fn is_our_agent(pid: u32, node: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let me = if OUTBOUND_AGENTS.contains(&node) {
        b"--lb".as_slice()
    } else {
        node.as_bytes()
    };
    args.contains(&b"agent".as_slice()) && args.contains(&me)
}

/// Tears the lab down: agents (by recorded PID), namespaces, pins, state.
/// Safe to run any number of times, also after a crash.
pub fn down(progress: &mut dyn FnMut(&str)) -> Result<()> {
    let mut agents: Vec<(String, u32)> = Vec::new();
    if let Ok(Some(state)) = load_state() {
        agents.extend(state.agents.iter().map(|a| (a.node.clone(), a.pid)));
    }
    // Agents whose status outlived a lost state file.
    if let Ok(entries) = std::fs::read_dir(paths::run_dir().join("nodes")) {
        for e in entries.flatten() {
            let node = e.file_name().to_string_lossy().into_owned();
            if let Ok(b) = std::fs::read(paths::agent_status(&node))
                && let Ok(s) = serde_json::from_slice::<crate::agent::AgentStatus>(&b)
            {
                agents.push((node, s.pid));
            }
        }
    }
    agents.sort();
    agents.dedup();
    for (node, pid) in &agents {
        if pid_alive(*pid) && is_our_agent(*pid, node) {
            progress(&format!("stopping agent of {node} (pid {pid})"));
            stop_pid(*pid);
        }
    }
    for ns in lab_namespaces()? {
        progress(&format!("deleting namespace {ns}"));
        sys::run(&["ip", "netns", "del", &ns])?;
    }
    let bpffs = paths::bpffs();
    if let Ok(entries) = std::fs::read_dir(&bpffs) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    // Mounts may be stacked (agents started by hand at the same moment).
    while sys::is_bpffs(&bpffs) {
        nix::mount::umount(&bpffs).with_context(|| format!("unmounting {}", bpffs.display()))?;
    }
    for dir in [paths::run_dir().join("nodes"), paths::lab_dir(), bpffs] {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", dir.display()));
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir(paths::run_dir());
    Ok(())
}

fn stop_pid(pid: u32) {
    use nix::{
        sys::signal::{Signal, kill},
        unistd::Pid,
    };
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + AGENT_STOP_TIMEOUT;
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if pid_alive(pid) {
        let _ = kill(p, Signal::SIGKILL);
    }
}

/// Applies a cluster file to the running lab: validated, written over the
/// lab's copy, and the agents told (SIGHUP) to reconcile. The lab's nodes
/// must stay as they are; routes may come and go.
pub fn reload(cluster_file: Option<&std::path::Path>) -> Result<()> {
    let state = load_state()?.context("the lab is down")?;
    let source = cluster_file.map_or_else(|| PathBuf::from(&state.cluster_file), PathBuf::from);
    let cluster = Cluster::load(Some(&source))?;
    for host in state.hosts.iter().filter(|h| h.role == Role::Node) {
        match cluster.node(&host.name) {
            Some(n) if n.ip == host.ip => {}
            _ => bail!(
                "{} must keep node {} with IP {}: the lab cannot move its nodes",
                source.display(),
                host.name,
                host.ip
            ),
        }
    }
    let tmp = PathBuf::from(format!("{}.tmp", state.cluster_file));
    std::fs::write(&tmp, toml::to_string(&cluster)?)?;
    std::fs::rename(&tmp, &state.cluster_file)?;
    for a in &state.agents {
        if pid_alive(a.pid) && is_our_agent(a.pid, &a.node) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(a.pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
    }
    Ok(())
}

/// Stops a node's agent (SIGTERM, or SIGKILL with `kill`) and starts a new
/// one, which adopts the pinned data path. Returns the new agent's status.
pub fn restart_agent(
    node: &str,
    kill: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<crate::agent::AgentStatus> {
    use nix::sys::signal::Signal;
    let mut state = load_state()?.context("the lab is down")?;
    let idx = state
        .agents
        .iter()
        .position(|a| a.node == node)
        .with_context(|| format!("no agent for node {node} in the lab"))?;
    let old = state.agents[idx].clone();
    if pid_alive(old.pid) && is_our_agent(old.pid, node) {
        let sig = if kill {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        progress(&format!(
            "sending {sig} to the agent of {node} (pid {})",
            old.pid
        ));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(old.pid as i32), sig);
        let deadline = Instant::now() + AGENT_STOP_TIMEOUT;
        while pid_alive(old.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if pid_alive(old.pid) {
            bail!("the agent of {node} (pid {}) did not stop", old.pid);
        }
    }
    // A killed agent leaves its status file; the new one overwrites it.
    let opts = UpOptions {
        uplink_xdp: state.uplink_xdp,
        datapath: state.datapath,
    };
    let ip = state
        .hosts
        .iter()
        .find(|h| h.name == node)
        .context("host of the agent")?
        .ip;
    let agent = start_agent(&state.cluster_file, node, ip, &opts)?;
    wait_for_agent(&agent)?;
    progress(&format!("agent of {node} started (pid {})", agent.pid));
    state.agents[idx] = agent;
    save_state(&state)?;
    let status = std::fs::read(paths::agent_status(node))?;
    Ok(serde_json::from_slice(&status)?)
}

/// A host by name or IP.
pub fn find_host<'a>(state: &'a LabState, name_or_ip: &str) -> Option<&'a Host> {
    state
        .hosts
        .iter()
        .find(|h| h.name == name_or_ip || h.ip.to_string() == name_or_ip)
}

/// `lab status --json` shape: hosts plus agents and the VNet.
#[derive(Debug, Serialize)]
pub struct Status {
    pub up: bool,
    pub hosts: Vec<HostStatus>,
    pub agents: Vec<AgentStatusLine>,
    pub vnet: Option<Vnet>,
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
        vnet: Some(state.vnet),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
