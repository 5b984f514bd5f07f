//! Building the lab: the VNet segment, nodes with agents, pods through the
//! CNI plugin, the outbound host and `inet`, for each kind of data path.

use anyhow::{Context, Result, bail};

use netplane::{
    config::Cluster,
    paths,
    sys::{self, ip_in, sysctl_in},
};

use super::{
    agents::{
        cni_conf_dir, is_our_agent, pid_alive, start_agent, stop_pid, wait_for_agent, wait_for_pods,
    },
    classic,
    cni::attach_pod,
    control_plane, kube_services,
    topology::{
        APPLIANCE_OUTSIDE_IP, DataPathKind, Host, INET_IP, LB_OUTSIDE_IP, LabState, NETNS_PREFIX,
        Role, UpOptions, VNET_BRIDGE, VNET_NETNS, Vnet, lab_namespaces, load_state, new_netns,
        outside_ip, plan, save_state,
    },
};

/// What the lab needs of a cluster file beyond its validity.
pub(super) fn lab_violations(cluster: &Cluster) -> Result<()> {
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
    match build(&cluster, opts, progress).and_then(|state| with_page(state, opts, progress)) {
        Ok(state) => Ok(state),
        Err(e) => {
            progress("failed; tearing down what was built");
            let _ = down(&mut |_| {});
            Err(e)
        }
    }
}

