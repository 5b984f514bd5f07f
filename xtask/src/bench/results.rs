//! From a `Run` to `Results`: every metric's spread per data path, the
//! ratios taken within each round, the fill curve, the program costs, the
//! machine.
use std::process::Command;

use anyhow::{Context, Result};

use super::{
    Options,
    model::{
        AllocationCost, BENCH_POOL, CONNTRACK_LEVELS, CONNTRACK_NOTE, DatapathProfile, Dp,
        FillCurve, FillPoint, LiveEntries, METRICS, Machine, MetricDef, MetricResult, ProgramCost,
        Results, Run, Spread,
    },
};
use crate::workspace_root;

/// The conntrack metrics, defined like the others.
pub fn conntrack_defs() -> Vec<MetricDef> {
    let mut defs = Vec::new();
    for &(level, p50, p99) in CONNTRACK_LEVELS {
        let k = if level >= 1_000_000 {
            format!("{}M", level / 1_000_000)
        } else {
            format!("{}k", level / 1000)
        };
        defs.push(MetricDef {
            name: p50,
            unit: "µs",
            higher_is_better: false,
            what: format!(
                "TCP request/response pod → inet through SNAT with {k} live tracked flows, median (R: routed, no entries)"
            )
            .into(),
        });
        defs.push(MetricDef {
            name: p99,
            unit: "µs",
            higher_is_better: false,
            what: format!("the same, 99th percentile ({k} live tracked flows)").into(),
        });
    }
    defs
}

/// Everything measured, summarised.
pub fn from_run(run: &Run, opts: &Options) -> Result<Results> {
    let of = |dp: Dp, name: &str| -> Vec<(usize, f64)> {
        run.samples
            .iter()
            .filter(|(d, ..)| *d == dp)
            .filter_map(|(_, round, s)| s.get(name).map(|v| (*round, *v)))
            .collect()
    };
    // Ratios per round: each round ran the data paths back to back.
    let ratio = |a: &[(usize, f64)], b: &[(usize, f64)]| {
        Spread::of(
            a.iter()
                .filter_map(|(r, x)| {
                    let y = b.iter().find(|(rb, _)| rb == r)?.1;
                    (y != 0.0).then_some(x / y)
                })
                .collect(),
        )
    };
    let vals = |v: &[(usize, f64)]| Spread::of(v.iter().map(|x| x.1).collect());
    let mut metrics = Vec::new();
    for m in METRICS.iter().cloned().chain(conntrack_defs()) {
        let (e, k, r) = (of(Dp::E, m.name), of(Dp::K, m.name), of(Dp::R, m.name));
        if e.is_empty() && k.is_empty() && r.is_empty() {
            continue; // not run (--quick leaves out the largest conntrack level)
        }
        metrics.push(MetricResult {
            name: m.name.into(),
            unit: m.unit.into(),
            higher_is_better: m.higher_is_better,
            what: m.what.into_owned(),
            e: vals(&e),
            k: vals(&k),
            r: vals(&r),
            ratio_ek: ratio(&e, &k),
            ratio_er: ratio(&e, &r),
        });
    }
    let conntrack_live_entries = CONNTRACK_LEVELS
        .iter()
        .filter_map(|&(level, ..)| {
            let name = format!("ct_live_entries_{level}");
            let (e, k) = (of(Dp::E, &name), of(Dp::K, &name));
            (!e.is_empty() || !k.is_empty()).then(|| LiveEntries {
                level,
                e: vals(&e),
                k: vals(&k),
            })
        })
        .collect();
    Ok(Results {
        machine: machine(run, opts)?,
        metrics,
        fill_curve: fill_curves(run),
        test_run_ns: program_costs(run),
        conntrack_live_entries,
        profiles: run
            .profiles
            .iter()
            .map(|(dp, p)| DatapathProfile {
                datapath: dp.letter().into(),
                profile: p.clone(),
            })
            .collect(),
        path_profiles: run.path_profiles.clone(),
        conntrack_note: CONNTRACK_NOTE.into(),
    })
}

/// Failures per fill level and allocation cost, across rounds.
fn fill_curves(run: &Run) -> Vec<FillCurve> {
    let mut out = Vec::new();
    for dp in [Dp::E, Dp::K] {
        let fills: Vec<_> = run
            .fills
            .iter()
            .filter(|(d, _)| *d == dp)
            .map(|(_, f)| f)
            .collect();
        let Some(first) = fills.first() else { continue };
        let points = first
            .curve
            .iter()
            .enumerate()
            .map(|(i, p)| FillPoint {
                fill_pct: p.fill_pct,
                flows: p.flows,
                failures: Spread::of(
                    fills
                        .iter()
                        .filter_map(|f| Some(f.curve.get(i)?.failures))
                        .collect(),
                ),
            })
            .collect();
        let allocation_cost = first
            .cost
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let costs: Vec<_> = fills.iter().filter_map(|f| f.cost.get(i)).collect();
                AllocationCost {
                    fill_pct: c.fill_pct,
                    new_flow_ns: Spread::of(costs.iter().map(|c| c.new_flow_ns).collect()),
                    established_ns: Spread::of(costs.iter().map(|c| c.established_ns).collect()),
                    allocation_extra_ns: Spread::of(
                        costs
                            .iter()
                            .map(|c| c.new_flow_ns - c.established_ns)
                            .collect(),
                    ),
                }
            })
            .collect();
        out.push(FillCurve {
            datapath: dp.letter().into(),
            pool: BENCH_POOL,
            points,
            allocation_cost,
        });
    }
    out
}

/// Each path's ns per run and its ratio to the floor (the first path),
/// round by round.
fn program_costs(run: &Run) -> Vec<ProgramCost> {
    let floor = run
        .programs
        .first()
        .map(|p| p.ns.clone())
        .unwrap_or_default();
    run.programs
        .iter()
        .map(|p| ProgramCost {
            path: p.path.clone(),
            program: p.program.clone(),
            ns: Spread::of(p.ns.clone()),
            vs_floor: Spread::of(p.ns.iter().zip(&floor).map(|(a, f)| a / f).collect()),
        })
        .collect()
}

fn machine(run: &Run, opts: &Options) -> Result<Machine> {
    let sh = |argv: &[&str]| -> String {
        Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default();
    let root = workspace_root();
    Ok(Machine {
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: sh(&["uname", "-r"]),
        os,
        rustc: sh(&["rustc", "--version"]),
        iperf3: sh(&["iperf3", "--version"])
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        iptables: sh(&["iptables", "--version"]),
        netplane_commit: sh(&[
            "git",
            "-C",
            root.to_str().context("utf-8")?,
            "rev-parse",
            "--short",
            "HEAD",
        ]),
        date_utc: sh(&["date", "-u", "+%Y-%m-%d %H:%M"]),
        quick: opts.quick,
        rounds: opts.rounds,
        seconds_per_test: if opts.quick { 1 } else { 3 },
        cpu_pinning: "client on CPU 0, server on CPU 1 (taskset)".into(),
        client_pod_sysctls: "net.ipv4.ip_local_port_range=1024 65535".into(),
        wall_seconds: run.seconds.round(),
    })
}
