//! The benchmark floor: the least any forwarding program does (parse
//! Ethernet and IPv4, rewrite the MACs, redirect). `cargo xtask bench`
//! times every netplane path against it; no agent attaches it.
use aya_ebpf::{bindings::TC_ACT_SHOT, helpers::generated::bpf_redirect, programs::TcContext};

use crate::packet::{self, ETH_P_IP};

/// A fixed egress interface: in BPF_PROG_TEST_RUN a redirect is only a
/// verdict, so any ifindex will do.
const FLOOR_IFINDEX: u32 = 1;

pub fn floor(ctx: &TcContext) -> i32 {
    let Ok(eth) = packet::eth(ctx) else {
        return TC_ACT_SHOT;
    };
    if packet::ether_type(eth) != ETH_P_IP || packet::ipv4(ctx).is_err() {
        return TC_ACT_SHOT;
    }
    packet::set_macs(eth, [0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]);
    // SAFETY: a helper call with plain integer arguments.
    unsafe { bpf_redirect(FLOOR_IFINDEX, 0) as i32 }
}
