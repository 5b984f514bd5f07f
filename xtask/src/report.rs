//! What `cargo xtask bench` writes: docs/bench/results.json (the shape the
//! issue gives), docs/benchmarks.md, SVG plots in docs/bench/, and the
//! README's headline table; and the CI gate on quick ratios.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde_json::{Value, json};

use crate::{
    suite::{
        BENCH_POOL, CONNTRACK_LEVELS, CONNTRACK_NOTE, Dp, METRICS, MetricDef, Options, Run, Samples,
    },
    workspace_root,
};

/// min / median / max of some samples.
fn spread(mut v: Vec<f64>) -> Value {
    v.retain(|x| x.is_finite());
    let n = v.len();
    match crate::bench::stats(v) {
        Some((min, median, max)) => json!({"min": min, "median": median, "max": max, "n": n}),
        None => Value::Null,
    }
}

fn median(v: &Value) -> Option<f64> {
    v["median"].as_f64()
}

/// The conntrack metrics, defined like the others.
fn conntrack_defs() -> Vec<MetricDef> {
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
            what: leak(format!(
                "TCP request/response pod → inet through SNAT with {k} live tracked flows, median (R: routed, no entries)"
            )),
        });
        defs.push(MetricDef {
            name: p99,
            unit: "µs",
            higher_is_better: false,
            what: leak(format!(
                "the same, 99th percentile ({k} live tracked flows)"
            )),
        });
    }
    defs
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Everything measured, as results.json holds it.
pub fn results(run: &Run, opts: &Options) -> Result<Value> {
    let of = |dp: Dp, name: &str| -> Vec<(usize, f64)> {
        run.samples
            .iter()
            .filter(|(d, ..)| *d == dp)
            .filter_map(|(_, round, s): &(Dp, usize, Samples)| s.get(name).map(|v| (*round, *v)))
            .collect()
    };
    // Ratios per round: each round ran the data paths back to back.
    let ratio = |a: &[(usize, f64)], b: &[(usize, f64)]| -> Value {
        spread(
            a.iter()
                .filter_map(|(r, x)| {
                    let y = b.iter().find(|(rb, _)| rb == r)?.1;
                    (y != 0.0).then_some(x / y)
                })
                .collect(),
        )
    };
    let mut metrics = Vec::new();
    let ct = conntrack_defs();
    for m in METRICS.iter().chain(&ct) {
        let (e, k, r) = (of(Dp::E, m.name), of(Dp::K, m.name), of(Dp::R, m.name));
        if e.is_empty() && k.is_empty() && r.is_empty() {
            continue; // not run (--quick leaves out the largest conntrack level)
        }
        let vals = |v: &[(usize, f64)]| spread(v.iter().map(|x| x.1).collect());
        metrics.push(json!({
            "name": m.name,
            "unit": m.unit,
            "higher_is_better": m.higher_is_better,
            "what": m.what,
            "E": vals(&e),
            "K": vals(&k),
            "R": vals(&r),
            "ratio_EK": ratio(&e, &k),
            "ratio_ER": ratio(&e, &r),
        }));
    }
    let live: Vec<Value> = CONNTRACK_LEVELS
        .iter()
        .filter(|(level, ..)| {
            let name = format!("ct_live_entries_{level}");
            !of(Dp::E, &name).is_empty() || !of(Dp::K, &name).is_empty()
        })
        .map(|(level, ..)| {
            let name = format!("ct_live_entries_{level}");
            let vals = |dp| spread(of(dp, &name).iter().map(|x| x.1).collect());
            json!({"level": level, "E": vals(Dp::E), "K": vals(Dp::K)})
        })
        .collect();
    Ok(json!({
        "machine": machine(run, opts)?,
        "metrics": metrics,
        "fill_curve": fill_curve(run),
        "test_run_ns": test_run(run),
        "conntrack_live_entries": live,
        "profiles": run
            .profiles
            .iter()
            .map(|(dp, p)| json!({"datapath": dp.letter(), "profile": p}))
            .collect::<Vec<_>>(),
        "conntrack_note": CONNTRACK_NOTE,
    }))
}

