//! ClusterIP Services (netplane_common::services): a pod's packet to a
//! service frontend goes to a ready backend (DNAT, as kube-proxy's
//! KUBE-SVC/KUBE-SEP chains do), and the backend's replies get the
//! frontend back before they reach the client pod (conntrack's un-DNAT).
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, TC_ACT_OK,
        bpf_adj_room_mode::{BPF_ADJ_ROOM_MAC, BPF_ADJ_ROOM_NET},
    },
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use netplane_common::{
    DropReason, NodeConfig, Path, checksum,
    limits::UDP_STREAM_TIMEOUT_S,
    nat::{FlowKey, FragKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    services::{
        Affinity, AffinityKey, Backend, BackendKey, MASQUERADE_PORT_MAX, MASQUERADE_PORT_MIN,
        MASQUERADE_PORT_TRIES, Service, ServiceFlow, ServiceKey, ServiceReply,
    },
};
use network_types::eth::EthHdr;

use crate::{
    l4::{L4, be16},
    maps::{
        SERVICE_AFFINITY, SERVICE_BACKENDS, SERVICE_CONFIG, SERVICE_FLOWS, SERVICE_REPLIES,
        SERVICES,
    },
    packet::{self, Ipv4},
    rewrite::{self, Endpoint, Side},
    route,
};

/// The ports of a TCP or UDP packet that carries them.
#[inline(always)]
fn ports(ctx: &TcContext, ip: &Ipv4) -> Option<L4> {
    if ip.later_fragment || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP) {
        return None;
    }
    let h: [u8; 4] = packet::read(ctx, ip.l4_off)?;
    Some(L4 {
        proto: ip.proto,
        off: ip.l4_off,
        src_port: be16(&h, 0),
        dst_port: be16(&h, 2),
        ..L4::default()
    })
}

/// A packet to a service frontend, translated: its backend's address.
enum Dnat {
    To(u32),
    /// The service has no ready backend (and the flow none from before).
    NoBackend,
}

/// Who the client is, as far as masquerading goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    /// A pod: masqueraded (to `hairpin_ip`) only when it reaches itself.
    Pod { hairpin_ip: u32 },
    /// The node's own stack: always masqueraded (kube-proxy marks every
    /// source outside the cluster pod CIDR), keeping its address.
    Node,
}

/// Looks a packet to the service CIDR up and, for a frontend, translates
/// it for the flow's backend (a new flow picks one). None: not the
/// service CIDR.
#[inline(always)]
fn dnat(ctx: &TcContext, ip: &Ipv4, client: Client) -> Result<Option<Dnat>, DropReason> {
    let Some(sc) = SERVICE_CONFIG.get(0) else {
        return Ok(None);
    };
    if !sc.in_range(ip.dst) {
        return Ok(None);
    }
    if ip.later_fragment {
        return Err(DropReason::FragmentNotTracked);
    }
    let l4 = ports(ctx, ip).ok_or(DropReason::NoService)?;
    let frontend = ServiceKey::new(ip.dst, l4.dst_port, ip.proto);
    // SAFETY: the agent replaces values whole; the value is copied at once.
    let svc = *unsafe { SERVICES.get(frontend) }.ok_or(DropReason::NoService)?;
    let key = l4.key(ip);
    // SAFETY: as above.
    let known = unsafe { SERVICE_FLOWS.get(key) }.copied();
    let flow = match known {
        // A new TCP connection on a remembered tuple (conntrack would have
        // let the old one go) keeps its backend only if it is still ready;
        // a UDP flow lives while either side sends.
        Some(f) if !(syn(ctx, ip) && gone(&svc, &f)) && udp_alive(&f, ip.proto) => f,
        _ if svc.backends == 0 => return Ok(Some(Dnat::NoBackend)),
        _ => open(ip, &l4, &svc, &frontend, client)?,
    };
    let from = Endpoint::new(ip.dst, l4.dst_port);
    let to = Endpoint::new(flow.backend_ip, flow.backend_port);
    rewrite::endpoint(ctx, &l4, Side::Destination, from, to)?;
    if (flow.src_ip, flow.src_port) != (ip.src, l4.src_port) {
        let (old, new) = (
            Endpoint::new(ip.src, l4.src_port),
            Endpoint::new(flow.src_ip, flow.src_port),
        );
        rewrite::endpoint(ctx, &l4, Side::Source, old, new)?;
    }
    Ok(Some(Dnat::To(flow.backend_ip)))
}

