//! The SNAT engine through BPF_PROG_TEST_RUN: forward and reverse
//! translation with checksums checked by a real parser (etherparse), ICMP
//! echo, unsolicited inbound, exhaustion; and the port allocator: a pool
//! filled to 100 % with no failure before it is full, free and reuse, one
//! port serving several destinations, exact accounting after churn.
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, PerCpuArray};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use netplane::{
    agent::collector,
    datapath::{Datapath, key},
};
use netplane_common::{
    DropReason, Path,
    maps::programs,
    nat::{
        ClaimRelease, FlowKey, NatEntry, NatReverse, PROTO_TCP, Phase, PortBitmap, RELEASE_BATCH,
        owned_key,
    },
    registry,
};
use netplane_tests::{privileged, world::*};

const OTHER_REMOTE: [u8; 4] = [198, 51, 100, 99];

/// node-0 with the masquerade on: node IP over `lo..=hi`.
fn masquerading(lo: u16, hi: u16) -> Datapath {
    masquerade_on(node0_datapath(), lo, hi)
}

fn tcp_port(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    macs: ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 7, 1000)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, b"").unwrap();
    out
}

fn udp_port(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    macs: ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, b"dns?").unwrap();
    out
}

fn icmp_echo(
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    reply: bool,
    macs: ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src, dst, 64);
    let b = if reply {
        b.icmpv4_echo_reply(id, 1)
    } else {
        b.icmpv4_echo_request(id, 1)
    };
    let mut out = Vec::new();
    b.write(&mut out, b"ping").unwrap();
    out
}

const FROM_POD_A: ([u8; 6], [u8; 6]) = (POD_A_MAC, POD_A_HOST_MAC);
const FROM_VNET: ([u8; 6], [u8; 6]) = (PEER_NODE_MAC, UPLINK_MAC);

/// What a translated frame says, checked by etherparse.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    ttl: u8,
}

/// Parses a frame and asserts every checksum (IPv4 header, TCP/UDP with
/// the pseudo-header, ICMP) is what a fresh computation gives.
/// Sets an IPv4 frame's TTL, with its header checksum.
fn set_ttl(frame: &mut [u8], ttl: u8) {
    frame[14 + 8] = ttl;
    frame[14 + 10..14 + 12].fill(0);
    let c = netplane_common::checksum::checksum(&frame[14..34]);
    frame[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
}

fn parse_checked(frame: &[u8]) -> Seen {
    let p = SlicedPacket::from_ethernet(frame).expect("parses");
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let (src_port, dst_port) = match p.transport.expect("transport") {
        TransportSlice::Tcp(t) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            (t.source_port(), t.destination_port())
        }
        TransportSlice::Udp(u) => {
            if u.checksum() != 0 {
                let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
                assert_eq!(u.checksum(), want, "UDP checksum");
            }
            (u.source_port(), u.destination_port())
        }
        TransportSlice::Icmpv4(i) => {
            let want = i.header().icmp_type.calc_checksum(i.payload());
            assert_eq!(i.checksum(), want, "ICMP checksum");
            let id = u16::from_be_bytes([i.bytes5to8()[0], i.bytes5to8()[1]]);
            (id, id)
        }
        other => panic!("unexpected transport {other:?}"),
    };
    Seen {
        src: h.source.into(),
        dst: h.destination.into(),
        src_port,
        dst_port,
        ttl: h.time_to_live,
    }
}

fn run(dp: &mut Datapath, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    test_run(dp, prog, frame, 0).unwrap()
}

fn drops(dp: &mut Datapath, r: DropReason) -> u64 {
    dp.counters().unwrap().drops_of(r)
}

/// Node-0 masquerading to 1024-65535 with NAT tables of `entries`.
fn masquerading_with_table(entries: u32) -> Datapath {
    let dp = node0_datapath_loaded(&netplane::datapath::LoadOptions {
        nat_entries: entries,
        ..Default::default()
    });
    masquerade_on(dp, 1024, 65535)
}

/// Live translations and the allocator's count must agree, exactly.
fn assert_accounting_exact(dp: &mut Datapath) -> u64 {
    let out: HashMap<_, FlowKey, NatEntry> = dp.hash(registry::NAT_OUT).unwrap();
    let live = out.keys().count() as u64;
    let inn: HashMap<_, FlowKey, NatReverse> = dp.hash(registry::NAT_IN).unwrap();
    assert_eq!(
        inn.keys().count() as u64,
        live,
        "claims (NAT_IN) vs translations (NAT_OUT)"
    );
    let allocs: PerCpuArray<_, u64> = dp.per_cpu_array(registry::SNAT_ALLOCS).unwrap();
    let a: u64 = allocs.get(&0, 0).unwrap().iter().sum();
    let frees: Array<_, u64> = dp.array(registry::SNAT_FREES).unwrap();
    let f = frees.get(&0, 0).unwrap();
    let ev: u64 = evictions(dp);
    assert_eq!(
        a - f - ev,
        live,
        "allocated (allocs {a} - frees {f} - evictions {ev}) vs live translations"
    );
    live
}

/// Ports taken back from unreplied flows, slot 0, all CPUs.
fn evictions(dp: &mut Datapath) -> u64 {
    let ev: PerCpuArray<_, u64> = dp.per_cpu_array(registry::SNAT_EVICTS).unwrap();
    ev.get(&0, 0).unwrap().iter().sum()
}

