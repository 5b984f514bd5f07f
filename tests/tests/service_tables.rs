//! Services through the real programs (BPF_PROG_TEST_RUN), frame by
//! frame with the flow state carried over: DNAT to the backend and the
//! reply restored, hairpin and node flows masqueraded with a random port,
//! ICMP port unreachable built for a service without backends, and what
//! is not a service dropped. The world is tests/src/fixture.rs's node-0,
//! with the Services written by the agent's own code (ServiceTable).
use std::net::Ipv4Addr;

use aya::maps::HashMap;
use etherparse::{
    Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
    icmpv4::DestUnreachableHeader,
};
use netplane::{
    agent::service_table::{ServiceTable, configure_node},
    config::Cluster,
    datapath::{Counters, Datapath, key},
    source::service_watch::Frontend,
};
use netplane_common::{
    DropReason, Path, checksum,
    limits::UDP_STREAM_TIMEOUT_S,
    maps::programs,
    nat::{FlowKey, NatReverse, PROTO_TCP, PROTO_UDP, owned_key},
    registry,
    services::{MASQUERADE_PORT_MAX, MASQUERADE_PORT_MIN, ServiceFlow, ServiceReply},
};
use netplane_tests::{privileged, world::*};

const REMOTE_SVC: [u8; 4] = [10, 0, 1, 1];
const LOCAL_SVC: [u8; 4] = [10, 0, 1, 2];
const EMPTY_SVC: [u8; 4] = [10, 0, 1, 3];
const SELF_SVC: [u8; 4] = [10, 0, 1, 4];
const HAIRPIN: [u8; 4] = [10, 244, 0, 1];
/// A Service whose backend is outside the cluster, in the node subnet (the
/// API server's kind), added by the tests that need it.
const API_SVC: [u8; 4] = [10, 0, 1, 5];
const OUTSIDE: [u8; 4] = [10, 224, 0, 9];

fn frontend(ip: [u8; 4], proto: u8, backends: &[[u8; 4]]) -> Frontend {
    Frontend {
        name: format!("default/{}:{proto}", Ipv4Addr::from(ip)),
        ip: ip.into(),
        port: 80,
        proto,
        backends: backends
            .iter()
            .map(|b| (Ipv4Addr::from(*b), 8080))
            .collect(),
        affinity_secs: 0,
    }
}

/// node-0 with four services: a backend on node-1, one here (pod B),
/// none, and pod A itself.
fn world() -> Datapath {
    let mut dp = node0_datapath();
    let cluster = Cluster::load(None).unwrap();
    configure_node(&mut dp, &cluster, &cluster.node("node-0").unwrap()).unwrap();
    let mut table = ServiceTable::adopt(&mut dp).unwrap();
    table
        .apply(
            &mut dp,
            &[
                frontend(REMOTE_SVC, PROTO_TCP, &[REMOTE_POD]),
                frontend(REMOTE_SVC, PROTO_UDP, &[REMOTE_POD]),
                frontend(LOCAL_SVC, PROTO_TCP, &[POD_B]),
                frontend(EMPTY_SVC, PROTO_TCP, &[]),
                frontend(EMPTY_SVC, PROTO_UDP, &[]),
                frontend(SELF_SVC, PROTO_TCP, &[POD_A]),
            ],
        )
        .unwrap();
    dp
}

struct Seg {
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    ttl: u8,
    udp: bool,
}

fn frame(s: &Seg) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(s.macs.0, s.macs.1).ipv4(s.src.0, s.dst.0, s.ttl);
    let mut out = Vec::new();
    if s.udp {
        b.udp(s.src.1, s.dst.1)
            .write(&mut out, b"service?")
            .unwrap();
    } else {
        b.tcp(s.src.1, s.dst.1, 1, 64000)
            .write(&mut out, b"service?")
            .unwrap();
    }
    out
}

