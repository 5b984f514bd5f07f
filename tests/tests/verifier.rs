//! The verifier's budget, held on this kernel: every program of the object,
//! under every load option, verifies within VERIFIER_BUDGET (a quarter of
//! the kernel's limit). The VM test runs the same table on 6.1 and 6.12.
use std::collections::BTreeSet;

use netplane::datapath::verifier::{Table, variants};
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
