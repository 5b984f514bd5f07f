//! Program benchmarks through BPF_PROG_TEST_RUN (the kernel times each run
//! of a program on a fresh frame). Used by `cargo xtask bench-flows`.
use std::time::Duration;

use anyhow::Result;
use etherparse::PacketBuilder;
use netplane_bench_model::{ProgramSamples, tools::FlowEventsCase};
use netplane_common::{maps::programs, registry};

use netplane::datapath::{Datapath, key};

use crate::fixture::*;

fn tcp_flags(src: [u8; 4], dst: [u8; 4], syn: bool) -> Vec<u8> {
    tcp_frame((POD_A_MAC, POD_A_HOST_MAC), (src, 40000), (dst, 8080), syn)
}

/// An Ethernet + IPv4 + TCP frame (SYN, or ACK of an open connection).
fn tcp_frame(
    macs: ([u8; 6], [u8; 6]),
    (src, sport): ([u8; 4], u16),
    (dst, dport): ([u8; 4], u16),
    syn: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1, 64000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, b"bench").expect("writing to a Vec");
    out
}

/// node-0 with the masquerade on over the whole port range.
fn datapath(events: bool) -> Result<Datapath> {
    Ok(masquerade_on(node0_datapath_with(events), 1024, 65535))
}

/// The cost of flow events: each case timed with the programs built to
/// report and not to, in interleaved rounds.
pub fn flow_events(rounds: usize, runs: u32) -> Result<Vec<FlowEventsCase>> {
    let established = tcp_flags(POD_A, REMOTE_POD, false);
    let new_conn = tcp_flags(POD_A, REMOTE_POD, true);
    let snat = tcp_flags(POD_A, INTERNET, false);
    let spoofed = tcp_flags([10, 244, 0, 99], REMOTE_POD, false);
    let cases: [(&'static str, &Vec<u8>); 4] = [
        ("cross-node, established (the fast path)", &established),
        ("SNAT, established (the fast path)", &snat),
        (
            "cross-node, new TCP connection (reports new_flow)",
            &new_conn,
        ),
        ("spoofed source (reports a drop)", &spoofed),
    ];
    let mut out: Vec<FlowEventsCase> = cases
        .iter()
        .map(|(n, _)| FlowEventsCase {
            name: n.to_string(),
            events_on: Vec::new(),
            events_off: Vec::new(),
        })
        .collect();
    let mut on = datapath(true)?;
    let mut off = datapath(false)?;
    // The SNAT case times an existing translation.
    on.run(programs::FROM_POD, &snat, 0, 0)?;
    off.run(programs::FROM_POD, &snat, 0, 0)?;
    for _ in 0..rounds {
        for (i, (_, frame)) in cases.iter().enumerate() {
            let ns = |d: Duration| d.as_nanos() as f64;
            out[i]
                .events_on
                .push(ns(on.time(programs::FROM_POD, frame, runs)?));
            out[i]
                .events_off
                .push(ns(off.time(programs::FROM_POD, frame, runs)?));
        }
    }
    Ok(out)
}

/// ns per run of each netplane path on node-0's world, and of the floor
/// program (parse, rewrite MACs, redirect) on the cross-node frame, in
/// interleaved rounds. New flows each get their own source port, so every
/// run allocates.
pub fn program_costs(rounds: usize, runs: u32) -> Result<Vec<ProgramSamples>> {
    let mut dp = datapath(false)?;
    let Frames {
        same_node,
        cross_node,
        snat,
        reply,
    } = Frames::on(&mut dp)?;
    let pod = (POD_A_MAC, POD_A_HOST_MAC);
    let mut out: Vec<ProgramSamples> = Vec::new();
    let mut sample = |path: &str, program: &str, ns: std::time::Duration| {
        let ns = ns.as_nanos() as f64;
        match out.iter_mut().find(|c| c.path == path) {
            Some(c) => c.ns.push(ns),
            None => out.push(ProgramSamples {
                path: path.to_string(),
                program: program.to_string(),
                ns: vec![ns],
            }),
        }
    };
    for round in 0..rounds {
        use ProfiledPath as P;
        let fixed: [(&'static str, &'static str, &[u8]); 5] = [
            (P::Floor.cost_row(), programs::BENCH_FLOOR, &cross_node),
            ("same node", programs::FROM_POD, &same_node),
            (P::CrossNode.cost_row(), programs::FROM_POD, &cross_node),
            (P::SnatEstablished.cost_row(), programs::FROM_POD, &snat),
            (P::ReverseNat.cost_row(), programs::FROM_UPLINK, &reply),
        ];
        for (path, program, frame) in fixed {
            sample(path, program, dp.time(program, frame, runs)?);
        }
        // A fresh destination port per round: the node's 64,512 ports
        // toward it are never the limit.
        let new_flows: Vec<Vec<u8>> = (0..runs.min(60_000))
            .map(|i| {
                let dport = 10_000 + round as u16;
                tcp_frame(pod, (POD_A, 1024 + i as u16), (INTERNET, dport), true)
            })
            .collect();
        let before = allocations(&mut dp)?;
        let ns = dp.time_frames(programs::FROM_POD, new_flows.iter().map(Vec::as_slice))?;
        // The case measures what it says: every run allocated a port.
        let made = allocations(&mut dp)? - before;
        anyhow::ensure!(
            made == new_flows.len() as u64,
            "{made} allocations for {} new flows",
            new_flows.len()
        );
        sample(P::SnatNewFlow.cost_row(), programs::FROM_POD, ns);
        for (path, fill) in NEW_FLOW_FILLS {
            let ns = new_flow_at_fill(fill, round, FILL_RUNS)?;
            sample(path, programs::FROM_POD, ns);
        }
    }
    Ok(out)
}

/// The frames of the fixed paths on node-0's world; the SNAT flow is made
/// in `dp`, so `snat` and `reply` are its established packets.
struct Frames {
    same_node: Vec<u8>,
    cross_node: Vec<u8>,
    snat: Vec<u8>,
    reply: Vec<u8>,
}

impl Frames {
    fn on(dp: &mut Datapath) -> Result<Frames> {
        let pod = (POD_A_MAC, POD_A_HOST_MAC);
        let snat = tcp_frame(pod, (POD_A, 40000), (INTERNET, 443), false);
        let (verdict, out) = dp.run(programs::FROM_POD, &snat, 0, 0)?;
        anyhow::ensure!(
            verdict == TC_ACT_REDIRECT,
            "SNAT frame not forwarded ({verdict})"
        );
        let translated = etherparse::SlicedPacket::from_ethernet(&out)?;
        let Some(etherparse::TransportSlice::Tcp(t)) = translated.transport else {
            anyhow::bail!("SNAT output is not TCP");
        };
        Ok(Frames {
            same_node: tcp_frame(pod, (POD_A, 40000), (POD_B, 8080), false),
            cross_node: tcp_frame(pod, (POD_A, 40000), (REMOTE_POD, 8080), false),
            snat,
            reply: tcp_frame(
                (PEER_NODE_MAC, UPLINK_MAC),
                (INTERNET, 443),
                (NODE0, t.source_port()),
                false,
            ),
        })
    }
}

/// A path `run_path` repeats for a profiler to watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfiledPath {
    Floor,
    CrossNode,
    SnatEstablished,
    ReverseNat,
    /// Each run a fresh source port: every run claims a port.
    SnatNewFlow,
}

