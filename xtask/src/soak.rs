//! `cargo xtask soak [--minutes N]`: the lab under churn for a bounded
//! time, then checked for leaks.
//!
//! Each round sends:
//! - a burst of short TCP connections from pod-0-0 through both SNAT
//!   stages;
//! - UDP and ICMP to `inet`;
//! - a pod added and removed through the CNI plugin;
//!
//! and every few rounds changes a route (a third node in and out) and kills
//! an agent and restarts it. A long TCP connection from pod-1-0 to `inet`
//! runs throughout. Once the traffic stops and the (shortened) timers run
//! out:
//! - every SNAT port must be back;
//! - the NAT tables must be empty;
//! - the agents' memory must be flat (shown per round);
//! - after `lab down`, nothing of netplane's may be left.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{netplane_bin, workspace_root};

/// The soak's cluster: timers short enough that a flow's port comes back
/// within seconds, and ports enough that the churn never runs out.
const SHORT_TIMERS: [(&str, &str); 13] = [
    // Room for a second of connections at full speed per node (three
    // nodes fit one frontend IP: node-2 comes and goes).
    (
        "# allocated_outbound_ports = 1024",
        "allocated_outbound_ports = 20000",
    ),
    ("fin_release_s = 240", "fin_release_s = 3"),
    ("rst_release_s = 15", "rst_release_s = 3"),
    ("tcp_syn_sent_s = 120", "tcp_syn_sent_s = 3"),
    ("tcp_established_s = 86400", "tcp_established_s = 8"),
    ("tcp_fin_wait_s = 120", "tcp_fin_wait_s = 3"),
    ("tcp_close_wait_s = 3600", "tcp_close_wait_s = 3"),
    ("tcp_time_wait_s = 120", "tcp_time_wait_s = 3"),
    ("tcp_close_s = 10", "tcp_close_s = 3"),
    ("udp_s = 30", "udp_s = 3"),
    ("udp_stream_s = 120", "udp_stream_s = 3"),
    ("icmp_s = 30", "icmp_s = 3"),
    (
        "tcp_reset_on_idle = true",
        "tcp_reset_on_idle = true\nexperiment_idle_timeout_s = 8",
    ),
];
/// Each round's burst of short connections: at full speed (about 9,000 a
/// second here) it stays well inside a node's 20,000 ports while they are
/// held for the release timers, so no failure is the load balancer's rule.
const CRR_SECS: &str = "0.2";
/// How long after the traffic stops every flow must be gone.
const SETTLE: Duration = Duration::from_secs(20);
const SOAK_POD_NS: &str = "np-soak-pod";

struct Files {
    cluster: PathBuf,
    with_node2: PathBuf,
    report: PathBuf,
}

fn files() -> Result<Files> {
    let dir = workspace_root().join("target/soak");
    std::fs::create_dir_all(&dir)?;
    let mut text = std::fs::read_to_string(
        workspace_root().join("netplane-user/src/config/default-cluster.toml"),
    )?;
    for (from, to) in SHORT_TIMERS {
        if !text.contains(from) {
            bail!("the default cluster file no longer says {from:?}");
        }
        text = text.replace(from, to);
    }
    let cluster = dir.join("cluster.toml");
    std::fs::write(&cluster, &text)?;
    let node2 = "[[nodes]]\nname = \"node-1\"\nip = \"10.224.0.5\"\n";
    let with_node2 = dir.join("cluster-node-2.toml");
    std::fs::write(
        &with_node2,
        text.replace(
            node2,
            &format!("{node2}\n[[nodes]]\nname = \"node-2\"\nip = \"10.224.0.6\"\n"),
        ),
    )?;
    Ok(Files {
        cluster,
        with_node2,
        report: dir.join("report.md"),
    })
}

/// A command's stdout; an error with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(np: &str, args: &[&str]) -> Result<Value> {
    Ok(serde_json::from_str(&run(np, args)?)?)
}

fn bench(np: &str) -> String {
    crate::bench_bin_beside(np)
}

/// A background process in a lab host, its output read at the end.
fn spawn_in(np: &str, host: &str, argv: &[&str]) -> Result<Child> {
    spawn_with(np, host, argv, Stdio::piped())
}

/// A server in a lab host, its output discarded: a pipe nobody reads
/// would fill (64 KiB: the UDP server's line per answer, after about
/// 1,600 answers) and block it.
fn spawn_server(np: &str, host: &str, argv: &[&str]) -> Result<Child> {
    spawn_with(np, host, argv, Stdio::null())
}

