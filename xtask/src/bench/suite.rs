//! The measuring half of `cargo xtask bench`: every round brings each data
//! path up in turn (the order rotates), runs the same traffic with client
//! and server pinned to fixed CPUs, and takes it down. Produces a `Run`.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use netplane_bench_model::tools::{TcpCrr, TcpRr, UdpSink, UdpSpray};
use serde_json::Value;

use super::{
    Options,
    model::{
        BENCH_POOL, CONNTRACK_CAPACITY, CONNTRACK_LEVELS, Dp, FillRun, QUICK_CONNTRACK_MAX, Run,
        Samples,
    },
    profile::{self, Workload},
};

use crate::workspace_root;

use super::traffic::{
    CLIENT_CPU, CpuMeter, INET, SERVER_POD_IP, client, finish, in_netns, iperf, server, stop,
    sum_field, tcp_echo_args, udp_flood, udp_sink,
};

// Destinations in `inet` (traffic::INET): each test its own port, so that
// one test's translations never take another's ports.

const CRR_SNAT_PORT: u16 = 7001;

const CT_RR_PORT: u16 = 7002;

const FILL_PORT: u16 = 9100;

const SPRAY_DPORTS: (u16, u16) = (20_000, 20_999);

const POD_PORT: u16 = 7000;

/// `netplane-bench run-path`'s paths, profiled after the program costs.
const PROFILED_PATHS: [&str; 5] = [
    "floor",
    "cross-node",
    "snat-established",
    "reverse-nat",
    "snat-new-flow",
];