/// A TCP segment opening a connection (SYN without ACK).
#[inline(always)]
fn syn(ctx: &TcContext, ip: &Ipv4) -> bool {
    use crate::packet::tcp::{ACK, FLAGS, SYN};
    ip.proto == PROTO_TCP
        && ctx
            .load::<u8>(ip.l4_off + FLAGS)
            .is_ok_and(|f| f & (SYN | ACK) == SYN)
}

/// A UDP flow's packet from its client keeps the flow alive as its
/// backend's replies do (conntrack's timer runs on both directions); a flow
/// whose time ran out, or whose reply entry is gone, is over and the packet
/// opens a new one. TCP: always alive here.
#[inline(always)]
fn udp_alive(f: &ServiceFlow, proto: u8) -> bool {
    if proto != PROTO_UDP {
        return true;
    }
    let key = FlowKey::new(f.backend_ip, f.src_ip, f.backend_port, f.src_port, proto);
    let Some(reply) = SERVICE_REPLIES.get_ptr_mut(key) else {
        return false;
    };
    let now = crate::clock::coarse();
    // SAFETY: the pointer came from a successful lookup; a racing writer on
    // another CPU only refreshes the same time.
    if udp_expired(unsafe { (*reply).last_ns }, now) {
        let _ = SERVICE_REPLIES.remove(key);
        return false;
    }
    // SAFETY: as above.
    unsafe { (*reply).last_ns = now };
    true
}

/// Conntrack would have forgotten a UDP flow last seen at `last_ns`.
#[inline(always)]
fn udp_expired(last_ns: u64, now: u64) -> bool {
    now.saturating_sub(last_ns) > UDP_STREAM_TIMEOUT_S as u64 * 1_000_000_000
}

/// The flow's backend is no longer where it was in the service's list.
#[inline(always)]
fn gone(svc: &Service, f: &ServiceFlow) -> bool {
    !still_at(svc, f.index, f.backend_ip, f.backend_port)
}

/// The service's ready backend at `index` is (ip, port).
#[inline(always)]
fn still_at(svc: &Service, index: u32, ip: u32, port: u16) -> bool {
    if index >= svc.backends {
        return false;
    }
    let slot = BackendKey {
        service: svc.id,
        index,
    };
    // SAFETY: the value is copied at once.
    match unsafe { SERVICE_BACKENDS.get(slot) }.copied() {
        Some(b) => (b.ip, b.port) == (ip, port),
        None => false,
    }
}

/// A new service flow: its backend, the source the backend will see, and
/// both table entries.
#[inline(always)]
fn open(
    ip: &Ipv4,
    l4: &L4,
    svc: &Service,
    frontend: &ServiceKey,
    client: Client,
) -> Result<ServiceFlow, DropReason> {
    let (b, index) = pick(svc, frontend, ip.src)?;
    let masquerade = match client {
        // A pod reaching itself: the backend must answer someone else, or
        // its reply would stay inside the pod un-restored.
        Client::Pod { hairpin_ip } if b.ip == ip.src => Some(hairpin_ip),
        Client::Pod { .. } => None,
        Client::Node => Some(ip.src),
    };
    let reply = ServiceReply {
        frontend_ip: ip.dst,
        client_ip: ip.src,
        frontend_port: l4.dst_port,
        client_port: l4.src_port,
        _pad: 0,
        last_ns: crate::clock::coarse(),
    };
    let mut flow = ServiceFlow {
        backend_ip: b.ip,
        backend_port: b.port,
        src_ip: ip.src,
        src_port: l4.src_port,
        index,
    };
    match masquerade {
        None => {
            let reply_key = FlowKey::new(b.ip, ip.src, b.port, l4.src_port, ip.proto);
            SERVICE_REPLIES
                .insert(reply_key, reply, 0)
                .map_err(|_| DropReason::NatTableFull)?;
        }
        Some(src_ip) => {
            flow.src_ip = src_ip;
            flow.src_port = claim_random_port(b, src_ip, ip.proto, &reply)?;
        }
    }
    SERVICE_FLOWS
        .insert(l4.key(ip), flow, 0)
        .map_err(|_| DropReason::NatTableFull)?;
    Ok(flow)
}

