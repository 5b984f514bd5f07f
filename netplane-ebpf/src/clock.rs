//! Clocks, both CLOCK_MONOTONIC. Refreshing a flow on every packet reads
//! the coarse one (bpf_ktime_get_coarse_ns: a scheduler tick's resolution,
//! at most a tick behind): flow timeouts are seconds to days, and it costs
//! a fraction of the precise read (docs/decisions.md §41). Claims and flow
//! events read the precise one: a port's claim time is compared with the
//! collector's pass start (`claimed_before`), and events order a log.
use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_ktime_get_coarse_ns};

/// Now, to a scheduler tick: for refreshing flows.
#[inline(always)]
pub fn coarse() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Now, to the nanosecond: for claims and events.
#[inline(always)]
pub fn precise() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
