//! `cargo xtask bench`: netplane (E) against classic kubenet (K) and plain
//! kernel routing (R) on the same lab topology, side by side in one run.
//!
//! - `model`: the metrics, the raw `Run` and the summarised `Results`;
//! - `suite`: brings each data path up in turn and measures (a `Run`);
//! - `results`: summarises a `Run` into `Results`;
//! - `report`, `plots`: docs/benchmarks.md, the SVGs, the README table;
//! - `gate`: CI's floors on the quick run's ratios;
//! - `extra`: `bench-flows` and `bench-attach`, the smaller measurements;
//! - `services`: `bench-services`, a Service on netplane against kube-proxy;
//! - `vm`: `bench --vm`, the traffic tests with each data path on VMs.
pub mod clusterip;
pub mod extra;
mod gate;
/// The benchmark's model lives in `netplane-bench-model`, shared with
/// `netplane-bench`.
pub use netplane_bench_model as model;
mod plots;
mod profile;
pub mod report;
mod results;
pub mod scale;
mod suite;
mod traffic;
mod vm;

use anyhow::Result;

pub struct Options {
    pub quick: bool,
    pub rounds: usize,
    pub gate: bool,
    /// On VMs (`bench --vm`) instead of the lab.
    pub vm: bool,
}

impl Options {
    /// Seconds per traffic test.
    fn secs(&self) -> f64 {
        if self.quick { 1.0 } else { 3.0 }
    }
}

/// Measures, writes the results and their views, and applies the gate.
pub fn run(opts: &Options) -> Result<()> {
    if opts.vm {
        return vm::run(opts);
    }
    let run = suite::run(opts)?;
    let results = results::from_run(&run, opts)?;
    report::write_all(&results)?;
    if opts.gate {
        gate::gate(&results)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{
        gate::gate,
        model::{
            Dp, FillCostSample, FillRun, FillSample, ProgramSamples, Ratio, Results, Run, Samples,
        },
        report::{fmt, goals},
        *,
    };

    fn samples(dp: Dp, round: usize, pps: f64) -> (Dp, usize, Samples) {
        (dp, round, [("udp_pps_cross_node".to_string(), pps)].into())
    }

    fn run_with(fill_failures_e: f64) -> Run {
        let fill = |failures: f64| FillRun {
            pool: 1000,
            curve: vec![
                FillSample {
                    flows: 500,
                    fill_pct: 50.0,
                    failures: 0.0,
                },
                FillSample {
                    flows: 1000,
                    fill_pct: 100.0,
                    failures,
                },
            ],
            cost: vec![FillCostSample {
                fill_pct: 50.0,
                new_flow_ns: 900.0,
                established_ns: 400.0,
            }],
        };
        let program = |path: &str, program: &str, ns: [f64; 2]| ProgramSamples {
            path: path.into(),
            program: program.into(),
            ns: ns.into(),
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
            programs: vec![
                program("floor: parse + redirect", "bench_floor", [100.0, 100.0]),
                program("SNAT established", "from_pod", [300.0, 500.0]),
            ],
            profiles: Vec::new(),
            path_profiles: Vec::new(),
            seconds: 1.0,
        }
    }

    fn opts() -> Options {
        Options {
            quick: true,
            rounds: 2,
            gate: true,
            vm: false,
        }
    }

    #[test]
    fn ratios_are_taken_within_each_round() {
        let r = results::from_run(&run_with(0.0), &opts()).unwrap();
        let m = r.metric("udp_pps_cross_node").unwrap();
        // Round 0: 200/100 = 2.0, round 1: 90/100 = 0.9; not 145/100.
        let ek = m.ratio(Ratio::EK).unwrap();
        assert_eq!((ek.min, ek.max), (0.9, 2.0));
        let e = m.e.unwrap();
        assert_eq!((e.min, e.max), (90.0, 200.0));
        let er = m.ratio(Ratio::ER).unwrap();
        assert_eq!((er.min, er.max), (0.9, 1.25));
        // Not run: absent, not zero.
        assert!(r.metric("crr_pod").is_none());
    }

    #[test]
    fn the_floor_ratio_the_fill_goal_and_the_allocation_cost_come_from_the_run() {
        let r = results::from_run(&run_with(0.0), &opts()).unwrap();
        let est = r.test_run_ns[1].vs_floor.unwrap();
        assert_eq!((est.min, est.max), (3.0, 5.0));
        let g = goals(&r);
        let fill = g
            .iter()
            .find(|(name, ..)| name.contains("allocation failure"))
            .unwrap();
        assert_eq!(fill.2, Some(true));
        assert!(fill.1.contains("K: 37"), "{}", fill.1);
        let cost = &r.fill_curve_of(Dp::E).unwrap().allocation_cost[0];
        assert_eq!(cost.allocation_extra_ns.unwrap().median, 500.0);
    }

    #[test]
    fn the_gate_fails_on_an_early_allocation_failure_and_low_ratios() {
        let ok = results::from_run(&run_with(0.0), &opts()).unwrap();
        // Only udp_pps is present: the other gated ratios are missing.
        let e = gate(&ok).unwrap_err().to_string();
        assert!(e.contains("crr_pod") && !e.contains("allocations"), "{e}");
        let bad = results::from_run(&run_with(3.0), &opts()).unwrap();
        let e = gate(&bad).unwrap_err().to_string();
        assert!(e.contains("failed 3 allocations"), "{e}");
    }

    #[test]
    fn the_program_gate_holds_the_committed_run_and_catches_a_slow_search() {
        let path = crate::workspace_root().join("docs/bench/results.json");
        let mut r: Results = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(gate::program_gate(&r), Vec::<String>::new());
        // The port search as it was before the bitmap: 20× at 99 %.
        let tenth = r
            .test_run_ns
            .iter()
            .find(|p| p.path == "SNAT new flow, 10 % of ports held")
            .and_then(|p| p.ns)
            .unwrap();
        let full = r
            .test_run_ns
            .iter_mut()
            .find(|p| p.path == "SNAT new flow, 99 % of ports held")
            .unwrap();
        let slow = |x: f64| x * 20.0;
        full.ns = Some(model::Spread {
            min: slow(tenth.min),
            median: slow(tenth.median),
            max: slow(tenth.max),
            n: tenth.n,
        });
        let failed = gate::program_gate(&r);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].starts_with("SNAT new flow, 99 %"), "{failed:?}");
    }

    #[test]
    fn the_committed_results_read_back_into_the_model() {
        let path = crate::workspace_root().join("docs/bench/results.json");
        let text = std::fs::read_to_string(path).unwrap();
        let r: Results = serde_json::from_str(&text).unwrap();
        assert!(r.metric("udp_pps_cross_node").is_some());
        let again: serde_json::Value = serde_json::to_value(&r).unwrap();
        let before: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(again, before, "results.json round-trips through the model");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt(1234567.0), "1,234,567");
        assert_eq!(fmt(12.34), "12.3");
        assert_eq!(fmt(0.1234), "0.123");
        assert_eq!(fmt(0.0), "0");
    }
}