/// `MASQUERADE --random-fully`: a random source port whose reply tuple
/// no other flow holds: no Service flow (claimed by inserting it) and no
/// pod's translation (NAT_IN has the same key layout). A port a pod's flow
/// holds toward another remote is free here, as conntrack's tuples differ.
#[inline(always)]
fn claim_random_port(
    b: Backend,
    src_ip: u32,
    proto: u8,
    reply: &ServiceReply,
) -> Result<u16, DropReason> {
    let span = (MASQUERADE_PORT_MAX - MASQUERADE_PORT_MIN) as u32 + 1;
    let mut reply_key = FlowKey::new(b.ip, src_ip, b.port, 0, proto);
    for _ in 0..MASQUERADE_PORT_TRIES {
        // SAFETY: no preconditions.
        let port = MASQUERADE_PORT_MIN + (unsafe { bpf_get_prandom_u32() } % span) as u16;
        reply_key.dst_port = port;
        if crate::snat::reply_held(&reply_key) {
            continue;
        }
        if SERVICE_REPLIES
            .insert(reply_key, reply, BPF_NOEXIST as u64)
            .is_ok()
        {
            return Ok(port);
        }
    }
    Err(DropReason::NatPortsExhausted)
}

/// What becomes of a pod's packet to a service.
pub enum Forward {
    /// Sent to its backend, or rejected.
    Verdict(i32),
    /// Translated for a backend outside the cluster pod CIDR: the caller
    /// masquerades it to the node, as kubenet's MASQUERADE rule does for
    /// every destination outside it.
    Masquerade,
}

/// A pod's packet: to a service frontend, what becomes of it; outside
/// the service CIDR, None.
#[inline(always)]
pub fn from_client(
    ctx: &TcContext,
    cfg: &NodeConfig,
    ip: &Ipv4,
) -> Result<Option<Forward>, DropReason> {
    let Some(sc) = SERVICE_CONFIG.get(0) else {
        return Ok(None);
    };
    let hairpin_ip = sc.hairpin_ip;
    match dnat(ctx, ip, Client::Pod { hairpin_ip })? {
        None => Ok(None),
        Some(Dnat::NoBackend) => reject(ctx, ip, hairpin_ip).map(|v| Some(Forward::Verdict(v))),
        Some(Dnat::To(backend)) => to_backend(ctx, cfg, backend).map(Some),
    }
}

/// The node's own packet (a hostNetwork pod, kubelet) leaving by the
/// uplink: to a service frontend, translated and sent to its backend, as
/// kube-proxy's OUTPUT rules do; outside the service CIDR, None. The
/// source stays the node's IP (kube-proxy masquerades it to the same).
/// With no ready backend it is dropped: the node's own stack gets no
/// ICMP answer (docs/services.md).
#[inline(always)]
pub fn from_host(ctx: &TcContext, cfg: &NodeConfig, ip: &Ipv4) -> Result<Option<i32>, DropReason> {
    let backend = match dnat(ctx, ip, Client::Node)? {
        None => return Ok(None),
        Some(Dnat::NoBackend) => return Err(DropReason::NoService),
        Some(Dnat::To(b)) => b,
    };
    if let Some(pod) = route::local_pod(backend) {
        let eth = packet::eth(ctx)?;
        return Ok(Some(route::deliver_egress(ctx, eth, pod, Path::ServiceOut)));
    }
    let next_hop = if cfg.in_cluster(backend) {
        route::route_owner(backend).ok_or(DropReason::NoRoute)?
    } else if route::in_node_subnet(backend) {
        backend
    } else {
        return Err(DropReason::NoRoute);
    };
    Ok(Some(route::to_node(ctx, cfg, next_hop, Path::ServiceOut)))
}

