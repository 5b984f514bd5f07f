//! `cargo xtask bench`: netplane (E) against classic kubenet (K) and plain
//! kernel routing (R) on the same lab topology, side by side in one run:
//! every round brings each data path up in turn (the order rotates), runs
//! the same traffic with client and server pinned to fixed CPUs, and takes
//! it down. Writes docs/bench/results.json, docs/benchmarks.md, SVG plots
//! in docs/bench/, and the README's headline table.
use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{report, workspace_root};

/// The data paths, by the letter the issue and the report use.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Dp {
    E,
    K,
    R,
}

impl Dp {
    pub const ALL: [Dp; 3] = [Dp::E, Dp::K, Dp::R];
    pub fn letter(self) -> &'static str {
        match self {
            Dp::E => "E",
            Dp::K => "K",
            Dp::R => "R",
        }
    }
    fn lab_arg(self) -> &'static str {
        match self {
            Dp::E => "netplane",
            Dp::K => "kubenet-classic",
            Dp::R => "routed",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Dp::E => "netplane (eBPF)",
            Dp::K => "classic kubenet (bridge, kernel routes, iptables)",
            Dp::R => "plain kernel routing (no netfilter, no translation)",
        }
    }
}

/// What each metric is: name, unit, higher is better, what it measures.
pub struct MetricDef {
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub what: &'static str,
}

pub const METRICS: &[MetricDef] = &[
    MetricDef {
        name: "udp_pps_cross_node",
        unit: "packets/s",
        higher_is_better: true,
        what: "64-byte UDP frames pod-0-0 → pod-1-0 across nodes, delivered to the socket",
    },
    MetricDef {
        name: "udp_cpu_ns_per_packet",
        unit: "ns",
        higher_is_better: false,
        what: "CPU time of the whole machine per delivered UDP packet",
    },
    MetricDef {
        name: "tcp_rr_p50_us",
        unit: "µs",
        higher_is_better: false,
        what: "TCP 1-byte request/response across nodes, median",
    },
    MetricDef {
        name: "tcp_rr_p99_us",
        unit: "µs",
        higher_is_better: false,
        what: "TCP 1-byte request/response across nodes, 99th percentile",
    },
    MetricDef {
        name: "crr_pod",
        unit: "connections/s",
        higher_is_better: true,
        what: "new TCP connections pod → pod across nodes (connect, 1 byte each way, close)",
    },
    MetricDef {
        name: "crr_pod_failures",
        unit: "failures",
        higher_is_better: false,
        what: "connections of crr_pod that failed or took over 500 ms",
    },
    MetricDef {
        name: "crr_snat",
        unit: "connections/s",
        higher_is_better: true,
        what: "new TCP connections pod → inet through both SNAT stages (R: routed, untranslated)",
    },
    MetricDef {
        name: "crr_snat_failures",
        unit: "failures",
        higher_is_better: false,
        what: "connections of crr_snat that failed or took over 500 ms",
    },
    MetricDef {
        name: "iperf_1",
        unit: "Gbit/s",
        higher_is_better: true,
        what: "iperf3, 1 TCP stream pod → pod across nodes",
    },
    MetricDef {
        name: "iperf_1_cpu_s_per_gbit",
        unit: "CPU s/Gbit",
        higher_is_better: false,
        what: "CPU time of the whole machine per Gbit moved by iperf_1",
    },
    MetricDef {
        name: "iperf_4",
        unit: "Gbit/s",
        higher_is_better: true,
        what: "iperf3, 4 TCP streams pod → pod across nodes",
    },
    MetricDef {
        name: "iperf_4_cpu_s_per_gbit",
        unit: "CPU s/Gbit",
        higher_is_better: false,
        what: "CPU time of the whole machine per Gbit moved by iperf_4",
    },
];

/// Live-entry levels of the conntrack-scale runs and their metric names
/// (`--quick` stops at 100k).
pub const CONNTRACK_LEVELS: &[(u32, &str, &str)] = &[
    (10_000, "ct_10k_rr_p50_us", "ct_10k_rr_p99_us"),
    (100_000, "ct_100k_rr_p50_us", "ct_100k_rr_p99_us"),
    (1_000_000, "ct_1m_rr_p50_us", "ct_1m_rr_p99_us"),
];
const QUICK_CONNTRACK_MAX: u32 = 100_000;

/// Room for 1M live flows and what else runs: netplane's NAT tables in the
/// conntrack lab (limits.nat_table_entries), and the kernel's
/// nf_conntrack_max, raised for the run and restored after.
pub const CONNTRACK_CAPACITY: u32 = 1_100_000;

