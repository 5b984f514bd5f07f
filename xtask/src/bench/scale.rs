//! `cargo xtask bench-scale`: the lab at 10, 100 and 400 nodes (one pod
//! each), as a user would bring it up: how long `lab up` and `lab down`
//! take, what the machine's memory and each agent's kernel memory and RSS
//! come to, that every node holds one route per node, that random pod
//! pairs reach each other, and that `lab down` leaves nothing
//! (docs/bench/scale.md).
use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{output_of, workspace_root};

/// One lab size's measurements.
struct Scale {
    nodes: usize,
    up_s: f64,
    down_s: f64,
    /// After `lab down`: until the kernel's namespace cleanup is done.
    settled_s: f64,
    /// MemAvailable before `lab up` minus with the lab up.
    machine_mib: f64,
    /// Per agent: the maps' memlock and the agent's RSS (medians), and the
    /// NAT tables' size the lab gave it.
    kernel_mib: f64,
    rss_mib: f64,
    nat_entries: u64,
    routes_per_node: usize,
    pairs_ok: usize,
    pairs: usize,
}

/// The cluster file for `nodes` nodes with one pod each: the default
/// cluster with a pod CIDR that holds 1,024 /24s.
fn cluster_file(nodes: usize) -> Result<std::path::PathBuf> {
    let mut toml = String::from(
        "name = \"netplane-scale\"\n\n[network]\nvnet_cidr = \"10.224.0.0/12\"\n\
         node_subnet = \"10.224.0.0/16\"\npod_cidr = \"10.244.0.0/14\"\n\
         node_pod_prefix = 24\nservice_cidr = \"10.0.0.0/16\"\n\
         dns_service_ip = \"10.0.0.10\"\nmax_pods = 110\n\n[limits]\n\
         max_routes = 400\nallow_over_route_limit = false\n\n",
    );
    for i in 0..nodes {
        let ip = 4 + i;
        writeln!(
            toml,
            "[[nodes]]\nname = \"node-{i}\"\nip = \"10.224.{}.{}\"\n",
            ip / 256,
            ip % 256
        )?;
    }
    toml.push_str(
        "[outbound]\ntype = \"loadBalancer\"\nfrontend_ips = [\"198.51.100.10\"]\n\n\
         [lab]\npods_per_node = 1\n",
    );
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("scale-{nodes}.toml"));
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// A /proc/meminfo field, in kB.
fn meminfo_kb(field: &str) -> Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/meminfo"))
}

fn mem_available_mib() -> Result<f64> {
    Ok(meminfo_kb("MemAvailable")? / 1024.0)
}