#[test]
fn tcp_forward_and_reverse_translation() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(1024, 65535);
    let before = dp.counters().unwrap();
    let (v, out) = run(
        &mut dp,
        programs::FROM_POD,
        &tcp_port(POD_A, 40000, INTERNET, 80, FROM_POD_A),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    let s = parse_checked(&out);
    assert_eq!(
        (s.src, s.dst, s.dst_port, s.ttl),
        (NODE0.into(), INTERNET.into(), 80, 63)
    );
    let port = s.src_port;
    assert!((1024..=65535).contains(&port));
    assert_eq!(
        dp.counters().unwrap().packets_of(Path::SnatOut),
        before.packets_of(Path::SnatOut) + 1
    );

    // The same flow again: the same port, no new allocation.
    let (_, again) = run(
        &mut dp,
        programs::FROM_POD,
        &tcp_port(POD_A, 40000, INTERNET, 80, FROM_POD_A),
    );
    assert_eq!(parse_checked(&again).src_port, port);
    assert_eq!(assert_accounting_exact(&mut dp), 1);

    // The reply goes back to pod A, TTL decremented, MACs of A's veth.
    let (v, back) = run(
        &mut dp,
        programs::FROM_UPLINK,
        &tcp_port(INTERNET, 80, NODE0, port, FROM_VNET),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    let s = parse_checked(&back);
    assert_eq!(
        (s.src, s.dst, s.src_port, s.dst_port, s.ttl),
        (INTERNET.into(), POD_A.into(), 80, 40000, 63)
    );
    assert_eq!(&back[0..12], &[POD_A_MAC, POD_A_HOST_MAC].concat()[..]);

    // A reply whose TTL runs out here goes to the kernel translated back
    // (addressed to the pod, checksums right), so the kernel answers the
    // remote with time exceeded, as a Linux node would; not addressed to
    // the node, whose own stack would answer with an RST that ends the
    // pod's connection.
    let mut dying = tcp_port(INTERNET, 80, NODE0, port, FROM_VNET);
    set_ttl(&mut dying, 1);
    let (v, handed) = run(&mut dp, programs::FROM_UPLINK, &dying);
    assert_eq!(v, TC_ACT_OK);
    let s = parse_checked(&handed);
    assert_eq!(
        (s.src, s.dst, s.src_port, s.dst_port, s.ttl),
        (INTERNET.into(), POD_A.into(), 80, 40000, 1)
    );

    // Anyone else to that port is the node's, untouched, as on Linux,
    // where it matches no conntrack entry and meets the node's listening
    // sockets (kubelet's, a NodePort's): not dropped as unsolicited.
    let d = drops(&mut dp, DropReason::NatNoMapping);
    for stranger in [
        tcp_port(OTHER_REMOTE, 80, NODE0, port, FROM_VNET),
        // The right remote from another port.
        tcp_port(INTERNET, 81, NODE0, port, FROM_VNET),
    ] {
        let (v, handed) = run(&mut dp, programs::FROM_UPLINK, &stranger);
        assert_eq!(v, TC_ACT_OK);
        assert_eq!(handed, stranger, "the node's packet was rewritten");
    }
    assert_eq!(drops(&mut dp, DropReason::NatNoMapping), d);
    // A port no translation holds is the node's own too.
    let free = if port == 22 { 23 } else { 22 };
    let (v, _) = run(
        &mut dp,
        programs::FROM_UPLINK,
        &tcp_port(INTERNET, 80, NODE0, free, FROM_VNET),
    );
    assert_eq!(v, TC_ACT_OK);
}

#[test]
fn udp_and_icmp_echo_translation() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(1024, 65535);
    let (v, out) = run(
        &mut dp,
        programs::FROM_POD,
        &udp_port(POD_A, 5353, INTERNET, 53, FROM_POD_A),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    let s = parse_checked(&out);
    assert_eq!(s.src, Ipv4Addr::from(NODE0));
    let (_, back) = run(
        &mut dp,
        programs::FROM_UPLINK,
        &udp_port(INTERNET, 53, NODE0, s.src_port, FROM_VNET),
    );
    let b = parse_checked(&back);
    assert_eq!((b.dst, b.dst_port), (POD_A.into(), 5353));

    // UDP without a checksum keeps none.
    let mut nocsum = udp_port(POD_A, 5454, INTERNET, 53, FROM_POD_A);
    nocsum[14 + 20 + 6] = 0;
    nocsum[14 + 20 + 7] = 0;
    let (_, out) = run(&mut dp, programs::FROM_POD, &nocsum);
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);

    // ICMP echo: the identifier is the port.
    let (v, out) = run(
        &mut dp,
        programs::FROM_POD,
        &icmp_echo(POD_A, INTERNET, 777, false, FROM_POD_A),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    let s = parse_checked(&out);
    assert_eq!(s.src, Ipv4Addr::from(NODE0));
    let (v, back) = run(
        &mut dp,
        programs::FROM_UPLINK,
        &icmp_echo(INTERNET, NODE0, s.src_port, true, FROM_VNET),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    let b = parse_checked(&back);
    assert_eq!((b.dst, b.dst_port), (POD_A.into(), 777));
    assert_eq!(assert_accounting_exact(&mut dp), 3);
}

#[test]
fn one_port_serves_several_destinations_and_exhaustion_is_clean() {
    if !privileged() {
        return;
    }
    // A pool of exactly one port.
    let mut dp = masquerading(50000, 50000);
    for dst in [INTERNET, OTHER_REMOTE, [203, 0, 113, 20]] {
        let (v, out) = run(
            &mut dp,
            programs::FROM_POD,
            &tcp_port(POD_A, 40000, dst, 443, FROM_POD_A),
        );
        assert_eq!(v, TC_ACT_REDIRECT, "to {dst:?}");
        assert_eq!(parse_checked(&out).src_port, 50000, "to {dst:?}");
    }
    // A second flow to a destination that already holds the only port.
    let d = drops(&mut dp, DropReason::NatPortsExhausted);
    let (v, _) = run(
        &mut dp,
        programs::FROM_POD,
        &tcp_port(POD_A, 40001, INTERNET, 443, FROM_POD_A),
    );
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, DropReason::NatPortsExhausted), d + 1);
    let fails: PerCpuArray<_, u64> = dp.per_cpu_array(registry::SNAT_FAILS).unwrap();
    assert_eq!(fails.get(&0, 0).unwrap().iter().sum::<u64>(), 1);
    // The existing flow is untouched.
    let (v, out) = run(
        &mut dp,
        programs::FROM_POD,
        &tcp_port(POD_A, 40000, INTERNET, 443, FROM_POD_A),
    );
    assert_eq!((v, parse_checked(&out).src_port), (TC_ACT_REDIRECT, 50000));
    assert_eq!(assert_accounting_exact(&mut dp), 3);
}

/// Opens `n` flows from pod A to one destination, source ports from
/// `first`; returns the translated ports of those that succeeded.
fn open_flows(dp: &mut Datapath, first: u16, n: u16) -> (Vec<u16>, u32) {
    let mut ports = Vec::new();
    let mut failed = 0;
    for i in 0..n {
        let (v, out) = run(
            dp,
            programs::FROM_POD,
            &tcp_port(POD_A, first + i, INTERNET, 80, FROM_POD_A),
        );
        if v == TC_ACT_REDIRECT {
            ports.push(parse_checked(&out).src_port);
        } else {
            failed += 1;
        }
    }
    (ports, failed)
}

