//! Katran-style packet tables: input frame -> expected verdict, output frame
//! and counter, run through the real programs with BPF_PROG_TEST_RUN.
//!
//! The world of these tables: this is node-0 (10.224.0.4) of the default
//! cluster; pod A 10.244.0.2 sends from the test's skb ifindex (1, lo, where
//! BPF_PROG_TEST_RUN puts every packet); pod B 10.244.0.3 lives behind
//! ifindex 42; node-1 (10.224.0.5) owns 10.244.1.0/24.
use etherparse::{IpHeaders, Ipv4Extensions, Ipv4Header, Ipv4Options, PacketBuilder, SlicedPacket};
use netplane_common::{
    DropReason, Path,
    maps::{MARK_ROUTED, programs},
    registry,
};
use netplane_tests::{privileged, world::*};

/// What a case expects of the output frame.
enum Out {
    /// Byte for byte this frame.
    Frame(Vec<u8>),
    /// The input, untouched.
    Unchanged,
}

/// Which counter a case must move by exactly one; `Nothing`: no counter
/// may move.
enum Moves {
    Path(Path),
    Drop(DropReason),
    Nothing,
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    verdict: u32,
    out: Out,
    moves: Moves,
}

fn case(name: &'static str, input: Vec<u8>, verdict: u32, out: Out, moves: Moves) -> Case {
    Case {
        name,
        input,
        verdict,
        out,
        moves,
    }
}

/// An IPv4 packet carrying 4 bytes of IP options (NOP NOP NOP EOL).
fn udp_with_options(src_mac: [u8; 6], dst_mac: [u8; 6], ttl: u8) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, ttl, etherparse::IpNumber::UDP, POD_A, REMOTE_POD).unwrap();
    ip.options = Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap();
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
        .udp(5000, 53);
    let mut out = Vec::new();
    b.write(&mut out, b"options").unwrap();
    out
}

fn arp(
    src_mac: [u8; 6],
    oper: u16,
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&oper.to_be_bytes());
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa);
    f
}

/// The ARP reply the data path must produce for `arp(.., 1, POD_A, 0, tpa, bcast)`.
fn arp_reply_to_pod_a(answered: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&POD_A_MAC);
    f.extend_from_slice(&POD_A_HOST_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&POD_A_HOST_MAC);
    f.extend_from_slice(&answered);
    f.extend_from_slice(&POD_A_MAC);
    f.extend_from_slice(&POD_A);
    f
}

/// Overwrites bytes of a frame (for deliberately broken headers).
fn patched(mut frame: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    frame[at..at + bytes.len()].copy_from_slice(bytes);
    frame
}

