//! `vm test`'s checks, each on the real VMs: pod to pod across machines
//! with the source kept, the TTL as in the lab, egress through both SNAT
//! stages seen from `inet`, a spoofed source dropped and counted, an agent
//! SIGKILLed and restarted under a TCP stream, the XDP program native on
//! virtio-net, bulk TCP through both SNAT stages with the NIC's offloads,
//! and nothing of netplane's in iptables or the kernel's routes.
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{
    kernel::Kernel,
    machines::{Cluster, Machine},
};
use crate::workspace_root;

/// The binaries the VMs run: the host's build, through the shared root.
fn np() -> String {
    workspace_root()
        .join("target/debug/netplane")
        .display()
        .to_string()
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text.trim()).with_context(|| format!("not JSON: {text}"))
}

/// A whoami server in `host` (a namespace of `m`), answering `max` clients.
fn serve(m: &Machine, netns: &str, max: u32) -> Result<()> {
    m.ok(&format!(
        "ip netns exec {netns} {} whoami serve --max {max} --timeout 150 >/tmp/whoami-{netns}.log 2>&1 &
         for i in $(seq 100); do grep -q listening /tmp/whoami-{netns}.log && exit 0; sleep 0.2; done; exit 1",
        np()
    ))?;
    Ok(())
}

/// `whoami ask` from a pod: the address the server saw.
fn ask(m: &Machine, pod: &str, target: &str) -> Result<String> {
    let out = m.ok(&format!(
        "ip netns exec {pod} {} whoami ask {target} --timeout 20 --json",
        np()
    ))?;
    let v = json(&out)?;
    Ok(v["seen_as"].as_str().context("seen_as")?.to_string())
}

fn drops(m: &Machine, agent: &str, reason: &str) -> Result<u64> {
    let v = json(&m.ok(&format!("{} stats --node {agent} --json", np()))?)?;
    v["nodes"][agent]["drops"]
        .as_array()
        .context("drops")?
        .iter()
        .find(|d| d["reason"] == reason)
        .and_then(|d| d["packets"].as_u64())
        .with_context(|| format!("no drop counter {reason}"))
}

/// iperf3's 1-second intervals: every one must have moved bytes.
fn stream_kept_moving(report: &Value, what: &str) -> Result<usize> {
    let intervals = report["intervals"]
        .as_array()
        .with_context(|| format!("{what}: no intervals in {report}"))?;
    ensure!(
        intervals.len() >= 3,
        "{what}: {} intervals",
        intervals.len()
    );
    for (i, iv) in intervals.iter().enumerate() {
        let bytes = iv["sum"]["bytes"].as_u64().unwrap_or(0);
        ensure!(bytes > 0, "{what}: second {i} moved nothing: {report}");
    }
    Ok(intervals.len())
}

