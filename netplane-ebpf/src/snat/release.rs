//! The collector's release of claims: delete each claim (NAT_IN) and, only
//! if it was there, credit its port to its slot (SNAT_FREES), in one
//! program run. The agent runs this with BPF_PROG_TEST_RUN; a SIGKILL can
//! end the agent between two runs, never between a delete and its credit,
//! so the accounting stays exact however the agent dies (decisions §47).
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use netplane_common::nat::{ClaimRelease, RELEASE_BATCH};

use crate::{
    maps::{NAT_IN, SNAT_FREES},
    packet::ptr_at,
};

/// The frame is up to RELEASE_BATCH `ClaimRelease`s; each one deleted has
/// its `released` set. Always XDP_PASS (a test run's verdict means nothing
/// here).
pub fn release_claims(ctx: &XdpContext) -> u32 {
    for i in 0..RELEASE_BATCH {
        let Some(claim) = ptr_at::<ClaimRelease>(ctx, i * size_of::<ClaimRelease>()) else {
            break;
        };
        // SAFETY: `ptr_at` checked that the claim lies inside the frame.
        let (key, slot) = unsafe { ((*claim).key, (*claim).slot) };
        if NAT_IN.remove(key).is_ok() {
            credit(slot);
            // SAFETY: as above.
            unsafe { (*claim).released = 1 };
        }
    }
    xdp_action::XDP_PASS
}

/// One port back to `slot` (none for NO_SLOT, which no array index is).
#[inline(always)]
fn credit(slot: u32) {
    if let Some(frees) = SNAT_FREES.get_ptr_mut(slot) {
        // SAFETY: a live array element. Its only writer is this program,
        // run by one node's one agent, one run at a time.
        unsafe { *frees += 1 };
    }
}