/// Pod A's segment to a service frontend's port 80.
fn from_a(dst: [u8; 4], udp: bool) -> Seg {
    Seg {
        macs: (POD_A_MAC, POD_A_HOST_MAC),
        src: (POD_A, 40000),
        dst: (dst, 80),
        ttl: 64,
        udp,
    }
}

/// The node's own segment leaving by the uplink to a service frontend.
fn from_node(dst: [u8; 4], udp: bool) -> Seg {
    Seg {
        macs: (UPLINK_MAC, PEER_NODE_MAC),
        src: (NODE0, 50000),
        dst: (dst, 80),
        ttl: 64,
        udp,
    }
}

/// A segment arriving from the VNet (a backend's reply).
fn from_vnet(src: ([u8; 4], u16), dst: ([u8; 4], u16), udp: bool) -> Seg {
    Seg {
        macs: (PEER_NODE_MAC, UPLINK_MAC),
        src,
        dst,
        ttl: 63,
        udp,
    }
}

fn run(dp: &mut Datapath, prog: &str, input: &[u8]) -> (u32, Vec<u8>) {
    test_run(dp, prog, input, 0).unwrap()
}

/// How far the counters moved while `f` ran.
struct Moved {
    before: Counters,
    after: Counters,
}

impl Moved {
    fn path(&self, p: Path) -> u64 {
        self.after.packets_of(p) - self.before.packets_of(p)
    }
    fn drop(&self, r: DropReason) -> u64 {
        self.after.drops_of(r) - self.before.drops_of(r)
    }
}

fn moved(dp: &mut Datapath, f: impl FnOnce(&mut Datapath)) -> Moved {
    let before = dp.counters().unwrap();
    f(dp);
    Moved {
        before,
        after: dp.counters().unwrap(),
    }
}

/// The addresses and ports of a frame's IPv4 TCP/UDP packet.
fn tuple(frame: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16), u8) {
    let p = SlicedPacket::from_ethernet(frame).expect("parses");
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let ports = match p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            (t.source_port(), t.destination_port())
        }
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        other => panic!("not TCP/UDP: {other:?}"),
    };
    (
        (Ipv4Addr::from(h.source), ports.0),
        (Ipv4Addr::from(h.destination), ports.1),
        h.time_to_live,
    )
}

fn addr(ip: [u8; 4], port: u16) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(ip), port)
}