impl ProfiledPath {
    pub const ALL: [ProfiledPath; 5] = [
        ProfiledPath::Floor,
        ProfiledPath::CrossNode,
        ProfiledPath::SnatEstablished,
        ProfiledPath::ReverseNat,
        ProfiledPath::SnatNewFlow,
    ];

    /// The row of `program_costs` this path is.
    pub fn cost_row(self) -> &'static str {
        match self {
            ProfiledPath::Floor => "floor: parse + redirect",
            ProfiledPath::CrossNode => "cross node",
            ProfiledPath::SnatEstablished => "SNAT established",
            ProfiledPath::ReverseNat => "reverse NAT (reply)",
            ProfiledPath::SnatNewFlow => "SNAT new flow (allocates a port)",
        }
    }
}

/// New flows per data path in `run_path`: well inside the NAT table, so
/// no run evicts.
const NEW_FLOWS_PER_DATAPATH: u32 = 120_000;

/// Runs one path over and over, one run per frame as `program_costs` times
/// them, for `secs` seconds or `max_runs` runs, whichever ends first:
/// something for `perf record` to sample. Returns the runs made.
pub fn run_path(path: ProfiledPath, secs: f64, max_runs: u64) -> Result<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(secs);
    let mut dp = datapath(false)?;
    let frames = Frames::on(&mut dp)?;
    let (program, frame) = match path {
        ProfiledPath::Floor => (programs::BENCH_FLOOR, &frames.cross_node),
        ProfiledPath::CrossNode => (programs::FROM_POD, &frames.cross_node),
        ProfiledPath::SnatEstablished => (programs::FROM_POD, &frames.snat),
        ProfiledPath::ReverseNat => (programs::FROM_UPLINK, &frames.reply),
        ProfiledPath::SnatNewFlow => return run_new_flows(deadline, max_runs),
    };
    let mut runs = 0;
    while runs < max_runs && std::time::Instant::now() < deadline {
        dp.time(program, frame, 1_000)?;
        runs += 1_000;
    }
    Ok(runs)
}