/// Starts the web page when asked to, once the agents run.
fn with_page(
    mut state: LabState,
    opts: &UpOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<LabState> {
    if let Some(listen) = opts.ui {
        let page = super::page::start(listen)?;
        progress(&format!("web page: {} (pid {})", page.url, page.pid));
        state.ui = Some(page);
        save_state(&state)?;
    }
    Ok(state)
}

pub(super) fn build(
    cluster: &Cluster,
    opts: &UpOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<LabState> {
    let mut hosts = plan(cluster);
    if opts.kubernetes {
        hosts.push(kube_services::dns_pod(cluster));
    }
    let nodes = cluster.nodes();
    std::fs::create_dir_all(paths::lab_dir())?;
    // The agents read the same file the lab was built from.
    let cluster_copy = paths::lab_dir().join("cluster.toml");
    std::fs::write(&cluster_copy, toml::to_string(cluster)?)?;
    lab_violations(cluster)?;
    let gateway = netplane::config::outbound::gateway(cluster);
    let mut state = LabState {
        cluster_file: cluster_copy.display().to_string(),
        uplink_xdp: opts.uplink_xdp,
        datapath: opts.datapath,
        tc_attach: opts.tc_attach,
        vnet: Vnet {
            netns: VNET_NETNS.into(),
            bridge: VNET_BRIDGE.into(),
            gateway,
        },
        hosts: hosts.clone(),
        agents: Vec::new(),
        kubernetes: None,
        ui: None,
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

    if opts.kubernetes {
        if opts.datapath == DataPathKind::Routed {
            bail!("--source kubernetes goes with --datapath netplane or kubenet-classic");
        }
        let cp = control_plane::start(cluster, progress)?;
        state.kubernetes = Some(cp);
        save_state(&state)?;
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
    let share = super::agents::nat_share(cluster);
    for name in agents {
        let ip = hosts.iter().find(|h| h.name == name).expect("planned").ip;
        let kubeconfig = state
            .kubernetes
            .as_ref()
            .map(|k| k.agent_kubeconfig.as_str());
        let agent = start_agent(&state.cluster_file, share, &name, ip, opts, kubeconfig)?;
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
        let conf_dir = state.kubernetes.as_ref().map(|_| cni_conf_dir(&node.name));
        attach_pod(host, &state.cluster_file, conf_dir.as_deref())?;
    }
    wait_for_pods(&hosts)?;
    progress("all pods registered in their node's data path");
    start_services(cluster, &hosts, &mut state, progress)?;
    Ok(state)
}

/// With the Kubernetes control plane: the DNS pod's server, and kube-dns
/// in front of it.
fn start_services(
    cluster: &Cluster,
    hosts: &[Host],
    state: &mut LabState,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let Some(cp) = state.kubernetes.as_mut() else {
        return Ok(());
    };
    let dns = kube_services::dns_pod(cluster);
    let args = kube_services::dnsmasq_args(&dns, hosts);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = control_plane::dir().join("dnsmasq.log");
    cp.dns_pid = control_plane::spawn_in(&dns.netns, "dnsmasq", &args, &log)?;
    let (ns, name) = kube_services::DNS_SERVICE;
    progress(&format!(
        "DNS pod {} {} (dnsmasq, pid {}) behind Service {ns}/{name} {}",
        dns.name, dns.ip, cp.dns_pid, cluster.network.dns_service_ip
    ));
    let cp = cp.clone();
    save_state(state)?;
    control_plane::in_netns(&control_plane::netns(), async {
        let client = control_plane::admin_client(&cp).await?;
        kube_services::publish_dns(&client, cluster, &dns).await
    })
}

/// The rest of a lab on the kernel's own data path: kubenet's classic one
/// (routes and MASQUERADE on the nodes, iptables SNAT on the load balancer,
/// pods through the CNI bridge plugin), or plain routing (routes only, pods
/// through the CNI ptp plugin, no netfilter rule).
pub(super) fn build_classic(
    cluster: &Cluster,
    hosts: &[Host],
    outbound: &Host,
    state: LabState,
    progress: &mut dyn FnMut(&str),
) -> Result<LabState> {
    let mut state = state;
    let routed = state.datapath == DataPathKind::Routed;
    let nodes = cluster.nodes();
    for node in &nodes {
        progress(&format!(
            "{}: kernel routes to the other pod CIDRs{}",
            node.name,
            if routed { "" } else { ", iptables MASQUERADE" }
        ));
        classic::node_routes(cluster, node)?;
        if !routed {
            classic::node_masquerade(cluster, node)?;
        }
    }
    if routed {
        progress(&format!(
            "{}: kernel forwarding and routes to every pod CIDR, no translation",
            outbound.name
        ));
        classic::routed_outbound(cluster, outbound)?;
    } else {
        progress(&format!(
            "{}: kernel forwarding and iptables SNAT",
            outbound.name
        ));
        classic::outbound(cluster, outbound)?;
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
        classic::attach_pod(host, node, state.datapath)?;
    }
    if let Some(cp) = state.kubernetes.as_mut() {
        let kube_proxy = kube_services::kube_proxy_binary()?;
        for node in &nodes {
            let ns = format!("{NETNS_PREFIX}{}", node.name);
            // kubenet's bridge hands pod traffic to iptables (br_netfilter),
            // so kube-proxy's rules see same-node service traffic too.
            sysctl_in(&ns, &["net.bridge.bridge-nf-call-iptables=1"])?;
            let args = kube_services::kube_proxy_args(cluster, &node.name, &cp.kubeconfig);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let log = control_plane::dir().join(format!("kube-proxy-{}.log", node.name));
            let program = kube_proxy
                .to_str()
                .context("kube-proxy's path is not UTF-8")?;
            let pid = control_plane::spawn_in(&ns, program, &args, &log)?;
            progress(&format!(
                "{}: kube-proxy (iptables mode, pid {pid}, log {})",
                node.name,
                log.display()
            ));
            cp.kube_proxy_pids.push(pid);
        }
        save_state(&state)?;
    }
    start_services(cluster, hosts, &mut state, progress)?;
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
pub(super) fn build_outbound(
    cluster: &Cluster,
    host: &Host,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
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

/// Tears the lab down: agents (by recorded PID), namespaces, pins, state.
/// Safe to run any number of times, also after a crash.
pub fn down(progress: &mut dyn FnMut(&str)) -> Result<()> {
    let mut agents: Vec<(String, u32)> = Vec::new();
    let mut kubernetes = None;
    if let Ok(Some(state)) = load_state() {
        agents.extend(state.agents.iter().map(|a| (a.node.clone(), a.pid)));
        kubernetes = state.kubernetes;
        if let Some(page) = &state.ui {
            super::page::stop(page, progress);
        }
    }
    // Agents whose status outlived a lost state file.
    if let Ok(entries) = std::fs::read_dir(paths::run_dir().join("nodes")) {
        for e in entries.flatten() {
            let node = e.file_name().to_string_lossy().into_owned();
            if let Ok(b) = std::fs::read(paths::agent_status(&node))
                && let Ok(s) = serde_json::from_slice::<netplane::agent::AgentStatus>(&b)
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
    if let Some(cp) = &kubernetes {
        control_plane::stop(cp, progress);
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
    // The verifier's logs of programs a kernel refused (an agent's or
    // `netplane verifier`'s) go with the rest of the run state.
    for dir in [
        paths::run_dir().join("nodes"),
        paths::lab_dir(),
        paths::verifier_logs(),
        bpffs,
    ] {
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