fn run_table(prog: &str, cases: Vec<Case>) {
    if !privileged() {
        return;
    }
    let mut dp = node0_datapath();
    let mut failures = Vec::new();
    for c in cases {
        let before = dp.counters().unwrap();
        let (verdict, out) = test_run(&mut dp, prog, &c.input, 0)
            .unwrap_or_else(|e| panic!("{}: test run failed: {e:?}", c.name));
        let after = dp.counters().unwrap();

        let mut problems = Vec::new();
        if verdict != c.verdict {
            problems.push(format!("verdict {verdict} (want {})", c.verdict));
        }
        let want = match &c.out {
            Out::Frame(f) => f,
            Out::Unchanged => &c.input,
        };
        if &out != want {
            problems.push(format!("output\n  got  {out:02x?}\n  want {want:02x?}"));
        }
        match c.moves {
            Moves::Path(p) => expect_one(
                &mut problems,
                p.name(),
                after.packets_of(p) - before.packets_of(p),
            ),
            Moves::Drop(r) => expect_one(
                &mut problems,
                r.name(),
                after.drops_of(r) - before.drops_of(r),
            ),
            Moves::Nothing if after != before => problems.push("counters moved".into()),
            Moves::Nothing => {}
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn expect_one(problems: &mut Vec<String>, name: &str, delta: u64) {
    if delta != 1 {
        problems.push(format!("counter {name} moved by {delta} (want 1)"));
    }
}

/// Every routed output must still be a valid IPv4 packet to a real parser.
fn assert_ipv4_checksum_valid(frame: &[u8]) {
    let p = SlicedPacket::from_ethernet(frame).expect("parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "header checksum"
    );
}

#[test]
fn from_pod_table() {
    let to_b = tcp(POD_A_MAC, POD_A_HOST_MAC, POD_A, POD_B, 64);
    let remote = tcp(POD_A_MAC, POD_A_HOST_MAC, POD_A, REMOTE_POD, 64);
    let remote_out = tcp(POD_A_MAC, POD_A_HOST_MAC, POD_A, REMOTE_POD, 63);
    assert_ipv4_checksum_valid(&remote_out);
    let opts_out = udp_with_options(POD_A_MAC, POD_A_HOST_MAC, 9);
    assert_ipv4_checksum_valid(&opts_out);
    let bcast = [0xff; 6];
    let ipv6 = patched(to_b.clone(), 12, &0x86ddu16.to_be_bytes());
    run_table(
        programs::FROM_POD,
        vec![
            case(
                "same node: delivered to pod B, MACs rewritten, TTL kept",
                to_b.clone(),
                TC_ACT_REDIRECT,
                Out::Frame(tcp(POD_B_HOST_MAC, POD_B_MAC, POD_A, POD_B, 64)),
                Moves::Path(Path::SameNode),
            ),
            case(
                "cross node: routed to node-1, TTL 64 -> 63, checksum patched",
                remote.clone(),
                TC_ACT_REDIRECT,
                Out::Frame(remote_out),
                Moves::Path(Path::ToRemoteNode),
            ),
            case(
                "IP options: routed with options intact",
                udp_with_options(POD_A_MAC, POD_A_HOST_MAC, 10),
                TC_ACT_REDIRECT,
                Out::Frame(opts_out),
                Moves::Path(Path::ToRemoteNode),
            ),
            case(
                "TTL 1 on a routed hop: handed to the kernel for ICMP time exceeded",
                tcp(POD_A_MAC, POD_A_HOST_MAC, POD_A, REMOTE_POD, 1),
                TC_ACT_OK,
                Out::Unchanged,
                Moves::Path(Path::TtlExpired),
            ),
            case(
                "TTL 1 to a same-node pod: bridged, not routed, so delivered",
                tcp(POD_A_MAC, POD_A_HOST_MAC, POD_A, POD_B, 1),
                TC_ACT_REDIRECT,
                Out::Frame(tcp(POD_B_HOST_MAC, POD_B_MAC, POD_A, POD_B, 1)),
                Moves::Path(Path::SameNode),
            ),
            case(
                "to the node's own IP: up to the node's stack",
                tcp(POD_A_MAC, POD_A_HOST_MAC, POD_A, NODE0, 64),
                TC_ACT_OK,
                Out::Unchanged,
                Moves::Path(Path::PodToHost),
            ),
            case(
                "unknown destination in the cluster CIDR: no route",
                tcp(POD_A_MAC, POD_A_HOST_MAC, POD_A, [10, 244, 9, 9], 64),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::NoRoute),
            ),
            case(
                "this node's CIDR but no such pod",
                tcp(POD_A_MAC, POD_A_HOST_MAC, POD_A, [10, 244, 0, 77], 64),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::NoLocalPod),
            ),
            case(
                "outside the cluster CIDR: no SNAT configured",
                tcp(POD_A_MAC, POD_A_HOST_MAC, POD_A, INTERNET, 64),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::EgressUnavailable),
            ),
            case(
                "spoofed source: an address no pod has",
                tcp(POD_A_MAC, POD_A_HOST_MAC, [10, 244, 0, 99], POD_B, 64),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::SpoofedSource),
            ),
            case(
                "spoofed source: pod B's address from pod A's veth",
                tcp(POD_A_MAC, POD_A_HOST_MAC, POD_B, REMOTE_POD, 64),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::SpoofedSource),
            ),
            // BPF_PROG_TEST_RUN itself refuses frames cut inside the IPv4
            // header (EINVAL on 6.18), so truncation is tested as a header
            // whose IHL runs past the packet.
            case(
                "truncated: IHL 15 (60-byte header) in a 54-byte packet",
                patched(to_b.clone(), 14, &[0x4f]),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::MalformedIpv4),
            ),
            case(
                "garbage: IP version 6 in an IPv4 frame",
                patched(to_b.clone(), 14, &[0x65]),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::MalformedIpv4),
            ),
            case(
                "garbage: IHL 3 (shorter than a header)",
                patched(to_b.clone(), 14, &[0x43]),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::MalformedIpv4),
            ),
            case(
                "garbage: total length beyond the frame",
                patched(to_b.clone(), 16, &1500u16.to_be_bytes()),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::MalformedIpv4),
            ),
            case(
                "IPv6 from a pod",
                ipv6,
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::UnsupportedProtocol),
            ),
            case(
                "ARP request for the gateway: answered with the host veth MAC",
                arp(POD_A_MAC, 1, POD_A, [0; 6], [10, 244, 0, 1], bcast),
                TC_ACT_REDIRECT,
                Out::Frame(arp_reply_to_pod_a([10, 244, 0, 1])),
                Moves::Path(Path::ArpReply),
            ),
            case(
                "ARP request for a neighbour in the /24: answered the same way",
                arp(POD_A_MAC, 1, POD_A, [0; 6], POD_B, bcast),
                TC_ACT_REDIRECT,
                Out::Frame(arp_reply_to_pod_a(POD_B)),
                Moves::Path(Path::ArpReply),
            ),
            case(
                "gratuitous ARP: not a question, not answered",
                arp(POD_A_MAC, 1, POD_A, [0; 6], POD_A, bcast),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::ArpNotRequest),
            ),
            case(
                "ARP request with a spoofed sender",
                arp(POD_A_MAC, 1, POD_B, [0; 6], [10, 244, 0, 1], bcast),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::SpoofedSource),
            ),
        ],
    );
}