/// Runs every round, the profiles and the program costs.
pub fn run(opts: &Options) -> Result<Run> {
    let np = release_bin();
    let np = np.to_str().context("utf-8 path")?;
    if crate::lab_is_up_with(std::path::Path::new(np)) {
        eprintln!("== a lab is up: taking it down for the benchmark");
        crate::cmd(np, &["lab", "down"])?;
    }
    let cluster = write_bench_cluster("cluster.toml", None)?;
    let largest = largest_conntrack_level(opts);
    let ct_cluster = if largest > QUICK_CONNTRACK_MAX {
        write_bench_cluster("cluster-conntrack.toml", Some(CONNTRACK_CAPACITY))?
    } else {
        cluster.clone()
    };
    let _conntrack_max = if largest > QUICK_CONNTRACK_MAX {
        RaisedSysctl::at_least(
            "net.netfilter.nf_conntrack_max",
            u64::from(CONNTRACK_CAPACITY),
        )?
    } else {
        None
    };
    let started = Instant::now();
    let mut run = Run::default();
    for round in 0..opts.rounds {
        for i in 0..Dp::ALL.len() {
            let dp = Dp::ALL[(round + i) % Dp::ALL.len()];
            eprintln!(
                "== round {}/{}: {} [{:.0} s so far]",
                round + 1,
                opts.rounds,
                dp.describe(),
                started.elapsed().as_secs_f64()
            );
            lab_up_for(np, dp, &cluster)?;
            let measured = measure(np, dp, opts);
            crate::cmd(np, &["lab", "down"])?;
            let (mut samples, fill) = measured?;
            // Conntrack scale in a lab of its own: the traffic tests' and
            // the fill's translations would count as live entries too.
            lab_up_for(np, dp, &ct_cluster)?;
            let measured = conntrack_scale(np, dp, opts, &mut samples);
            crate::cmd(np, &["lab", "down"])?;
            measured?;
            eprintln!("   {}", one_line(&samples));
            run.samples.push((dp, round, samples));
            if let Some(f) = fill {
                run.fills.push((dp, f));
            }
        }
    }
    if !opts.quick {
        for workload in Workload::ALL {
            for dp in Dp::ALL {
                eprintln!(
                    "== profile: {} under {} (perf, cpu-clock)",
                    dp.describe(),
                    workload.describe()
                );
                lab_up_for(np, dp, &cluster)?;
                let p = profile::machine(np, dp, workload, opts);
                crate::cmd(np, &["lab", "down"])?;
                match p {
                    Ok(p) => run.profiles.push((dp, p)),
                    Err(e) => eprintln!("   no profile: {e:#}"),
                }
            }
        }
    }
    eprintln!("== program costs (BPF_PROG_TEST_RUN)");
    let (rounds, runs) = (
        opts.rounds.to_string(),
        if opts.quick { "5000" } else { "20000" },
    );
    let out = Command::new(crate::bench_bin_beside(np))
        .args(["programs", "--rounds", &rounds, "--runs", runs])
        .output()?;
    if !out.status.success() {
        bail!(
            "netplane-bench programs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    run.programs = serde_json::from_slice(&out.stdout).context("netplane-bench programs")?;
    if !opts.quick {
        for path in PROFILED_PATHS {
            eprintln!("== profile: the program path {path} (perf -g, BPF_PROG_TEST_RUN)");
            match profile::path(np, path, opts.secs()) {
                Ok(p) => run.path_profiles.push(p),
                Err(e) => eprintln!("   no profile: {e:#}"),
            }
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

fn largest_conntrack_level(opts: &Options) -> u32 {
    conntrack_levels(opts).last().map_or(0, |l| l.0)
}

fn conntrack_levels(opts: &Options) -> Vec<(u32, &'static str, &'static str)> {
    CONNTRACK_LEVELS
        .iter()
        .copied()
        .filter(|(n, ..)| !opts.quick || *n <= QUICK_CONNTRACK_MAX)
        .collect()
}

/// Brings a lab up and waits for the machine to settle before anything is
/// measured.
fn lab_up_for(np: &str, dp: Dp, cluster: &std::path::Path) -> Result<()> {
    let up = Command::new(np)
        .args(["lab", "up", "--datapath", dp.lab_arg(), "--config"])
        .arg(cluster)
        .output()?;
    if !up.status.success() {
        bail!("lab up: {}", String::from_utf8_lossy(&up.stderr));
    }
    settle()
}

/// CPU use (in CPUs) below which the machine counts as quiet.
const QUIET_CPUS: f64 = 0.25;

/// The longest wait for quiet.
const SETTLE_LIMIT: Duration = Duration::from_secs(90);

/// Waits until the machine is quiet. A namespace the previous lab left
/// is cleaned up by the kernel after `lab down` returns, in a kworker: with
/// a million conntrack entries that is seconds of CPU, and it would land
/// on whichever data path is measured next.
fn settle() -> Result<()> {
    settle_within(SETTLE_LIMIT).map(|_| ())
}

/// As [`settle`], waiting at most `limit`; returns the seconds waited.
pub(super) fn settle_within(limit: Duration) -> Result<f64> {
    let started = Instant::now();
    let window = Duration::from_millis(500);
    loop {
        let cpu = CpuMeter::start()?;
        std::thread::sleep(window);
        let used = cpu.busy_seconds()? / window.as_secs_f64();
        if used < QUIET_CPUS {
            break;
        }
        if started.elapsed() > limit {
            eprintln!(
                "   the machine is still busy ({used:.2} CPUs) after {limit:?}: measuring anyway"
            );
            break;
        }
    }
    let waited = started.elapsed().as_secs_f64();
    if waited > 2.0 {
        eprintln!("   waited {waited:.0} s for the machine to settle");
    }
    Ok(waited)
}

fn one_line(s: &Samples) -> String {
    [
        "udp_pps_cross_node",
        "tcp_rr_p99_us",
        "crr_pod",
        "crr_snat",
        "iperf_1",
    ]
    .iter()
    .filter_map(|k| s.get(*k).map(|v| format!("{k} {v:.1}")))
    .collect::<Vec<_>>()
    .join(", ")
}

/// The bench cluster: the default one with the largest per-node port block
/// two nodes can have, so that connection tests measure the data path and
/// not the default 1,024-port block; with `nat_entries`, NAT tables of that
/// size.
pub(super) fn write_bench_cluster(
    name: &str,
    nat_entries: Option<u32>,
) -> Result<std::path::PathBuf> {
    let root = workspace_root();
    let path = root.join("netplane-user/src/config/default-cluster.toml");
    let default =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let replace = |text: &str, starts: &str, with: String| -> Result<String> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(starts))
            .with_context(|| format!("default-cluster.toml has no `{starts}` line"))?;
        Ok(text.replace(line, &with))
    };
    let mut bench = replace(
        &default,
        "# allocated_outbound_ports",
        format!("allocated_outbound_ports = {BENCH_POOL} # the benchmark's block"),
    )?;
    if let Some(n) = nat_entries {
        bench = replace(
            &bench,
            "allow_over_route_limit",
            format!("allow_over_route_limit = false\nnat_table_entries = {n}"),
        )?;
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, bench)?;
    Ok(path)
}

/// A host sysctl raised for the run and put back when dropped (also on an
/// error or a panic).
struct RaisedSysctl {
    key: &'static str,
    old: String,
}

impl RaisedSysctl {
    fn at_least(key: &'static str, value: u64) -> Result<Option<Self>> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {key}"))?
            .trim()
            .to_string();
        if old.parse::<u64>().is_ok_and(|v| v >= value) {
            return Ok(None);
        }
        eprintln!(
            "== raising {key} from {old} to {value} for the conntrack-scale runs (restored after)"
        );
        std::fs::write(&path, value.to_string()).with_context(|| format!("setting {key}"))?;
        Ok(Some(Self { key, old }))
    }
}

impl Drop for RaisedSysctl {
    fn drop(&mut self) {
        let path = format!("/proc/sys/{}", self.key.replace('.', "/"));
        match std::fs::write(&path, &self.old) {
            Ok(()) => eprintln!("== {} restored to {}", self.key, self.old),
            Err(e) => eprintln!("== could not restore {} to {}: {e}", self.key, self.old),
        }
    }
}

/// The release build: the traffic generators run at full speed.
pub fn release_bin() -> std::path::PathBuf {
    workspace_root().join("target/release/netplane")
}

/// All tests of one round on the lab that is up.
fn measure(np: &str, dp: Dp, opts: &Options) -> Result<(Samples, Option<FillRun>)> {
    let secs = opts.secs();
    let mut s = Samples::new();
    let pod = format!("{SERVER_POD_IP}:{POD_PORT}");

    let sink = udp_sink(np, secs)?;
    let cpu = CpuMeter::start()?;
    udp_flood(np, secs)?;
    let busy = cpu.busy_seconds()?;
    let got: UdpSink = finish(sink)?;
    s.insert("udp_pps_cross_node".into(), got.packets_per_second);
    if got.packets > 0 {
        s.insert(
            "udp_cpu_ns_per_packet".into(),
            busy * 1e9 / got.packets as f64,
        );
    }

    // The client's ephemeral ports sit in TIME_WAIT for 60 s: with the
    // default 28,232 of them a 3-second connection test at 10k/s would
    // measure the port range. 1024-65535 (a Kubernetes "safe" pod sysctl).
    in_netns(
        "pod-0-0",
        CLIENT_CPU,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"],
    )
    .status()?;
    let echo = server(np, "pod-1-0", &tcp_echo_args(POD_PORT, 3.0 * secs + 5.0))?;
    let rr: TcpRr = client(
        np,
        "pod-0-0",
        &["tcp-rr", "--to", &pod, "--secs", &secs.to_string()],
    )?;
    s.insert("tcp_rr_p50_us".into(), rr.p50_us);
    s.insert("tcp_rr_p99_us".into(), rr.p99_us);
    let crr: TcpCrr = client(
        np,
        "pod-0-0",
        &["tcp-crr", "--to", &pod, "--secs", &secs.to_string()],
    )?;
    stop(echo);
    s.insert("crr_pod".into(), crr.per_second);
    s.insert("crr_pod_failures".into(), crr.failures as f64);

    let echo = server(np, "inet", &tcp_echo_args(CRR_SNAT_PORT, secs + 5.0))?;
    // The load balancer holds each port 240 s after a FIN (Azure), so a
    // test of more connections than the block has ports would measure the
    // pool running out, not the data path: stop at nine tenths of it.
    let crr: TcpCrr = client(
        np,
        "pod-0-0",
        &[
            "tcp-crr",
            "--to",
            &format!("{INET}:{CRR_SNAT_PORT}"),
            "--secs",
            &secs.to_string(),
            "--max-connections",
            &(u64::from(BENCH_POOL) * 9 / 10).to_string(),
        ],
    )?;
    stop(echo);
    s.insert("crr_snat".into(), crr.per_second);
    s.insert("crr_snat_failures".into(), crr.failures as f64);

    for streams in [1, 4] {
        let (gbps, cpu_s) = iperf(streams, secs)?;
        s.insert(format!("iperf_{streams}"), gbps);
        s.insert(
            format!("iperf_{streams}_cpu_s_per_gbit"),
            cpu_s / (gbps * secs),
        );
    }

    let fill = match dp {
        Dp::R => None,
        Dp::K => Some(fill_curve(np)?),
        Dp::E => {
            let fill = fill_curve(np)?;
            // If the gate fails on a lost flow, the log says where it went.
            eprintln!("   drops after the fill: {}", drop_counts(np)?);
            Some(fill)
        }
    };
    Ok((s, fill))
}

/// Every agent's nonzero drop counters, as "AGENT REASON N, ...".
fn drop_counts(np: &str) -> Result<String> {
    let drops = crate::soak::drop_totals(np)?;
    Ok(if drops.is_empty() {
        "none".into()
    } else {
        drops
            .iter()
            .map(|(what, n)| format!("{what} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The SNAT fill curve toward one destination (inet's UDP echo): the
/// bench's whole per-node block and 2 % beyond.
fn fill_curve(np: &str) -> Result<FillRun> {
    let flows = BENCH_POOL + BENCH_POOL / 50;
    let echo = server(
        np,
        "inet",
        &["udp-echo", "--port", &FILL_PORT.to_string(), "--secs", "60"],
    )?;
    let r: Result<FillRun> = client(
        np,
        "pod-0-0",
        &[
            "udp-fill",
            "--to",
            &format!("{INET}:{FILL_PORT}"),
            "--flows",
            &flows.to_string(),
            "--pool",
            &BENCH_POOL.to_string(),
            "--cost-at",
            "10,50,90,99",
        ],
    );
    stop(echo);
    r
}

/// Request/response latency pod-0-0 → inet through SNAT with `level` live
/// tracked flows (UDP from pod-0-0 to closed ports of inet, each its own
/// entry in every translation table on the way, all sent again at each
/// level so none is near its timeout); R, untranslated, has none.
fn conntrack_scale(np: &str, dp: Dp, opts: &Options, s: &mut Samples) -> Result<()> {
    let secs = opts.secs();
    let levels = conntrack_levels(opts);
    let echo = server(
        np,
        "inet",
        &tcp_echo_args(CT_RR_PORT, levels.len() as f64 * (secs + 30.0) + 5.0),
    )?;
    let result = (|| -> Result<()> {
        let dports = u32::from(SPRAY_DPORTS.1 - SPRAY_DPORTS.0 + 1);
        for (level, p50, p99) in levels {
            if dp != Dp::R {
                let sprayed: UdpSpray = client(
                    np,
                    "pod-0-0",
                    &[
                        "udp-spray",
                        "--to",
                        INET,
                        "--dport-first",
                        &SPRAY_DPORTS.0.to_string(),
                        "--dport-last",
                        &SPRAY_DPORTS.1.to_string(),
                        "--first-port",
                        "20000",
                        "--sources",
                        &(level / dports).to_string(),
                    ],
                )?;
                eprintln!("   {level} flows sprayed in {:.1} s", sprayed.seconds);
            }
            let rr: TcpRr = client(
                np,
                "pod-0-0",
                &[
                    "tcp-rr",
                    "--to",
                    &format!("{INET}:{CT_RR_PORT}"),
                    "--secs",
                    &secs.to_string(),
                ],
            )?;
            s.insert(p50.into(), rr.p50_us);
            s.insert(p99.into(), rr.p99_us);
            if dp != Dp::R {
                let live = live_entries(np, dp)?;
                s.insert(format!("ct_live_entries_{level}"), live);
            }
        }
        Ok(())
    })();
    stop(echo);
    result
}

/// Live tracked flows on node-0: netplane's translations, or the kernel's
/// conntrack entries.
fn live_entries(np: &str, dp: Dp) -> Result<f64> {
    if dp == Dp::K {
        let out = Command::new("ip")
            .args(["netns", "exec", "np-node-0", "conntrack", "-C"])
            .output()?;
        return String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .context("conntrack -C");
    }
    let out = Command::new(np)
        .args(["ports", "--node", "node-0", "--json"])
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("netplane ports --json")?;
    Ok(sum_field(&v, "allocated"))
}
