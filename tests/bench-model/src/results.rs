//! The benchmark's model: what the suite measures (`Run`, raw samples per
//! data path and round) and what the report shows (`Results`, the shape of
//! docs/bench/results.json). The suite produces a `Run`, `Results::from_run`
//! summarises it, and the report, plots and gate read `Results`; none of
//! them knows the others.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    pub fn lab_arg(self) -> &'static str {
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
#[derive(Clone, Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub what: std::borrow::Cow<'static, str>,
}

pub const METRICS: &[MetricDef] = &[
    MetricDef {
        name: "udp_pps_cross_node",
        unit: "packets/s",
        higher_is_better: true,
        what: std::borrow::Cow::Borrowed(
            "64-byte UDP frames pod-0-0 → pod-1-0 across nodes, delivered to the socket",
        ),
    },
    MetricDef {
        name: "udp_cpu_ns_per_packet",
        unit: "ns",
        higher_is_better: false,
        what: std::borrow::Cow::Borrowed("CPU time of the whole machine per delivered UDP packet"),
    },
    MetricDef {
        name: "tcp_rr_p50_us",
        unit: "µs",
        higher_is_better: false,
        what: std::borrow::Cow::Borrowed("TCP 1-byte request/response across nodes, median"),
    },
    MetricDef {
        name: "tcp_rr_p99_us",
        unit: "µs",
        higher_is_better: false,
        what: std::borrow::Cow::Borrowed(
            "TCP 1-byte request/response across nodes, 99th percentile",
        ),
    },
    MetricDef {
        name: "crr_pod",
        unit: "connections/s",
        higher_is_better: true,
        what: std::borrow::Cow::Borrowed(
            "new TCP connections pod → pod across nodes (connect, 1 byte each way, close)",
        ),
    },
    MetricDef {
        name: "crr_pod_failures",
        unit: "failures",
        higher_is_better: false,
        what: std::borrow::Cow::Borrowed("connections of crr_pod that failed or took over 500 ms"),
    },
    MetricDef {
        name: "crr_snat",
        unit: "connections/s",
        higher_is_better: true,
        what: std::borrow::Cow::Borrowed(
            "new TCP connections pod → inet through both SNAT stages (R: routed, untranslated); stops at nine tenths of the 32,000-port block, which holds a port 240 s after its FIN",
        ),
    },
    MetricDef {
        name: "crr_snat_failures",
        unit: "failures",
        higher_is_better: false,
        what: std::borrow::Cow::Borrowed("connections of crr_snat that failed or took over 500 ms"),
    },
    MetricDef {
        name: "iperf_1",
        unit: "Gbit/s",
        higher_is_better: true,
        what: std::borrow::Cow::Borrowed("iperf3, 1 TCP stream pod → pod across nodes"),
    },
    MetricDef {
        name: "iperf_1_cpu_s_per_gbit",
        unit: "CPU s/Gbit",
        higher_is_better: false,
        what: std::borrow::Cow::Borrowed("CPU time of the whole machine per Gbit moved by iperf_1"),
    },
    MetricDef {
        name: "iperf_4",
        unit: "Gbit/s",
        higher_is_better: true,
        what: std::borrow::Cow::Borrowed("iperf3, 4 TCP streams pod → pod across nodes"),
    },
    MetricDef {
        name: "iperf_4_cpu_s_per_gbit",
        unit: "CPU s/Gbit",
        higher_is_better: false,
        what: std::borrow::Cow::Borrowed("CPU time of the whole machine per Gbit moved by iperf_4"),
    },
];

/// Live-entry levels of the conntrack-scale runs and their metric names
/// (`--quick` stops at 100k).
pub const CONNTRACK_LEVELS: &[(u32, &str, &str)] = &[
    (10_000, "ct_10k_rr_p50_us", "ct_10k_rr_p99_us"),
    (100_000, "ct_100k_rr_p50_us", "ct_100k_rr_p99_us"),
    (1_000_000, "ct_1m_rr_p50_us", "ct_1m_rr_p99_us"),
];
pub const QUICK_CONNTRACK_MAX: u32 = 100_000;

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

/// Ports per node on the load balancer in the bench cluster: the most two
/// nodes can have on one frontend IP (64,000 / 2).
pub const BENCH_POOL: u32 = 32_000;

// ---- what the suite measures ----

/// Every sample of one round for one data path, by metric name.
pub type Samples = BTreeMap<String, f64>;

/// One whole run of the suite.
#[derive(Debug, Default)]
pub struct Run {
    /// (data path, round, samples).
    pub samples: Vec<(Dp, usize, Samples)>,
    /// The SNAT fill curve, per data path and round (R has none).
    pub fills: Vec<(Dp, FillRun)>,
    /// Per-program costs (BPF_PROG_TEST_RUN), one sample per round.
    pub programs: Vec<ProgramSamples>,
    /// Where the machine's CPU went under each profiled workload, per data
    /// path.
    pub profiles: Vec<(Dp, Profile)>,
    /// Where the time of each profiled program path goes.
    pub path_profiles: Vec<PathProfile>,
    pub seconds: f64,
}

/// `netplane-bench loadgen udp-fill`'s output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FillRun {
    /// The pool filled, in ports.
    #[serde(default)]
    pub pool: u64,
    pub curve: Vec<FillSample>,
    pub cost: Vec<FillCostSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FillSample {
    pub flows: u64,
    pub fill_pct: f64,
    /// New flows so far that got no reply (no port, or dropped).
    pub failures: f64,
}