#[test]
fn the_whole_pool_is_usable_toward_one_destination() {
    if !privileged() {
        return;
    }
    // The default range: 64,512 ports, all to 203.0.113.10:80.
    let mut dp = masquerading(1024, 65535);
    let (ports, failed) = open_flows(&mut dp, 1, 64_512);
    assert_eq!(failed, 0, "allocation failed before the pool was full");
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 64_512);
    // Full: the next one fails, counted.
    let (_, failed) = open_flows(&mut dp, 64_600, 1);
    assert_eq!(failed, 1);
    assert_eq!(assert_accounting_exact(&mut dp), 64_512);
    // The collector's batch read (16 batches here) sees exactly what the
    // one-by-one iterator sees.
    let one_by_one: std::collections::HashMap<FlowKey, NatEntry> = {
        let out: HashMap<_, FlowKey, NatEntry> = dp.hash(registry::NAT_OUT).unwrap();
        out.iter().map(Result::unwrap).collect()
    };
    let data = dp.hash_data(registry::NAT_OUT).unwrap();
    let batched = netplane::datapath::dump_hash::<FlowKey, NatEntry>(data).unwrap();
    assert_eq!(batched.len(), 64_512);
    let batched: std::collections::HashMap<FlowKey, NatEntry> = batched.into_iter().collect();
    assert_eq!(batched, one_by_one);
}

/// Node-0's TCP port bitmap, as the programs see it.
fn port_bitmap(dp: &mut Datapath) -> PortBitmap {
    let map: HashMap<_, u64, PortBitmap> = dp.hash(registry::PORT_BITMAPS).unwrap();
    map.get(&PortBitmap::key(key(NODE0.into()), PROTO_TCP), 0)
        .expect("node-0 has a TCP port bitmap")
}

fn set_port_bitmap(dp: &mut Datapath, b: PortBitmap) {
    let mut map: HashMap<_, u64, PortBitmap> = dp.hash(registry::PORT_BITMAPS).unwrap();
    map.insert(PortBitmap::key(key(NODE0.into()), PROTO_TCP), b, 0)
        .unwrap();
}

#[test]
fn the_port_bitmap_follows_claims_and_collection() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(20000, 20255); // 256 ports
    let (ports, failed) = open_flows(&mut dp, 1000, 100);
    assert_eq!((ports.len(), failed), (100, 0));
    let b = port_bitmap(&mut dp);
    let marked: Vec<u16> = (0..=u16::MAX).filter(|p| b.is_set(*p)).collect();
    let mut held = ports.clone();
    held.sort_unstable();
    assert_eq!(marked, held, "the bitmap marks exactly the claimed ports");
    // The collector frees a third; their bits go with their marks.
    let freed = collector::collect_where(&mut dp, |k, _| k.src_port % 3 == 0).unwrap();
    assert!(!freed.is_empty());
    let b = port_bitmap(&mut dp);
    for (_, e) in &freed {
        assert!(!b.is_set(e.nat_port), "port {} still marked", e.nat_port);
    }
    let kept = held.len() - freed.len();
    assert_eq!((0..=u16::MAX).filter(|p| b.is_set(*p)).count(), kept);
}

#[test]
fn a_stale_port_bitmap_costs_time_never_a_port() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(20000, 20255); // 256 ports
    let (ports, _) = open_flows(&mut dp, 1000, 200);
    assert_eq!(ports.len(), 200);
    // Every bit set: the search finds nothing and the walk finds the 56
    // free ports.
    set_port_bitmap(
        &mut dp,
        PortBitmap {
            words: [u64::MAX; netplane_common::nat::PORT_BITMAP_WORDS],
        },
    );
    let (more, failed) = open_flows(&mut dp, 2000, 56);
    assert_eq!((more.len(), failed), (56, 0));
    // Every bit clear while all 256 are held toward this destination: each
    // zero is refused, the pool is still exhausted cleanly, and another
    // destination still gets a port.
    set_port_bitmap(&mut dp, PortBitmap::EMPTY);
    let (none, failed) = open_flows(&mut dp, 3000, 3);
    assert_eq!((none.len(), failed), (0, 3));
    let (v, _) = run(
        &mut dp,
        programs::FROM_POD,
        &tcp_port(POD_A, 4000, OTHER_REMOTE, 80, FROM_POD_A),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    // The refused zeros were marked again on the way: at least one in
    // each of the pool's five words.
    let b = port_bitmap(&mut dp);
    for w in 20000 / 64..=20255 / 64 {
        assert_ne!(b.words[w], 0, "word {w}");
    }
    assert_eq!(assert_accounting_exact(&mut dp), 257);
}

#[test]
fn freed_ports_are_reused_and_accounting_survives_churn() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(20000, 20255); // 256 ports
    let (ports, failed) = open_flows(&mut dp, 1000, 256);
    assert_eq!((ports.len(), failed), (256, 0));
    // Free every third flow, then fill again: exactly those come back.
    let freed = collector::collect_where(&mut dp, |k, _| k.src_port % 3 == 0)
        .unwrap()
        .len();
    assert_eq!(assert_accounting_exact(&mut dp), 256 - freed as u64);
    let (again, failed) = open_flows(&mut dp, 5000, freed as u16);
    assert_eq!((again.len(), failed), (freed, 0));
    assert_eq!(assert_accounting_exact(&mut dp), 256);

    // Churn: pseudo-random opens and frees, bounded; the books always balance.
    let mut seed: u32 = 0x1234_5678;
    let mut next_sport = 10_000u16;
    for round in 0..40 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let modulus = 2 + seed % 5;
        collector::collect_where(&mut dp, |k, _| {
            u32::from(k.src_port) % modulus == round % modulus
        })
        .unwrap();
        let n = (seed % 64) as u16;
        let (_, failed) = open_flows(&mut dp, next_sport, n);
        next_sport += n;
        let live = assert_accounting_exact(&mut dp);
        // A failure only when the pool is full.
        if failed > 0 {
            assert_eq!(
                live, 256,
                "round {round}: {failed} failures with {live} of 256 in use"
            );
        }
    }
}

const FRONTEND: [u8; 4] = [198, 51, 100, 10];

/// The load balancer of the default cluster with 64 ports per node.
fn load_balancer() -> Datapath {
    load_balancer_with(64)
}