/// POD_SLOTS, the anti-spoofing check's array, only ever confirms what
/// LOCAL_PODS holds: a pod moved onto another veth leaves its old slot
/// empty, two pods on one veth (one slot) both pass, and a forgotten pod
/// is dropped whoever holds the slot.
#[test]
fn pod_slots_follow_registration() {
    use netplane::datapath::{Datapath, key};
    use netplane_common::PodSlot;
    if !privileged() {
        return;
    }
    let verdict = |dp: &mut Datapath, src: [u8; 4]| {
        let frame = tcp(POD_A_MAC, POD_A_HOST_MAC, src, REMOTE_POD, 64);
        test_run(dp, programs::FROM_POD, &frame, 0).unwrap().0
    };
    let slot = |dp: &mut Datapath, ifindex: u32| -> PodSlot {
        let a: aya::maps::Array<_, PodSlot> = dp.array(registry::POD_SLOTS).unwrap();
        a.get(&netplane_common::maps::pod_slot(ifindex), 0).unwrap()
    };
    let (a, b) = (key(POD_A.into()), key(POD_B.into()));
    let mut dp = node0_datapath();
    assert_eq!(slot(&mut dp, 1), PodSlot { ifindex: 1, ip: a });
    assert_eq!(slot(&mut dp, 42), PodSlot { ifindex: 42, ip: b });
    assert_eq!(verdict(&mut dp, POD_A), TC_ACT_REDIRECT, "A from its veth");
    assert_eq!(
        verdict(&mut dp, POD_B),
        TC_ACT_SHOT,
        "B's address from A's veth"
    );

    // B moves onto the test's veth: it takes the slot, its old one empties,
    // and A, now without a slot, passes through LOCAL_PODS.
    let mut moved = dp.pods_map().unwrap().get(&b, 0).unwrap();
    moved.ifindex = 1;
    dp.add_pod(b, moved).unwrap();
    assert_eq!(slot(&mut dp, 42), PodSlot::default());
    assert_eq!(slot(&mut dp, 1), PodSlot { ifindex: 1, ip: b });
    assert_eq!(verdict(&mut dp, POD_B), TC_ACT_REDIRECT, "B by its slot");
    assert_eq!(verdict(&mut dp, POD_A), TC_ACT_REDIRECT, "A by LOCAL_PODS");

    // A forgotten: dropped, though B's slot is on the same veth. B
    // forgotten: its slot empties and it is dropped too.
    dp.remove_pod(a).unwrap();
    assert_eq!(slot(&mut dp, 1), PodSlot { ifindex: 1, ip: b });
    assert_eq!(verdict(&mut dp, POD_A), TC_ACT_SHOT, "A forgotten");
    dp.remove_pod(b).unwrap();
    assert_eq!(slot(&mut dp, 1), PodSlot::default());
    assert_eq!(verdict(&mut dp, POD_B), TC_ACT_SHOT, "B forgotten");
    dp.remove_pod(b)
        .expect("forgetting an unknown pod is no error");

    // The program does read the slot, and a slot alone vouches: that is
    // why removal empties it before LOCAL_PODS forgets the pod.
    let hand_written = [10, 244, 0, 77];
    let mut slots: aya::maps::Array<_, PodSlot> = dp.array(registry::POD_SLOTS).unwrap();
    let vouch = PodSlot {
        ifindex: 1,
        ip: key(hand_written.into()),
    };
    slots.set(1, vouch, 0).unwrap();
    assert_eq!(
        verdict(&mut dp, hand_written),
        TC_ACT_REDIRECT,
        "by the slot alone"
    );
}

