//! What `cargo xtask bench` writes from `Results`: docs/bench/results.json,
//! docs/benchmarks.md (with the goals), the plots, and the README's
//! headline table.
use std::fmt::Write as _;

use anyhow::{Context, Result, bail};

use super::{
    model::{BENCH_POOL, Dp, Ratio, Results, Spread},
    plots,
};
use crate::workspace_root;

pub fn write_all(results: &Results) -> Result<()> {
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

fn write_views(results: &Results) -> Result<()> {
    let root = workspace_root();
    plots::write_all(results, &root.join("docs/bench"))?;
    std::fs::write(root.join("docs/benchmarks.md"), markdown(results)?)?;
    update_readme(results)?;
    println!("{}", headline(results));
    eprintln!("written: docs/benchmarks.md, docs/bench/*.svg, README.md (headline)");
    Ok(())
}

/// A number as the tables show it.
pub fn fmt(x: f64) -> String {
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

fn cell(v: Option<Spread>) -> String {
    v.map_or("–".into(), |s| {
        format!("{} ({}–{})", fmt(s.median), fmt(s.min), fmt(s.max))
    })
}

fn ratio_cell(v: Option<Spread>) -> String {
    v.map_or("–".into(), |s| {
        format!("**{:.2}** ({:.2}–{:.2})", s.median, s.min, s.max)
    })
}

/// The goals of the benchmark issue: (what, measured value, goal met).
pub fn goals(results: &Results) -> Vec<(String, String, Option<bool>)> {
    let r = |name: &str, ratio: Ratio| {
        results
            .metric(name)
            .and_then(|m| m.ratio(ratio))
            .map(|s| s.median)
    };
    let ge = |v: Option<f64>, g: f64| v.map(|x| x >= g);
    let show = |v: Option<f64>| v.map_or("not measured".into(), |x| format!("{x:.2}"));
    let mut out = Vec::new();
    for (goal, name, ratio, floor) in [
        (
            "small-packet rate E/K ≥ 1.3",
            "udp_pps_cross_node",
            Ratio::EK,
            1.3,
        ),
        (
            "small-packet rate E/R ≥ 1.05",
            "udp_pps_cross_node",
            Ratio::ER,
            1.05,
        ),
        (
            "connections/s through SNAT E/K ≥ 1.2",
            "crr_snat",
            Ratio::EK,
            1.2,
        ),
        (
            "single-stream iperf3 E/R ≥ 0.95",
            "iperf_1",
            Ratio::ER,
            0.95,
        ),
    ] {
        out.push((goal.into(), show(r(name, ratio)), ge(r(name, ratio), floor)));
    }
    let p99 = r("tcp_rr_p99_us", Ratio::EK);
    out.push((
        "p99 latency E ≤ K (E/K ≤ 1)".into(),
        show(p99),
        p99.map(|x| x <= 1.0),
    ));
    // Zero allocation failures before the pool is 100 % full (worst round).
    let early = |dp: Dp| {
        results
            .fill_curve_of(dp)
            .and_then(|c| c.failures_before_full(|s| s.max))
    };
    let e = early(Dp::E);
    out.push((
        "no allocation failure before the pool is 100 % full (E)".into(),
        e.map_or("not measured".into(), |x| {
            format!(
                "{x:.0} failures (K: {})",
                early(Dp::K).map_or("–".into(), |k| format!("{k:.0}"))
            )
        }),
        e.map(|x| x == 0.0),
    ));
    // The performance issue's goals for the programs (BPF_PROG_TEST_RUN).
    let cost = |path: &str| results.test_run_ns.iter().find(|p| p.path == path);
    let vs_floor = |path: &str| cost(path).and_then(|p| p.vs_floor).map(|s| s.median);
    for (goal, path, most) in [
        (
            "SNAT established ≤ 2.5× the floor program",
            "SNAT established",
            2.5,
        ),
        (
            "reverse NAT ≤ 2.5× the floor program",
            "reverse NAT (reply)",
            2.5,
        ),
        (
            "SNAT new flow at 10 % fill ≤ 7× the floor program",
            "SNAT new flow, 10 % of ports held",
            7.0,
        ),
    ] {
        let v = vs_floor(path);
        out.push((goal.into(), show(v), v.map(|x| x <= most)));
    }
    let at = |path: &str| cost(path).and_then(|p| p.ns).map(|s| s.median);
    let full = at("SNAT new flow, 99 % of ports held")
        .zip(at("SNAT new flow, 10 % of ports held"))
        .map(|(full, tenth)| full / tenth);
    out.push((
        "SNAT new flow at 99 % fill ≤ 2× its cost at 10 %".into(),
        show(full),
        full.map(|x| x <= 2.0),
    ));
    let crr = r("crr_snat", Ratio::ER);
    out.push((
        "connections/s through SNAT E/R ≥ 1.0 (R untranslated)".into(),
        show(crr),
        ge(crr, 1.0),
    ));
    out
}

fn markdown(results: &Results) -> Result<String> {
    let m = &results.machine;
    let mut r = String::new();
    writeln!(
        r,
        "# Benchmarks: netplane (E) vs classic kubenet (K) vs plain routing (R)\n"
    )?;
    writeln!(
        r,
        "Written by `cargo xtask bench{}` on {} (commit {}). Do not edit by hand: the analysis \
         at the end comes from docs/bench/notes.md.\n",
        if m.quick { " --quick" } else { "" },
        m.date_utc,
        m.netplane_commit,
    )?;
    writeln!(
        r,
        "**Machine**: {} × {}, kernel {}, {}; {}; {}; {}. A shared virtual machine: \
         absolute numbers hold only here, the ratios are what to compare. {} rounds, the three \
         data paths back to back in each (order rotating), {} s per test, {}; {:.0} s in all.\n",
        m.cpus,
        m.cpu_model,
        m.kernel,
        m.os,
        m.rustc,
        m.iperf3,
        m.iptables,
        m.rounds,
        m.seconds_per_test,
        m.cpu_pinning,
        m.wall_seconds,
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
    for x in &results.metrics {
        writeln!(
            r,
            "| `{}` {} | {}{} | {} | {} | {} | {} | {} |",
            x.name,
            x.what,
            x.unit,
            if x.higher_is_better { " ↑" } else { " ↓" },
            cell(x.e),
            cell(x.k),
            cell(x.r),
            ratio_cell(x.ratio_ek),
            ratio_cell(x.ratio_er),
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
    for l in &results.conntrack_live_entries {
        writeln!(
            r,
            "| {} | {} | {} |",
            fmt(f64::from(l.level)),
            cell(l.e),
            cell(l.k)
        )?;
    }
    writeln!(r, "\n{}\n", results.conntrack_note)?;
    fill_section(&mut r, results)?;
    writeln!(r, "\n## Per-program cost (BPF_PROG_TEST_RUN)\n")?;
    writeln!(
        r,
        "Each path's program on node-0's world (tests/src/fixture.rs), the kernel's \
         timing of single runs on fresh frames, against `bench_floor` (parse Ethernet and IPv4, \
         rewrite the MACs, redirect). New flows each use a fresh source port, so each run \
         allocates.\n"
    )?;
    writeln!(r, "![program cost](bench/program-cost.svg)\n")?;
    writeln!(r, "| path | program | ns per run | × floor |")?;
    writeln!(r, "|---|---|---|---|")?;
    for p in &results.test_run_ns {
        writeln!(
            r,
            "| {} | `{}` | {} | {} |",
            p.path,
            p.program,
            cell(p.ns),
            ratio_cell(p.vs_floor),
        )?;
    }
    path_profile_section(&mut r, results)?;
    profile_section(&mut r, results)?;
    let notes =
        std::fs::read_to_string(workspace_root().join("docs/bench/notes.md")).unwrap_or_default();
    writeln!(r, "\n{notes}")?;
    Ok(r)
}

fn fill_section(r: &mut String, results: &Results) -> Result<()> {
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
    let (Some(e), Some(k)) = (results.fill_curve_of(Dp::E), results.fill_curve_of(Dp::K)) else {
        return Ok(());
    };
    for (a, b) in e.points.iter().zip(&k.points) {
        let f = a.fill_pct;
        // The rows that tell: every 10 %, and the last few steps.
        if (f.round() as i64) % 10 == 0 || f >= 95.0 {
            writeln!(
                r,
                "| {f:.0} | {} | {} |",
                cell(a.failures),
                cell(b.failures)
            )?;
        }
    }
    writeln!(
        r,
        "\n| fill % | E new flow ns | E extra for allocation | K new flow ns | K extra for allocation |"
    )?;
    writeln!(r, "|---|---|---|---|---|")?;
    for (a, b) in e.allocation_cost.iter().zip(&k.allocation_cost) {
        writeln!(
            r,
            "| {:.0} | {} | {} | {} | {} |",
            a.fill_pct,
            cell(a.new_flow_ns),
            cell(a.allocation_extra_ns),
            cell(b.new_flow_ns),
            cell(b.allocation_extra_ns),
        )?;
    }
    Ok(())
}

fn path_profile_section(r: &mut String, results: &Results) -> Result<()> {
    if results.path_profiles.is_empty() {
        return Ok(());
    }
    writeln!(
        r,
        "\n## Where a path's time goes (perf, BPF_PROG_TEST_RUN)\n"
    )?;
    writeln!(
        r,
        "`perf record -g -e cpu-clock` while `netplane-bench run-path` repeats one path as \
         the table above times it. Of the samples inside the program, the share in its own \
         instructions (parsing, checks, inlined array lookups, in-place rewrites) and in each \
         function it called: hash-map lookups (`__htab_map_lookup_elem`, \
         `lookup_nulls_elem_raw`), inserts (`htab_map_update_elem`), helpers. ≈ ns is that \
         share of the path's median above.\n"
    )?;
    writeln!(
        r,
        "| path | ns per run | samples | own code | hash lookups | hash inserts | other calls |"
    )?;
    writeln!(r, "|---|---|---|---|---|---|---|")?;
    for p in &results.path_profiles {
        let ns = results
            .test_run_ns
            .iter()
            .find(|c| c.path == p.cost_row)
            .and_then(|c| c.ns.map(|s| s.median));
        let share = |pct: f64| match ns {
            Some(ns) => format!("{pct:.0} % (≈{:.0} ns)", pct * ns / 100.0),
            None => format!("{pct:.0} %"),
        };
        let (mut own, mut lookups, mut inserts) = (0.0, 0.0, 0.0);
        let mut other = Vec::new();
        for part in &p.parts {
            match path_part(&part.symbol) {
                PathPart::Own => own += part.percent,
                PathPart::Lookup => lookups += part.percent,
                PathPart::Insert => inserts += part.percent,
                PathPart::Other if part.percent >= 0.5 => {
                    other.push(format!("`{}` {}", part.symbol, share(part.percent)))
                }
                PathPart::Other => {}
            }
        }
        writeln!(
            r,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.cost_row,
            ns.map_or("–".into(), |n| format!("{n:.0}")),
            p.samples,
            share(own),
            share(lookups),
            share(inserts),
            other.join(", ")
        )?;
    }
    Ok(())
}

enum PathPart {
    Own,
    Lookup,
    Insert,
    Other,
}

/// Which column a function a program called falls in.
fn path_part(symbol: &str) -> PathPart {
    if symbol == super::profile::OWN_CODE {
        PathPart::Own
    } else if symbol.contains("lookup") || symbol == "htab_map_hash" || symbol == "memcmp" {
        PathPart::Lookup
    } else if symbol.contains("update") || symbol.contains("push") || symbol.contains("delete") {
        PathPart::Insert
    } else {
        PathPart::Other
    }
}

fn profile_section(r: &mut String, results: &Results) -> Result<()> {
    if results.profiles.is_empty() {
        return Ok(());
    }
    writeln!(r, "\n## Where the CPU goes (perf, whole machine)\n")?;
    writeln!(
        r,
        "`perf record -a -e cpu-clock` over the whole machine while a test of the first \
         table runs (a VM has no hardware counters; samples land where interrupts are \
         enabled, so time with interrupts off shows up at `_raw_spin_unlock_irqrestore`). \
         `swapper` is the idle CPUs; `netplane` the three agents, `netplane-bench` the \
         traffic's client and server.\n"
    )?;
    let mut workloads: Vec<&str> = Vec::new();
    for p in &results.profiles {
        if !workloads.contains(&p.profile.workload.as_str()) {
            workloads.push(&p.profile.workload);
        }
    }
    let pct = |x: f64| format!("{:.1} %", x + 0.0);
    let listed = |v: &[super::model::Symbol], n: usize, code: bool| -> String {
        v.iter()
            .take(n)
            .map(|t| {
                if code {
                    format!("`{}` {}", t.symbol, pct(t.percent))
                } else {
                    format!("{} {}", t.symbol, pct(t.percent))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for workload in workloads {
        writeln!(r, "Under {workload}:\n")?;
        writeln!(
            r,
            "| | netplane's programs | netfilter | bridges (cbr0 in K; the lab's VNet switch in all) | FIB lookups | processes | top symbols |"
        )?;
        writeln!(r, "|---|---|---|---|---|---|---|")?;
        for p in results
            .profiles
            .iter()
            .filter(|p| p.profile.workload == workload)
        {
            let q = &p.profile;
            writeln!(
                r,
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.datapath,
                pct(q.bpf_programs_percent),
                pct(q.netfilter_percent),
                pct(q.bridge_percent),
                pct(q.fib_percent),
                listed(&q.processes, 5, false),
                listed(&q.top, 6, true),
            )?;
        }
        writeln!(r)?;
    }
    Ok(())
}

/// The README's headline table.
fn headline(results: &Results) -> String {
    let mut t = String::new();
    let m = &results.machine;
    let _ = writeln!(
        t,
        "| measured by `cargo xtask bench`{} ({} CPUs, kernel {}) | E: netplane | K: classic kubenet | R: plain routing | E/K | E/R |",
        if m.quick { " --quick" } else { "" },
        m.cpus,
        m.kernel,
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
        let x = results.metric(name);
        let med = |f: fn(&super::model::MetricResult) -> Option<Spread>| {
            x.and_then(f).map_or("–".into(), |s| fmt(s.median))
        };
        let rat = |r: Ratio| {
            x.and_then(|m| m.ratio(r))
                .map_or("–".into(), |s| format!("{:.2}", s.median))
        };
        let _ = writeln!(
            t,
            "| {label} | {} | {} | {} | {} | {} |",
            med(|m| m.e),
            med(|m| m.k),
            med(|m| m.r),
            rat(Ratio::EK),
            rat(Ratio::ER)
        );
    }
    // The port pool's exactness, from the fill curve.
    let at_full = |dp: Dp| {
        results
            .fill_curve_of(dp)
            .and_then(|c| c.failures_before_full(|s| s.median))
            .map_or("–".into(), fmt)
    };
    let _ = writeln!(
        t,
        "| SNAT flows failed before the pool is full ({BENCH_POOL} ports) ↓ | {} | {} | – | | |",
        at_full(Dp::E),
        at_full(Dp::K)
    );
    t
}

const README_START: &str = "<!-- bench:start -->";
const README_END: &str = "<!-- bench:end -->";

fn update_readme(results: &Results) -> Result<()> {
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