/// The load balancer of the default cluster with `ports` per node.
fn load_balancer_with(ports: u32) -> Datapath {
    load_balancer_datapath(ports)
}

#[test]
fn load_balancer_translates_within_each_nodes_block() {
    if !privileged() {
        return;
    }
    let mut dp = load_balancer();
    let from_node =
        |src: [u8; 4], sport| tcp_port(src, sport, INTERNET, 80, (UPLINK_MAC, PEER_NODE_MAC));
    let (v, out) = run(&mut dp, programs::LB_FROM_VNET, &from_node(NODE0, 40000));
    assert_eq!(v, TC_ACT_REDIRECT);
    let s = parse_checked(&out);
    assert_eq!(
        (s.src, s.dst, s.ttl),
        (FRONTEND.into(), INTERNET.into(), 64)
    );
    assert!(
        (1024..=1087).contains(&s.src_port),
        "node-0's block is 1024-1087: {}",
        s.src_port
    );

    // The reply returns to node-0.
    let reply = tcp_port(
        INTERNET,
        80,
        FRONTEND,
        s.src_port,
        (PEER_NODE_MAC, UPLINK_MAC),
    );
    let (v, back) = run(&mut dp, programs::LB_FROM_INTERNET, &reply);
    assert_eq!(v, TC_ACT_REDIRECT);
    let b = parse_checked(&back);
    assert_eq!((b.dst, b.dst_port), (NODE0.into(), 40000));

    // Unsolicited to a frontend: dropped.
    let d = drops(&mut dp, DropReason::NatNoMapping);
    let stray = tcp_port(
        OTHER_REMOTE,
        80,
        FRONTEND,
        s.src_port,
        (PEER_NODE_MAC, UPLINK_MAC),
    );
    assert_eq!(
        run(&mut dp, programs::LB_FROM_INTERNET, &stray).0,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&mut dp, DropReason::NatNoMapping), d + 1);
    // Not a backend: dropped.
    let d = drops(&mut dp, DropReason::LbUnknownBackend);
    assert_eq!(
        run(
            &mut dp,
            programs::LB_FROM_VNET,
            &from_node([10, 224, 0, 99], 1)
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&mut dp, DropReason::LbUnknownBackend), d + 1);
    // Multicast on the segment (an IGMP report, say) is not egress.
    let igmp = tcp_port(
        [0, 0, 0, 0],
        0,
        [224, 0, 0, 22],
        0,
        (UPLINK_MAC, PEER_NODE_MAC),
    );
    assert_eq!(run(&mut dp, programs::LB_FROM_VNET, &igmp).0, TC_ACT_OK);
    // For the load balancer itself (inside the VNet): its own stack.
    let to_self = tcp_port(NODE0, 5, GATEWAY, 22, (UPLINK_MAC, PEER_NODE_MAC));
    assert_eq!(run(&mut dp, programs::LB_FROM_VNET, &to_self).0, TC_ACT_OK);

    // node-0 has 64 ports to this destination: 63 more open, the next fails.
    for sport in 40001..40064 {
        let (v, out) = run(&mut dp, programs::LB_FROM_VNET, &from_node(NODE0, sport));
        assert_eq!(v, TC_ACT_REDIRECT, "flow {sport}");
        assert!((1024..=1087).contains(&parse_checked(&out).src_port));
    }
    let d = drops(&mut dp, DropReason::NatPortsExhausted);
    assert_eq!(
        run(&mut dp, programs::LB_FROM_VNET, &from_node(NODE0, 40064)).0,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&mut dp, DropReason::NatPortsExhausted), d + 1);
    // node-1's block is its own: unaffected.
    let (v, out) = run(&mut dp, programs::LB_FROM_VNET, &from_node(NODE1, 40000));
    assert_eq!(v, TC_ACT_REDIRECT);
    assert!((1088..=1151).contains(&parse_checked(&out).src_port));
}

/// An ICMP port unreachable from the internet quoting `quoted` (a frame),
/// sent to `to`.
fn port_unreachable(from: [u8; 4], to: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
    let quote = &quoted[14..14 + 28];
    let b = PacketBuilder::ethernet2(PEER_NODE_MAC, UPLINK_MAC)
        .ipv4(from, to, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ));
    let mut out = Vec::new();
    b.write(&mut out, quote).unwrap();
    out
}

/// The quoted packet inside an ICMP error: (source, source port), with its
/// header checksum checked.
fn quoted_source(frame: &[u8]) -> (Ipv4Addr, u16) {
    let q = &frame[14 + 20 + 8..];
    let h = etherparse::Ipv4HeaderSlice::from_slice(&q[..20])
        .expect("quoted header")
        .to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "quoted IPv4 header checksum"
    );
    (h.source.into(), u16::from_be_bytes([q[20], q[21]]))
}

#[test]
fn icmp_errors_are_translated_back_with_the_quoted_header() {
    if !privileged() {
        return;
    }
    // Node stage: a pod's UDP to a closed port; the error comes back to it.
    let mut dp = masquerading(1024, 65535);
    let (_, sent) = run(
        &mut dp,
        programs::FROM_POD,
        &udp_port(POD_A, 5353, INTERNET, 9, FROM_POD_A),
    );
    let err = port_unreachable(INTERNET, NODE0, &sent);
    let (v, back) = run(&mut dp, programs::FROM_UPLINK, &err);
    assert_eq!(v, TC_ACT_REDIRECT);
    let s = parse_checked(&back); // outer IPv4 and ICMP checksums
    assert_eq!(s.dst, Ipv4Addr::from(POD_A));
    assert_eq!(quoted_source(&back), (POD_A.into(), 5353));
    // An error quoting nothing we translated is the node's own.
    let (_, other) = run(
        &mut dp,
        programs::FROM_POD,
        &udp_port(POD_A, 6000, INTERNET, 9, FROM_POD_A),
    );
    let mut stray = port_unreachable(INTERNET, NODE0, &other);
    stray[14 + 20 + 8 + 20] ^= 0xff; // another source port in the quote
    let (v, _) = run(&mut dp, programs::FROM_UPLINK, &stray);
    assert_eq!(v, TC_ACT_OK);

    // Load balancer stage: back to the node with the node's port.
    let mut lb = load_balancer();
    let out = tcp_port(NODE0, 40000, INTERNET, 80, (UPLINK_MAC, PEER_NODE_MAC));
    let (_, sent) = run(&mut lb, programs::LB_FROM_VNET, &out);
    let err = port_unreachable(INTERNET, FRONTEND, &sent);
    let (v, back) = run(&mut lb, programs::LB_FROM_INTERNET, &err);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(parse_checked(&back).dst, Ipv4Addr::from(NODE0));
    assert_eq!(quoted_source(&back), (NODE0.into(), 40000));
}

