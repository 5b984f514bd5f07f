//! Differential testing: random frames through the real programs
//! (BPF_PROG_TEST_RUN) and through the reference model
//! (netplane_tests::model), which must agree on the verdict, the frame
//! that leaves and the counters. The frames aim at the corners: every
//! ethertype and protocol the programs parse and some they do not, bad
//! versions and header lengths, IP options, fragments, bad checksums, TTL
//! 0/1/2, addresses at the edges of every CIDR, ARP of every shape,
//! truncation. Seeded and reproducible: a disagreement prints the seed,
//! the frame in hex and the node's state.
//!
//! NETPLANE_DIFF_FRAMES sets the count (default 1,000,000, what CI runs);
//! NETPLANE_DIFF_SEED the seed (default: from the clock, printed).
use std::collections::BTreeMap;

use netplane_common::{
    DropReason, Path,
    maps::{MARK_ROUTED, programs},
    registry,
};
use netplane_tests::{
    model::{
        LoadBalancer, Masquerade, Model, Moves, Node, Outcome, Pod, Program, outbound::Backend,
    },
    privileged,
    world::*,
};

/// splitmix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `pct` percent.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Addresses at the edges of every range the programs look at.
const ADDRESSES: [[u8; 4]; 22] = [
    POD_A,
    POD_B,
    REMOTE_POD,
    [10, 244, 1, 2],
    [10, 244, 0, 0],
    [10, 244, 0, 1],
    [10, 244, 0, 255],
    [10, 244, 1, 1],
    [10, 244, 1, 255],
    [10, 244, 9, 9],
    [10, 244, 255, 255],
    [10, 245, 0, 1],
    [10, 243, 255, 255],
    NODE0,
    NODE1,
    [10, 224, 0, 1],
    [10, 224, 255, 255],
    INTERNET,
    [0, 0, 0, 0],
    [255, 255, 255, 255],
    [224, 0, 0, 1],
    [172, 16, 0, 1],
];

fn address(r: &mut Rng) -> [u8; 4] {
    if r.pct(90) {
        r.pick(&ADDRESSES)
    } else {
        [r.byte(), r.byte(), r.byte(), r.byte()]
    }
}

fn mac(r: &mut Rng) -> [u8; 6] {
    r.pick(&[
        POD_A_MAC,
        POD_A_HOST_MAC,
        UPLINK_MAC,
        PEER_NODE_MAC,
        [0xff; 6],
    ])
}

/// A random frame, and where it is run.
fn frame(r: &mut Rng) -> (Program, Vec<u8>) {
    let program = match r.below(100) {
        0..=49 => Program::FromPod { ifindex: 1 },
        50..=84 => Program::FromUplink,
        _ => Program::ToUplink {
            mark: if r.pct(10) { MARK_ROUTED } else { 0 },
        },
    };
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&mac(r));
    f.extend_from_slice(&mac(r));
    let ether = match r.below(100) {
        0..=79 => 0x0800u16,
        80..=89 => 0x0806,
        90..=94 => 0x86dd,
        _ => r.next() as u16,
    };
    f.extend_from_slice(&ether.to_be_bytes());
    match ether {
        0x0800 => ipv4(r, &mut f, program),
        0x0806 => arp(r, &mut f),
        _ => {
            let n = r.below(60) as usize;
            f.extend(r.bytes(n))
        }
    }
    if r.pct(8) {
        let keep = r.below(f.len() as u64 + 1) as usize;
        f.truncate(keep);
    }
    (program, f)
}

