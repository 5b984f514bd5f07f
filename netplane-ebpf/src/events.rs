//! Flow events to the agent, through a ring buffer, rate-limited per CPU.
//! Only new flows, translations and drops report: an established flow's
//! packets never come here.
use aya_ebpf::{
    Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::{PerCpuArray, RingBuf},
    programs::TcContext,
};
use netplane_common::{
    DropReason,
    events::{
        EVENT_BURST, EVENT_RING_BYTES, EVENT_WAKEUP_BYTES, EVENTS_PER_SEC_PER_CPU, EventBudget,
        FlowEvent, kind,
    },
};

use crate::{
    maps::bump,
    packet::{ETH_P_IP, ip},
    registry::maps,
};

/// Where the Ethernet type sits in a frame.
const ETHER_TYPE_OFF: usize = 12;

/// 0: report nothing (set by the loader; the benchmark compares both).
#[unsafe(no_mangle)]
static FLOW_EVENTS_ON: Global<u8> = Global::new(1);

maps! {
    /// Flow events to the agent.
    FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

    /// Each CPU's token bucket for events.
    EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

    /// Events not reported for want of budget (or ring space), per CPU.
    EVENTS_SUPPRESSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
}

/// Reports an event if this CPU's budget allows.
#[inline(always)]
pub fn emit(mut ev: FlowEvent) {
    if FLOW_EVENTS_ON.load() == 0 {
        return;
    }
    let Some(b) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    let now = crate::clock::precise();
    // SAFETY: a per-CPU slot from a successful lookup: this run is its only
    // user.
    let b = unsafe { &mut *b };
    let earned = now.saturating_sub(b.last_ns) * EVENTS_PER_SEC_PER_CPU / 1_000_000_000;
    if earned > 0 {
        b.tokens = (b.tokens + earned).min(EVENT_BURST);
        b.last_ns = now;
    }
    if b.tokens == 0 || {
        ev.ts_ns = now;
        FLOW_EVENTS.output::<FlowEvent>(&ev, wakeup()).is_err()
    } {
        bump(&EVENTS_SUPPRESSED, 0);
        return;
    }
    b.tokens -= 1;
}

/// Wake the agent only when the ring fills up; it drains on its own clock
/// (EVENT_DRAIN_INTERVAL_MS) otherwise.
#[inline(always)]
fn wakeup() -> u64 {
    if FLOW_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= EVENT_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// A drop, with the packet's addresses when it is IPv4.
#[inline(always)]
pub fn dropped(ctx: &TcContext, reason: DropReason) {
    let mut ev = FlowEvent {
        kind: kind::DROP,
        code: reason as u16,
        ..Default::default()
    };
    let ethertype: Result<[u8; 2], _> = ctx.load(ETHER_TYPE_OFF);
    if ethertype.is_ok_and(|t| u16::from_be_bytes(t) == ETH_P_IP)
        && let Ok(a) = ctx.load::<[u8; 8]>(ip::SRC)
    {
        ev.src_ip = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
        ev.dst_ip = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]);
        ev.proto = ctx.load::<u8>(ip::PROTO).unwrap_or(0);
    }
    emit(ev);
}