#[test]
fn from_uplink_table() {
    let from_peer = |dst, ttl| tcp(PEER_NODE_MAC, UPLINK_MAC, REMOTE_POD, dst, ttl);
    run_table(
        programs::FROM_UPLINK,
        vec![
            case(
                "from node-1 to local pod A: delivered, TTL 63 -> 62",
                from_peer(POD_A, 63),
                TC_ACT_REDIRECT,
                Out::Frame(tcp(POD_A_HOST_MAC, POD_A_MAC, REMOTE_POD, POD_A, 62)),
                Moves::Path(Path::FromRemoteNode),
            ),
            case(
                "TTL 1 into a local pod: kernel answers time exceeded",
                from_peer(POD_A, 1),
                TC_ACT_OK,
                Out::Unchanged,
                Moves::Path(Path::TtlExpired),
            ),
            case(
                "for another node's pod CIDR: not ours",
                from_peer(REMOTE_POD, 63),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::NotForThisNode),
            ),
            case(
                "garbage IPv4 on the uplink",
                patched(from_peer(POD_A, 63), 14, &[0x41]),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::MalformedIpv4),
            ),
        ],
    );
}

#[test]
fn to_uplink_table() {
    run_table(
        programs::TO_UPLINK,
        vec![
            case(
                "node to local pod A: out of A's veth",
                tcp(UPLINK_MAC, PEER_NODE_MAC, NODE0, POD_A, 64),
                TC_ACT_REDIRECT,
                Out::Frame(tcp(POD_A_HOST_MAC, POD_A_MAC, NODE0, POD_A, 64)),
                Moves::Path(Path::HostToPod),
            ),
            case(
                "node to a pod on node-1: UDR next hop, TTL kept (origin)",
                tcp(UPLINK_MAC, PEER_NODE_MAC, NODE0, REMOTE_POD, 64),
                TC_ACT_REDIRECT,
                Out::Unchanged,
                Moves::Path(Path::HostToRemoteNode),
            ),
            case(
                "node to a cluster address nobody owns",
                tcp(UPLINK_MAC, PEER_NODE_MAC, NODE0, [10, 244, 9, 9], 64),
                TC_ACT_SHOT,
                Out::Unchanged,
                Moves::Drop(DropReason::NoRoute),
            ),
        ],
    );
}

/// The benchmarks' floor program does what its name says: an IPv4 frame
/// gets new MACs and a redirect; anything else is dropped.
#[test]
fn bench_floor_parses_and_redirects() {
    if !privileged() {
        return;
    }
    let mut dp = node0_datapath();
    let input = tcp(POD_A_MAC, POD_A_HOST_MAC, POD_A, REMOTE_POD, 64);
    let (verdict, out) = test_run(&mut dp, programs::BENCH_FLOOR, &input, 0).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_ne!(out[..12], input[..12], "MACs rewritten");
    assert_eq!(out[12..], input[12..], "nothing else touched");
    let arp = arp_reply_to_pod_a(REMOTE_POD);
    let (verdict, _) = test_run(&mut dp, programs::BENCH_FLOOR, &arp, 0).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
}

