//! CI's regression gate: ratios from the quick run, with generous margins
//! (never absolute times; the machines are shared and noisy), the program
//! paths against each other, and netplane's exact allocation.
use anyhow::{Result, bail};

use super::model::{Dp, Ratio, Results};

/// (metric, ratio, floor).
pub const GATE: &[(&str, Ratio, f64)] = &[
    ("udp_pps_cross_node", Ratio::ER, 0.5),
    ("crr_pod", Ratio::ER, 0.5),
    ("iperf_1", Ratio::ER, 0.5),
];

/// (path, against, most): a program path's best time over the run's rounds
/// against another path's best (noise only ever adds time, so the minimum
/// is the cleanest sample). About twice what full runs measure: SNAT
/// established and reverse NAT against the floor program (3.0–3.4× and
/// 3.7–4.7×), and a new flow at 99 % of the ports held against 10 %
/// (1.4–1.7×; 20–28× before the port bitmap).
pub const PROGRAM_GATE: &[(&str, &str, f64)] = &[
    ("SNAT established", "floor: parse + redirect", 6.0),
    ("reverse NAT (reply)", "floor: parse + redirect", 9.0),
    (
        "SNAT new flow, 99 % of ports held",
        "SNAT new flow, 10 % of ports held",
        4.0,
    ),
];

pub fn gate(results: &Results) -> Result<()> {
    let mut failed = program_gate(results);
    for &(name, ratio, floor) in GATE {
        let v = results
            .metric(name)
            .and_then(|m| m.ratio(ratio))
            .map(|s| s.median);
        let ratio = ratio.name();
        match v {
            Some(x) if x >= floor => eprintln!("gate: {name} {ratio} {x:.2} ≥ {floor}"),
            _ => failed.push(format!("{name} {ratio} {v:?} < {floor}")),
        }
    }
    // Exactness is not noisy: netplane must not fail an allocation while
    // the pool has a free port.
    let early = results
        .fill_curve_of(Dp::E)
        .and_then(|c| c.failures_before_full(|s| s.max))
        .unwrap_or(0.0);
    if early > 0.0 {
        failed.push(format!(
            "netplane failed {early} allocations before its pool was full (worst round)"
        ));
    }
    if !failed.is_empty() {
        bail!("benchmark gate: {}", failed.join("; "));
    }
    Ok(())
}

/// What PROGRAM_GATE finds wrong (nothing: all within their bounds).
pub fn program_gate(results: &Results) -> Vec<String> {
    let best = |path: &str| {
        results
            .test_run_ns
            .iter()
            .find(|p| p.path == path)
            .and_then(|p| p.ns)
            .map(|s| s.min)
    };
    let mut failed = Vec::new();
    for &(path, against, most) in PROGRAM_GATE {
        match best(path).zip(best(against)).map(|(a, b)| a / b) {
            Some(x) if x <= most => eprintln!("gate: {path} {x:.2}× {against} ≤ {most}"),
            x => failed.push(format!("{path} {x:?}× {against}, more than {most}")),
        }
    }
    failed
}
