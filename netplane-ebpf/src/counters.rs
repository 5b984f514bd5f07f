//! Counting: drops per numbered reason and packets per path, per CPU.
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use netplane_common::{DropReason, Path};

use crate::maps::{DROPS, PATHS, bump};

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
        // SAFETY: a per-CPU slot: this program run is its only writer, and
        // the pointer came from a successful lookup.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += ctx.len() as u64;
        }
    }
}
