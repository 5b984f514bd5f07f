//! ARP responder for pods. There is no bridge and no gateway address on the
//! node: every ARP request a pod sends (for its gateway 10.244.x.1 or for a
//! neighbour in its /24) is answered with the host veth's MAC, so all of the
//! pod's traffic comes to `from_pod`.
use aya_ebpf::{helpers::generated::bpf_redirect, programs::TcContext};
use netplane_common::{DropReason, Path, maps::ip_key};
use network_types::{arp::ArpHdr, eth::EthHdr};

use crate::{counters::count, packet, route};

const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;

#[inline(always)]
pub fn answer(ctx: &TcContext, eth: *mut EthHdr) -> Result<i32, DropReason> {
    let arp = packet::ptr_at::<ArpHdr>(ctx, EthHdr::LEN).ok_or(DropReason::ArpNotRequest)?;
    // SAFETY: ptr_at checked the ARP header is in bounds, and no helper
    // runs while `a` is used.
    let a = unsafe { &mut *arp };
    if a.htype() != ARPHRD_ETHER
        || a.ptype() != packet::ETH_P_IP
        || a.hlen() != 6
        || a.plen() != 4
        || a.oper() != ARPOP_REQUEST
        || a.spa() == a.tpa()
    {
        return Err(DropReason::ArpNotRequest);
    }
    // Only a pod of this node, asking from its own veth, gets an answer.
    // SAFETY: the skb pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let pod = match route::local_pod(ip_key(a.spa())) {
        Some(pod) if pod.ifindex == ifindex => pod,
        _ => return Err(DropReason::SpoofedSource),
    };
    let asker_mac = a.sha();
    let asker_ip = a.spa();
    let wanted_ip = a.tpa();
    a.set_oper(ARPOP_REPLY);
    a.set_sha(pod.host_mac);
    a.set_spa(wanted_ip);
    a.set_tha(asker_mac);
    a.set_tpa(asker_ip);
    packet::set_macs(eth, asker_mac, pod.host_mac);
    count(ctx, Path::ArpReply);
    // SAFETY: a helper call with plain integer arguments.
    Ok(unsafe { bpf_redirect(pod.ifindex, 0) as i32 })
}