#[test]
fn a_service_flow_is_translated_both_ways() {
    if !privileged() {
        return;
    }
    let mut dp = world();
    for udp in [false, true] {
        // Out: the frontend becomes the backend on node-1, one routed hop.
        let out = frame(&from_a(REMOTE_SVC, udp));
        let mut got = (0, Vec::new());
        let c = moved(&mut dp, |dp| got = run(dp, programs::FROM_POD, &out));
        assert_eq!(got.0, TC_ACT_REDIRECT, "udp={udp}");
        assert_eq!(
            tuple(&got.1),
            (addr(POD_A, 40000), addr(REMOTE_POD, 8080), 63),
            "udp={udp}"
        );
        assert_eq!(c.path(Path::ServiceOut), 1);
        // A second packet of the flow: the same backend.
        let again = run(&mut dp, programs::FROM_POD, &out);
        assert_eq!(again.1, got.1, "udp={udp}");

        // Back: the backend's reply from the VNet gets the frontend back.
        let reply = frame(&from_vnet((REMOTE_POD, 8080), (POD_A, 40000), udp));
        let mut back = (0, Vec::new());
        let c = moved(&mut dp, |dp| back = run(dp, programs::FROM_UPLINK, &reply));
        assert_eq!(back.0, TC_ACT_REDIRECT);
        assert_eq!(
            tuple(&back.1),
            (addr(REMOTE_SVC, 80), addr(POD_A, 40000), 62)
        );
        assert_eq!(&back.1[..12], &[POD_A_MAC, POD_A_HOST_MAC].concat()[..]);
        assert_eq!(c.path(Path::ServiceReply), 1);
    }

    // A backend on this node: delivered to pod B, still one routed hop.
    let (v, out) = run(
        &mut dp,
        programs::FROM_POD,
        &frame(&from_a(LOCAL_SVC, false)),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(tuple(&out), (addr(POD_A, 40000), addr(POD_B, 8080), 63));
    assert_eq!(&out[..12], &[POD_B_MAC, POD_B_HOST_MAC].concat()[..]);
}

#[test]
fn hairpin_and_node_flows_are_masqueraded_with_a_random_port() {
    if !privileged() {
        return;
    }
    let mut dp = world();
    // Pod A to its own service: sent back to itself from the hairpin
    // address, with a port of the masquerade range.
    let (v, out) = run(
        &mut dp,
        programs::FROM_POD,
        &frame(&from_a(SELF_SVC, false)),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    let (src, dst, _) = tuple(&out);
    assert_eq!((src.0, dst), (Ipv4Addr::from(HAIRPIN), addr(POD_A, 8080)));
    assert!(src.1 >= 1024, "port {}", src.1);
    // Its answer to the hairpin address comes back as the service's.
    let answer = frame(&Seg {
        macs: (POD_A_MAC, POD_A_HOST_MAC),
        src: (POD_A, 8080),
        dst: (HAIRPIN, src.1),
        ttl: 64,
        udp: false,
    });
    let (v, back) = run(&mut dp, programs::FROM_POD, &answer);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(tuple(&back).0, addr(SELF_SVC, 80));
    assert_eq!(tuple(&back).1, addr(POD_A, 40000));

    // The node's own traffic leaving by the uplink: to the backend on
    // node-1, from the node's address with a random port.
    let host = frame(&from_node(REMOTE_SVC, true));
    let (v, out) = run(&mut dp, programs::TO_UPLINK, &host);
    assert_eq!(v, TC_ACT_REDIRECT);
    let (src, dst, _) = tuple(&out);
    assert_eq!(
        (src.0, dst),
        (Ipv4Addr::from(NODE0), addr(REMOTE_POD, 8080))
    );
    // The backend's reply reaches the node's stack as the service's.
    let reply = frame(&from_vnet((REMOTE_POD, 8080), (NODE0, src.1), true));
    let (v, back) = run(&mut dp, programs::FROM_UPLINK, &reply);
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(tuple(&back).0, addr(REMOTE_SVC, 80));
    assert_eq!(tuple(&back).1, addr(NODE0, 50000));
}

#[test]
fn no_backend_is_answered_with_port_unreachable_and_no_service_is_dropped() {
    if !privileged() {
        return;
    }
    let mut dp = world();
    for udp in [false, true] {
        let input = frame(&from_a(EMPTY_SVC, udp));
        let mut got = (0, Vec::new());
        let c = moved(&mut dp, |dp| got = run(dp, programs::FROM_POD, &input));
        assert_eq!(got.0, TC_ACT_REDIRECT, "back into pod A");
        assert_eq!(c.path(Path::ServiceReject), 1);
        let out = &got.1;
        assert_eq!(&out[..12], &[POD_A_MAC, POD_A_HOST_MAC].concat()[..]);
        let p = SlicedPacket::from_ethernet(out).expect("parses");
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!((h.source, h.destination), (HAIRPIN, POD_A));
        let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
            panic!("not ICMP: {out:02x?}")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
        );
        // The checksum covers the ICMP header and the quote, which is the
        // pod's own IPv4 header and its first 8 transport bytes.
        let icmp_bytes = &out[34..];
        assert_eq!(icmp_bytes.len(), 8 + 28);
        assert_eq!(checksum::checksum(icmp_bytes), 0, "ICMP checksum");
        assert_eq!(&icmp_bytes[8..], &input[14..14 + 28]);
    }
    for (what, dst, port) in [
        ("a port the service lacks", REMOTE_SVC, 81),
        ("an address no service has", [10, 0, 9, 9], 80),
    ] {
        let mut seg = from_a(dst, false);
        seg.dst.1 = port;
        let mut got = (0, Vec::new());
        let c = moved(&mut dp, |dp| {
            got = run(dp, programs::FROM_POD, &frame(&seg))
        });
        assert_eq!(got.0, TC_ACT_SHOT, "{what}");
        assert_eq!(c.drop(DropReason::NoService), 1, "{what}");
    }
}

#[test]
fn a_new_connection_on_a_remembered_tuple_leaves_a_removed_backend() {
    if !privileged() {
        return;
    }
    let mut dp = world();
    let syn = |dp: &mut Datapath| {
        let b = PacketBuilder::ethernet2(POD_A_MAC, POD_A_HOST_MAC)
            .ipv4(POD_A, REMOTE_SVC, 64)
            .tcp(40000, 80, 1, 64000)
            .syn();
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        tuple(&run(dp, programs::FROM_POD, &f).1).1
    };
    let established = |dp: &mut Datapath| {
        let f = frame(&from_a(REMOTE_SVC, false));
        tuple(&run(dp, programs::FROM_POD, &f).1).1
    };
    assert_eq!(syn(&mut dp), addr(REMOTE_POD, 8080));
    // The service's only backend is replaced.
    let mut table = ServiceTable::adopt(&mut dp).unwrap();
    let mut fronts = vec![frontend(REMOTE_SVC, PROTO_TCP, &[POD_B])];
    fronts.push(frontend(SELF_SVC, PROTO_TCP, &[POD_A]));
    table.apply(&mut dp, &fronts).unwrap();
    // The open connection keeps its backend (as conntrack keeps an
    // established entry); a new SYN on the same tuple goes to a ready one.
    assert_eq!(established(&mut dp), addr(REMOTE_POD, 8080));
    assert_eq!(syn(&mut dp), addr(POD_B, 8080));
    assert_eq!(established(&mut dp), addr(POD_B, 8080));
}

#[test]
fn a_direct_connection_on_an_old_service_tuple_keeps_its_replies() {
    if !privileged() {
        return;
    }
    let mut dp = world();
    let syn_to = |dp: &mut Datapath, dst: [u8; 4], port: u16| {
        let b = PacketBuilder::ethernet2(POD_A_MAC, POD_A_HOST_MAC)
            .ipv4(POD_A, dst, 64)
            .tcp(40000, port, 1, 64000)
            .syn();
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        run(dp, programs::FROM_POD, &f)
    };
    let reply = frame(&from_vnet((REMOTE_POD, 8080), (POD_A, 40000), false));
    // Through the Service first: its reply is restored.
    syn_to(&mut dp, REMOTE_SVC, 80);
    let (_, back) = run(&mut dp, programs::FROM_UPLINK, &reply);
    assert_eq!(tuple(&back).0, addr(REMOTE_SVC, 80));
    // Later the pod connects to the backend's own address from the same
    // port: its replies are its own, not the old Service flow's.
    let (v, out) = syn_to(&mut dp, REMOTE_POD, 8080);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(tuple(&out).1, addr(REMOTE_POD, 8080));
    let mut back = (0, Vec::new());
    let c = moved(&mut dp, |dp| back = run(dp, programs::FROM_UPLINK, &reply));
    assert_eq!(tuple(&back.1).0, addr(REMOTE_POD, 8080));
    assert_eq!(c.path(Path::FromRemoteNode), 1);
}

/// Pod A's SYN to the remote service from `port`: the backend it reached.
fn connect_from(dp: &mut Datapath, port: u16) -> (Ipv4Addr, u16) {
    let b = PacketBuilder::ethernet2(POD_A_MAC, POD_A_HOST_MAC)
        .ipv4(POD_A, REMOTE_SVC, 64)
        .tcp(port, 80, 1, 64000)
        .syn();
    let mut f = Vec::new();
    b.write(&mut f, &[]).unwrap();
    tuple(&run(dp, programs::FROM_POD, &f).1).1
}

fn affine(backends: &[[u8; 4]]) -> Frontend {
    Frontend {
        affinity_secs: 10_800,
        ..frontend(REMOTE_SVC, PROTO_TCP, backends)
    }
}

#[test]
fn client_ip_affinity_leaves_a_backend_that_left_its_service() {
    if !privileged() {
        return;
    }
    let mut dp = world();
    let mut table = ServiceTable::adopt(&mut dp).unwrap();
    // The backend stays in another Service (the UDP one), so only this
    // Service's list says it is gone.
    let udp = frontend(REMOTE_SVC, PROTO_UDP, &[REMOTE_POD]);
    table
        .apply(&mut dp, &[affine(&[REMOTE_POD]), udp.clone()])
        .unwrap();
    assert_eq!(connect_from(&mut dp, 41000), addr(REMOTE_POD, 8080));
    table.apply(&mut dp, &[affine(&[POD_B]), udp]).unwrap();
    for port in 41001..41005 {
        assert_eq!(
            connect_from(&mut dp, port),
            addr(POD_B, 8080),
            "port {port}"
        );
    }
}

#[test]
fn client_ip_affinity_follows_its_backend_to_a_new_index() {
    if !privileged() {
        return;
    }
    let mut dp = world();
    let mut table = ServiceTable::adopt(&mut dp).unwrap();
    table
        .apply(&mut dp, &[affine(&[REMOTE_POD, POD_B])])
        .unwrap();
    let first = connect_from(&mut dp, 42000);
    for port in 42001..42005 {
        assert_eq!(connect_from(&mut dp, port), first, "affine, port {port}");
    }
    // The list is reordered and grows: the client keeps its backend.
    let extra = [10, 244, 1, 9];
    table
        .apply(&mut dp, &[affine(&[extra, POD_B, REMOTE_POD])])
        .unwrap();
    for port in 42005..42010 {
        assert_eq!(connect_from(&mut dp, port), first, "moved, port {port}");
    }
}

/// Moves a UDP service flow's last-seen time `secs` into the past, as if
/// that long had gone by with nothing from either side.
fn age_udp_flow(dp: &mut Datapath, reply_key: FlowKey, secs: u64) {
    let mut replies: HashMap<_, FlowKey, ServiceReply> =
        dp.lru_hash(registry::SERVICE_REPLIES).unwrap();
    let mut r = replies.get(&reply_key, 0).expect("the flow's reply entry");
    r.last_ns = r.last_ns.saturating_sub(secs * 1_000_000_000);
    replies.insert(reply_key, r, 0).unwrap();
}

/// Linux keeps a UDP flow while either side sends (conntrack's timer runs
/// on both directions) and forgets both directions together.
#[test]
fn a_udp_service_flow_lives_while_its_client_sends_and_ends_whole() {
    if !privileged() {
        return;
    }
    let mut dp = world();
    let timeout = u64::from(UDP_STREAM_TIMEOUT_S);
    let out = frame(&from_a(REMOTE_SVC, true));
    let reply = frame(&from_vnet((REMOTE_POD, 8080), (POD_A, 40000), true));
    let reply_key = FlowKey::new(
        key(REMOTE_POD.into()),
        key(POD_A.into()),
        8080,
        40000,
        PROTO_UDP,
    );
    let forward_key = FlowKey::new(
        key(POD_A.into()),
        key(REMOTE_SVC.into()),
        40000,
        80,
        PROTO_UDP,
    );
    run(&mut dp, programs::FROM_POD, &out);
    // The client sends again after most of the timeout, then the backend
    // answers after most of it again: more than the timeout since the
    // backend's last packet, less since the client's.
    age_udp_flow(&mut dp, reply_key, timeout - 10);
    run(&mut dp, programs::FROM_POD, &out);
    age_udp_flow(&mut dp, reply_key, timeout - 10);
    let (v, back) = run(&mut dp, programs::FROM_UPLINK, &reply);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(
        tuple(&back).0,
        addr(REMOTE_SVC, 80),
        "the reply still comes from the Service"
    );
    // Silence past the timeout: a late reply is no reply, and the flow is
    // gone in both directions.
    age_udp_flow(&mut dp, reply_key, timeout + 10);
    let (_, back) = run(&mut dp, programs::FROM_UPLINK, &reply);
    assert_eq!(tuple(&back).0, addr(REMOTE_POD, 8080));
    let flows: HashMap<_, FlowKey, ServiceFlow> = dp.lru_hash(registry::SERVICE_FLOWS).unwrap();
    assert!(
        flows.get(&forward_key, 0).is_err(),
        "the forward entry went with the reply entry"
    );
}

/// A node's own Service flow to a backend outside the cluster (the API
/// server's kind) holds its masqueraded port toward that backend: a pod's
/// direct flow to the same backend port never gets that port, or the
/// backend's replies would reach the pod instead of the node.
#[test]
fn a_pod_flow_never_takes_the_port_of_a_node_service_flow() {
    if !privileged() {
        return;
    }
    let mut dp = masquerade_on(world(), 1024, 65535);
    let mut table = ServiceTable::adopt(&mut dp).unwrap();
    table
        .apply(&mut dp, &[frontend(API_SVC, PROTO_TCP, &[OUTSIDE])])
        .unwrap();
    let host = frame(&from_node(API_SVC, false));
    let (_, out) = run(&mut dp, programs::TO_UPLINK, &host);
    let (node_side, backend, _) = tuple(&out);
    assert_eq!(backend, addr(OUTSIDE, 8080));
    // Pod A asks the backend directly from that very port: its source
    // port would be kept if it were free.
    let direct = frame(&Seg {
        src: (POD_A, node_side.1),
        dst: (OUTSIDE, 8080),
        ..from_a(OUTSIDE, false)
    });
    let (_, out) = run(&mut dp, programs::FROM_POD, &direct);
    let (pod_side, _, _) = tuple(&out);
    assert_eq!(pod_side.0, Ipv4Addr::from(NODE0), "masqueraded");
    assert_ne!(pod_side.1, node_side.1, "the node's Service flow holds it");
    // The backend's reply to the node's port is still the node's flow's.
    let reply = frame(&from_vnet((OUTSIDE, 8080), (NODE0, node_side.1), false));
    let (v, back) = run(&mut dp, programs::FROM_UPLINK, &reply);
    assert_eq!(v, TC_ACT_OK, "to the node's stack");
    assert_eq!(tuple(&back).0, addr(API_SVC, 80));
    assert_eq!(tuple(&back).1, addr(NODE0, 50000));
}

/// The Services' masquerade of the node's own flow avoids exactly the
/// reply tuples pods' translations hold, as one conntrack table would: a
/// port a pod's flow holds toward the same backend is never taken, and one
/// it holds only toward other remotes is free.
#[test]
fn the_node_service_masquerade_avoids_exactly_the_tuples_pods_hold() {
    if !privileged() {
        return;
    }
    let masquerade_ports = MASQUERADE_PORT_MIN..=MASQUERADE_PORT_MAX;
    let node_flow = |dp: &mut Datapath| {
        let mut got = (0, Vec::new());
        let c = moved(dp, |dp| {
            got = run(dp, programs::TO_UPLINK, &frame(&from_node(API_SVC, false)))
        });
        (got, c.drop(DropReason::NatPortsExhausted))
    };
    let with_api = || {
        let mut dp = masquerade_on(world(), 1024, 65535);
        let mut table = ServiceTable::adopt(&mut dp).unwrap();
        table
            .apply(&mut dp, &[frontend(API_SVC, PROTO_TCP, &[OUTSIDE])])
            .unwrap();
        dp
    };
    let reply_to = |port: u16| {
        FlowKey::new(
            key(OUTSIDE.into()),
            key(NODE0.into()),
            8080,
            port,
            PROTO_TCP,
        )
    };

    // Pods' flows hold every port toward the backend itself: no port is
    // left for the node's flow, which is refused, not given a held tuple.
    let mut dp = with_api();
    {
        let mut nat_in: HashMap<_, FlowKey, NatReverse> = dp.hash(registry::NAT_IN).unwrap();
        for port in masquerade_ports.clone() {
            let rev = NatReverse {
                orig_ip: key(POD_A.into()),
                orig_port: port,
                _pad: 0,
            };
            nat_in.insert(reply_to(port), rev, 0).unwrap();
        }
    }
    let ((v, _), exhausted) = node_flow(&mut dp);
    assert_eq!((v, exhausted), (TC_ACT_SHOT, 1));

    // Pods' flows hold every port, but toward other remotes: the node's
    // flow gets one (Linux's tuples differ).
    let mut dp = with_api();
    {
        let mut owned: HashMap<_, FlowKey, u64> = dp.hash(registry::PORT_OWNED).unwrap();
        for port in masquerade_ports {
            owned
                .insert(owned_key(key(NODE0.into()), port, PROTO_TCP), 1, 0)
                .unwrap();
        }
    }
    let ((v, out), exhausted) = node_flow(&mut dp);
    assert_eq!((v, exhausted), (TC_ACT_REDIRECT, 0));
    assert_eq!(tuple(&out).1, addr(OUTSIDE, 8080));
}
/// A frame's IPv4 payload split in two fragments at byte `at` (a multiple
/// of 8), each with its own header and checksum.
fn fragments(frame: &[u8], at: usize) -> (Vec<u8>, Vec<u8>) {
    let (head, payload) = frame.split_at(14 + 20);
    let part = |bytes: &[u8], offset: usize, more: bool| {
        let mut f = head.to_vec();
        f.extend_from_slice(bytes);
        let total = (20 + bytes.len()) as u16;
        f[14 + 2..14 + 4].copy_from_slice(&total.to_be_bytes());
        let flags = ((offset / 8) as u16) | if more { 0x2000 } else { 0 };
        f[14 + 6..14 + 8].copy_from_slice(&flags.to_be_bytes());
        f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&f[14..34]);
        f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
        f
    };
    (
        part(&payload[..at], 0, true),
        part(&payload[at..], at, false),
    )
}

