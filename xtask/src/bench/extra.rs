//! The smaller measurements: `cargo xtask bench-attach`, behind the
//! attach-point choice (docs/decisions.md): the lab's data path with TC
//! programs only, against the same plus native XDP on the node uplinks, in
//! interleaved rounds; and `cargo xtask bench-flows`, what flow events cost.
use std::{fmt::Write as _, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use netplane_bench_model::tools::FlowEventsCase;
use serde_json::Value;

use super::model::min_median_max as stats;
use crate::{cmd, netplane_bin, workspace_root};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Tc,
    TcPlusXdp,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Tc => "TC only",
            Mode::TcPlusXdp => "TC + XDP on uplinks",
        }
    }
}

struct Sample {
    tcp_gbps: f64,
    udp64_kpps: f64,
}

pub fn attach(rounds: usize) -> Result<()> {
    let np = netplane_bin();
    let np = np.to_str().context("utf-8 path")?;
    if crate::lab_is_up() {
        cmd(np, &["lab", "down"])?;
    }
    let mut samples: Vec<(Mode, Sample)> = Vec::new();
    for round in 1..=rounds {
        for mode in [Mode::Tc, Mode::TcPlusXdp] {
            eprintln!("== round {round}/{rounds}: {}", mode.name());
            let mut up = vec!["lab", "up"];
            if mode == Mode::TcPlusXdp {
                up.push("--uplink-xdp");
            }
            let quiet = Command::new(np).args(&up).output()?;
            if !quiet.status.success() {
                bail!("lab up: {}", String::from_utf8_lossy(&quiet.stderr));
            }
            let s = measure(np);
            cmd(np, &["lab", "down"]).ok();
            let s = s?;
            eprintln!(
                "   tcp {:.2} Gbit/s, udp 64 B {:.0} kpps",
                s.tcp_gbps, s.udp64_kpps
            );
            samples.push((mode, s));
        }
    }
    let report = report(&samples, rounds)?;
    println!("{report}");
    let path = workspace_root().join("docs/bench/attach.md");
    std::fs::create_dir_all(path.parent().expect("has parent"))?;
    std::fs::write(&path, report)?;
    eprintln!("written to {}", path.display());
    Ok(())
}

/// pod-0-0 (node-0) -> pod-1-0 (node-1): one TCP stream, then 64-byte UDP
/// at full speed. Client on CPU 0, server on CPU 1.
fn measure(np: &str) -> Result<Sample> {
    let tcp = iperf(np, &["-t", "3"])?;
    let tcp_gbps = tcp["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("tcp result")?
        / 1e9;
    let udp = iperf(np, &["-u", "-b", "0", "-l", "64", "-t", "2"])?;
    let sum = &udp["end"]["sum"];
    let delivered = sum["packets"].as_f64().context("udp packets")?
        - sum["lost_packets"].as_f64().unwrap_or(0.0);
    let udp64_kpps = delivered / sum["seconds"].as_f64().context("udp seconds")? / 1e3;
    Ok(Sample {
        tcp_gbps,
        udp64_kpps,
    })
}

fn iperf(np: &str, args: &[&str]) -> Result<Value> {
    let server = Command::new(np)
        .args([
            "lab", "exec", "pod-1-0", "--", "iperf3", "-s", "-1", "-D", "-A", "1",
        ])
        .status()?;
    if !server.success() {
        bail!("iperf3 server did not start");
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(np)
        .args([
            "lab",
            "exec",
            "pod-0-0",
            "--",
            "iperf3",
            "-c",
            "10.244.1.2",
            "-J",
            "-A",
            "0",
        ])
        .args(args)
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

fn report(samples: &[(Mode, Sample)], rounds: usize) -> Result<String> {
    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut r = String::new();
    writeln!(
        r,
        "# Attach point: TC only vs TC + native XDP on the node uplinks\n"
    )?;
    writeln!(
        r,
        "`cargo xtask bench-attach`: pod-0-0 → pod-1-0 across nodes in the lab, {rounds} interleaved rounds \
         per mode, iperf3 client on CPU 0 and server on CPU 1; kernel {kernel}, {cpus} CPUs, shared machine.\n"
    )?;
    writeln!(r, "| metric | mode | min | median | max |")?;
    writeln!(r, "|---|---|---|---|---|")?;
    type Metric = (&'static str, fn(&Sample) -> f64);
    let metrics: [Metric; 2] = [
        ("TCP 1 stream, Gbit/s", |s| s.tcp_gbps),
        ("UDP 64 B delivered, kpps", |s| s.udp64_kpps),
    ];
    let mut medians = Vec::new();
    for (name, get) in metrics {
        for mode in [Mode::Tc, Mode::TcPlusXdp] {
            let v: Vec<f64> = samples
                .iter()
                .filter(|(m, _)| *m == mode)
                .map(|(_, s)| get(s))
                .collect();
            let (min, med, max) = stats(v).context("no samples")?;
            writeln!(
                r,
                "| {name} | {} | {min:.2} | {med:.2} | {max:.2} |",
                mode.name()
            )?;
            medians.push(med);
        }
    }
    writeln!(
        r,
        "\nRatio of medians (TC + XDP / TC only): TCP {:.2}, UDP 64 B {:.2}.",
        medians[1] / medians[0],
        medians[3] / medians[2]
    )?;
    Ok(r)
}

/// `cargo xtask bench-flows`: what reporting flow events costs, per program
/// run, with the programs built to report and not to (same run, interleaved
/// rounds, the kernel's own timing of each run).
pub fn flows(rounds: usize) -> Result<()> {
    let np = netplane_bin();
    let out = Command::new(crate::bench_bin_beside(np.to_str().context("utf-8 path")?))
        .args([
            "flow-events",
            "--rounds",
            &rounds.to_string(),
            "--runs",
            "20000",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "netplane-bench flow-events: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cases: Vec<FlowEventsCase> =
        serde_json::from_slice(&out.stdout).context("netplane-bench flow-events")?;
    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_string();
    let mut r = String::new();
    writeln!(r, "# Flow events: cost per program run\n")?;
    writeln!(
        r,
        "`cargo xtask bench-flows`: `from_pod` on node-0's world (tests/src/fixture.rs) through \
         BPF_PROG_TEST_RUN, 20,000 runs per case and round, {rounds} interleaved rounds, with the programs \
         loaded to report flow events and not to (`FLOW_EVENTS_ON`); ns per run as the kernel times each \
         run; kernel {kernel}, shared machine.\n"
    )?;
    writeln!(
        r,
        "| case | events on: min / median / max | events off: min / median / max | ratio of medians |"
    )?;
    writeln!(r, "|---|---|---|---|")?;
    for c in &cases {
        let (on, off) = (
            stats(c.events_on.clone()).context("no samples")?,
            stats(c.events_off.clone()).context("no samples")?,
        );
        writeln!(
            r,
            "| {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.2} |",
            c.name,
            on.0,
            on.1,
            on.2,
            off.0,
            off.1,
            off.2,
            on.1 / off.1
        )?;
    }
    println!("{r}");
    let path = workspace_root().join("docs/bench/flows.md");
    std::fs::write(&path, r)?;
    eprintln!("written to {}", path.display());
    Ok(())
}
