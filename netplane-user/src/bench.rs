//! Program benchmarks through BPF_PROG_TEST_RUN (the kernel times each run
//! of a program on a fresh frame). Used by `cargo xtask bench-flows`.
use std::time::Duration;

use anyhow::Result;
use aya::maps::Array;
use etherparse::PacketBuilder;
use netplane_common::{
    maps::programs,
    nat::{NatConfig, SnatSlot, names},
};
use serde::Serialize;

use crate::{ebpf::key, fixture::*};

#[derive(Debug, Serialize)]
pub struct Case {
    pub name: &'static str,
    /// ns per run, one sample per round.
    pub events_on: Vec<f64>,
    pub events_off: Vec<f64>,
}

fn tcp_flags(src: [u8; 4], dst: [u8; 4], syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_A_MAC, POD_A_HOST_MAC)
        .ipv4(src, dst, 64)
        .tcp(40000, 8080, 1, 64000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, b"bench").expect("writing to a Vec");
    out
}

fn datapath(events: bool) -> Result<crate::ebpf::Datapath> {
    let mut dp = node0_datapath_with(events);
    let mut cfg: Array<_, NatConfig> = Array::try_from(dp.map(names::NAT_CONFIG)?)?;
    cfg.set(
        0,
        NatConfig {
            gateway_ip: key([10, 224, 0, 1].into()),
            subnet: key([10, 224, 0, 0].into()),
            subnet_mask: key([255, 255, 0, 0].into()),
            slots_per_backend: 1,
            ..Default::default()
        },
        0,
    )?;
    let mut slots: Array<_, SnatSlot> = Array::try_from(dp.map(names::SNAT_SLOTS)?)?;
    slots.set(
        0,
        SnatSlot {
            nat_ip: key(NODE0.into()),
            port_lo: 1024,
            port_hi: 65535,
        },
        0,
    )?;
    Ok(dp)
}

/// The cost of flow events: each case timed with the programs built to
/// report and not to, in interleaved rounds.
pub fn flow_events(rounds: usize, runs: u32) -> Result<Vec<Case>> {
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
    let mut out: Vec<Case> = cases
        .iter()
        .map(|(n, _)| Case {
            name: n,
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

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
