//! The verifier's budget, held on this kernel: every program of the object,
//! under every load option, verifies within VERIFIER_BUDGET (a quarter of
//! the kernel's limit). The VM test runs the same table on 6.1 and 6.12.
use std::collections::BTreeSet;

use netplane::datapath::verifier::{Baseline, Table, kernel_series, variants};
use netplane_common::{limits::VERIFIER_BUDGET, maps::programs};
use netplane_tests::privileged;

#[test]
fn every_program_verifies_within_the_budget_under_every_option() {
    if !privileged() {
        return;
    }
    let table = Table::measure(&mut |_| {}).unwrap();
    let rendered = table.render();
    println!("{rendered}");
    // Nothing escapes: the object holds exactly the listed programs, and
    // each was loaded under each variant.
    assert!(table.unlisted.is_empty(), "{rendered}");
    let measured: BTreeSet<&str> = table.counts.iter().map(|c| c.program.as_str()).collect();
    assert_eq!(measured, programs::ALL.into_iter().collect());
    assert_eq!(
        table.counts.len(),
        programs::ALL.len() * variants().len(),
        "{rendered}"
    );
    for c in &table.counts {
        assert!(
            c.within_budget(),
            "{} (flow events {}, log {}): {:?} instructions, refused: {:?}; budget {VERIFIER_BUDGET}\n{rendered}",
            c.program,
            c.flow_events,
            c.log_level,
            c.processed,
            c.refused
        );
    }
}

/// No program grew by more than a fifth over the counts docs/verifier.json
/// records for this kernel series (a change that makes one costlier to
/// verify records the new count and says so in its commit).
#[test]
fn no_program_grew_past_its_recorded_count() {
    if !privileged() {
        return;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/verifier.json");
    let baseline: Baseline = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let table = Table::measure(&mut |_| {}).unwrap();
    let series = kernel_series(&table.kernel);
    if !baseline.contains_key(&series) {
        eprintln!("no counts recorded for Linux {series}: nothing to compare");
        return;
    }
    let grown = table.growth(&baseline);
    assert!(
        grown.is_empty(),
        "grew more than a fifth on Linux {series}: {grown:?}; record with \
         `netplane verifier --record docs/verifier.json` and say so in the commit"
    );
}
