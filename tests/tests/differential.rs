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
};
use netplane_tests::{
    model::{Moves, Node, Outcome, Pod, Program},
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
    }
}

fn prog_name(p: Program) -> &'static str {
    match p {
        Program::FromPod { .. } => programs::FROM_POD,
        Program::FromUplink => programs::FROM_UPLINK,
        Program::ToUplink { .. } => programs::TO_UPLINK,
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

#[test]
fn the_programs_agree_with_the_model_on_random_frames() {
    if !privileged() {
        return;
    }
    let frames: u64 = std::env::var("NETPLANE_DIFF_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = std::env::var("NETPLANE_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("differential: {frames} frames, NETPLANE_DIFF_SEED={seed}");
    let model = model_node();
    let mut dp = node0_datapath();
    let mut rng = Rng(seed);
    let mut expected: BTreeMap<String, u64> = totals(&dp.counters().unwrap());
    let mut refused = 0u64;
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    let reproduce = |i: u64, program: Program, f: &[u8]| {
        format!(
            "frame {i} of seed {seed} (NETPLANE_DIFF_SEED={seed}), {program:?}: {}\nnode: {model:?}",
            hex(f)
        )
    };
    for i in 0..frames {
        let (program, f) = frame(&mut rng);
        let mark = match program {
            Program::ToUplink { mark } => mark,
            _ => 0,
        };
        let Ok((verdict, out)) = dp.run(prog_name(program), &f, 0, mark) else {
            refused += 1; // BPF_PROG_TEST_RUN refuses frames too short for it
            continue;
        };
        let want: Outcome = model.run(program, &f);
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
        // Counters compared in batches (reading them costs more than a run).
        if i % 4096 == 4095 || i + 1 == frames {
            let got = totals(&dp.counters().unwrap());
            if got != expected {
                let diff: Vec<String> = got
                    .iter()
                    .filter(|(k, v)| expected.get(*k) != Some(*v))
                    .map(|(k, v)| format!("{k}: program {v}, model {}", expected[k]))
                    .collect();
                panic!(
                    "counters disagree by frame {i} (seed {seed}, NETPLANE_DIFF_SEED={seed}): {}",
                    diff.join("; ")
                );
            }
        }
    }
    eprintln!(
        "agreed on {} frames ({refused} refused by BPF_PROG_TEST_RUN): {by_outcome:?}",
        frames - refused
    );
    assert!(refused < frames / 10, "too many frames refused: {refused}");
}