fn fill_curve(run: &Run) -> Value {
    let mut out = Vec::new();
    for dp in [Dp::E, Dp::K] {
        let fills: Vec<&Value> = run
            .fills
            .iter()
            .filter(|(d, _)| *d == dp)
            .map(|(_, v)| v)
            .collect();
        let Some(first) = fills.first() else { continue };
        let points: Vec<Value> = first["curve"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| {
                let failures = fills
                    .iter()
                    .filter_map(|f| f["curve"][i]["failures"].as_f64())
                    .collect();
                json!({"fill_pct": p["fill_pct"], "flows": p["flows"], "failures": spread(failures)})
            })
            .collect();
        let costs: Vec<Value> = first["cost"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| {
                let get = |k: &str| -> Vec<f64> {
                    fills
                        .iter()
                        .filter_map(|f| f["cost"][i][k].as_f64())
                        .collect()
                };
                let extra: Vec<f64> = get("new_flow_ns")
                    .iter()
                    .zip(get("established_ns"))
                    .map(|(n, e)| n - e)
                    .collect();
                json!({
                    "fill_pct": c["fill_pct"],
                    "new_flow_ns": spread(get("new_flow_ns")),
                    "established_ns": spread(get("established_ns")),
                    "allocation_extra_ns": spread(extra),
                })
            })
            .collect();
        out.push(json!({
            "datapath": dp.letter(),
            "pool": BENCH_POOL,
            "points": points,
            "allocation_cost": costs,
        }));
    }
    Value::Array(out)
}