/// What a new flow's first datagram costs at a fill level, against a
/// datagram of a flow that already has its port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FillCostSample {
    pub fill_pct: f64,
    pub new_flow_ns: f64,
    pub established_ns: f64,
}

/// `netplane-bench programs`' output: one path's ns per run, per round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramSamples {
    pub path: String,
    pub program: String,
    pub ns: Vec<f64>,
}

/// A perf profile of the whole machine under a workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// (Runs before 2026-11-30 profiled the UDP flood only.)
    #[serde(default = "udp_flood")]
    pub workload: String,
    pub samples_of_machine: String,
    pub bpf_programs_percent: f64,
    pub netfilter_percent: f64,
    pub bridge_percent: f64,
    pub fib_percent: f64,
    pub top: Vec<Symbol>,
    /// The busiest processes (perf's comm), by share of all samples.
    #[serde(default)]
    pub processes: Vec<Symbol>,
}

fn udp_flood() -> String {
    "the 64-byte UDP flood".into()
}

/// Where one program path's time goes, from call graphs sampled while
/// `netplane-bench run-path` repeats it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathProfile {
    /// `netplane-bench run-path`'s name for it.
    pub path: String,
    /// Its row in the program-cost table.
    pub cost_row: String,
    /// Samples inside the program (its code and what it called).
    pub samples: u64,
    /// Those samples' share of the process's (the rest is the syscall
    /// around each run, and building frames).
    pub of_process_percent: f64,
    /// The program's own code and each function it called, by share of
    /// `samples`.
    pub parts: Vec<Symbol>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Symbol {
    pub percent: f64,
    pub symbol: String,
}

// ---- what the report shows (docs/bench/results.json) ----

/// min / median / max of some samples (None, `null` in the JSON: none).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// The spread of the finite samples, if any.
    pub fn of(mut v: Vec<f64>) -> Option<Spread> {
        v.retain(|x| x.is_finite());
        let n = v.len();
        let (min, median, max) = min_median_max(v)?;
        Some(Spread {
            min,
            median,
            max,
            n,
        })
    }
}

/// (min, median, max); of an even count, the upper of the middle two.
pub fn min_median_max(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.sort_by(f64::total_cmp);
    Some((*v.first()?, v[v.len() / 2], *v.last()?))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub metrics: Vec<MetricResult>,
    pub fill_curve: Vec<FillCurve>,
    pub test_run_ns: Vec<ProgramCost>,
    pub conntrack_live_entries: Vec<LiveEntries>,
    pub profiles: Vec<DatapathProfile>,
    #[serde(default)]
    pub path_profiles: Vec<PathProfile>,
    pub conntrack_note: String,
}

impl Results {
    pub fn metric(&self, name: &str) -> Option<&MetricResult> {
        self.metrics.iter().find(|m| m.name == name)
    }

    pub fn fill_curve_of(&self, dp: Dp) -> Option<&FillCurve> {
        self.fill_curve.iter().find(|c| c.datapath == dp.letter())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub os: String,
    pub rustc: String,
    pub iperf3: String,
    pub iptables: String,
    pub netplane_commit: String,
    pub date_utc: String,
    pub quick: bool,
    pub rounds: usize,
    pub seconds_per_test: u32,
    pub cpu_pinning: String,
    pub client_pod_sysctls: String,
    pub wall_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricResult {
    pub name: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub what: String,
    #[serde(rename = "E")]
    pub e: Option<Spread>,
    #[serde(rename = "K")]
    pub k: Option<Spread>,
    #[serde(rename = "R")]
    pub r: Option<Spread>,
    #[serde(rename = "ratio_EK")]
    pub ratio_ek: Option<Spread>,
    #[serde(rename = "ratio_ER")]
    pub ratio_er: Option<Spread>,
}

/// Which ratio of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ratio {
    EK,
    ER,
}

impl Ratio {
    pub fn name(self) -> &'static str {
        match self {
            Ratio::EK => "ratio_EK",
            Ratio::ER => "ratio_ER",
        }
    }
}

impl MetricResult {
    pub fn ratio(&self, r: Ratio) -> Option<Spread> {
        match r {
            Ratio::EK => self.ratio_ek,
            Ratio::ER => self.ratio_er,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FillCurve {
    pub datapath: String,
    pub pool: u32,
    pub points: Vec<FillPoint>,
    pub allocation_cost: Vec<AllocationCost>,
}

impl FillCurve {
    /// The most failures any round had before the pool was full.
    pub fn failures_before_full(&self, pick: impl Fn(&Spread) -> f64) -> Option<f64> {
        self.points
            .iter()
            .filter(|p| p.fill_pct <= 100.0)
            .filter_map(|p| p.failures.as_ref().map(&pick))
            .reduce(f64::max)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FillPoint {
    pub fill_pct: f64,
    pub flows: u64,
    pub failures: Option<Spread>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocationCost {
    pub fill_pct: f64,
    pub new_flow_ns: Option<Spread>,
    pub established_ns: Option<Spread>,
    pub allocation_extra_ns: Option<Spread>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramCost {
    pub path: String,
    pub program: String,
    pub ns: Option<Spread>,
    pub vs_floor: Option<Spread>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveEntries {
    pub level: u32,
    #[serde(rename = "E")]
    pub e: Option<Spread>,
    #[serde(rename = "K")]
    pub k: Option<Spread>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatapathProfile {
    pub datapath: String,
    pub profile: Profile,
}