pub const CONNTRACK_NOTE: &str = "For the 1M level the conntrack lab's cluster file sets \
     `limits.nat_table_entries = 1100000` (netplane's default is 262,144), and the benchmark \
     raises the host's `net.netfilter.nf_conntrack_max` to 1,100,000 for the run (restored \
     after; new namespaces take their maximum from it). The kernel's conntrack hash keeps its \
     boot-time bucket count (`nf_conntrack_buckets`), as it would on a node whose admin raised \
     only the maximum.";

/// Destinations in `inet` (203.0.113.10): each test its own port, so that
/// one test's translations never take another's ports.
const INET: &str = "203.0.113.10";
const CRR_SNAT_PORT: u16 = 7001;
const CT_RR_PORT: u16 = 7002;
const FILL_PORT: u16 = 9100;
const SPRAY_DPORTS: (u16, u16) = (20_000, 20_999);
/// Pod-to-pod server: pod-1-0.
const SERVER_POD_IP: &str = "10.244.1.2";
const POD_PORT: u16 = 7000;
const UDP_PORT: u16 = 9000;
/// Ports per node on the load balancer in the bench cluster: the most two
/// nodes can have on one frontend IP (64,000 / 2).
pub const BENCH_POOL: u32 = 32_000;
const CLIENT_CPU: &str = "0";
const SERVER_CPU: &str = "1";

pub struct Options {
    pub quick: bool,
    pub rounds: usize,
    pub gate: bool,
}

impl Options {
    /// Seconds per traffic test.
    fn secs(&self) -> f64 {
        if self.quick { 1.0 } else { 3.0 }
    }
}

/// Every sample of one round for one data path.
pub type Samples = BTreeMap<String, f64>;

pub struct Run {
    pub samples: Vec<(Dp, usize, Samples)>,
    pub fills: Vec<(Dp, Value)>,
    pub programs: Value,
    /// Where the machine's CPU went during the UDP flood, per data path.
    pub profiles: Vec<(Dp, Value)>,
    pub seconds: f64,
}