fn ipv4(r: &mut Rng, f: &mut Vec<u8>, program: Program) {
    let opts = if r.pct(90) {
        0
    } else {
        r.below(11) as usize * 4
    };
    let ihl = 20 + opts;
    let any = r.byte();
    let proto = r.pick(&[1u8, 6, 6, 17, 17, 47, 132, any]);
    let l4 = transport(r, proto);
    let tot = ihl + l4.len();
    let mut h = vec![0u8; ihl];
    h[0] = if r.pct(95) {
        0x40 | (ihl / 4) as u8
    } else {
        r.byte()
    };
    let tot_len = if r.pct(92) {
        tot as u16
    } else {
        r.next() as u16
    };
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h[4..6].copy_from_slice(&(r.next() as u16).to_be_bytes());
    let frag: u16 = match r.below(100) {
        0..=84 => 0x4000, // DF
        85..=89 => 0x2000,
        90..=94 => r.below(0x1fff) as u16 + 1,
        _ => r.next() as u16,
    };
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = r.pick(&[0u8, 1, 2, 63, 64, 255]);
    h[9] = proto;
    let src = match program {
        Program::FromPod { .. } if r.pct(70) => POD_A,
        Program::ToUplink { .. } if r.pct(70) => NODE0,
        _ => address(r),
    };
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&address(r));
    for b in &mut h[20..] {
        *b = if r.pct(80) { 1 } else { r.byte() }; // NOPs, mostly
    }
    let sum = netplane_common::checksum::checksum(&h);
    let sum = if r.pct(90) { sum } else { r.next() as u16 };
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&l4);
}

fn transport(r: &mut Rng, proto: u8) -> Vec<u8> {
    let mut l4 = match proto {
        6 => {
            let mut t = r.bytes(20);
            t[12] = 0x50;
            let any = r.byte();
            t[13] = r.pick(&[0x02, 0x10, 0x12, 0x11, 0x04, 0x14, any]);
            t
        }
        17 => r.bytes(8),
        1 => {
            let mut i = r.bytes(8);
            let any = r.byte();
            i[0] = r.pick(&[0u8, 3, 8, 11, 5, any]);
            if (i[0] == 3 || i[0] == 11) && r.pct(80) {
                // A quoted header, mostly a plain one.
                let mut q = r.bytes(28);
                q[0] = if r.pct(80) { 0x45 } else { r.byte() };
                q[9] = r.pick(&[1u8, 6, 17, 47]);
                i.extend(q);
            }
            i
        }
        _ => Vec::new(),
    };
    let n = r.below(48) as usize;
    l4.extend(r.bytes(n));
    l4
}

fn arp(r: &mut Rng, f: &mut Vec<u8>) {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&(if r.pct(90) { 1u16 } else { r.next() as u16 }).to_be_bytes());
    a.extend_from_slice(
        &(if r.pct(90) {
            0x0800u16
        } else {
            r.next() as u16
        })
        .to_be_bytes(),
    );
    a.push(if r.pct(90) { 6 } else { r.byte() });
    a.push(if r.pct(90) { 4 } else { r.byte() });
    a.extend_from_slice(&(r.pick(&[1u16, 1, 1, 2, 3])).to_be_bytes());
    a.extend_from_slice(&POD_A_MAC);
    let spa = if r.pct(70) { POD_A } else { address(r) };
    a.extend_from_slice(&spa);
    a.extend_from_slice(&[0; 6]);
    let tpa = if r.pct(10) { spa } else { address(r) };
    a.extend_from_slice(&tpa);
    f.extend_from_slice(&a);
}

/// node-0 of the fixture, as the model sees it.
fn model_node() -> Node {
    let net = |s: &str| s.parse().unwrap();
    Node {
        ip: NODE0.into(),
        cluster: net("10.244.0.0/16"),
        routes: vec![
            (net("10.244.0.0/24"), NODE0.into()),
            (net("10.244.1.0/24"), NODE1.into()),
        ],
        pods: vec![
            Pod {
                ip: POD_A.into(),
                ifindex: 1,
                mac: POD_A_MAC,
                host_mac: POD_A_HOST_MAC,
            },
            Pod {
                ip: POD_B.into(),
                ifindex: 42,
                mac: POD_B_MAC,
                host_mac: POD_B_HOST_MAC,
            },
        ],
        masquerade: None,
    }
}

fn prog_name(p: Program) -> &'static str {
    match p {
        Program::FromPod { .. } => programs::FROM_POD,
        Program::FromUplink => programs::FROM_UPLINK,
        Program::ToUplink { .. } => programs::TO_UPLINK,
        Program::LbFromVnet => programs::LB_FROM_VNET,
        Program::LbFromInternet => programs::LB_FROM_INTERNET,
    }
}