/// An ICMP error quoting what the engine does not translate (the node's
/// own GRE, ESP or SCTP, or a header with options) is the node's: handed
/// to its stack unchanged (its tunnels learn their path MTU), not dropped.
#[test]
fn icmp_errors_quoting_the_nodes_own_protocols_reach_the_node() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(1024, 65535);
    // The node's own packet, as it left: GRE (47), ESP (50), SCTP (132).
    let own = udp_port(NODE0, 5000, INTERNET, 9, (UPLINK_MAC, PEER_NODE_MAC));
    for (what, proto, ihl) in [
        ("GRE", 47u8, 5u8),
        ("ESP", 50, 5),
        ("SCTP", 132, 5),
        ("UDP with IP options", 17, 6),
    ] {
        let mut quoted = own.clone();
        quoted[14] = 0x40 | ihl;
        quoted[14 + 9] = proto;
        let err = port_unreachable(INTERNET, NODE0, &quoted);
        let before = drops(&mut dp, DropReason::UnsupportedL4);
        let (v, out) = run(&mut dp, programs::FROM_UPLINK, &err);
        assert_eq!(v, TC_ACT_OK, "{what}: to the node's stack");
        assert_eq!(out, err, "{what}: unchanged");
        assert_eq!(drops(&mut dp, DropReason::UnsupportedL4), before, "{what}");
    }
}

#[test]
fn pods_are_not_reachable_from_outside_the_cluster() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(1024, 65535);
    let d = drops(&mut dp, DropReason::UnsolicitedToPod);
    let (v, _) = run(
        &mut dp,
        programs::FROM_UPLINK,
        &tcp_port(INTERNET, 80, POD_A, 8080, FROM_VNET),
    );
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, DropReason::UnsolicitedToPod), d + 1);
    // From another node's pod, and from a node: delivered.
    let (v, _) = run(
        &mut dp,
        programs::FROM_UPLINK,
        &tcp_port(REMOTE_POD, 80, POD_A, 8080, FROM_VNET),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    let (v, _) = run(
        &mut dp,
        programs::FROM_UPLINK,
        &tcp_port(NODE1, 80, POD_A, 8080, FROM_VNET),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
}

/// A flow's phase follows its packets in both directions (each flag set
/// by its own packet, never rewritten by another), and a SYN reopens a
/// closed tuple on the same port.
#[test]
fn flows_go_through_their_phases_and_a_syn_reopens_a_closed_one() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(1024, 65535);
    let syn = tcp_port(POD_A, 41000, INTERNET, 80, FROM_POD_A);
    let (_, out) = run(&mut dp, programs::FROM_POD, &syn);
    let port = parse_checked(&out).src_port;
    let phase = |dp: &mut Datapath| {
        let out: HashMap<_, FlowKey, NatEntry> = dp.hash(registry::NAT_OUT).unwrap();
        let k = FlowKey::new(key(POD_A.into()), key(INTERNET.into()), 41000, 80, 6);
        out.get(&k, 0).unwrap().phase()
    };
    let with_flags = |frame: &[u8], flags: u8| {
        let mut f = frame.to_vec();
        f[14 + 20 + 13] = flags;
        f
    };
    assert_eq!(phase(&mut dp), Phase::New);
    // The reply establishes it.
    let reply = tcp_port(INTERNET, 80, NODE0, port, FROM_VNET);
    run(&mut dp, programs::FROM_UPLINK, &reply);
    assert_eq!(phase(&mut dp), Phase::Established);
    // The remote's FIN: close-wait; the pod's data after it keeps it so.
    run(&mut dp, programs::FROM_UPLINK, &with_flags(&reply, 0x11));
    assert_eq!(phase(&mut dp), Phase::CloseWait);
    run(&mut dp, programs::FROM_POD, &with_flags(&syn, 0x10));
    assert_eq!(phase(&mut dp), Phase::CloseWait);
    // The pod's FIN: both closed.
    run(&mut dp, programs::FROM_POD, &with_flags(&syn, 0x11));
    assert_eq!(phase(&mut dp), Phase::TimeWait);
    // An RST outranks the FINs.
    run(&mut dp, programs::FROM_UPLINK, &with_flags(&reply, 0x04));
    assert_eq!(phase(&mut dp), Phase::Close);
    // A new SYN on the same tuple reopens the entry and keeps the port.
    let (_, out) = run(&mut dp, programs::FROM_POD, &syn);
    assert_eq!(parse_checked(&out).src_port, port);
    assert_eq!(phase(&mut dp), Phase::New);
    // Only the pod's FIN: fin-wait.
    run(&mut dp, programs::FROM_POD, &with_flags(&syn, 0x11));
    assert_eq!(phase(&mut dp), Phase::FinWait);
    assert_eq!(assert_accounting_exact(&mut dp), 1);
}

/// The agent's collector goes a piece per tick on large tables: a pass in
/// small steps removes exactly what a whole pass would, returns exactly
/// those ports, and clears the owned-port marks of the ports let go.
#[test]
fn collection_in_small_steps_is_exact() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(1024, 65535);
    let (ports, failed) = open_flows(&mut dp, 1, 20_000);
    assert_eq!((ports.len(), failed), (20_000, 0));
    let mut c = collector::Collector::default();
    c.start();
    let (mut steps, mut removed) = (0, Vec::new());
    while !c.idle() {
        steps += 1;
        assert!(steps < 1000, "the pass does not end");
        removed.extend(
            c.step(&mut dp, 1000, &mut |k: &FlowKey, _: &NatEntry| {
                k.src_port.is_multiple_of(2)
            })
            .unwrap(),
        );
    }
    assert!(steps >= 20, "{steps} steps for 20,000 entries by 1,000");
    assert_eq!(removed.len(), 10_000);
    assert!(removed.iter().all(|(k, _)| k.src_port.is_multiple_of(2)));
    assert_eq!(assert_accounting_exact(&mut dp), 10_000);
    // Owned-port marks: one per port still held.
    let owned: HashMap<_, FlowKey, u64> = dp.hash(registry::PORT_OWNED).unwrap();
    assert_eq!(owned.keys().count(), 10_000);
}