pub fn run(opts: &Options) -> Result<()> {
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
    let mut run = Run {
        samples: Vec::new(),
        fills: Vec::new(),
        programs: Value::Null,
        profiles: Vec::new(),
        seconds: 0.0,
    };
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
        for dp in Dp::ALL {
            eprintln!(
                "== profile: {} under the UDP flood (perf, cpu-clock)",
                dp.describe()
            );
            lab_up_for(np, dp, &cluster)?;
            let p = profile(np, dp, opts);
            crate::cmd(np, &["lab", "down"])?;
            match p {
                Ok(p) => run.profiles.push((dp, p)),
                Err(e) => eprintln!("   no profile: {e:#}"),
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
    run.programs = serde_json::from_slice(&out.stdout)?;
    run.seconds = started.elapsed().as_secs_f64();
    let results = report::results(&run, opts)?;
    report::write_all(&results)?;
    if opts.gate {
        report::gate(&results)?;
    }
    Ok(())
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
    let started = Instant::now();
    let window = Duration::from_millis(500);
    loop {
        let cpu = CpuMeter::start()?;
        std::thread::sleep(window);
        let used = cpu.busy_seconds()? / window.as_secs_f64();
        if used < QUIET_CPUS {
            break;
        }
        if started.elapsed() > SETTLE_LIMIT {
            eprintln!(
                "   the machine is still busy ({used:.2} CPUs) after {SETTLE_LIMIT:?}: measuring anyway"
            );
            break;
        }
    }
    let waited = started.elapsed().as_secs_f64();
    if waited > 2.0 {
        eprintln!("   waited {waited:.0} s for the machine to settle");
    }
    Ok(())
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
fn write_bench_cluster(name: &str, nat_entries: Option<u32>) -> Result<std::path::PathBuf> {
    let root = workspace_root();
    let default = std::fs::read_to_string(root.join("netplane-user/src/default-cluster.toml"))?;
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
fn measure(np: &str, dp: Dp, opts: &Options) -> Result<(Samples, Option<Value>)> {
    let secs = opts.secs();
    let mut s = Samples::new();
    let pod = format!("{SERVER_POD_IP}:{POD_PORT}");

    let sink = udp_sink(np, secs)?;
    let cpu = CpuMeter::start()?;
    udp_flood(np, secs)?;
    let busy = cpu.busy_seconds()?;
    let got = finish(sink)?;
    let pps = got["packets_per_second"].as_f64().context("sink")?;
    let packets = got["packets"].as_f64().context("sink")?;
    s.insert("udp_pps_cross_node".into(), pps);
    if packets > 0.0 {
        s.insert("udp_cpu_ns_per_packet".into(), busy * 1e9 / packets);
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
    let rr = client(
        np,
        "pod-0-0",
        &["tcp-rr", "--to", &pod, "--secs", &secs.to_string()],
    )?;
    s.insert("tcp_rr_p50_us".into(), num(&rr, "p50_us")?);
    s.insert("tcp_rr_p99_us".into(), num(&rr, "p99_us")?);
    let crr = client(
        np,
        "pod-0-0",
        &["tcp-crr", "--to", &pod, "--secs", &secs.to_string()],
    )?;
    stop(echo);
    s.insert("crr_pod".into(), num(&crr, "per_second")?);
    s.insert("crr_pod_failures".into(), num(&crr, "failures")?);

    let echo = server(np, "inet", &tcp_echo_args(CRR_SNAT_PORT, secs + 5.0))?;
    let crr = client(
        np,
        "pod-0-0",
        &[
            "tcp-crr",
            "--to",
            &format!("{INET}:{CRR_SNAT_PORT}"),
            "--secs",
            &secs.to_string(),
        ],
    )?;
    stop(echo);
    s.insert("crr_snat".into(), num(&crr, "per_second")?);
    s.insert("crr_snat_failures".into(), num(&crr, "failures")?);

    for streams in [1, 4] {
        let (gbps, cpu_s) = iperf(streams, secs)?;
        s.insert(format!("iperf_{streams}"), gbps);
        s.insert(
            format!("iperf_{streams}_cpu_s_per_gbit"),
            cpu_s / (gbps * secs),
        );
    }

    let fill = if dp == Dp::R {
        None
    } else {
        Some(fill_curve(np)?)
    };
    Ok((s, fill))
}

/// The UDP sink in pod-1-0, ending a little after the flood.
fn udp_sink(np: &str, secs: f64) -> Result<Child> {
    let secs = (secs + 3.0).to_string();
    let port = UDP_PORT.to_string();
    server(
        np,
        "pod-1-0",
        &[
            "udp-sink",
            "--port",
            &port,
            "--secs",
            &secs,
            "--idle-ms",
            "300",
        ],
    )
}

/// 64-byte frames pod-0-0 → pod-1-0 for `secs`: 18 bytes of payload plus
/// UDP, IPv4 and Ethernet headers (+ 4 of FCS on a wire).
fn udp_flood(np: &str, secs: f64) -> Result<Value> {
    let to = format!("{SERVER_POD_IP}:{UDP_PORT}");
    let secs = secs.to_string();
    client(
        np,
        "pod-0-0",
        &["udp-flood", "--to", &to, "--payload", "18", "--secs", &secs],
    )
}

fn tcp_echo_args(port: u16, secs: f64) -> Vec<String> {
    [
        "tcp-echo",
        "--port",
        &port.to_string(),
        "--secs",
        &secs.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// iperf3 pod-0-0 → pod-1-0: Gbit/s received and CPU seconds used.
fn iperf(streams: u32, secs: f64) -> Result<(f64, f64)> {
    let server = in_netns("pod-1-0", SERVER_CPU, &["iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu = CpuMeter::start()?;
    let out = in_netns(
        "pod-0-0",
        CLIENT_CPU,
        &[
            "iperf3",
            "-c",
            SERVER_POD_IP,
            "-p",
            "5201",
            "-J",
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
        ],
    )
    .output()?;
    let busy = cpu.busy_seconds()?;
    stop(server);
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")?;
    Ok((bps / 1e9, busy))
}

/// A whole-machine CPU profile (perf's cpu-clock: a VM has no hardware
/// counters) while the 64-byte UDP flood runs: the top kernel symbols, and
/// the shares of netplane's programs, netfilter and the bridge.
fn profile(np: &str, dp: Dp, opts: &Options) -> Result<Value> {
    let secs = opts.secs();
    let data = workspace_root().join(format!("target/bench/perf-{}.data", dp.letter()));
    let data = data.to_str().context("utf-8 path")?.to_string();
    let sink = udp_sink(np, secs)?;
    let record = Command::new("perf")
        .args([
            "record",
            "-a",
            "-e",
            "cpu-clock",
            "-F",
            "1999",
            "-o",
            &data,
            "--",
            "sleep",
        ])
        .arg((secs - 0.5).max(0.5).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("perf (package linux-perf)")?;
    let flood = udp_flood(np, secs);
    let recorded = record.wait_with_output()?;
    finish(sink)?;
    flood?;
    if !recorded.status.success() {
        bail!("perf record failed");
    }
    let out = Command::new("perf")
        .args([
            "report",
            "-i",
            &data,
            "--stdio",
            "--no-children",
            "--sort",
            "symbol",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<(f64, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let pct = w.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
            let _kind = w.next()?;
            Some((pct, w.next()?.to_string()))
        })
        .collect();
    let share = |pred: &dyn Fn(&str) -> bool| -> f64 {
        // (A float sum of nothing is -0.0.)
        rows.iter()
            .filter(|(_, s)| pred(s))
            .map(|(p, _)| p)
            .sum::<f64>()
            + 0.0
    };
    let top: Vec<Value> = rows
        .iter()
        .take(12)
        .map(|(p, s)| serde_json::json!({"percent": p, "symbol": s}))
        .collect();
    Ok(serde_json::json!({
        "samples_of_machine": "all CPUs, cpu-clock at 1999 Hz",
        "bpf_programs_percent": share(&|s| s.starts_with("bpf_prog_")),
        "netfilter_percent": share(&|s| {
            ["nf_", "ipt_", "nft_", "__nf_", "ipv4_conntrack", "nf_nat"].iter().any(|p| s.starts_with(p))
        }),
        "bridge_percent": share(&|s| s.starts_with("br_") || s.starts_with("__br_")),
        "fib_percent": share(&|s| s.starts_with("fib_") || s.starts_with("ip_route")),
        "top": top,
    }))
}

/// The SNAT fill curve toward one destination (inet's UDP echo): the
/// bench's whole per-node block and 2 % beyond.
fn fill_curve(np: &str) -> Result<Value> {
    let flows = BENCH_POOL + BENCH_POOL / 50;
    let echo = server(
        np,
        "inet",
        &["udp-echo", "--port", &FILL_PORT.to_string(), "--secs", "60"],
    )?;
    let r = client(
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
                let sprayed = client(
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
                eprintln!(
                    "   {level} flows sprayed in {:.1} s",
                    sprayed["seconds"].as_f64().unwrap_or(0.0)
                );
            }
            let rr = client(
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
            s.insert(p50.into(), num(&rr, "p50_us")?);
            s.insert(p99.into(), num(&rr, "p99_us")?);
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

fn sum_field(v: &Value, field: &str) -> f64 {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                if k == field {
                    x.as_f64().unwrap_or(0.0)
                } else {
                    sum_field(x, field)
                }
            })
            .sum(),
        Value::Array(a) => a.iter().map(|x| sum_field(x, field)).sum(),
        _ => 0.0,
    }
}

fn num(v: &Value, k: &str) -> Result<f64> {
    v[k].as_f64().with_context(|| format!("no {k} in {v}"))
}

/// `ip netns exec np-<host> taskset -c <cpu> <argv>`.
fn in_netns(host: &str, cpu: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &format!("np-{host}"), "taskset", "-c", cpu])
        .args(argv);
    c
}

/// A loadgen server on the server CPU; it ends by its own deadline, or is
/// stopped by PID.
fn server<S: AsRef<str>>(np: &str, host: &str, args: &[S]) -> Result<Child> {
    let bench = crate::bench_bin_beside(np);
    let mut argv = vec![bench.as_str(), "loadgen"];
    argv.extend(args.iter().map(AsRef::as_ref));
    let child = in_netns(host, SERVER_CPU, &argv)
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

/// Waits for a server that ends by itself, and reads its JSON.
fn finish(child: Child) -> Result<Value> {
    let out = child.wait_with_output()?;
    serde_json::from_slice(&out.stdout).context("loadgen server output")
}

/// Stops a server we started (by its PID, through Child).
fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A loadgen client on the client CPU; returns its JSON.
fn client(np: &str, host: &str, args: &[&str]) -> Result<Value> {
    let bench = crate::bench_bin_beside(np);
    let mut argv = vec![bench.as_str(), "loadgen"];
    argv.extend_from_slice(args);
    let out = in_netns(host, CLIENT_CPU, &argv).output()?;
    if !out.status.success() {
        bail!(
            "loadgen {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("loadgen {} output", args.join(" ")))
}

/// Busy CPU time of the whole machine (all CPUs), from /proc/stat.
struct CpuMeter {
    start: f64,
}

impl CpuMeter {
    fn start() -> Result<Self> {
        Ok(Self {
            start: busy_seconds()?,
        })
    }
    fn busy_seconds(&self) -> Result<f64> {
        Ok(busy_seconds()? - self.start)
    }
}

fn busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal, in USER_HZ (100 per
    // second on Linux): busy is user + nice + system + irq + softirq (steal
    // is the hypervisor's, not ours).
    let busy: f64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum();
    Ok(busy / 100.0)
}
