use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use netplane_common::{DropReason, Path};

use crate::maps::{DROPS, PATHS};

/// Counts a drop.
#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(slot) = DROPS.get_ptr_mut(reason as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *slot += 1 };
    }
}

/// Counts the drop, reports it, and returns the TC verdict that drops.
#[inline(always)]
pub fn drop(ctx: &TcContext, reason: DropReason) -> i32 {
    count_drop(reason);
    crate::events::dropped(ctx, reason);
    TC_ACT_SHOT
}

#[inline(always)]
pub fn count(ctx: &TcContext, path: Path) {
    if let Some(slot) = PATHS.get_ptr_mut(path as u32) {
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += ctx.len() as u64;
        }
    }
}