/// With the NAT table full, a new flow is refused at once and counted as
/// `nat_table_full`: not after walking the whole port range, and not as
/// `nat_ports_exhausted` (the ports are not exhausted). Existing flows go
/// on: a table full of claims that are no unreplied flow's (answered
/// flows, or here claims made by hand) has nothing to evict.
#[test]
fn a_full_table_refuses_new_flows_at_once_with_the_right_reason() {
    if !privileged() {
        return;
    }
    let small = netplane_common::nat::NAT_TABLE_ENTRIES_MIN;
    let mut dp = masquerading_with_table(small);
    let existing = tcp_port(POD_A, 40000, INTERNET, 80, FROM_POD_A);
    let (_, out) = run(&mut dp, programs::FROM_POD, &existing);
    let port = parse_checked(&out).src_port;
    // Answered: never evicted.
    let reply = tcp_port(INTERNET, 80, NODE0, port, FROM_VNET);
    assert_eq!(
        run(&mut dp, programs::FROM_UPLINK, &reply).0,
        TC_ACT_REDIRECT
    );
    // Fill the reply table to its last entry with claims no flow is
    // queued for.
    {
        let mut nat_in: HashMap<_, FlowKey, NatReverse> = dp.hash(registry::NAT_IN).unwrap();
        let mut filled = 0u32;
        while filled < small * 2 {
            let remote = key(Ipv4Addr::from(0xc633_6400 + filled)); // 198.51.100.0 on
            let k = FlowKey::new(remote, key(NODE0.into()), 53, 2000, 17);
            let rev = NatReverse {
                orig_ip: key(POD_B.into()),
                orig_port: 1,
                _pad: 0,
            };
            if nat_in.insert(k, rev, 0).is_err() {
                break;
            }
            filled += 1;
        }
        assert!(filled < small * 2, "the table never filled");
    }
    let (full, exhausted) = (
        drops(&mut dp, DropReason::NatTableFull),
        drops(&mut dp, DropReason::NatPortsExhausted),
    );
    let (v, _) = run(
        &mut dp,
        programs::FROM_POD,
        &tcp_port(POD_A, 40001, INTERNET, 80, FROM_POD_A),
    );
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&mut dp, DropReason::NatTableFull), full + 1);
    assert_eq!(drops(&mut dp, DropReason::NatPortsExhausted), exhausted);
    // The existing flow keeps its translation.
    let (v, out) = run(&mut dp, programs::FROM_POD, &existing);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(parse_checked(&out).src_port, port);
}

/// A pod spraying new destinations cannot stop its neighbours: once the
/// table is full, each new flow gives up the oldest unreplied one (the
/// sprayer's own), never a flow that has been answered, and every port is
/// counted exactly.
#[test]
fn a_pod_spraying_destinations_cannot_stop_its_neighbours() {
    if !privileged() {
        return;
    }
    let small = netplane_common::nat::NAT_TABLE_ENTRIES_MIN;
    let mut dp = masquerading_with_table(small);
    // Pod B sends from the same test device as pod A.
    let mut b = dp.pods_map().unwrap().get(&key(POD_B.into()), 0).unwrap();
    b.ifindex = 1;
    dp.add_pod(key(POD_B.into()), b).unwrap();
    let from_b = (POD_B_MAC, POD_B_HOST_MAC);

    // Pod B's connection, answered before the spray.
    let answered = tcp_port(POD_B, 40000, INTERNET, 80, from_b);
    let (_, out) = run(&mut dp, programs::FROM_POD, &answered);
    let port = parse_checked(&out).src_port;
    let reply = tcp_port(INTERNET, 80, NODE0, port, FROM_VNET);
    assert_eq!(
        run(&mut dp, programs::FROM_UPLINK, &reply).0,
        TC_ACT_REDIRECT
    );

    // Pod A sprays 300 datagrams past the table's size, one destination each.
    let sprayed = small + 300;
    for i in 0..sprayed {
        let dst = Ipv4Addr::from(0xc612_0000 + i).octets(); // 198.18.0.0 on
        let (v, _) = run(
            &mut dp,
            programs::FROM_POD,
            &udp_port(POD_A, 5000, dst, 53, FROM_POD_A),
        );
        assert_eq!(v, TC_ACT_REDIRECT, "datagram {i} refused");
    }
    // The first small - 1 fitted beside B's flow; each later one gave up
    // one of the sprayer's own.
    assert_eq!(evictions(&mut dp), u64::from(sprayed - (small - 1)));
    assert_eq!(assert_accounting_exact(&mut dp), u64::from(small));
    assert_eq!(drops(&mut dp, DropReason::NatTableFull), 0);

    // Pod B opens a new connection, and its answered one goes on.
    let (v, out) = run(
        &mut dp,
        programs::FROM_POD,
        &tcp_port(POD_B, 40001, INTERNET, 443, from_b),
    );
    assert_eq!(v, TC_ACT_REDIRECT, "the neighbour's new connection");
    assert_eq!(parse_checked(&out).src, Ipv4Addr::from(NODE0));
    let (v, back) = run(&mut dp, programs::FROM_UPLINK, &reply);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(parse_checked(&back).dst, Ipv4Addr::from(POD_B));
    let out: HashMap<_, FlowKey, NatEntry> = dp.hash(registry::NAT_OUT).unwrap();
    let b_flows = out
        .keys()
        .filter(|k| k.as_ref().unwrap().src_ip == key(POD_B.into()))
        .count();
    assert_eq!(b_flows, 2);
    assert_eq!(assert_accounting_exact(&mut dp), u64::from(small));
}