/// An IPv4 frame's (source, destination), its header checksum checked.
fn addresses(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let h = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..])
        .unwrap()
        .to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    (h.source.into(), h.destination.into())
}

/// A backend's fragmented UDP reply reaches the client whole: the later
/// fragment gets the frontend's address back too, or the client could
/// not reassemble the datagram.
#[test]
fn every_fragment_of_a_udp_service_reply_comes_from_the_frontend() {
    if !privileged() {
        return;
    }
    let mut dp = world();
    run(
        &mut dp,
        programs::FROM_POD,
        &frame(&from_a(REMOTE_SVC, true)),
    );
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(PEER_NODE_MAC, UPLINK_MAC)
        .ipv4(REMOTE_POD, POD_A, 63)
        .udp(8080, 40000)
        .write(&mut reply, &[7u8; 40])
        .unwrap();
    let (first, later) = fragments(&reply, 16);
    for (what, f) in [("first", first), ("later", later)] {
        let (v, out) = run(&mut dp, programs::FROM_UPLINK, &f);
        assert_eq!(v, TC_ACT_REDIRECT, "{what}");
        assert_eq!(
            addresses(&out),
            (Ipv4Addr::from(REMOTE_SVC), Ipv4Addr::from(POD_A)),
            "{what} fragment"
        );
    }
}
