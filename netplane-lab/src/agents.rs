//! The agents the lab runs: started in their host's namespace, waited for,
//! signalled to reload, restarted, and stopped by PID.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub use netplane::agent::pid_alive;
pub(crate) use netplane::agent::{OUTBOUND_AGENTS, is_agent_of as is_our_agent};
use netplane::{config::Cluster, datapath, paths};
use netplane_common::nat::MAX_NAT_ENTRIES;

use super::topology::{
    AgentProc, DataPathKind, Host, NETNS_PREFIX, Role, UpOptions, load_state, save_state,
};

/// How long `up` waits for an agent to attach, and for pods to register.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `down` waits after SIGTERM before SIGKILL.
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Where a Kubernetes lab's node agent writes its CNI conflist (the lab's
/// stand-in for the node's /etc/cni/net.d).
pub fn cni_conf_dir(node: &str) -> PathBuf {
    paths::node_dir(node).join("net.d")
}

/// Translations all of a lab's agents hold together when its cluster file
/// does not size the NAT tables: one machine runs every pod's traffic, so
/// the lab shares one budget (the benchmark's 1M-flow level sets its own)
/// instead of giving each agent a real node's 262,144 (about 100 MiB of
/// kernel memory each with the other flow maps).
pub const LAB_NAT_BUDGET: u32 = 1 << 20;
/// The least an agent of a large lab gets.
pub const LAB_NAT_ENTRIES_MIN: u32 = 16_384;

/// One agent's share of [`LAB_NAT_BUDGET`] among `agents`, at most a
/// node's default.
pub const fn lab_nat_entries(agents: u32) -> u32 {
    let share = LAB_NAT_BUDGET / if agents == 0 { 1 } else { agents };
    let share = if share < LAB_NAT_ENTRIES_MIN {
        LAB_NAT_ENTRIES_MIN
    } else {
        share
    };
    if share > MAX_NAT_ENTRIES {
        MAX_NAT_ENTRIES
    } else {
        share
    }
}

/// The NAT tables' size each of the lab's agents gets: the cluster file's
/// when it sets one (None: the agent reads it there), else the lab's share.
pub(super) fn nat_share(cluster: &Cluster) -> Option<u32> {
    cluster.limits.nat_table_entries.is_none().then(|| {
        let agents = u32::try_from(cluster.nodes.len() + 1).unwrap_or(u32::MAX);
        lab_nat_entries(agents)
    })
}

pub(super) fn start_agent(
    cluster_file: &str,
    nat_share: Option<u32>,
    node: &str,
    ip: Ipv4Addr,
    opts: &UpOptions,
    kubeconfig: Option<&str>,
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
    if let Some(mode) = opts.tc_attach {
        let mode = clap::ValueEnum::to_possible_value(&mode).expect("no variant is skipped");
        cmd.args(["--tc-attach", mode.get_name()]);
    }
    // An agent attaches as its own flag says, not as the lab's caller's
    // environment happens to.
    cmd.env_remove("NETPLANE_TC_ATTACH");
    if let Some(share) = nat_share {
        cmd.args(["--nat-table-entries", &share.to_string()]);
    }
    if let Some(k) = kubeconfig {
        cmd.args(["--kubeconfig", k]);
        if !OUTBOUND_AGENTS.contains(&node) {
            let dir = cni_conf_dir(node);
            cmd.arg("--cni-conf-dir").arg(dir);
        }
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

pub(super) fn wait_for_agent(agent: &AgentProc) -> Result<()> {
    let deadline = Instant::now() + AGENT_READY_TIMEOUT;
    let status = paths::agent_status(&agent.node);
    loop {
        if let Ok(b) = std::fs::read(&status)
            && serde_json::from_slice::<netplane::agent::AgentStatus>(&b)
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

pub(super) fn wait_for_pods(hosts: &[Host]) -> Result<()> {
    let deadline = Instant::now() + AGENT_READY_TIMEOUT;
    for pod in hosts.iter().filter(|h| h.role == Role::Pod) {
        let node = pod.node.as_deref().expect("pods have nodes");
        loop {
            if datapath::pinned_pod_ips(&datapath::Pins::of(node))
                .is_ok_and(|ips| ips.contains(&pod.ip))
            {
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

pub(super) fn stop_pid(pid: u32) {
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
) -> Result<netplane::agent::AgentStatus> {
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
        kubernetes: state.kubernetes.is_some(),
        ui: None,
        tc_attach: state.tc_attach,
    };
    let ip = state
        .hosts
        .iter()
        .find(|h| h.name == node)
        .context("host of the agent")?
        .ip;
    let kubeconfig = state
        .kubernetes
        .as_ref()
        .map(|k| k.agent_kubeconfig.as_str());
    let cluster = Cluster::load(Some(std::path::Path::new(&state.cluster_file)))?;
    let agent = start_agent(
        &state.cluster_file,
        nat_share(&cluster),
        node,
        ip,
        &opts,
        kubeconfig,
    )?;
    wait_for_agent(&agent)?;
    progress(&format!("agent of {node} started (pid {})", agent.pid));
    state.agents[idx] = agent;
    save_state(&state)?;
    let status = std::fs::read(paths::agent_status(node))?;
    Ok(serde_json::from_slice(&status)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netplane::config::cluster::Node;
    use netplane_common::nat::MAX_NAT_ENTRIES;

    fn with_nodes(n: u32) -> Cluster {
        let mut c = Cluster::load(None).unwrap();
        c.nodes = (0..n)
            .map(|i| Node {
                name: format!("node-{i}"),
                ip: std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 224, 0, 4)) + i),
                pod_cidr: None,
            })
            .collect();
        c
    }

    #[test]
    fn a_small_lab_keeps_the_node_default_and_a_large_one_shares() {
        assert_eq!(lab_nat_entries(3), MAX_NAT_ENTRIES);
        assert_eq!(lab_nat_entries(11), LAB_NAT_BUDGET / 11);
        assert_eq!(lab_nat_entries(401), LAB_NAT_ENTRIES_MIN);
        assert_eq!(lab_nat_entries(0), MAX_NAT_ENTRIES);
    }

    #[test]
    fn the_lab_shares_its_nat_budget_unless_the_cluster_file_sizes_the_tables() {
        // Two nodes and the load balancer: a real node's default each.
        assert_eq!(nat_share(&with_nodes(2)), Some(MAX_NAT_ENTRIES));
        // Ten nodes: an eleventh of the budget each.
        assert_eq!(nat_share(&with_nodes(10)), Some(LAB_NAT_BUDGET / 11));
        // 400 nodes: the floor.
        assert_eq!(nat_share(&with_nodes(400)), Some(LAB_NAT_ENTRIES_MIN));
        let mut sized = with_nodes(400);
        sized.limits.nat_table_entries = Some(4096);
        assert_eq!(nat_share(&sized), None, "the agents read the file's size");
    }
}
