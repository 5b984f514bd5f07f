//! What the tests and the benchmark share: node-0's packet-table world
//! (`fixture`), running frames through it (`world`), the lab helpers
//! (`labkit`), the per-program cost measurement (`program_cost`) and the
//! traffic generators (`loadgen`, run as `netplane-bench loadgen`).

pub mod cni_latency;
pub mod fixture;
pub mod labkit;
pub mod loadgen;
pub mod model;
pub mod program_cost;
pub mod world;

/// Tests that need root and BPF run in CI (as root). Elsewhere they fail,
/// loudly, unless NETPLANE_SKIP_PRIVILEGED=1 says to skip them on purpose.
/// Returns false when the test should return early.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } == 0 {
        return true;
    }
    if std::env::var("NETPLANE_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("skipped: needs root (NETPLANE_SKIP_PRIVILEGED=1)");
        return false;
    }
    panic!("this test needs root and BPF; run it as root or set NETPLANE_SKIP_PRIVILEGED=1");
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