/// New flows from pod A toward the internet: 60,000 source ports per
/// destination port, a fresh data path every NEW_FLOWS_PER_DATAPATH.
fn run_new_flows(deadline: std::time::Instant, max_runs: u64) -> Result<u64> {
    let pod = (POD_A_MAC, POD_A_HOST_MAC);
    let mut runs = 0u64;
    while runs < max_runs && std::time::Instant::now() < deadline {
        let mut dp = datapath(false)?;
        for i in 0..NEW_FLOWS_PER_DATAPATH / 1_000 {
            let frames: Vec<Vec<u8>> = (0..1_000u32)
                .map(|j| {
                    let n = i * 1_000 + j;
                    let dport = 10_000 + (n / 60_000) as u16;
                    let sport = 1024 + (n % 60_000) as u16;
                    tcp_frame(pod, (POD_A, sport), (INTERNET, dport), true)
                })
                .collect();
            dp.time_frames(programs::FROM_POD, frames.iter().map(Vec::as_slice))?;
            runs += 1_000;
            if runs >= max_runs || std::time::Instant::now() >= deadline {
                break;
            }
        }
    }
    Ok(runs)
}

/// New flows timed with a share of the node's ports toward their
/// destination already held: the allocation's cost curve, up to 64 ports
/// left.
const NEW_FLOW_FILLS: [(&str, f64); 6] = [
    ("SNAT new flow, 1 % of ports held", 0.01),
    ("SNAT new flow, 10 % of ports held", 0.10),
    ("SNAT new flow, 50 % of ports held", 0.50),
    ("SNAT new flow, 90 % of ports held", 0.90),
    ("SNAT new flow, 99 % of ports held", 0.99),
    ("SNAT new flow, 99.9 % of ports held", 0.999),
];
/// New flows timed at each fill: few enough that the fill barely moves
/// (99 % of 64,512 ports leaves 645 free; at 99.9 % half the 65 free are
/// timed).
const FILL_RUNS: usize = 200;
/// Another pod on pod-0-0's interface, whose flows hold the ports.
const HOLDER: [u8; 4] = [10, 244, 0, 9];

/// ns per new flow from pod-0-0 when `fill` of the node's 64,512 ports
/// toward one destination are held by another pod's flows (a random set,
/// as ephemeral ports are), each new flow from a random source port: one
/// whose port is held walks to the next free one (the node keeps a pod's
/// port when it can, as Linux's MASQUERADE does). A fresh data path each
/// time, so the fill is exact.
fn new_flow_at_fill(fill: f64, round: usize, runs: usize) -> Result<std::time::Duration> {
    let mut dp = datapath(false)?;
    let holder = netplane_common::LocalPod {
        ifindex: 1, // the test runs' device, as pod-0-0's
        pod_mac: POD_A_MAC,
        host_mac: POD_A_HOST_MAC,
    };
    // Into LOCAL_PODS alone: the holder only fills, through the hash
    // check; the timed pod A keeps the device's POD_SLOTS slot.
    dp.pods_map()?.insert(key(HOLDER.into()), holder, 0)?;
    let pod = (POD_A_MAC, POD_A_HOST_MAC);
    let dport = 30_000 + round as u16;
    let mut ports: Vec<u16> = (1024..=65535).collect();
    shuffle(&mut ports, 0x2545_f491_4f6c_dd1d ^ round as u64);
    let held = (ports.len() as f64 * fill) as usize;
    for &p in &ports[..held] {
        let syn = tcp_frame(pod, (HOLDER, p), (INTERNET, dport), true);
        let (verdict, _) = dp.run(programs::FROM_POD, &syn, 0, 0)?;
        anyhow::ensure!(verdict == TC_ACT_REDIRECT, "filling: {verdict}");
    }
    shuffle(&mut ports, 0x9e37_79b9_7f4a_7c15 ^ round as u64);
    let runs = runs.min((ports.len() - held) / 2).max(1);
    let frames: Vec<Vec<u8>> = ports[..runs]
        .iter()
        .map(|&p| tcp_frame(pod, (POD_A, p), (INTERNET, dport), true))
        .collect();
    let before = allocations(&mut dp)?;
    let ns = dp.time_frames(programs::FROM_POD, frames.iter().map(Vec::as_slice))?;
    let made = allocations(&mut dp)? - before;
    anyhow::ensure!(
        made == runs as u64 && before == held as u64,
        "{made} allocations for {runs} new flows after {before} of {held}"
    );
    Ok(ns)
}

/// Fisher-Yates with a xorshift: the same order for the same seed.
fn shuffle(v: &mut [u16], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// Ports allocated so far, all slots and CPUs.
fn allocations(dp: &mut Datapath) -> Result<u64> {
    let allocs: aya::maps::PerCpuArray<_, u64> = dp.per_cpu_array(registry::SNAT_ALLOCS)?;
    let mut total = 0;
    for slot in allocs.iter() {
        total += slot?.iter().sum::<u64>();
    }
    Ok(total)
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
