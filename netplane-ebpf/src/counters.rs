//! Counting: drops per numbered reason and packets per path, per CPU.
use aya_ebpf::{bindings::TC_ACT_SHOT, maps::PerCpuArray, programs::TcContext};
use netplane_common::{DropReason, Path};

use crate::maps::{DROPS, PATHS};

/// Adds one to slot `index` of a per-CPU counter array.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: this program run is its only writer, and
        // the pointer came from a successful lookup.
        unsafe { *slot += 1 };
    }
}

/// Counts a drop.
#[inline(always)]
pub fn count_drop(reason: DropReason) {
    bump(&DROPS, reason as u32);
}

/// Counts the drop, reports it, and returns the TC verdict that drops.
#[inline(always)]
pub fn drop(ctx: &TcContext, reason: DropReason) -> i32 {
    count_drop(reason);
    crate::events::dropped(ctx, reason);
    TC_ACT_SHOT
}

/// Counts a packet (and its bytes) on a path.
#[inline(always)]
pub fn count(ctx: &TcContext, path: Path) {
    if let Some(slot) = PATHS.get_ptr_mut(path as u32) {
        // SAFETY: as in `bump`.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += ctx.len() as u64;
        }
    }
}