/// A port claimed while a collection pass is under way keeps its owned-port
/// mark: the pass learned which ports are held before that claim, and
/// clears only marks older than its learning. Without the mark, the
/// Services' masquerade could take the same port for the node's address.
#[test]
fn a_port_claimed_during_a_collection_pass_keeps_its_mark() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(1024, 65535);
    let (old, _) = open_flows(&mut dp, 1, 50);
    assert_eq!(old.len(), 50);
    let mut c = collector::Collector::default();
    c.start();
    // Expire the old flows, then learn the held ports, a step at a time.
    let mut steps = 0;
    while !c.clearing_marks() {
        steps += 1;
        assert!(
            steps < 1000 && !c.idle(),
            "the pass did not reach its last phase"
        );
        c.step(&mut dp, 1, &mut |_: &FlowKey, _: &NatEntry| true)
            .unwrap();
    }
    // A new flow claims a port now, between the pass's learning and its
    // clearing.
    let (_, out) = run(
        &mut dp,
        programs::FROM_POD,
        &tcp_port(POD_A, 45000, INTERNET, 443, FROM_POD_A),
    );
    let port = parse_checked(&out).src_port;
    while !c.idle() {
        c.step(&mut dp, 1, &mut |_: &FlowKey, _: &NatEntry| false)
            .unwrap();
    }
    // The new flow's port keeps its mark (the Services' masquerade will
    // not take it).
    let owned: HashMap<_, FlowKey, u64> = dp.hash(registry::PORT_OWNED).unwrap();
    assert!(
        owned
            .get(&owned_key(key(NODE0.into()), port, PROTO_TCP), 0)
            .is_ok(),
        "the new flow's port lost its mark"
    );
    assert_eq!(assert_accounting_exact(&mut dp), 1);
}

/// A removal cut short — the forward entry deleted, the reverse one left,
/// as when an agent is killed between the two deletes — used to hold its
/// port and count it forever. Two sweeps in a row find the orphan (one
/// alone could be a claim in flight), remove it, return its port and clear
/// its mark: the accounting is exact again.
#[test]
fn an_orphan_claim_left_by_a_cut_short_removal_is_swept() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(1024, 65535);
    let (ports, _) = open_flows(&mut dp, 1, 10);
    assert_eq!(ports.len(), 10);
    let (cut, entry) = {
        let mut out: HashMap<_, FlowKey, NatEntry> = dp.hash(registry::NAT_OUT).unwrap();
        let k = out.keys().next().unwrap().unwrap();
        let e = out.get(&k, 0).unwrap();
        out.remove(&k).unwrap();
        (k, e)
    };
    let sweep = |dp: &mut Datapath, c: &mut collector::Collector| {
        c.start_sweep();
        while !c.idle() {
            c.step(dp, usize::MAX, &mut |_: &FlowKey, _: &NatEntry| false)
                .unwrap();
        }
    };
    let mut c = collector::Collector::default();
    sweep(&mut dp, &mut c);
    assert_eq!(c.orphans_removed, 0, "one sweep only suspects");
    sweep(&mut dp, &mut c);
    assert_eq!(c.orphans_removed, 1);
    assert_eq!(assert_accounting_exact(&mut dp), 9);
    // Its mark is gone too: a packet to that port is the node's own again.
    let (v, _) = run(
        &mut dp,
        programs::FROM_UPLINK,
        &tcp_port(INTERNET, cut.dst_port, NODE0, entry.nat_port, FROM_VNET),
    );
    assert_eq!(v, TC_ACT_OK);
}

/// A claim and its port's credit go together: `release_claims` deletes a
/// claim and credits its slot in one program run, so no death of the agent
/// comes between them (a kill between a batch delete and the credit used
/// to leave the port counted for good). A claim there is released and
/// credited once; one already gone is neither, however often it is asked;
/// a claim of no slot is deleted without a credit; more claims than one
/// run takes (RELEASE_BATCH) are all released.
#[test]
fn a_claim_and_its_credit_go_together() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(1024, 65535);
    let (ports, _) = open_flows(&mut dp, 1, 100);
    assert_eq!(ports.len(), 100);
    // The collector first takes the forward entries it removes.
    let take = |dp: &mut Datapath, n: usize| -> Vec<(FlowKey, NatEntry)> {
        let mut out: HashMap<_, FlowKey, NatEntry> = dp.hash(registry::NAT_OUT).unwrap();
        let keys: Vec<FlowKey> = out.keys().take(n).map(Result::unwrap).collect();
        keys.into_iter()
            .map(|k| {
                let e = out.get(&k, 0).unwrap();
                out.remove(&k).unwrap();
                (k, e)
            })
            .collect()
    };
    let frees = |dp: &mut Datapath| -> u64 {
        let a: Array<_, u64> = dp.array(registry::SNAT_FREES).unwrap();
        a.get(&0, 0).unwrap()
    };
    let claim = |(k, e): &(FlowKey, NatEntry), slot: u32| ClaimRelease {
        key: collector::reply_key(k, e),
        slot,
        released: 0,
    };
    let taken = take(&mut dp, 70);
    assert!(taken.len() > RELEASE_BATCH);
    let mut claims: Vec<ClaimRelease> = taken.iter().map(|f| claim(f, f.1.slot)).collect();
    let gone = FlowKey::new(key(INTERNET.into()), key(NODE0.into()), 80, 1, PROTO_TCP);
    claims.push(ClaimRelease {
        key: gone,
        slot: 0,
        released: 0,
    });
    let before = frees(&mut dp);
    let released = dp.release_claims(&claims).unwrap();
    assert_eq!(released.len(), 71);
    assert!(released[..70].iter().all(|r| *r), "every claim there");
    assert!(!released[70], "a claim not there is not released");
    assert_eq!(frees(&mut dp) - before, 70);
    assert_eq!(assert_accounting_exact(&mut dp), 30);
    let again = dp.release_claims(&claims).unwrap();
    assert!(again.iter().all(|r| !r), "released once");
    assert_eq!(frees(&mut dp) - before, 70, "credited once");
    // No slot: the claim goes, no slot is credited.
    let last = take(&mut dp, 1);
    let released = dp
        .release_claims(&[claim(&last[0], ClaimRelease::NO_SLOT)])
        .unwrap();
    assert_eq!(released, [true]);
    assert_eq!(frees(&mut dp) - before, 70);
    let inn: HashMap<_, FlowKey, NatReverse> = dp.hash(registry::NAT_IN).unwrap();
    assert_eq!(inn.keys().count(), 29);
}