pub fn run(c: &Cluster, kernel: Kernel) -> Result<()> {
    let (node0, node1, lb) = (c.get("node-0"), c.get("node-1"), c.get("lb"));

    eprintln!(
        "== the verifier's budget on the guest's kernel ({})",
        kernel.name()
    );
    // Every program under every load option; exits 1 over the budget or
    // over a fifth above the counts recorded for this kernel series.
    let table_file = workspace_root().join(format!("target/vm/verifier-{}.txt", kernel.name()));
    let baseline = workspace_root().join("docs/verifier.json");
    let (code, table) = node0.sh(
        &format!("{} verifier --baseline {} 2>&1", np(), baseline.display()),
        Duration::from_secs(900),
    )?;
    std::fs::write(&table_file, &table)?;
    eprint!("{table}");
    ensure!(
        code == 0,
        "a program is over the verifier's budget, refused, or grew past its recorded count on {}: {}",
        kernel.name(),
        table_file.display()
    );

    eprintln!("== the agents attach their TC programs as the kernel allows");
    let want = match kernel {
        Kernel::V6_1 => "clsact",
        Kernel::V6_12 => "tcx",
    };
    for (m, agent) in [(node0, "node-0"), (node1, "node-1"), (lb, "lb")] {
        let v = json(&m.ok(&format!("{} stats --node {agent} --json", np()))?)?;
        let mode = &v["nodes"][agent]["tc_attach"];
        ensure!(mode == want, "{agent} attached through {mode}, not {want}");
    }
    eprintln!("   every agent: {want}");

    eprintln!("== pod to pod across VMs: the source is kept");
    serve(node1, "pod-1-0", 1)?;
    let seen = ask(node0, "pod-0-0", "10.244.1.2:7000")?;
    ensure!(seen.starts_with("10.244.0.2:"), "pod-1-0 saw {seen}");
    eprintln!("   pod-1-0 saw {seen}");

    eprintln!("== the TTL, as in the lab: each node a routed hop");
    let ping = node0.ok("ip netns exec pod-0-0 ping -c1 -W10 10.244.1.2")?;
    ensure!(ping.contains("ttl=62"), "pod-0-0's ping: {ping}");

    eprintln!("== egress through both SNAT stages, seen from inet");
    serve(lb, "inet", 1)?;
    let seen = ask(node0, "pod-0-0", "203.0.113.10:7000")?;
    ensure!(seen.starts_with("198.51.100.10:"), "inet saw {seen}");
    let nat0 = node0.ok(&format!("{} nat --node node-0 --json", np()))?;
    let natl = lb.ok(&format!("{} nat --node lb --json", np()))?;
    ensure!(
        nat0.contains("10.224.0.4:"),
        "node-0 translated nothing: {nat0}"
    );
    ensure!(
        natl.contains("198.51.100.10:"),
        "lb translated nothing: {natl}"
    );
    eprintln!("   inet saw {seen}; node-0 and lb hold the translations");

    eprintln!("== a spoofed source: dropped and counted");
    let before = drops(node0, "node-0", "spoofed_source")?;
    let (code, _) = node0.sh(
        "ip netns exec pod-0-0 ip addr add 10.244.0.99/32 dev eth0
         ip netns exec pod-0-0 ping -c2 -W2 -I 10.244.0.99 10.244.1.2; rc=$?
         ip netns exec pod-0-0 ip addr del 10.244.0.99/32 dev eth0; exit $rc",
        Duration::from_secs(60),
    )?;
    ensure!(code != 0, "the spoofed ping was answered");
    let after = drops(node0, "node-0", "spoofed_source")?;
    ensure!(after >= before + 2, "spoofed_source {before} -> {after}");

    eprintln!("== the XDP early drop: native on virtio-net");
    let link = node0.ok("ip link show eth0")?;
    ensure!(
        link.contains(" xdp ") && !link.contains("xdpgeneric"),
        "eth0 has no native XDP program: {link}"
    );

    eprintln!("== node-0's agent SIGKILLed and restarted under a TCP stream");
    node1.ok("ip netns exec pod-1-0 iperf3 -s -1 -D && sleep 1")?;
    node0.ok(
        "ip netns exec pod-0-0 iperf3 -c 10.244.1.2 -t 16 -i 1 -J >/tmp/stream.json 2>&1 &
         echo started",
    )?;
    node0.ok("sleep 4")?;
    restart_agent(node0, "node-0")?;
    let status = json(&node0.ok("cat /run/netplane/nodes/node-0/agent.json")?)?;
    for hook in ["uplink-ingress", "uplink-egress"] {
        ensure!(
            status["adopted"]
                .as_array()
                .is_some_and(|a| a.iter().any(|h| h == hook)),
            "the new agent did not adopt {hook}: {status}"
        );
    }
    node0.ok("for i in $(seq 120); do grep -q '\"end\"' /tmp/stream.json && grep -q sum_received /tmp/stream.json && exit 0; sleep 0.5; done; exit 1")?;
    let report = json(&node0.ok("cat /tmp/stream.json")?)?;
    let seconds = stream_kept_moving(&report, "pod-0-0 -> pod-1-0 across the restart")?;
    eprintln!("   the stream moved in each of its {seconds} seconds");

    eprintln!("== bulk TCP through both SNAT stages (virtio checksum offload and GSO)");
    lb.ok("ip netns exec inet iperf3 -s -1 -D && sleep 1")?;
    let report = json(&node0.ok("ip netns exec pod-0-0 iperf3 -c 203.0.113.10 -t 5 -i 1 -J")?)?;
    let seconds = stream_kept_moving(&report, "pod-0-0 -> inet")?;
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!(
        "   {seconds} seconds, {:.0} Mbit/s received (software emulation: the number means nothing)",
        bits / 1e6
    );

    eprintln!("== nothing of netplane's in iptables or the kernel's routes");
    for m in [node0, node1, lb] {
        let rules = m.ok("iptables-save 2>/dev/null | grep -c '^-A' || true")?;
        ensure!(rules.trim() == "0", "{}: iptables rules: {rules}", m.name);
        let routes = m.ok("ip route show table all | grep -c '10\\.244\\.' || true")?;
        ensure!(
            routes.trim() == "0",
            "{}: kernel routes to pods: {}",
            m.name,
            m.ok("ip route show table all")?
        );
        let bridges = m.ok("ip -o link show type bridge | wc -l")?;
        ensure!(bridges.trim() == "0", "{}: a bridge", m.name);
    }
    Ok(())
}

/// SIGKILLs the agent of `node` (started in the background by the
/// provisioning script) and starts a new one, which adopts the pinned
/// data path; waits until it says it runs.
fn restart_agent(m: &Machine, node: &str) -> Result<()> {
    let root = workspace_root();
    let log = root.join(format!("target/vm/run/{node}/log"));
    let out = m.ok(&format!(
        "old=$(cat {log}/agent-{node}.pid)
         kill -9 $old
         while kill -0 $old 2>/dev/null; do sleep 0.1; done
         nohup {np} agent --config {root}/netplane-user/src/config/default-cluster.toml --node {node} --uplink-xdp \
            >{log}/agent-{node}-restarted.log 2>&1 &
         new=$!
         echo $new >{log}/agent-{node}.pid
         for i in $(seq 300); do
            grep -Eq '\"pid\": *'$new'($|[^0-9])' /run/netplane/nodes/{node}/agent.json 2>/dev/null && echo restarted $old $new && exit 0
            sleep 0.2
         done
         cat {log}/agent-{node}-restarted.log; exit 1",
        log = log.display(),
        np = np(),
        root = root.display(),
    ))?;
    if !out.contains("restarted") {
        bail!("{node}: {out}");
    }
    eprintln!("   {}", out.trim());
    Ok(())
}
