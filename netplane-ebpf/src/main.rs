//! netplane's data path: TC programs that do kubenet's pod networking without
//! a bridge, kernel routes or iptables.
//!
//! - `from_pod`: TC ingress, host side of each pod veth: ARP answers,
//!   anti-spoofing, ClusterIP services, same-node delivery, UDR routing to
//!   nodes.
//! - `from_uplink`: TC ingress, node NIC: delivery to local pods.
//! - `to_uplink`: TC egress, node NIC: the node's own traffic to pods.
//! - `lb_from_vnet`, `lb_from_internet`: the outbound load balancer (or
//!   appliance) translating node IPs to frontend IPs and back.
//! - `uplink_xdp`: optional XDP on the node NIC, dropping what `from_uplink`
//!   would drop, earlier (off by default; docs/decisions.md says why).
//! - `bench_floor`: the benchmarks' floor (parse and redirect); never attached.
//! - `release_claims`: the agent's collector deletes claims and credits
//!   their ports through it (BPF_PROG_TEST_RUN); never attached.
#![no_std]
#![no_main]

mod arp;
mod clock;
mod counters;
mod events;
mod floor;
mod inbound;
mod l4;
mod lb;
mod maps;
mod masquerade;
mod packet;
mod pod;
mod registry;
mod rewrite;
mod route;
mod service;
mod snat;
mod uplink;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

// Inlined into the program's entry: a frame of its own would cost 32 bytes
// of the 512 that Linux 6.1 counts over a call chain (docs/verifier.md).
#[classifier]
#[inline(always)]
pub fn from_pod(ctx: TcContext) -> i32 {
    pod::from_pod(&ctx)
}

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    uplink::from_uplink(&ctx)
}

#[classifier]
pub fn to_uplink(ctx: TcContext) -> i32 {
    uplink::to_uplink(&ctx)
}

#[classifier]
pub fn lb_from_vnet(ctx: TcContext) -> i32 {
    lb::lb_from_vnet(&ctx)
}

#[classifier]
pub fn lb_from_internet(ctx: TcContext) -> i32 {
    lb::lb_from_internet(&ctx)
}

#[classifier]
pub fn bench_floor(ctx: TcContext) -> i32 {
    floor::floor(&ctx)
}

#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    uplink::uplink_xdp(&ctx)
}

#[xdp]
pub fn release_claims(ctx: XdpContext) -> u32 {
    snat::release_claims(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// SAFETY: the kernel reads the license from this section by name; nothing
// else shares the symbol.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