/// Counter totals: path and drop packets.
fn totals(c: &netplane::datapath::Counters) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for p in Path::ALL {
        m.insert(format!("path {}", p.name()), c.packets_of(p));
    }
    for d in DropReason::ALL {
        m.insert(format!("drop {}", d.name()), c.drops_of(d));
    }
    m
}

fn key_of(m: Moves) -> Option<String> {
    match m {
        Moves::Path(p) => Some(format!("path {}", p.name())),
        Moves::Drop(d) => Some(format!("drop {}", d.name())),
        Moves::Nothing => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The count and the seed: NETPLANE_DIFF_FRAMES and NETPLANE_DIFF_SEED,
/// else `default` frames and a seed from the clock.
fn frames_and_seed(default: u64) -> (u64, u64) {
    let frames: u64 = std::env::var("NETPLANE_DIFF_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let seed: u64 = std::env::var("NETPLANE_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    (frames, seed)
}

/// The port a translated frame left with: its source port (ICMP: the
/// echo identifier), if it is IPv4 TCP, UDP or ICMP.
fn source_port(f: &[u8]) -> Option<u16> {
    let ihl = usize::from(*f.get(14)? & 0x0f) * 4;
    let l4 = 14 + ihl;
    let at = match *f.get(14 + 9)? {
        6 | 17 => l4,
        1 => l4 + 4,
        _ => return None,
    };
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

/// The program's translations (NAT_OUT) as the model prints its own.
fn nat_out_lines(dp: &mut netplane::datapath::Datapath) -> Vec<String> {
    use netplane::datapath::{addr, dump_hash};
    use netplane_common::nat::{FlowKey, NatEntry};
    let map = dp.hash_data(registry::NAT_OUT).unwrap();
    let mut lines: Vec<String> = dump_hash::<FlowKey, NatEntry>(map)
        .unwrap()
        .into_iter()
        .map(|(k, e)| {
            format!(
                "{} {}:{} -> {}:{} as {}:{}",
                k.proto,
                addr(k.src_ip),
                k.src_port,
                addr(k.dst_ip),
                k.dst_port,
                addr(e.nat_ip),
                e.nat_port
            )
        })
        .collect();
    lines.sort();
    lines
}

/// Counters and tables are compared every BATCH frames (reading them
/// costs more than a run); NETPLANE_DIFF_EXACT=1 compares after every
/// frame, to find the one a batch's disagreement came from.
fn batch() -> u64 {
    if std::env::var_os("NETPLANE_DIFF_EXACT").is_some() {
        1
    } else {
        4096
    }
}

/// Runs `frames` frames from `generate` through the programs of `dp` and
/// through `model`, carrying both states from frame to frame; panics with
/// a reproducer at the first disagreement.
fn agree(
    what: &str,
    mut dp: netplane::datapath::Datapath,
    mut model: impl Model,
    (frames, seed): (u64, u64),
    generate: fn(&mut Rng) -> (Program, Vec<u8>),
) {
    eprintln!("{what}: {frames} frames, NETPLANE_DIFF_SEED={seed}");
    let batch = batch();
    let mut rng = Rng(seed);
    let mut expected: BTreeMap<String, u64> = totals(&dp.counters().unwrap());
    let mut refused = 0u64;
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    let initial = format!("{model:?}");
    let reproduce = |i: u64, program: Program, f: &[u8]| {
        format!(
            "{what}: frame {i} of seed {seed} (NETPLANE_DIFF_SEED={seed} replays it), {program:?}: {}\nthe node at the start: {initial}",
            hex(f)
        )
    };
    for i in 0..frames {
        let (program, f) = generate(&mut rng);
        let mark = match program {
            Program::ToUplink { mark } => mark,
            _ => 0,
        };
        let Ok((verdict, out)) = dp.run(prog_name(program), &f, 0, mark) else {
            refused += 1; // BPF_PROG_TEST_RUN refuses frames too short for it
            continue;
        };
        // A new translation's port: the program's, if it is a free one.
        let chosen = source_port(&out);
        let mut pick = |free: &[u16]| chosen.filter(|p| free.contains(p));
        let want: Outcome = model.run(program, &f, &mut pick);
        if verdict != want.verdict || out != want.frame {
            panic!(
                "the program and the model disagree on {}\n  program: verdict {verdict}, frame {}\n  model:   verdict {}, frame {}, {:?}",
                reproduce(i, program, &f),
                hex(&out),
                want.verdict,
                hex(&want.frame),
                want.moves
            );
        }
        if let Some(k) = key_of(want.moves) {
            *expected.get_mut(&k).unwrap() += 1;
            *by_outcome.entry(k).or_default() += 1;
        } else {
            *by_outcome.entry("nothing counted".into()).or_default() += 1;
        }
        // Counters and tables compared in batches (reading them costs more
        // than a run).
        if i % batch == batch - 1 || i + 1 == frames {
            let got = totals(&dp.counters().unwrap());
            if got != expected {
                let diff: Vec<String> = got
                    .iter()
                    .filter(|(k, v)| expected.get(*k) != Some(*v))
                    .map(|(k, v)| format!("{k}: program {v}, model {}", expected[k]))
                    .collect();
                panic!(
                    "{what}: counters disagree by frame {i} (NETPLANE_DIFF_SEED={seed}; with NETPLANE_DIFF_EXACT=1 too, the frame is named): {}\n{}",
                    diff.join("; "),
                    reproduce(i, program, &f)
                );
            }
            let program_run = program;
            let (program, modelled) = (nat_out_lines(&mut dp), model.translations());
            if program != modelled {
                let only = |a: &[String], b: &[String]| {
                    a.iter()
                        .filter(|l| !b.contains(l))
                        .cloned()
                        .collect::<Vec<_>>()
                };
                panic!(
                    "{what}: translations disagree by frame {i} (NETPLANE_DIFF_SEED={seed}; with NETPLANE_DIFF_EXACT=1 too, the frame is named):\n  only the program's: {:?}\n  only the model's: {:?}\n{}",
                    only(&program, &modelled),
                    only(&modelled, &program),
                    reproduce(i, program_run, &f)
                );
            }
        }
    }
    eprintln!(
        "{what}: agreed on {} frames ({refused} refused by BPF_PROG_TEST_RUN): {by_outcome:?}",
        frames - refused
    );
    assert!(refused < frames / 10, "too many frames refused: {refused}");
}

#[test]
fn the_programs_agree_with_the_model_on_random_frames() {
    if !privileged() {
        return;
    }
    agree(
        "routing",
        node0_datapath(),
        model_node(),
        frames_and_seed(1_000_000),
        frame,
    );
}

// ---- The masquerade, with its state carried from frame to frame ----

/// The node's ports in the masquerade test: few, so a destination's pool
/// fills to its last port again and again.
const NODE_PORTS: std::ops::RangeInclusive<u16> = 40000..=40007;
/// Remote ends: two internet hosts, a node of the subnet (on-link), the
/// gateway.
const REMOTES: [[u8; 4]; 4] = [INTERNET, [198, 51, 100, 99], NODE1, GATEWAY];
/// Pods' ports: some inside the node's range (kept when free), some not.
const POD_PORTS: [u16; 6] = [40000, 40001, 40002, 5000, 5001, 65535];
const REMOTE_PORTS: [u16; 3] = [80, 443, 22];

const TCP_FLAGS: [u8; 8] = [0x02, 0x02, 0x10, 0x18, 0x11, 0x04, 0x14, 0x12];

/// node-0 masquerading over NODE_PORTS, as the model sees it.
fn model_masquerading() -> Node {
    let mut node = model_node();
    node.masquerade = Some(Masquerade::new(
        GATEWAY.into(),
        "10.224.0.0/16".parse().unwrap(),
        NODE_PORTS,
    ));
    node
}

/// What part of a datagram a frame is.
#[derive(Clone, Copy, PartialEq)]
enum Piece {
    Whole,
    /// Offset 0, more follow: the transport header is here.
    First,
    /// Offset > 0: no transport header.
    Later,
}

/// An IPv4 frame, mostly well formed, whole or a fragment: what a masquerade's
/// flows are made of, with bad checksums, dying TTLs and truncation mixed
/// in.
fn flow_frame(
    r: &mut Rng,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    out: bool,
) -> Vec<u8> {
    // Fragments only toward and from remote ends (a flow opened from the
    // node subnet is looked up by ports a later fragment does not carry).
    let remote_end = [INTERNET, [198, 51, 100, 99]];
    let fragments = remote_end.contains(&dst) || remote_end.contains(&src);
    let piece = match r.below(100) {
        0..=5 if fragments => Piece::First,
        6..=11 if fragments => Piece::Later,
        _ => Piece::Whole,
    };
    let proto = match r.below(100) {
        0..=44 => 6u8,
        45..=79 => 17,
        80..=95 => 1,
        _ => 47,
    };
    let mut l4 = match proto {
        6 => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..12].copy_from_slice(&r.bytes(8));
            t[12] = 0x50;
            t[13] = r.pick(&TCP_FLAGS);
            t[14..16].copy_from_slice(&64240u16.to_be_bytes());
            t
        }
        17 => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u
        }
        1 => {
            let mut i = vec![0u8; 8];
            let echo = if out { 8 } else { 0 };
            i[0] = if r.pct(90) {
                echo
            } else {
                r.pick(&[0u8, 8, 3, 13])
            };
            let id = if out { sport } else { dport };
            i[4..6].copy_from_slice(&id.to_be_bytes());
            i[6..8].copy_from_slice(&(r.next() as u16).to_be_bytes());
            i
        }
        _ => r.bytes(4),
    };
    let n = r.below(24) as usize;
    l4.extend(r.bytes(n));
    if proto == 17 {
        let len = l4.len() as u16;
        l4[4..6].copy_from_slice(&len.to_be_bytes());
    }
    // IP options, now and then: NOPs and an end.
    let opts: &[u8] = if r.pct(4) { &[1, 1, 1, 0] } else { &[] };
    let ihl = 20 + opts.len();
    let mut h = vec![0u8; ihl];
    h[0] = 0x40 | (ihl / 4) as u8;
    h[20..].copy_from_slice(opts);
    // Fragments share a few IP IDs, so later ones find their first.
    let (id, frag) = match piece {
        Piece::Whole => (r.next() as u16, 0x4000u16),
        Piece::First => (1 + r.below(6) as u16, 0x2000),
        Piece::Later => {
            let more = if r.pct(50) { 0x2000 } else { 0 };
            (1 + r.below(6) as u16, more | (1 + r.below(20) as u16))
        }
    };
    if piece == Piece::Later {
        let n = 8 + r.below(24) as usize;
        l4 = r.bytes(n);
    }
    h[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = if r.pct(85) { 64 } else { r.pick(&[2u8, 1, 0]) };
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let sum = netplane_common::checksum::checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    // The transport checksum over the pseudo-header, mostly right (a
    // fragment's covers the whole datagram: any value will do).
    let at = match proto {
        _ if piece == Piece::Later => None,
        6 => Some(16),
        17 if r.pct(85) => Some(6),
        1 => Some(2),
        _ => None,
    };
    if let Some(at) = at {
        let mut data = Vec::new();
        if proto != 1 {
            data.extend_from_slice(&src);
            data.extend_from_slice(&dst);
            data.extend_from_slice(&[0, proto]);
            data.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        }
        data.extend_from_slice(&l4);
        let sum = netplane_common::checksum::checksum(&data);
        let sum = if r.pct(95) { sum } else { r.next() as u16 };
        l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    let mut f = Vec::with_capacity(14 + 20 + l4.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 9, 9]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 9, 8]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&l4);
    if r.pct(3) {
        let keep = r.below(f.len() as u64 + 1) as usize;
        f.truncate(keep);
    }
    f
}

/// Pods' flows out (mostly pod A, from its veth), and the remote ends'
/// answers to the node's ports, or to a pod from the node subnet.
fn masquerade_frame(r: &mut Rng) -> (Program, Vec<u8>) {
    if r.pct(55) {
        let src = if r.pct(97) { POD_A } else { POD_B };
        let dst = if r.pct(95) {
            r.pick(&REMOTES)
        } else {
            r.pick(&[NODE0, POD_B, REMOTE_POD])
        };
        // Often more ports toward one destination than the node has.
        let sport = if r.pct(50) {
            r.pick(&POD_PORTS)
        } else {
            40000 + r.below(24) as u16
        };
        let dport = r.pick(&REMOTE_PORTS);
        let f = flow_frame(r, src, dst, sport, dport, true);
        return (Program::FromPod { ifindex: 1 }, f);
    }
    let src = r.pick(&REMOTES);
    let (dst, dport) = if r.pct(85) {
        let port = if r.pct(85) {
            NODE_PORTS.start() + r.below(8) as u16
        } else {
            r.pick(&POD_PORTS)
        };
        (NODE0, port)
    } else {
        (POD_A, r.pick(&POD_PORTS))
    };
    let sport = r.pick(&REMOTE_PORTS);
    let f = flow_frame(r, src, dst, sport, dport, false);
    (Program::FromUplink, f)
}

#[test]
fn the_masquerade_agrees_with_the_model_with_state_carried() {
    if !privileged() {
        return;
    }
    let (frames, seed) = frames_and_seed(300_000);
    agree(
        "masquerade",
        masquerade_on(node0_datapath(), *NODE_PORTS.start(), *NODE_PORTS.end()),
        model_masquerading(),
        (frames, seed),
        masquerade_frame,
    );
}

// ---- The load balancer, with its state carried from frame to frame ----

const FRONTEND: [u8; 4] = [198, 51, 100, 10];
/// Ports per node at the load balancer: few, so blocks fill.
const LB_PORTS: u16 = 8;

/// The default cluster's load balancer with LB_PORTS per node, as the
/// model sees it.
fn model_load_balancer() -> LoadBalancer {
    let block = |i: u16| 1024 + i * LB_PORTS..=1024 + (i + 1) * LB_PORTS - 1;
    LoadBalancer::new(
        "10.224.0.0/12".parse().unwrap(),
        "10.224.0.0/16".parse().unwrap(),
        vec![FRONTEND.into()],
        vec![
            Backend {
                ip: NODE0.into(),
                blocks: vec![(FRONTEND.into(), block(0))],
            },
            Backend {
                ip: NODE1.into(),
                blocks: vec![(FRONTEND.into(), block(1))],
            },
        ],
        true,
    )
}

/// Nodes' flows to the internet (and to where they must not go), and the
/// internet's answers to the frontend IP.
fn lb_frame(r: &mut Rng) -> (Program, Vec<u8>) {
    if r.pct(55) {
        let src = match r.below(100) {
            0..=44 => NODE0,
            45..=89 => NODE1,
            90..=94 => [10, 224, 0, 9],
            _ => address(r),
        };
        let dst = if r.pct(85) {
            r.pick(&[INTERNET, [198, 51, 100, 99]])
        } else {
            r.pick(&[
                [172, 16, 0, 1],
                [10, 1, 2, 3],
                [10, 224, 0, 5],
                [10, 230, 0, 1],
                [224, 0, 0, 1],
                [255, 255, 255, 255],
                [100, 64, 0, 1],
            ])
        };
        let sport = if r.pct(70) {
            40000 + r.below(24) as u16
        } else {
            r.pick(&POD_PORTS)
        };
        let dport = r.pick(&[80u16, 443, 53, 53]);
        return (
            Program::LbFromVnet,
            flow_frame(r, src, dst, sport, dport, true),
        );
    }
    let src = r.pick(&[INTERNET, [198, 51, 100, 99]]);
    let dst = if r.pct(90) {
        FRONTEND
    } else {
        [203, 0, 113, 1]
    };
    let dport = if r.pct(90) {
        1024 + r.below(u64::from(2 * LB_PORTS) + 2) as u16
    } else {
        r.pick(&POD_PORTS)
    };
    let sport = r.pick(&[80u16, 443, 53, 53]);
    (
        Program::LbFromInternet,
        flow_frame(r, src, dst, sport, dport, false),
    )
}

#[test]
fn the_load_balancer_agrees_with_the_model_with_state_carried() {
    if !privileged() {
        return;
    }
    agree(
        "load balancer",
        load_balancer_datapath(u32::from(LB_PORTS)),
        model_load_balancer(),
        frames_and_seed(300_000),
        lb_frame,
    );
}