/// Where a restored reply goes: its client pod, or this node's stack.
#[inline(always)]
pub fn deliver_reply(ctx: &TcContext, cfg: &NodeConfig, client: u32) -> Result<i32, DropReason> {
    if client == cfg.node_ip {
        crate::counters::count(ctx, Path::ServiceReply);
        return Ok(TC_ACT_OK);
    }
    let pod = route::local_pod(client).ok_or(DropReason::NoLocalPod)?;
    let eth = packet::eth(ctx)?;
    Ok(route::deliver_peer(ctx, eth, pod, Path::ServiceReply))
}

/// Sends a translated packet on to its backend, as a kubenet node routes
/// it after kube-proxy's DNAT: a pod here or on another node (one routed
/// hop, even on the same node), this node's own stack, or for a host
/// outside the cluster pod CIDR (the API server's) the masquerade.
#[inline(always)]
fn to_backend(ctx: &TcContext, cfg: &NodeConfig, backend: u32) -> Result<Forward, DropReason> {
    if backend == cfg.node_ip {
        crate::counters::count(ctx, Path::ServiceOut);
        return Ok(Forward::Verdict(TC_ACT_OK));
    }
    if !cfg.in_cluster(backend) {
        return Ok(Forward::Masquerade);
    }
    if let Some(verdict) = route::routed_hop(ctx) {
        return Ok(Forward::Verdict(verdict));
    }
    if let Some(pod) = route::local_pod(backend) {
        let eth = packet::eth(ctx)?;
        let verdict = route::deliver_peer(ctx, eth, pod, Path::ServiceOut);
        return Ok(Forward::Verdict(verdict));
    }
    let owner = match route::route_owner(backend) {
        Some(owner) if owner != cfg.node_ip => owner,
        Some(_) => return Err(DropReason::NoLocalPod),
        None => return Err(DropReason::NoRoute),
    };
    let verdict = route::to_node(ctx, cfg, owner, Path::ServiceOut);
    Ok(Forward::Verdict(verdict))
}

/// A new flow's backend: the client's affine one while its affinity
/// lasts and it is still one of the ready backends (kube-proxy's
/// `recent --rcheck` rule goes with its endpoint), else one of the ready
/// backends at random (kube-proxy's `statistic --mode random` chain gives
/// each the same chance).
#[inline(always)]
fn pick(svc: &Service, frontend: &ServiceKey, client: u32) -> Result<(Backend, u32), DropReason> {
    let now = crate::clock::coarse();
    let key = AffinityKey {
        client_ip: client,
        frontend: *frontend,
    };
    if svc.affinity_secs != 0 {
        // SAFETY: the value is copied at once.
        if let Some(a) = unsafe { SERVICE_AFFINITY.get(key) }.copied()
            && now.saturating_sub(a.last_ns) < svc.affinity_secs as u64 * 1_000_000_000
            && still_at(svc, a.index, a.backend.ip, a.backend.port)
        {
            remember(&key, a.backend, a.index, now);
            return Ok((a.backend, a.index));
        }
    }
    // SAFETY: no preconditions.
    let index = unsafe { bpf_get_prandom_u32() } % svc.backends;
    let slot = BackendKey {
        service: svc.id,
        index,
    };
    // SAFETY: the value is copied at once.
    let backend = *unsafe { SERVICE_BACKENDS.get(slot) }.ok_or(DropReason::NoService)?;
    if svc.affinity_secs != 0 {
        remember(&key, backend, index, now);
    }
    Ok((backend, index))
}

/// Affinity is renewed by every new flow (iptables' `recent --set`).
#[inline(always)]
fn remember(key: &AffinityKey, backend: Backend, index: u32, now: u64) {
    let a = Affinity {
        backend,
        index,
        last_ns: now,
    };
    let _ = SERVICE_AFFINITY.insert(key, a, 0);
}

