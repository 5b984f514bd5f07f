//! CI's regression gate: ratios from the quick run, with generous margins
//! (never absolute times; the machines are shared and noisy), and
//! netplane's exact allocation.
use anyhow::{Result, bail};

use super::model::{Dp, Ratio, Results};

/// (metric, ratio, floor).
pub const GATE: &[(&str, Ratio, f64)] = &[
    ("udp_pps_cross_node", Ratio::ER, 0.5),
    ("crr_pod", Ratio::ER, 0.5),
    ("iperf_1", Ratio::ER, 0.5),
];

pub fn gate(results: &Results) -> Result<()> {
    let mut failed = Vec::new();
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