/// A packet from_pod already routed (marked) passes the uplink's egress
/// untouched and uncounted; without the mark it would be routed again.
#[test]
fn routed_mark_passes_to_uplink_untouched() {
    if !privileged() {
        return;
    }
    let mut dp = node0_datapath();
    let input = tcp(UPLINK_MAC, PEER_NODE_MAC, POD_A, REMOTE_POD, 63);
    let before = dp.counters().unwrap();
    let (verdict, out) = test_run(&mut dp, programs::TO_UPLINK, &input, MARK_ROUTED).unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, input);
    assert_eq!(dp.counters().unwrap(), before, "counters moved");
}

#[test]
fn uplink_xdp_table() {
    let from_peer = |dst, ttl| tcp(PEER_NODE_MAC, UPLINK_MAC, REMOTE_POD, dst, ttl);
    let arp_in = arp(PEER_NODE_MAC, 1, NODE1, [0; 6], NODE0, [0xff; 6]);
    run_table(
        programs::UPLINK_XDP,
        vec![
            case(
                "for a local pod: passes on to from_uplink",
                from_peer(POD_A, 63),
                XDP_PASS,
                Out::Unchanged,
                Moves::Nothing,
            ),
            case(
                "for another node's pod CIDR: dropped before an skb exists",
                from_peer(REMOTE_POD, 63),
                XDP_DROP,
                Out::Unchanged,
                Moves::Drop(DropReason::NotForThisNode),
            ),
            case(
                "malformed IPv4: dropped",
                patched(from_peer(POD_A, 63), 14, &[0x41]),
                XDP_DROP,
                Out::Unchanged,
                Moves::Drop(DropReason::MalformedIpv4),
            ),
            case(
                "ARP for the node: passes",
                arp_in,
                XDP_PASS,
                Out::Unchanged,
                Moves::Nothing,
            ),
        ],
    );
}

/// Drops report events through the ring buffer, rate-limited per CPU: a
/// burst of 6,000 spoofed packets reports at most the bucket's 2,000 (plus
/// what the elapsed time earns) and counts the rest as suppressed.
#[test]
fn drop_events_are_reported_and_rate_limited() {
    use netplane_common::events::{EVENT_BURST, FlowEvent, kind};
    if !privileged() {
        return;
    }
    let mut dp = node0_datapath();
    let spoofed = tcp(POD_A_MAC, POD_A_HOST_MAC, [10, 244, 0, 99], POD_B, 64);
    let sent = 6_000u64;
    for _ in 0..sent {
        let (verdict, _) = test_run(&mut dp, programs::FROM_POD, &spoofed, 0).unwrap();
        assert_eq!(verdict, TC_ACT_SHOT);
    }
    let suppressed: u64 = dp
        .per_cpu_array(registry::EVENTS_SUPPRESSED)
        .unwrap()
        .get(&0, 0)
        .unwrap()
        .iter()
        .sum();
    let mut ring = dp.take_ring(registry::FLOW_EVENTS).unwrap().unwrap();
    let mut reported = 0u64;
    while let Some(item) = ring.next() {
        // SAFETY: the programs write whole FlowEvents into the ring; the
        // read is unaligned-safe and FlowEvent is plain data.
        let ev: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const FlowEvent) };
        assert_eq!(
            (ev.kind, ev.code),
            (kind::DROP, DropReason::SpoofedSource as u16)
        );
        assert_eq!(ev.src_ip.to_ne_bytes(), [10, 244, 0, 99]);
        reported += 1;
    }
    assert_eq!(
        reported + suppressed,
        sent,
        "every drop is reported or counted as suppressed"
    );
    assert!(reported >= EVENT_BURST, "the burst is reported: {reported}");
    assert!(
        suppressed > 0,
        "the rate limit held nothing back ({reported} reported)"
    );
}