/// A packet about to be delivered to a pod of this node: a backend's
/// reply to a service flow gets the frontend's address and port back as
/// its source (and a masqueraded flow its client as destination). A reply
/// datagram's later fragments get the addresses back too (the ports are in
/// the first). Returns the client to deliver to.
#[inline(always)]
pub fn restore_reply(ctx: &TcContext, ip: &Ipv4) -> Result<Option<u32>, DropReason> {
    match SERVICE_CONFIG.get(0) {
        Some(sc) if sc.frontends != 0 => {}
        _ => return Ok(None),
    }
    if ip.later_fragment {
        return restore_later_fragment(ctx, ip);
    }
    let Some(l4) = ports(ctx, ip) else {
        return Ok(None);
    };
    let key = l4.key(ip);
    let Some(entry) = SERVICE_REPLIES.get_ptr_mut(key) else {
        return Ok(None);
    };
    // SAFETY: the pointer came from a successful lookup; the fields are
    // plain integers, and a racing writer on another CPU only refreshes
    // the same time.
    let r = unsafe { *entry };
    let now = crate::clock::coarse();
    if ip.proto == PROTO_UDP && udp_expired(r.last_ns, now) {
        // Conntrack would have forgotten this flow, both its directions:
        // the packet is no reply.
        let _ = SERVICE_REPLIES.remove(key);
        let forward = FlowKey::new(
            r.client_ip,
            r.frontend_ip,
            r.client_port,
            r.frontend_port,
            ip.proto,
        );
        let _ = SERVICE_FLOWS.remove(forward);
        return Ok(None);
    }
    // SAFETY: as above.
    unsafe { (*entry).last_ns = now };
    crate::snat::fragments::remember_first(ip, l4.src_port, l4.dst_port);
    let (old, new) = (
        Endpoint::new(ip.src, l4.src_port),
        Endpoint::new(r.frontend_ip, r.frontend_port),
    );
    rewrite::endpoint(ctx, &l4, Side::Source, old, new)?;
    if (r.client_ip, r.client_port) != (ip.dst, l4.dst_port) {
        let (old, new) = (
            Endpoint::new(ip.dst, l4.dst_port),
            Endpoint::new(r.client_ip, r.client_port),
        );
        rewrite::endpoint(ctx, &l4, Side::Destination, old, new)?;
    }
    Ok(Some(r.client_ip))
}

/// A later fragment of a backend's reply datagram: the addresses its
/// first fragment got back, or the client could not reassemble it.
#[inline(always)]
fn restore_later_fragment(ctx: &TcContext, ip: &Ipv4) -> Result<Option<u32>, DropReason> {
    let datagram = crate::snat::fragments::key(ip);
    let found = netplane_service_fragment(&datagram);
    if found == 0 {
        return Ok(None);
    }
    let (frontend, client) = ((found >> 32) as u32, found as u32);
    rewrite::address(ctx, Side::Source, ip.src, frontend)?;
    if client != ip.dst {
        rewrite::address(ctx, Side::Destination, ip.dst, client)?;
    }
    Ok(Some(client))
}

/// The Service flow a reply datagram's later fragment belongs to, found by
/// its first fragment's ports: (frontend address << 32 | client address),
/// or 0. A global function, verified once for every call site
/// (docs/verifier.md); the packet is rewritten by the caller.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netplane_service_fragment(datagram: *const FragKey) -> i64 {
    // SAFETY: a global function's pointer argument may be null (checked
    // here); otherwise it points to a whole FragKey. Copied onto this
    // stack: 6.1 takes a map key from the stack, not from argument memory.
    let Some(d) = (unsafe { datagram.as_ref() }).copied() else {
        return 0;
    };
    let Some(key) = crate::snat::fragments::tuple_of(&d) else {
        return 0;
    };
    // SAFETY: the value is copied out at once.
    let Some(r) = (unsafe { SERVICE_REPLIES.get(key) }).copied() else {
        return 0;
    };
    if d.proto == PROTO_UDP && udp_expired(r.last_ns, crate::clock::coarse()) {
        return 0; // the first fragment would have found it over
    }
    ((u64::from(r.frontend_ip) << 32) | u64::from(r.client_ip)) as i64
}