/// UDP at the load balancer is Azure's port-restricted cone NAT: "one SNAT
/// port per destination IP whatever the destination port". An inside
/// endpoint keeps its port toward a remote IP; ports are consumed per remote
/// IP, so UDP exhausts a block faster than TCP (a port per remote IP and
/// port); and only ports the endpoint sent to may answer.
#[test]
fn udp_at_the_load_balancer_is_port_restricted_cone_nat() {
    if !privileged() {
        return;
    }
    let mut dp = load_balancer_with(8); // node-0: ports 1024-1031
    let from_node = (UPLINK_MAC, PEER_NODE_MAC);
    let from_inet = (PEER_NODE_MAC, UPLINK_MAC);
    let out = |dp: &mut Datapath, frame: Vec<u8>| {
        let (v, f) = run(dp, programs::LB_FROM_VNET, &frame);
        (v == TC_ACT_REDIRECT).then(|| parse_checked(&f).src_port)
    };
    // One endpoint to two ports of one IP: one translation, one port.
    let a = out(&mut dp, udp_port(NODE0, 40000, INTERNET, 53, from_node)).unwrap();
    let b = out(&mut dp, udp_port(NODE0, 40000, INTERNET, 54, from_node)).unwrap();
    assert_eq!(a, b);
    // Eight more endpoints to eight more ports of that IP: seven ports are
    // left, so one fails.
    let udp_ok = (1..=8)
        .filter(|i| {
            out(
                &mut dp,
                udp_port(NODE0, 40000 + i, INTERNET, 1000 + i, from_node),
            )
            .is_some()
        })
        .count();
    assert_eq!(udp_ok, 7, "UDP: one port per remote IP");
    // TCP to as many ports of that IP: each fits (a port per IP and port).
    let tcp_ok = (0..9)
        .filter(|i| {
            out(
                &mut dp,
                tcp_port(NODE0, 50000 + i, INTERNET, 2000 + i, from_node),
            )
            .is_some()
        })
        .count();
    assert_eq!(tcp_ok, 9, "TCP: one port per remote IP and port");
    // Port-restricted: an answer from 54 comes back to the endpoint, one
    // from 55 (never sent to) does not.
    let (v, back) = run(
        &mut dp,
        programs::LB_FROM_INTERNET,
        &udp_port(INTERNET, 54, FRONTEND, a, from_inet),
    );
    assert_eq!(v, TC_ACT_REDIRECT);
    let r = parse_checked(&back);
    assert_eq!((r.dst, r.dst_port, r.src_port), (NODE0.into(), 40000, 54));
    let (v, _) = run(
        &mut dp,
        programs::LB_FROM_INTERNET,
        &udp_port(INTERNET, 55, FRONTEND, a, from_inet),
    );
    assert_eq!(v, TC_ACT_SHOT);
}

/// A TCP RST or FIN with no translation claims no port and is dropped as
/// `tcp_invalid` (Linux's conntrack: INVALID, which kube-proxy drops); a
/// mid-stream ACK with none is picked up, as Linux's loose tracking does.
#[test]
fn closing_a_flow_that_has_no_translation_claims_nothing() {
    if !privileged() {
        return;
    }
    let mut dp = masquerading(1024, 65535);
    let with_flags = |sport: u16, flags: u8| {
        let mut f = tcp_port(POD_A, sport, INTERNET, 80, FROM_POD_A);
        f[14 + 20 + 13] = flags;
        // The TCP checksum covers the flags: keep it right.
        let mut b = f.clone();
        let sliced = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(TransportSlice::Tcp(t)) = sliced.transport else {
            unreachable!()
        };
        let Some(NetSlice::Ipv4(ip)) = sliced.net else {
            unreachable!()
        };
        let mut h = t.to_header();
        h.checksum = h
            .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
            .unwrap();
        b[34..34 + h.header_len()].copy_from_slice(&h.to_bytes());
        b
    };
    for (sport, flags) in [(41000, 0x04), (41001, 0x11), (41002, 0x14)] {
        let d = drops(&mut dp, DropReason::TcpInvalid);
        let (v, _) = run(&mut dp, programs::FROM_POD, &with_flags(sport, flags));
        assert_eq!(v, TC_ACT_SHOT, "flags {flags:#x}");
        assert_eq!(drops(&mut dp, DropReason::TcpInvalid), d + 1);
    }
    assert_eq!(assert_accounting_exact(&mut dp), 0);
    let (v, _) = run(&mut dp, programs::FROM_POD, &with_flags(41003, 0x10));
    assert_eq!(v, TC_ACT_REDIRECT, "a mid-stream ACK is picked up");
    assert_eq!(assert_accounting_exact(&mut dp), 1);
}

/// The collector reads a chunk of translations, decides which expired,
/// then removes them. A packet that refreshes a flow in between (a SYN
/// reopening a closed tuple, a late segment) must keep it: removed, the
/// flow's next reply finds no translation and is dropped as
/// `nat_no_mapping` (the 5-minute soak's lone failures).
#[test]
fn a_flow_refreshed_while_a_pass_decides_it_expired_survives() {
    if !privileged() {
        return;
    }
    use aya::maps::{Map, MapData};
    let mut dp = masquerading(1024, 65535);
    let (_, out) = run(
        &mut dp,
        programs::FROM_POD,
        &tcp_port(POD_A, 40000, INTERNET, 80, FROM_POD_A),
    );
    let port = parse_checked(&out).src_port;
    // A second handle on NAT_OUT: the data path's refresh, made while the
    // pass holds its snapshot.
    let id = dp
        .hash_data(registry::NAT_OUT)
        .unwrap()
        .info()
        .unwrap()
        .id();
    let mut nat_out: HashMap<_, FlowKey, NatEntry> =
        HashMap::try_from(Map::HashMap(MapData::from_id(id).unwrap())).unwrap();
    let mut c = collector::Collector::default();
    c.start();
    let mut refreshed = 0;
    while !c.idle() {
        c.step(&mut dp, usize::MAX, &mut |k: &FlowKey, e: &NatEntry| {
            // Expired by the snapshot; refreshed by a packet right now.
            let mut fresh = *e;
            fresh.last_seen_ns = collector::monotonic_ns();
            nat_out.insert(k, fresh, 0).unwrap();
            refreshed += 1;
            true
        })
        .unwrap();
    }
    assert_eq!(refreshed, 1);
    // The reply is still translated back to the pod.
    let (v, back) = run(
        &mut dp,
        programs::FROM_UPLINK,
        &tcp_port(INTERNET, 80, NODE0, port, FROM_VNET),
    );
    assert_eq!(v, TC_ACT_REDIRECT, "the refreshed flow was collected");
    assert_eq!(parse_checked(&back).dst, Ipv4Addr::from(POD_A));
    assert_eq!(assert_accounting_exact(&mut dp), 1);
}
