//! Flow events: what the data path reports through its ring buffer (new
//! flows, translations, drops) and the agent adds (expiries). Rate-limited
//! per CPU in the data path, so a flood of new flows or drops cannot make
//! reporting cost more than a bounded amount.

/// Event kinds.
pub mod kind {
    pub const NEW_FLOW: u8 = 1;
    pub const TRANSLATION: u8 = 2;
    pub const DROP: u8 = 3;
    pub const EXPIRY: u8 = 4;
}

/// One event. Addresses in `maps::ip_key` form, ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub kind: u8,
    pub proto: u8,
    /// DROP: the drop reason's number.
    pub code: u16,
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// TRANSLATION: the translated source.
    pub nat_ip: u32,
    pub nat_port: u16,
    pub _pad: u16,
    pub ts_ns: u64,
}

/// The per-CPU token bucket of the event rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub tokens: u64,
    pub last_ns: u64,
}

/// Events per second each CPU may report, and the burst it may save up.
pub const EVENTS_PER_SEC_PER_CPU: u64 = 2_000;
pub const EVENT_BURST: u64 = 2_000;
/// Size of the ring buffer (a power of two pages).
pub const EVENT_RING_BYTES: u32 = 256 * 1024;
/// Unread bytes past which a program wakes the agent. Below it the agent
/// drains the ring on its own clock, so that a run of new flows does not
/// wake it once per event (each wakeup preempts whatever runs on that CPU:
/// the traffic). A quarter of the ring: two CPUs' whole burst fits above
/// it, so nothing is lost to a drain that comes late.
pub const EVENT_WAKEUP_BYTES: u64 = EVENT_RING_BYTES as u64 / 4;
/// How often the agent drains the ring unwoken (ms): how late a flow event
/// reaches the log at most, short of the wakeup above.
pub const EVENT_DRAIN_INTERVAL_MS: u64 = 100;

pub mod names {
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    pub const EVENTS_SUPPRESSED: &str = "EVENTS_SUPPRESSED";
}

kernel_abi!(FlowEvent => 32, EventBudget => 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::FlowEvent {}
    // SAFETY: repr(C), plain integers, no padding (sizes checked above).
    unsafe impl aya::Pod for super::EventBudget {}
}