fn json(np: &str, args: &[&str]) -> Result<Value> {
    let out = Command::new(np).args(args).output()?;
    ensure!(
        out.status.success(),
        "netplane {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Nothing of the lab is left: no np- namespace, no pins, no agent.
fn nothing_left() -> Result<()> {
    let ns = Command::new("ip").args(["netns", "list"]).output()?;
    let left: Vec<String> = String::from_utf8_lossy(&ns.stdout)
        .lines()
        .filter(|l| l.starts_with("np-"))
        .map(str::to_string)
        .collect();
    ensure!(left.is_empty(), "namespaces left: {left:?}");
    let pins = std::path::Path::new("/sys/fs/bpf/netplane");
    let pinned = std::fs::read_dir(pins).map_or(0, |d| d.count());
    ensure!(
        pinned == 0,
        "{pinned} pin directories left in {}",
        pins.display()
    );
    let agents = Command::new("pgrep")
        .args(["-f", "netplane agent --config /run/netplane/lab"])
        .output()?;
    ensure!(
        agents.stdout.is_empty(),
        "agents left: {}",
        String::from_utf8_lossy(&agents.stdout)
    );
    Ok(())
}

/// How long the kernel may take to free the namespaces of a lab gone.
const CLEANUP_LIMIT: Duration = Duration::from_secs(600);

fn measure(np: &str, nodes: usize, pairs: usize) -> Result<Scale> {
    let file = cluster_file(nodes)?;
    super::suite::settle_within(CLEANUP_LIMIT)?;
    let before = mem_available_mib()?;
    eprintln!("== {nodes} nodes: lab up");
    let t = Instant::now();
    let up = Command::new(np)
        .args(["lab", "up", "--config"])
        .arg(&file)
        .output()?;
    let up_s = t.elapsed().as_secs_f64();
    if !up.status.success() {
        let _ = Command::new(np).args(["lab", "down"]).output();
        bail!("lab up: {}", String::from_utf8_lossy(&up.stderr));
    }
    let result = check(np, nodes, pairs, before, up_s);
    eprintln!("== {nodes} nodes: lab down");
    let t = Instant::now();
    let down = Command::new(np).args(["lab", "down"]).output()?;
    let down_s = t.elapsed().as_secs_f64();
    ensure!(
        down.status.success(),
        "lab down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    nothing_left()?;
    let settled_s = super::suite::settle_within(CLEANUP_LIMIT)?;
    let mut s = result?;
    s.down_s = down_s;
    s.settled_s = settled_s;
    Ok(s)
}

fn check(np: &str, nodes: usize, pairs: usize, before: f64, up_s: f64) -> Result<Scale> {
    let machine_mib = before - mem_available_mib()?;
    let stats = json(np, &["stats", "--json"])?;
    let (mut kernel, mut rss, mut nat) = (Vec::new(), Vec::new(), 0);
    for (agent, s) in stats["nodes"].as_object().context("stats: no nodes")? {
        let m = &s["memory"];
        kernel.push(m["kernel"]["bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0);
        rss.push(
            m["agent_rss_bytes"]
                .as_f64()
                .with_context(|| format!("{agent}: agent not running"))?
                / 1_048_576.0,
        );
        if let Some(t) = m["kernel"]["maps"]
            .as_array()
            .and_then(|maps| maps.iter().find(|x| x["map"] == "NAT_OUT"))
        {
            nat = t["max_entries"].as_u64().unwrap_or(0);
        }
    }
    let routes = json(np, &["routes", "--json"])?;
    let mut routes_per_node = usize::MAX;
    for i in 0..nodes {
        let node = format!("node-{i}");
        let count = routes["nodes"][&node]["routes"]
            .as_array()
            .map_or(0, Vec::len);
        ensure!(count == nodes, "{node} holds {count} routes, not {nodes}");
        routes_per_node = routes_per_node.min(count);
    }
    let pods = json(np, &["pods", "--json"])?;
    let pods: Vec<(String, String)> = pods["pods"]
        .as_array()
        .context("pods: no list")?
        .iter()
        .filter_map(|p| Some((p["pod"].as_str()?.into(), p["ip"].as_str()?.into())))
        .collect();
    ensure!(pods.len() == nodes, "{} pods for {nodes} nodes", pods.len());
    // Random pairs on different nodes (a fixed seed: the same pairs each run).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut pairs_ok = 0;
    for _ in 0..pairs {
        let a = next(pods.len());
        let b = (a + 1 + next(pods.len() - 1)) % pods.len();
        let ping = Command::new(np)
            .args([
                "lab", "exec", &pods[a].0, "--", "ping", "-c", "1", "-W", "2",
            ])
            .arg(&pods[b].1)
            .output()?;
        if ping.status.success() {
            pairs_ok += 1;
        } else {
            eprintln!("   {} -> {} ({}) failed", pods[a].0, pods[b].0, pods[b].1);
        }
    }
    let s = Scale {
        nodes,
        up_s,
        down_s: 0.0,
        settled_s: 0.0,
        machine_mib,
        kernel_mib: median(kernel),
        rss_mib: median(rss),
        nat_entries: nat,
        routes_per_node,
        pairs_ok,
        pairs,
    };
    eprintln!(
        "   up {:.1} s, machine +{:.0} MiB, per agent {:.1} MiB kernel + {:.1} MiB RSS (NAT tables {}), {} routes each, {}/{} pairs",
        s.up_s,
        s.machine_mib,
        s.kernel_mib,
        s.rss_mib,
        s.nat_entries,
        s.routes_per_node,
        s.pairs_ok,
        s.pairs
    );
    Ok(s)
}

pub fn run(sizes: &[usize], pairs: usize) -> Result<()> {
    let np = workspace_root().join("target/release/netplane");
    let np = np.to_str().context("utf-8 path")?;
    if crate::lab_is_up() {
        crate::cmd(np, &["lab", "down"])?;
    }
    let started = Instant::now();
    let mut rows = Vec::new();
    for &n in sizes {
        rows.push(measure(np, n, pairs)?);
    }
    let mut md = format!(
        "# The lab at scale\n\nWritten by `cargo xtask bench-scale` on {} (commit {}), release build, \
         on this machine ({} CPUs, {:.0} GiB of memory): one pod per node, the lab's NAT tables \
         sized by its share (netplane-lab's `lab_nat_entries`), {:.0} s in all.\n\n\
         | nodes | `lab up` s | `lab down` s | kernel cleanup after s | machine memory MiB | per agent: kernel MiB | per agent: RSS MiB | NAT tables per agent | routes per node | random pod pairs |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        output_of(&["date", "-u", "+%Y-%m-%d %H:%M"]),
        output_of(&["git", "rev-parse", "--short", "HEAD"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_total_gib()?,
        started.elapsed().as_secs_f64()
    );
    for r in &rows {
        writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {} | {}/{} |",
            r.nodes,
            r.up_s,
            r.down_s,
            r.settled_s,
            r.machine_mib,
            r.kernel_mib,
            r.rss_mib,
            r.nat_entries,
            r.routes_per_node,
            r.pairs_ok,
            r.pairs
        )?;
    }
    md.push_str(
        "\nEach size starts on a quiet machine (under a quarter of a CPU busy). Kernel cleanup \
         after: from `lab down`'s return until the machine is quiet again (the kernel frees \
         deleted network namespaces in a worker after `ip netns del` returns). Machine memory: \
         MemAvailable before `lab up` minus with the lab up (agents, namespaces, veths, maps). Per agent: medians over the lab's agents of `netplane stats --json` \
         (`memory.kernel.bytes`, the maps' memlock from their fdinfo; `memory.agent_rss_bytes`). \
         After each size, `lab down` left no np- namespace, no pin and no agent.\n",
    );
    let path = workspace_root().join("docs/bench/scale.md");
    std::fs::write(&path, &md)?;
    println!("{md}");
    eprintln!("== wrote {}", path.display());
    let failed: usize = rows.iter().map(|r| r.pairs - r.pairs_ok).sum();
    ensure!(failed == 0, "{failed} pod pairs could not reach each other");
    Ok(())
}

fn mem_total_gib() -> Result<f64> {
    Ok(meminfo_kb("MemTotal")? / 1_048_576.0)
}

#[cfg(test)]
mod tests {
    use super::meminfo_kb;

    #[test]
    fn meminfo_fields_are_read_by_their_whole_name() {
        let total = meminfo_kb("MemTotal").unwrap();
        assert!(total > 0.0);
        assert!(meminfo_kb("MemAvailable").unwrap() <= total);
        assert!(meminfo_kb("Mem").is_err());
    }
}