fn spawn_with(np: &str, host: &str, argv: &[&str], stdout: Stdio) -> Result<Child> {
    Ok(Command::new(np)
        .args(["lab", "exec", host, "--"])
        .args(argv)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()?)
}

/// Every agent's drop counters, "AGENT REASON" -> packets.
pub fn drop_totals(np: &str) -> Result<std::collections::BTreeMap<String, u64>> {
    let stats = json(np, &["stats", "--json"])?;
    let mut out = std::collections::BTreeMap::new();
    for (agent, c) in stats["nodes"].as_object().context("stats")? {
        for d in c["drops"].as_array().context("drops")? {
            let n = d["packets"].as_u64().unwrap_or(0);
            if n > 0 {
                out.insert(
                    format!("{agent} {}", d["reason"].as_str().unwrap_or("?")),
                    n,
                );
            }
        }
    }
    Ok(out)
}

/// What grew from `before` to `now`, as "AGENT REASON +N, ...".
fn grown(
    before: &std::collections::BTreeMap<String, u64>,
    now: &std::collections::BTreeMap<String, u64>,
) -> String {
    now.iter()
        .filter_map(|(k, n)| {
            let d = n.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| format!("{k} +{d}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each running agent's resident memory (kB), by name.
fn agents_rss(np: &str) -> Result<Vec<(String, u64)>> {
    let st = json(np, &["lab", "status", "--json"])?;
    let mut out = Vec::new();
    for a in st["agents"].as_array().context("agents")? {
        let pid = a["pid"].as_u64().context("pid")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        out.push((a["node"].as_str().unwrap_or("?").to_string(), kb));
    }
    Ok(out)
}

/// Adds a pod to node-0 through the CNI plugin, checks it reaches pod-1-0,
/// and removes it again.
fn pod_churn(np: &str, cluster: &Path, round: usize) -> Result<()> {
    let cni = Path::new(np).with_file_name("netplane-cni");
    let _ = run("ip", &["netns", "del", SOAK_POD_NS]);
    run("ip", &["netns", "add", SOAK_POD_NS])?;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "netplane", "type": "netplane-cni",
        "cluster": cluster, "node": "node-0",
    })
    .to_string();
    let container = format!("soak-{round}");
    let call = |command: &str| -> Result<String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", "np-node-0"])
            .arg(&cni)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &container)
            .env("CNI_NETNS", format!("/run/netns/{SOAK_POD_NS}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, conf.as_bytes())?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("netplane-cni {command}: {text}");
        }
        Ok(text)
    };
    let result = (|| -> Result<()> {
        call("ADD")?;
        // The agent registers the pod within a reconcile tick.
        let ok = (0..20).any(|_| {
            std::thread::sleep(Duration::from_millis(200));
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    SOAK_POD_NS,
                    "ping",
                    "-c1",
                    "-W1",
                    "10.244.1.2",
                ])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !ok {
            bail!("a pod added through the CNI plugin never reached pod-1-0");
        }
        Ok(())
    })();
    let deleted = call("DEL");
    let _ = run("ip", &["netns", "del", SOAK_POD_NS]);
    result?;
    deleted.map(|_| ())
}

struct Round {
    secs: f64,
    connections: u64,
    failures: u64,
    /// Which kinds failed (TCP connections, the UDP datagram, the pings).
    failed: String,
    /// Drops the data path counted during the round, by agent and reason.
    drops: String,
    rss: Vec<(String, u64)>,
}

pub fn run_soak(minutes: f64) -> Result<()> {
    let np = netplane_bin();
    let np = np.to_str().context("utf-8 path")?;
    if crate::lab_is_up() {
        run(np, &["lab", "down"])?;
    }
    let f = files()?;
    let cluster = f.cluster.to_str().context("utf-8 path")?;
    eprintln!("== soak: {minutes} minute(s) of churn on the lab ({cluster})");
    run(np, &["lab", "up", "--config", cluster])?;
    let result = soak(np, &f, minutes);
    eprintln!("== lab down");
    let down = run(np, &["lab", "down"]);
    let report = result?;
    down?;
    let leftovers = leftovers()?;
    let mut report = report;
    if leftovers.is_empty() {
        report.push_str("\nAfter `lab down`: no np- namespace, no pin, no agent.\n");
    } else {
        bail!("left after lab down: {}", leftovers.join(", "));
    }
    std::fs::write(&f.report, &report)?;
    println!("{report}");
    eprintln!("written to {}", f.report.display());
    Ok(())
}

/// Everything of netplane's the lab could leave behind.
fn leftovers() -> Result<Vec<String>> {
    let mut out: Vec<String> = run("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("np-"))
        .map(|n| format!("namespace {n}"))
        .collect();
    let bpffs = Path::new("/run/netplane/bpf");
    if let Ok(dir) = std::fs::read_dir(bpffs) {
        for e in dir
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            out.push(format!("pins {}", e.path().display()));
        }
    }
    for p in std::fs::read_dir("/proc")?.flatten() {
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("netplane\0agent") {
            out.push(format!("agent pid {}", p.file_name().to_string_lossy()));
        }
    }
    Ok(out)
}

fn soak(np: &str, f: &Files, minutes: f64) -> Result<String> {
    let total = Duration::from_secs_f64(minutes * 60.0);
    let serve_secs = (total.as_secs() + 60).to_string();
    let b = bench(np);
    let echo = |port: &str| {
        let argv = [
            b.as_str(),
            "loadgen",
            "tcp-echo",
            "--port",
            port,
            "--secs",
            &serve_secs,
        ];
        spawn_server(np, "inet", &argv)
    };
    let udp = [
        np,
        "whoami",
        "serve",
        "--udp",
        "--max",
        "1000000",
        "--timeout",
        &serve_secs,
    ];
    let servers = vec![
        echo("7001")?,
        echo("7003")?,
        spawn_server(np, "inet", &udp)?,
    ];
    // The client's own ports: a second of connections at full speed each
    // round leaves tens of thousands in TIME_WAIT for 60 s; without these
    // the client runs out before any SNAT stage does.
    run(
        np,
        &[
            "lab",
            "exec",
            "pod-0-0",
            "--",
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let mut long = spawn_in(
        np,
        "pod-1-0",
        &[
            &b,
            "loadgen",
            "tcp-rr",
            "--to",
            "203.0.113.10:7003",
            "--secs",
            &total.as_secs().to_string(),
        ],
    )?;
    let started = Instant::now();
    let mut rounds: Vec<Round> = Vec::new();
    let agents = ["node-0", "node-1", "lb"];
    let result = (|| -> Result<()> {
        let mut round = 0;
        let mut drops_before = drop_totals(np)?;
        while started.elapsed() < total {
            round += 1;
            let crr = json(
                np,
                &[
                    "lab",
                    "exec",
                    "pod-0-0",
                    "--",
                    &b,
                    "loadgen",
                    "tcp-crr",
                    "--to",
                    "203.0.113.10:7001",
                    "--secs",
                    CRR_SECS,
                ],
            )?;
            let udp = Command::new(np)
                .args([
                    "lab",
                    "exec",
                    "pod-1-1",
                    "--",
                    np,
                    "whoami",
                    "ask",
                    "203.0.113.10:7000",
                ])
                .args(["--udp", "--timeout", "2"])
                .output()?;
            let ping = Command::new(np)
                .args([
                    "lab",
                    "exec",
                    "pod-0-1",
                    "--",
                    "ping",
                    "-c3",
                    "-i",
                    "0.2",
                    "-W1",
                    "203.0.113.10",
                ])
                .output()?;
            pod_churn(np, &f.cluster, round)?;
            if round % 3 == 0 {
                let file = if round % 6 == 0 {
                    &f.cluster
                } else {
                    &f.with_node2
                };
                run(
                    np,
                    &["lab", "reload", "--config", file.to_str().context("path")?],
                )?;
            }
            if round % 4 == 0 {
                let agent = agents[(round / 4) % agents.len()];
                run(np, &["lab", "agent-restart", agent, "--kill"])?;
            }
            let tcp_failed = crr["failures"].as_u64().unwrap_or(0);
            let (udp_failed, ping_failed) = (!udp.status.success(), !ping.status.success());
            let failures = tcp_failed + u64::from(udp_failed) + u64::from(ping_failed);
            let mut failed = Vec::new();
            if tcp_failed > 0 {
                failed.push(format!("{tcp_failed} TCP"));
            }
            if udp_failed {
                failed.push(format!(
                    "UDP ({})",
                    String::from_utf8_lossy(&udp.stderr).trim()
                ));
            }
            if ping_failed {
                failed.push("ping".to_string());
            }
            let connections = crr["connections"].as_u64().unwrap_or(0) + 2;
            let now = drop_totals(np)?;
            let r = Round {
                secs: started.elapsed().as_secs_f64(),
                connections,
                failures,
                failed: failed.join(", "),
                drops: grown(&drops_before, &now),
                rss: agents_rss(np)?,
            };
            drops_before = now;
            eprintln!(
                "   round {round} at {:.0} s: {} connections, {} failed {}; RSS {}",
                r.secs,
                r.connections,
                r.failures,
                r.failed,
                r.rss
                    .iter()
                    .map(|(a, kb)| format!("{a} {} MB", kb / 1024))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            rounds.push(r);
        }
        Ok(())
    })();
    if result.is_err() {
        // The rounds stopped early: the long connection would run on for
        // the rest of the hour before the error is told.
        let _ = long.kill();
    }
    let long_out = long.wait_with_output()?;
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    result?;
    let long_rr: Value = serde_json::from_slice(&long_out.stdout).unwrap_or(Value::Null);
    eprintln!(
        "== traffic stopped; waiting {} s for the timers",
        SETTLE.as_secs()
    );
    // Back to the file the lab started with (a node-2 route may be in).
    run(
        np,
        &[
            "lab",
            "reload",
            "--config",
            f.cluster.to_str().context("path")?,
        ],
    )?;
    std::thread::sleep(SETTLE);
    let ports = json(np, &["ports", "--json"])?;
    let nat = json(np, &["nat", "--json"])?;
    // Per agent: ports its counters hold, and translations holding them
    // (fewer translations than ports is a claim without its translation).
    let per_agent: Vec<(String, u64, u64)> = ports["agents"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(agent, blocks)| {
            let blocks = blocks.as_array().into_iter().flatten();
            let sum = |field: &str| blocks.clone().map(|b| b[field].as_u64().unwrap_or(0)).sum();
            (agent.clone(), sum("allocated"), sum("live_entries"))
        })
        .collect();
    let allocated: u64 = per_agent.iter().map(|(_, a, _)| a).sum();
    let translations: usize = nat["agents"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .map(|flows| flows.as_array().map_or(0, Vec::len))
        .sum();
    report(&rounds, &long_rr, allocated, translations, minutes).map_err(|e| {
        let held: Vec<String> = per_agent
            .iter()
            .map(|(a, ports, live)| {
                format!("{a}: {ports} ports allocated, {live} held by a translation")
            })
            .collect();
        e.context(format!("per agent: {}", held.join("; ")))
    })
}

fn report(
    rounds: &[Round],
    long_rr: &Value,
    allocated: u64,
    translations: usize,
    minutes: f64,
) -> Result<String> {
    let connections: u64 = rounds.iter().map(|r| r.connections).sum();
    let failures: u64 = rounds.iter().map(|r| r.failures).sum();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Soak: {minutes} minute(s), {} rounds\n\n\
         {connections} connections, datagrams and pings through both SNAT stages, {failures} failed; \
         a pod added and removed through the CNI plugin every round; a route changed every 3rd round; \
         an agent SIGKILLed and restarted every 4th round (node-0, node-1, lb in turn). \
         The long TCP connection made {} round trips (p99 {} µs).\n",
        rounds.len(),
        long_rr["transactions"].as_u64().unwrap_or(0),
        long_rr["p99_us"].as_f64().unwrap_or(f64::NAN),
    );
    let _ = writeln!(
        s,
        "After the traffic stopped and {} s of timers: {allocated} SNAT ports allocated, {translations} translations left.\n",
        SETTLE.as_secs()
    );
    let _ = writeln!(
        s,
        "| round | at (s) | connections | failed | data path drops | agents' RSS (MB) |\n|---|---|---|---|---|---|"
    );
    for (i, r) in rounds.iter().enumerate() {
        let rss: Vec<String> = r
            .rss
            .iter()
            .map(|(a, kb)| format!("{a} {:.1}", *kb as f64 / 1024.0))
            .collect();
        let failed = if r.failures == 0 {
            "0".to_string()
        } else {
            format!("{}: {}", r.failures, r.failed)
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {failed} | {} | {} |",
            i + 1,
            r.secs,
            r.connections,
            r.drops,
            rss.join(", ")
        );
    }
    if allocated != 0 || translations != 0 {
        bail!("{s}\nleaked: {allocated} ports still allocated, {translations} translations left");
    }
    // A rare lone failure is reported, not fatal: a leak shows as ports or
    // translations left, or as failures that do not stop (docs/soak.md).
    if failures * 1000 > connections {
        bail!("{s}\nmore than 0.1% of the traffic failed");
    }
    // Flat memory: the last round's agents hold at most 1.5x the first
    // round's plus 8 MB (a restarted agent starts again from less).
    if let (Some(first), Some(last)) = (rounds.first(), rounds.last()) {
        for ((a, kb0), (_, kb1)) in first.rss.iter().zip(&last.rss) {
            if *kb1 > kb0 * 3 / 2 + 8 * 1024 {
                bail!("{s}\n{a}'s memory grew from {kb0} kB to {kb1} kB");
            }
        }
    }
    Ok(s)
}