fn test_run(run: &Run) -> Value {
    let paths = run.programs.as_array().cloned().unwrap_or_default();
    let nums = |p: &Value| -> Vec<f64> {
        p["ns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    };
    let floor = paths.first().map(nums).unwrap_or_default();
    Value::Array(
        paths
            .iter()
            .map(|p| {
                let ns = nums(p);
                let vs_floor: Vec<f64> = ns.iter().zip(&floor).map(|(a, f)| a / f).collect();
                json!({
                    "path": p["path"],
                    "program": p["program"],
                    "ns": spread(ns),
                    "vs_floor": spread(vs_floor),
                })
            })
            .collect(),
    )
}

fn machine(run: &Run, opts: &Options) -> Result<Value> {
    let sh = |argv: &[&str]| -> String {
        Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
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
    Ok(json!({
        "cpu_model": model,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": sh(&["uname", "-r"]),
        "os": os,
        "rustc": sh(&["rustc", "--version"]),
        "iperf3": sh(&["iperf3", "--version"]).lines().next().unwrap_or("").to_string(),
        "iptables": sh(&["iptables", "--version"]),
        "netplane_commit": sh(&["git", "-C", workspace_root().to_str().context("utf-8")?, "rev-parse", "--short", "HEAD"]),
        "date_utc": sh(&["date", "-u", "+%Y-%m-%d %H:%M"]),
        "quick": opts.quick,
        "rounds": opts.rounds,
        "seconds_per_test": if opts.quick { 1 } else { 3 },
        "cpu_pinning": "client on CPU 0, server on CPU 1 (taskset)",
        "client_pod_sysctls": "net.ipv4.ip_local_port_range=1024 65535",
        "wall_seconds": run.seconds.round(),
    }))
}

/// A number as the tables show it.
fn fmt(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x);
        // Thousands separators.
        let mut out = String::new();
        for (i, c) in s.chars().rev().enumerate() {
            if i > 0 && i % 3 == 0 && c != '-' {
                out.push(',');
            }
            out.push(c);
        }
        out.chars().rev().collect()
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn cell(v: &Value) -> String {
    match (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64()) {
        (Some(m), Some(lo), Some(hi)) => format!("{} ({}–{})", fmt(m), fmt(lo), fmt(hi)),
        _ => "–".into(),
    }
}

fn ratio_cell(v: &Value) -> String {
    match (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64()) {
        (Some(m), Some(lo), Some(hi)) => format!("**{m:.2}** ({lo:.2}–{hi:.2})"),
        _ => "–".into(),
    }
}

fn metric<'a>(results: &'a Value, name: &str) -> &'a Value {
    results["metrics"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The issue's goals: (what, measured value, goal met).
fn goals(results: &Value) -> Vec<(String, String, Option<bool>)> {
    let r = |name: &str, k: &str| median(&metric(results, name)[k]);
    let ge = |v: Option<f64>, g: f64| v.map(|x| x >= g);
    let show = |v: Option<f64>| v.map_or("not measured".into(), |x| format!("{x:.2}"));
    let mut out = vec![
        (
            "small-packet rate E/K ≥ 1.3".into(),
            show(r("udp_pps_cross_node", "ratio_EK")),
            ge(r("udp_pps_cross_node", "ratio_EK"), 1.3),
        ),
        (
            "small-packet rate E/R ≥ 1.05".into(),
            show(r("udp_pps_cross_node", "ratio_ER")),
            ge(r("udp_pps_cross_node", "ratio_ER"), 1.05),
        ),
        (
            "connections/s through SNAT E/K ≥ 1.2".into(),
            show(r("crr_snat", "ratio_EK")),
            ge(r("crr_snat", "ratio_EK"), 1.2),
        ),
        (
            "single-stream iperf3 E/R ≥ 0.95".into(),
            show(r("iperf_1", "ratio_ER")),
            ge(r("iperf_1", "ratio_ER"), 0.95),
        ),
        (
            "p99 latency E ≤ K (E/K ≤ 1)".into(),
            show(r("tcp_rr_p99_us", "ratio_EK")),
            r("tcp_rr_p99_us", "ratio_EK").map(|x| x <= 1.0),
        ),
    ];
    // Zero allocation failures before the pool is 100 % full (worst round).
    let early_failures = |dp: &str| -> Option<f64> {
        let fc = results["fill_curve"].as_array()?;
        let c = fc.iter().find(|c| c["datapath"] == dp)?;
        c["points"]
            .as_array()?
            .iter()
            .filter(|p| p["fill_pct"].as_f64().is_some_and(|f| f <= 100.0))
            .filter_map(|p| p["failures"]["max"].as_f64())
            .reduce(f64::max)
    };
    let e = early_failures("E");
    out.push((
        "no allocation failure before the pool is 100 % full (E)".into(),
        e.map_or("not measured".into(), |x| {
            format!(
                "{x:.0} failures (K: {})",
                early_failures("K").map_or("–".into(), |k| format!("{k:.0}"))
            )
        }),
        e.map(|x| x == 0.0),
    ));
    let est = results["test_run_ns"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["path"] == "SNAT established"))
        .and_then(|p| median(&p["vs_floor"]));
    out.push((
        "SNAT established path within 1.5× of the floor program".into(),
        show(est),
        est.map(|x| x <= 1.5),
    ));
    out
}

pub fn write_all(results: &Value) -> Result<()> {
    let dir = workspace_root().join("docs/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(results)? + "\n",
    )?;
    eprintln!("written: docs/bench/results.json");
    write_views(results)
}

/// `cargo xtask bench --report-only`: the markdown, plots and README table
/// again from docs/bench/results.json (after editing docs/bench/notes.md,
/// say), measuring nothing.
pub fn rewrite_from_json() -> Result<()> {
    let path = workspace_root().join("docs/bench/results.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: run `cargo xtask bench` first", path.display()))?;
    write_views(&serde_json::from_str(&text).context("docs/bench/results.json")?)
}

fn write_views(results: &Value) -> Result<()> {
    let root = workspace_root();
    let dir = root.join("docs/bench");
    plot_ratios(results, &dir.join("ratios.svg"))?;
    plot_fill(results, &dir.join("fill-curve.svg"))?;
    plot_programs(results, &dir.join("program-cost.svg"))?;
    let md = markdown(results)?;
    std::fs::write(root.join("docs/benchmarks.md"), &md)?;
    update_readme(results)?;
    println!("{}", headline(results));
    eprintln!("written: docs/benchmarks.md, docs/bench/*.svg, README.md (headline)");
    Ok(())
}

fn markdown(results: &Value) -> Result<String> {
    let m = &results["machine"];
    let mut r = String::new();
    writeln!(
        r,
        "# Benchmarks: netplane (E) vs classic kubenet (K) vs plain routing (R)\n"
    )?;
    writeln!(
        r,
        "Written by `cargo xtask bench{}` on {} (commit {}). Do not edit by hand: the analysis \
         at the end comes from docs/bench/notes.md.\n",
        if m["quick"] == true { " --quick" } else { "" },
        m["date_utc"].as_str().unwrap_or("?"),
        m["netplane_commit"].as_str().unwrap_or("?"),
    )?;
    writeln!(
        r,
        "**Machine**: {} × {}, kernel {}, {}; {}; {}; {}. A shared virtual machine: \
         absolute numbers hold only here, the ratios are what to compare. {} rounds, the three \
         data paths back to back in each (order rotating), {} s per test, {}; {:.0} s in all.\n",
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["os"].as_str().unwrap_or("?"),
        m["rustc"].as_str().unwrap_or("?"),
        m["iperf3"].as_str().unwrap_or("?"),
        m["iptables"].as_str().unwrap_or("?"),
        m["rounds"],
        m["seconds_per_test"],
        m["cpu_pinning"].as_str().unwrap_or("?"),
        m["wall_seconds"].as_f64().unwrap_or(0.0),
    )?;
    writeln!(r, "- **E** — {}", Dp::E.describe())?;
    writeln!(r, "- **K** — {}", Dp::K.describe())?;
    writeln!(r, "- **R** — {}\n", Dp::R.describe())?;
    writeln!(
        r,
        "The lab's topology for all three: two nodes with two pods each on a VNet segment, the \
         outbound load balancer, and `inet` (README). The cluster is the default one with \
         `allocated_outbound_ports = {BENCH_POOL}` so that connection tests measure the data path, \
         not the default 1,024-port block; the client pod's `ip_local_port_range` is \
         1024–65535 so that its TIME_WAIT ports do not cap the connection tests. Cells: \
         median (min–max) over the rounds; ratios are \
         taken per round and then summarised. For metrics where lower is better a ratio below 1 \
         favours E.\n"
    )?;
    writeln!(r, "## Goals\n")?;
    writeln!(r, "| goal | measured (median) | met |")?;
    writeln!(r, "|---|---|---|")?;
    for (goal, measured, met) in goals(results) {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        writeln!(r, "| {goal} | {measured} | {met} |")?;
    }
    writeln!(r, "\n## Traffic\n")?;
    writeln!(r, "![E/K and E/R ratios](bench/ratios.svg)\n")?;
    writeln!(r, "| metric | unit | E | K | R | E/K | E/R |")?;
    writeln!(r, "|---|---|---|---|---|---|---|")?;
    for x in results["metrics"].as_array().into_iter().flatten() {
        writeln!(
            r,
            "| `{}` {} | {}{} | {} | {} | {} | {} | {} |",
            x["name"].as_str().unwrap_or("?"),
            x["what"].as_str().unwrap_or(""),
            x["unit"].as_str().unwrap_or(""),
            if x["higher_is_better"] == true {
                " ↑"
            } else {
                " ↓"
            },
            cell(&x["E"]),
            cell(&x["K"]),
            cell(&x["R"]),
            ratio_cell(&x["ratio_EK"]),
            ratio_cell(&x["ratio_ER"]),
        )?;
    }
    writeln!(r, "\n## Conntrack scale\n")?;
    writeln!(
        r,
        "Live tracked flows on node-0 when the request/response ran (E: `netplane ports`, \
         allocated; K: `conntrack -C`): the `ct_*` rows above.\n"
    )?;
    writeln!(r, "| level | E live | K live |")?;
    writeln!(r, "|---|---|---|")?;
    for l in results["conntrack_live_entries"]
        .as_array()
        .into_iter()
        .flatten()
    {
        writeln!(
            r,
            "| {} | {} | {} |",
            fmt(l["level"].as_f64().unwrap_or(0.0)),
            cell(&l["E"]),
            cell(&l["K"])
        )?;
    }
    writeln!(
        r,
        "\n{}\n",
        results["conntrack_note"].as_str().unwrap_or("")
    )?;
    writeln!(r, "## SNAT port pool: fill curve toward one destination\n")?;
    writeln!(
        r,
        "UDP flows from pod-0-0, each from its own source port, to one UDP echo server in \
         `inet`: the load balancer's {BENCH_POOL}-port block of node-0 filled to 102 %. A flow \
         fails when its echo does not come back. Allocation cost: the sender's `sendto` of a new \
         flow's first datagram (the whole path runs in it: both nodes' and the load balancer's \
         translation) minus that of a datagram on a flow that has its port, at the fill level.\n"
    )?;
    writeln!(r, "![fill curve](bench/fill-curve.svg)\n")?;
    writeln!(r, "| fill % | E failures | K failures |")?;
    writeln!(r, "|---|---|---|")?;
    let fc = results["fill_curve"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let curve = |dp: &str| fc.iter().find(|c| c["datapath"] == dp).cloned();
    if let (Some(e), Some(k)) = (curve("E"), curve("K")) {
        let (ep, kp) = (
            e["points"].as_array().cloned().unwrap_or_default(),
            k["points"].as_array().cloned().unwrap_or_default(),
        );
        for (a, b) in ep.iter().zip(&kp) {
            let f = a["fill_pct"].as_f64().unwrap_or(0.0);
            // The rows that tell: every 10 %, and the last few steps.
            if (f.round() as i64) % 10 == 0 || f >= 95.0 {
                writeln!(
                    r,
                    "| {f:.0} | {} | {} |",
                    cell(&a["failures"]),
                    cell(&b["failures"])
                )?;
            }
        }
        writeln!(
            r,
            "\n| fill % | E new flow ns | E extra for allocation | K new flow ns | K extra for allocation |"
        )?;
        writeln!(r, "|---|---|---|---|---|")?;
        let (ec, kc) = (
            e["allocation_cost"].as_array().cloned().unwrap_or_default(),
            k["allocation_cost"].as_array().cloned().unwrap_or_default(),
        );
        for (a, b) in ec.iter().zip(&kc) {
            writeln!(
                r,
                "| {:.0} | {} | {} | {} | {} |",
                a["fill_pct"].as_f64().unwrap_or(0.0),
                cell(&a["new_flow_ns"]),
                cell(&a["allocation_extra_ns"]),
                cell(&b["new_flow_ns"]),
                cell(&b["allocation_extra_ns"]),
            )?;
        }
    }
    writeln!(r, "\n## Per-program cost (BPF_PROG_TEST_RUN)\n")?;
    writeln!(
        r,
        "Each path's program on node-0's world (netplane-user/src/fixture.rs), the kernel's \
         timing of single runs on fresh frames, against `bench_floor` (parse Ethernet and IPv4, \
         rewrite the MACs, redirect). New flows each use a fresh source port, so each run \
         allocates.\n"
    )?;
    writeln!(r, "![program cost](bench/program-cost.svg)\n")?;
    writeln!(r, "| path | program | ns per run | × floor |")?;
    writeln!(r, "|---|---|---|---|")?;
    for p in results["test_run_ns"].as_array().into_iter().flatten() {
        writeln!(
            r,
            "| {} | `{}` | {} | {} |",
            p["path"].as_str().unwrap_or("?"),
            p["program"].as_str().unwrap_or("?"),
            cell(&p["ns"]),
            ratio_cell(&p["vs_floor"]),
        )?;
    }
    if let Some(profiles) = results["profiles"].as_array().filter(|p| !p.is_empty()) {
        writeln!(
            r,
            "\n## Where the CPU goes (perf, under the 64-byte UDP flood)\n"
        )?;
        writeln!(
            r,
            "`perf record -a -e cpu-clock` over the whole machine while the flood of the first \
             table runs (a VM has no hardware counters; samples land where interrupts are \
             enabled, so time with interrupts off shows up at `_raw_spin_unlock_irqrestore`).\n"
        )?;
        writeln!(
            r,
            "| | netplane's programs | netfilter | bridges (cbr0 in K; the lab's VNet switch in all) | FIB lookups | top symbols |"
        )?;
        writeln!(r, "|---|---|---|---|---|---|")?;
        for p in profiles {
            let q = &p["profile"];
            let top: Vec<String> = q["top"]
                .as_array()
                .into_iter()
                .flatten()
                .take(6)
                .map(|t| {
                    format!(
                        "`{}` {:.1} %",
                        t["symbol"].as_str().unwrap_or("?"),
                        t["percent"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            let pct = |k: &str| format!("{:.1} %", q[k].as_f64().unwrap_or(0.0) + 0.0);
            writeln!(
                r,
                "| {} | {} | {} | {} | {} | {} |",
                p["datapath"].as_str().unwrap_or("?"),
                pct("bpf_programs_percent"),
                pct("netfilter_percent"),
                pct("bridge_percent"),
                pct("fib_percent"),
                top.join(", ")
            )?;
        }
    }
    let notes =
        std::fs::read_to_string(workspace_root().join("docs/bench/notes.md")).unwrap_or_default();
    writeln!(r, "\n{notes}")?;
    Ok(r)
}

/// The README's headline table.
fn headline(results: &Value) -> String {
    let mut t = String::new();
    let m = &results["machine"];
    let _ = writeln!(
        t,
        "| measured by `cargo xtask bench`{} ({} CPUs, kernel {}) | E: netplane | K: classic kubenet | R: plain routing | E/K | E/R |",
        if m["quick"] == true { " --quick" } else { "" },
        m["cpus"],
        m["kernel"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    for (name, label) in [
        (
            "udp_pps_cross_node",
            "64 B UDP pod → pod across nodes, packets/s ↑",
        ),
        ("tcp_rr_p99_us", "TCP request/response p99, µs ↓"),
        (
            "crr_snat",
            "new TCP connections/s pod → inet through SNAT (R: untranslated) ↑",
        ),
        ("iperf_1", "iperf3 1 stream, Gbit/s ↑"),
    ] {
        let x = metric(results, name);
        let med = |k: &str| median(&x[k]).map_or("–".into(), fmt);
        let rat = |k: &str| median(&x[k]).map_or("–".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            t,
            "| {label} | {} | {} | {} | {} | {} |",
            med("E"),
            med("K"),
            med("R"),
            rat("ratio_EK"),
            rat("ratio_ER")
        );
    }
    // The port pool's exactness, from the fill curve.
    let at_full = |dp: &str| -> String {
        results["fill_curve"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["datapath"] == dp))
            .and_then(|c| c["points"].as_array())
            .and_then(|p| {
                p.iter()
                    .filter(|p| p["fill_pct"].as_f64().is_some_and(|f| f <= 100.0))
                    .filter_map(|p| median(&p["failures"]))
                    .reduce(f64::max)
            })
            .map_or("–".into(), fmt)
    };
    let _ = writeln!(
        t,
        "| SNAT flows failed before the pool is full ({BENCH_POOL} ports) ↓ | {} | {} | – | | |",
        at_full("E"),
        at_full("K")
    );
    t
}

const README_START: &str = "<!-- bench:start -->";
const README_END: &str = "<!-- bench:end -->";

fn update_readme(results: &Value) -> Result<()> {
    let path = workspace_root().join("README.md");
    let readme = std::fs::read_to_string(&path)?;
    let (Some(a), Some(b)) = (readme.find(README_START), readme.find(README_END)) else {
        bail!("README.md has no {README_START} … {README_END} markers");
    };
    let new = format!(
        "{}{README_START}\n{}\nMedians over the rounds; details, spreads and the goals: docs/benchmarks.md.\n{}",
        &readme[..a],
        headline(results),
        &readme[b..]
    );
    std::fs::write(&path, new)?;
    Ok(())
}

/// CI's regression gate: ratios from the quick run, with generous margins
/// (never absolute times; the machines are shared and noisy).
pub const GATE: &[(&str, &str, f64)] = &[
    ("udp_pps_cross_node", "ratio_ER", 0.5),
    ("crr_pod", "ratio_ER", 0.5),
    ("iperf_1", "ratio_ER", 0.5),
];

pub fn gate(results: &Value) -> Result<()> {
    let mut failed = Vec::new();
    for &(name, ratio, floor) in GATE {
        let v = median(&metric(results, name)[ratio]);
        match v {
            Some(x) if x >= floor => eprintln!("gate: {name} {ratio} {x:.2} ≥ {floor}"),
            _ => failed.push(format!("{name} {ratio} {v:?} < {floor}")),
        }
    }
    // Exactness is not noisy: netplane must not fail an allocation while
    // the pool has a free port.
    let early: f64 = results["fill_curve"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["datapath"] == "E"))
        .and_then(|c| c["points"].as_array())
        .into_iter()
        .flatten()
        .filter(|p| p["fill_pct"].as_f64().is_some_and(|f| f <= 100.0))
        .filter_map(|p| p["failures"]["max"].as_f64())
        .sum();
    if early > 0.0 {
        failed.push(format!(
            "netplane failed {early} allocations before its pool was full"
        ));
    }
    if !failed.is_empty() {
        bail!("benchmark gate: {}", failed.join("; "));
    }
    Ok(())
}

// ---- plots ----

const W: u32 = 900;

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// E/K and E/R median ratios per metric, turned so that right of 1 is
/// better for E whatever the metric's direction.
fn plot_ratios(results: &Value, path: &std::path::Path) -> Result<()> {
    let orange = RGBColor(230, 140, 30);
    let rows: Vec<(String, Vec<(f64, RGBColor)>)> = results["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| !m["name"].as_str().unwrap_or("").ends_with("failures"))
        .map(|m| {
            let better = |k: &str| {
                median(&m[k]).filter(|x| *x > 0.0).map(|x| {
                    if m["higher_is_better"] == true {
                        x
                    } else {
                        1.0 / x
                    }
                })
            };
            let bars = [(better("ratio_EK"), BLUE), (better("ratio_ER"), orange)]
                .into_iter()
                .map(|(v, c)| (v.unwrap_or(0.0), c))
                .collect();
            (m["name"].as_str().unwrap_or("?").to_string(), bars)
        })
        .collect();
    hbars(
        path,
        "E's advantage, median ratio turned so that > 1 is E better: E/K blue, E/R orange",
        &rows,
        Some(1.0),
    )
}

/// Horizontal bars, one group per row, names on the left; an optional
/// reference line.
fn hbars(
    path: &std::path::Path,
    caption: &str,
    rows: &[(String, Vec<(f64, RGBColor)>)],
    reference: Option<f64>,
) -> Result<()> {
    let n = rows.len().max(1);
    let root = SVGBackend::new(path, (W, 70 + 30 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max = rows
        .iter()
        .flat_map(|r| r.1.iter().map(|b| b.0))
        .chain(reference)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..max * 1.08, 0.0..n as f64)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .y_labels(0)
        .disable_y_mesh()
        .draw()
        .map_err(plot_err)?;
    for (i, (name, bars)) in rows.iter().enumerate() {
        let top = (n - i) as f64;
        let h = 0.8 / bars.len().max(1) as f64;
        for (j, (v, color)) in bars.iter().enumerate() {
            let y0 = top - 0.1 - h * (j + 1) as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y0), (*v, y0 + h)],
                    color.filled(),
                )))
                .map_err(plot_err)?;
        }
        let (_, py) = chart.backend_coord(&(0.0, top - 0.5));
        root.draw(&Text::new(
            name.clone(),
            (10, py - 6),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(plot_err)?;
    }
    if let Some(x) = reference {
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, n as f64)],
                BLACK.stroke_width(2),
            ))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Failures against fill %, E and K.
fn plot_fill(results: &Value, path: &std::path::Path) -> Result<()> {
    let root = SVGBackend::new(path, (W, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let curves: Vec<(String, Vec<(f64, f64)>)> = results["fill_curve"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let pts = c["points"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p["fill_pct"].as_f64()?, p["failures"]["median"].as_f64()?)))
                .collect();
            (c["datapath"].as_str().unwrap_or("?").to_string(), pts)
        })
        .collect();
    let ymax = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.1))
        .fold(10.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("SNAT fill toward one destination ({BENCH_POOL}-port block): failed new flows"),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..103.0, 0.0..ymax * 1.05)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("pool fill, % (flows sent / ports)")
        .y_desc("failed flows (cumulative)")
        .draw()
        .map_err(plot_err)?;
    for (dp, pts) in curves {
        let color = if dp == "E" { BLUE } else { RED };
        let label = if dp == "E" {
            "E: netplane"
        } else {
            "K: nf_nat MASQUERADE/SNAT"
        };
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// ns per run of each path against the floor (grey).
fn plot_programs(results: &Value, path: &std::path::Path) -> Result<()> {
    let rows: Vec<(String, Vec<(f64, RGBColor)>)> = results["test_run_ns"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| {
            let color = if i == 0 {
                RGBColor(128, 128, 128)
            } else {
                BLUE
            };
            Some((
                p["path"].as_str()?.to_string(),
                vec![(median(&p["ns"])?, color)],
            ))
        })
        .collect();
    hbars(
        path,
        "ns per program run (BPF_PROG_TEST_RUN, median); the floor in grey",
        &rows,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::{Options, Run};

    fn samples(dp: Dp, round: usize, pps: f64) -> (Dp, usize, Samples) {
        (dp, round, [("udp_pps_cross_node".to_string(), pps)].into())
    }

    fn run_with(fill_failures_e: f64) -> Run {
        let fill = |failures: f64| {
            json!({"curve": [
                {"flows": 500, "fill_pct": 50.0, "failures": 0},
                {"flows": 1000, "fill_pct": 100.0, "failures": failures},
            ], "cost": []})
        };
        Run {
            samples: vec![
                samples(Dp::E, 0, 200.0),
                samples(Dp::K, 0, 100.0),
                samples(Dp::R, 0, 160.0),
                samples(Dp::E, 1, 90.0),
                samples(Dp::K, 1, 100.0),
                samples(Dp::R, 1, 100.0),
            ],
            fills: vec![(Dp::E, fill(fill_failures_e)), (Dp::K, fill(37.0))],
            programs: json!([
                {"path": "floor: parse + redirect", "program": "bench_floor", "ns": [100.0, 100.0]},
                {"path": "SNAT established", "program": "from_pod", "ns": [300.0, 500.0]},
            ]),
            profiles: Vec::new(),
            seconds: 1.0,
        }
    }

    fn opts() -> Options {
        Options {
            quick: true,
            rounds: 2,
            gate: true,
        }
    }

    #[test]
    fn ratios_are_taken_within_each_round() {
        let r = results(&run_with(0.0), &opts()).unwrap();
        let m = metric(&r, "udp_pps_cross_node");
        // Round 0: 200/100 = 2.0, round 1: 90/100 = 0.9; not 145/100.
        assert_eq!(m["ratio_EK"]["min"], 0.9);
        assert_eq!(m["ratio_EK"]["max"], 2.0);
        assert_eq!(m["E"]["min"], 90.0);
        assert_eq!(m["E"]["max"], 200.0);
        assert_eq!(m["ratio_ER"]["min"], 0.9);
        assert_eq!(m["ratio_ER"]["max"], 1.25);
        // Not run: absent, not zero.
        assert!(metric(&r, "crr_pod").is_null());
    }

    #[test]
    fn the_floor_ratio_and_the_fill_goal_come_from_the_run() {
        let r = results(&run_with(0.0), &opts()).unwrap();
        let est = &r["test_run_ns"][1]["vs_floor"];
        assert_eq!(
            (est["min"].as_f64(), est["max"].as_f64()),
            (Some(3.0), Some(5.0))
        );
        let g = goals(&r);
        let fill = g
            .iter()
            .find(|(name, ..)| name.contains("allocation failure"))
            .unwrap();
        assert_eq!(fill.2, Some(true));
        assert!(fill.1.contains("K: 37"), "{}", fill.1);
    }

    #[test]
    fn the_gate_fails_on_an_early_allocation_failure_and_low_ratios() {
        let ok = results(&run_with(0.0), &opts()).unwrap();
        // Only udp_pps is present: the other gated ratios are missing.
        let e = gate(&ok).unwrap_err().to_string();
        assert!(e.contains("crr_pod") && !e.contains("allocations"), "{e}");
        let bad = results(&run_with(3.0), &opts()).unwrap();
        let e = gate(&bad).unwrap_err().to_string();
        assert!(e.contains("failed 3 allocations"), "{e}");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt(1234567.0), "1,234,567");
        assert_eq!(fmt(12.34), "12.3");
        assert_eq!(fmt(0.1234), "0.123");
        assert_eq!(fmt(0.0), "0");
    }
}
