//! The SNAT engine: one engine, two roles (the node's masquerade and the
//! outbound load balancer or appliance). A role says where a new flow may
//! take its port from (a [`Target`]) and what to do with the packet after
//! [`egress`] or [`ingress`]; the engine does the rest.
//!
//! - `table`: finding, creating (port claim) and refreshing translations;
//! - `fragments`: a datagram's later fragments follow its first;
//! - `release`: the collector's release of claims, delete and credit in
//!   one program run.
//!
//! The transport fields (`crate::l4`) and the header rewrites
//! (`crate::rewrite`) it uses serve the Services' DNAT too.
pub mod fragments;
mod release;
mod table;

pub use release::release_claims;
pub use table::reply_held;

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::warn;
use netplane_common::{DropReason, nat::NatReverse};

use crate::{
    l4::{self, Dir, L4},
    packet::Ipv4,
    rewrite::{self, Endpoint, IcmpError, Side},
};

/// Where a new flow may take its port from: `count` accounting slots from
/// `first` (the node: its one slot; the load balancer: a backend's block on
/// each frontend IP).
#[derive(Clone, Copy)]
pub struct Target {
    pub first: u32,
    pub count: u32,
    /// UDP as Azure's load balancer does it: port-restricted cone NAT, one
    /// port per inside endpoint and remote IP (`ingress` takes the same).
    pub udp_cone: bool,
    /// Keep the original port when it is free, as Linux's MASQUERADE does
    /// (the node stage); the load balancer gives ports from a block.
    pub keep_port: bool,
    /// Search the SNAT IP's port bitmap before walking (the node). The load
    /// balancer walks its blocks: it tries up to MAX_FRONTENDS slots, and the
    /// verifier would check the search once per slot (decisions §44).
    pub search_bitmap: bool,
}

/// Translates an outbound packet's source: its flow's translation, found or
/// made with a free port from `target`, then the rewrite with checksums.
/// Invalidates packet pointers.
#[inline(always)]
pub fn egress(ctx: &TcContext, ip: &Ipv4, target: Target) -> Result<(), DropReason> {
    if ip.later_fragment {
        // Its datagram's first fragment made (or found) the translation.
        let key = fragments::tuple_of_later(ip).ok_or(DropReason::FragmentNotTracked)?;
        let e = table::translation_of(&key).ok_or(DropReason::FragmentNotTracked)?;
        return rewrite::address(ctx, Side::Source, ip.src, e.nat_ip);
    }
    let l4 = l4::parse(ctx, ip, Dir::Out, target.udp_cone)?;
    let (nat_ip, nat_port) = table::translate_out(&l4.key(ip), &l4, target).inspect_err(|r| {
        if *r == DropReason::NatPortsExhausted {
            warn!(
                ctx,
                "{:i} has no SNAT port left toward {:i}:{}",
                u32::from_be(ip.src),
                u32::from_be(ip.dst),
                l4.dst_port
            );
        }
    })?;
    fragments::remember_first(ip, l4.src_port, l4.dst_port);
    if target.udp_cone && l4.proto == netplane_common::nat::PROTO_UDP {
        table::cone_peer_sent(ip, &l4);
    }
    rewrite::endpoint(
        ctx,
        &l4,
        Side::Source,
        Endpoint::new(ip.src, l4.src_port),
        Endpoint::new(nat_ip, nat_port),
    )
}

/// What an inbound packet to a translated address is.
pub enum Reply {
    /// A reply of a translated flow, or an ICMP error quoting one: the
    /// [`Restore`] passed to [`ingress`] says how to send it back.
    Translated,
    /// Nothing this engine translated.
    NotTranslated,
    /// Not a protocol the engine translates (or a non-first fragment).
    Unparsed(DropReason),
}

/// How to give a reply its original destination back. A plain struct with
/// every field set, filled in place: an enum with payloads of different
/// sizes makes LLVM copy undefined bytes, which the verifier refuses.
#[derive(Clone, Copy, Default)]
pub struct Restore {
    /// The inside address and port the packet goes back to.
    pub orig: NatReverse,
    /// A flow's reply: its destination is rewritten.
    l4: L4,
    /// An ICMP error: its outer destination and quoted source are rewritten.
    icmp_error: bool,
    quoted: IcmpError,
    /// A later fragment: only its destination address (no ports here).
    address_only: bool,
}

impl Restore {
    /// Rewrites the destination (and, for an ICMP error, the quoted source)
    /// back to the original address and port. Invalidates packet pointers.
    #[inline(always)]
    pub fn apply(&self, ctx: &TcContext, ip: &Ipv4) -> Result<(), DropReason> {
        if self.icmp_error {
            return rewrite::icmp_error(ctx, ip, &self.quoted);
        }
        if self.address_only {
            return rewrite::address(ctx, Side::Destination, ip.dst, self.orig.orig_ip);
        }
        rewrite::endpoint(
            ctx,
            &self.l4,
            Side::Destination,
            Endpoint::new(ip.dst, self.l4.dst_port),
            Endpoint::new(self.orig.orig_ip, self.orig.orig_port),
        )
    }
}

/// Classifies an inbound packet to a translated address and, for a
/// translated one, fills `restore`; refreshes the flow it belongs to.
/// Nothing is rewritten until [`Restore::apply`].
#[inline(always)]
pub fn ingress(
    ctx: &TcContext,
    ip: &Ipv4,
    restore: &mut Restore,
    udp_cone: bool,
) -> Result<Reply, DropReason> {
    if ip.later_fragment {
        let Some(key) = fragments::tuple_of_later(ip) else {
            return Ok(Reply::Unparsed(DropReason::FragmentNotTracked));
        };
        return Ok(match table::reverse_of(&key) {
            Some(rev) => {
                restore.orig = rev;
                restore.address_only = true;
                Reply::Translated
            }
            None => Reply::NotTranslated,
        });
    }
    match rewrite::icmp_error_in(ctx, ip, udp_cone)? {
        rewrite::Icmp::Ours(e) => {
            restore.orig = e.rev;
            restore.icmp_error = true;
            restore.quoted = e;
            return Ok(Reply::Translated);
        }
        rewrite::Icmp::NotOurs => return Ok(Reply::NotTranslated),
        rewrite::Icmp::NotAnError => {}
    }
    let l4 = match l4::parse(ctx, ip, Dir::In, udp_cone) {
        Ok(l4) => l4,
        Err(reason) => return Ok(Reply::Unparsed(reason)),
    };
    Ok(match table::reply_of(ip, &l4) {
        Some(rev) => {
            fragments::remember_first(ip, l4.src_port, l4.dst_port);
            restore.orig = rev;
            restore.l4 = l4;
            Reply::Translated
        }
        None => Reply::NotTranslated,
    })
}