/// A TCP connection opened past the Services (to a pod, a node, the
/// internet): a Service flow that once had the same reply tuple is over
/// (conntrack lets a new SYN replace a closed connection), so its reply
/// entry goes, or it would take this connection's replies for its own.
#[inline(always)]
pub fn direct_connection(ctx: &TcContext, ip: &Ipv4) {
    match SERVICE_CONFIG.get(0) {
        Some(sc) if sc.frontends != 0 => {}
        _ => return,
    }
    if !syn(ctx, ip) {
        return;
    }
    if let Some(l4) = ports(ctx, ip) {
        let reply = FlowKey::new(ip.dst, ip.src, l4.dst_port, l4.src_port, PROTO_TCP);
        let _ = SERVICE_REPLIES.remove(reply);
    }
}

/// The quoted part of the rejected packet: its (option-less) IPv4 header
/// and the first 8 bytes of its transport header.
const QUOTE: usize = 28;
/// The ICMP error's own IPv4 and ICMP headers.
const HEADERS: usize = 28;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;

/// A service with no ready backend: the pod's packet becomes ICMP port
/// unreachable from `from` and goes straight back into the pod, as
/// kube-proxy's REJECT rule answers (TCP and UDP clients get
/// ECONNREFUSED at once rather than a timeout).
#[inline(always)]
fn reject(ctx: &TcContext, ip: &Ipv4, from: u32) -> Result<i32, DropReason> {
    let pod = route::local_pod(ip.src).ok_or(DropReason::NoLocalPod)?;
    if ip.l4_off != EthHdr::LEN + 20 {
        return Err(DropReason::UnsupportedL4); // IP options: not quoted
    }
    let quote: [u8; QUOTE] = ctx.load(EthHdr::LEN).map_err(|_| DropReason::TruncatedL4)?;
    let failed = |_| DropReason::RewriteFailed;
    // Down to the quote: the bytes after the transport header's first 8
    // go. Removed from behind the IPv4 header (adjust_room), since the
    // kernel refuses to cut the tail of a CHECKSUM_PARTIAL skb (a pod's
    // TCP and UDP) below its checksum field; the 8 bytes are put back.
    let extra = ctx.len() as usize - (EthHdr::LEN + QUOTE);
    if extra > 0 {
        ctx.adjust_room(-(extra as i32), BPF_ADJ_ROOM_NET, 0)
            .map_err(failed)?;
        let mut l4_head = [0u8; QUOTE - 20];
        l4_head.copy_from_slice(&quote[20..]);
        ctx.store(EthHdr::LEN + 20, &l4_head, 0).map_err(failed)?;
    }
    ctx.adjust_room(HEADERS as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(failed)?;
    let mut h = [0u8; HEADERS];
    h[0] = 0x45; // IPv4, no options
    h[1] = 0xc0; // precedence "internetwork control", as Linux sends errors
    h[2..4].copy_from_slice(&((HEADERS + QUOTE) as u16).to_be_bytes());
    h[8] = 64; // TTL
    h[9] = PROTO_ICMP;
    h[12..16].copy_from_slice(&from.to_ne_bytes());
    h[16..20].copy_from_slice(&ip.src.to_ne_bytes());
    let ip_sum = checksum::checksum(&h[..20]);
    h[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    h[20] = ICMP_DEST_UNREACH;
    h[21] = ICMP_PORT_UNREACH;
    let mut icmp = [0u8; 8 + QUOTE];
    icmp[..8].copy_from_slice(&h[20..]);
    icmp[8..].copy_from_slice(&quote);
    let icmp_sum = checksum::checksum(&icmp);
    h[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    ctx.store(EthHdr::LEN, &h, 0).map_err(failed)?;
    let eth = packet::eth(ctx)?;
    Ok(route::deliver_peer(ctx, eth, pod, Path::ServiceReject))
}
