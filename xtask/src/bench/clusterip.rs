//! `cargo xtask bench-services`: a ClusterIP Service on netplane (DNAT in
//! `from_pod`) against the same Service through real kube-proxy on the
//! kubenet-classic lab (iptables DNAT, conntrack), and each against the
//! backend's pod IP reached directly, in interleaved rounds on this
//! machine (docs/bench/services.md, docs/decisions.md §36).
use std::{collections::BTreeMap, fmt::Write as _, process::Command};

use anyhow::{Context, Result, bail};

use netplane_bench_model::tools::{TcpCrr, TcpRr};

use super::{
    model::min_median_max,
    traffic::{CLIENT_CPU, SERVER_POD_IP, client, in_netns, server, stop, tcp_echo_args},
};
use crate::{cmd, workspace_root};

const SERVICE_IP: &str = "10.0.1.1";
const BACKEND_PORT: u16 = 9100;
const SECS: f64 = 3.0;
const DATAPATHS: [&str; 2] = ["netplane", "kubenet-classic"];

/// (data path, target, metric) -> one value per round.
type Samples = BTreeMap<(&'static str, &'static str, &'static str), Vec<f64>>;

pub fn services(rounds: usize) -> Result<()> {
    let np = super::suite::release_bin();
    let np = np.to_str().context("utf-8 path")?;
    if crate::lab_is_up_with(std::path::Path::new(np)) {
        cmd(np, &["lab", "down"])?;
    }
    let mut samples = Samples::new();
    for round in 1..=rounds {
        for dp in DATAPATHS {
            eprintln!("== round {round}/{rounds}: {dp} with --source kubernetes");
            let up = Command::new(np)
                .args(["lab", "up", "--datapath", dp, "--source", "kubernetes"])
                .output()?;
            if !up.status.success() {
                bail!("lab up: {}", String::from_utf8_lossy(&up.stderr));
            }
            let measured = measure(np, dp, &mut samples);
            cmd(np, &["lab", "down"]).ok();
            measured?;
        }
    }
    let report = report(&samples, rounds);
    println!("{report}");
    let path = workspace_root().join("docs/bench/services.md");
    std::fs::write(&path, report)?;
    eprintln!("written to {}", path.display());
    Ok(())
}

/// TCP request/response latency and new connections per second from
/// pod-0-0 (node-0) to the Service whose one backend is pod-1-0 (node-1),
/// and to pod-1-0 directly.
fn measure(np: &str, dp: &'static str, samples: &mut Samples) -> Result<()> {
    let backend = format!("pod-1-0:{BACKEND_PORT}");
    cmd(
        np,
        &[
            "lab",
            "service",
            "bench",
            "--ip",
            SERVICE_IP,
            "--port",
            "80/tcp",
            "--backend",
            &backend,
        ],
    )?;
    in_netns(
        "pod-0-0",
        CLIENT_CPU,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"],
    )
    .status()?;
    let echo = server(np, "pod-1-0", &tcp_echo_args(BACKEND_PORT, 6.0 * SECS))?;
    let secs = SECS.to_string();
    let service = format!("{SERVICE_IP}:80");
    let pod = format!("{SERVER_POD_IP}:{BACKEND_PORT}");
    // kube-proxy or the agents apply the Service within a second.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let result = (|| -> Result<()> {
        for (target, to) in [("service", &service), ("pod", &pod)] {
            let rr: TcpRr = client(np, "pod-0-0", &["tcp-rr", "--to", to, "--secs", &secs])?;
            let crr: TcpCrr = client(np, "pod-0-0", &["tcp-crr", "--to", to, "--secs", &secs])?;
            if crr.failures > 0 {
                bail!("{dp}: connections to the {target} failed: {crr:?}");
            }
            for (metric, v) in [
                ("rr_p50_us", rr.p50_us),
                ("rr_p99_us", rr.p99_us),
                ("crr_per_s", crr.per_second),
            ] {
                samples.entry((dp, target, metric)).or_default().push(v);
                eprintln!("   {target:<8} {metric:<10} {v:.1}");
            }
        }
        Ok(())
    })();
    stop(echo);
    result
}

fn median(samples: &Samples, dp: &'static str, target: &'static str, metric: &'static str) -> f64 {
    samples
        .get(&(dp, target, metric))
        .and_then(|v| min_median_max(v.clone()))
        .map_or(f64::NAN, |m| m.1)
}

fn report(samples: &Samples, rounds: usize) -> String {
    let mut s = String::new();
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "# Services: netplane against kube-proxy\n\n\
         `cargo xtask bench-services` ({rounds} interleaved rounds, {SECS} s per test, \
         {cpus} CPUs, {machine}). pod-0-0 (node-0) to a ClusterIP Service whose one \
         backend is pod-1-0 (node-1), and to pod-1-0 directly. netplane: the Service \
         in `from_pod`. kubenet-classic: real kube-proxy 1.20 (iptables mode) on the \
         same topology. Medians with [min–max].\n",
        cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let _ = writeln!(
        s,
        "| data path | target | TCP RR p50 (µs) | TCP RR p99 (µs) | new connections/s |\n|---|---|---|---|---|"
    );
    for dp in DATAPATHS {
        for target in ["service", "pod"] {
            let cell = |metric| {
                let v = samples
                    .get(&(dp, target, metric))
                    .and_then(|v| min_median_max(v.clone()));
                v.map_or("-".into(), |(lo, m, hi)| {
                    format!("{m:.0} [{lo:.0}–{hi:.0}]")
                })
            };
            let _ = writeln!(
                s,
                "| {dp} | {target} | {} | {} | {} |",
                cell("rr_p50_us"),
                cell("rr_p99_us"),
                cell("crr_per_s")
            );
        }
    }
    let ratio = |a: f64, b: f64| a / b;
    let _ = writeln!(
        s,
        "\nRatios of medians, measured side by side in this run:\n\n\
         - new connections/s through the Service, netplane / kube-proxy: {:.2}\n\
         - TCP RR p50 through the Service, kube-proxy / netplane: {:.2}\n\
         - what the Service costs over the pod IP, new connections/s (service / pod): \
         netplane {:.2}, kube-proxy {:.2}",
        ratio(
            median(samples, "netplane", "service", "crr_per_s"),
            median(samples, "kubenet-classic", "service", "crr_per_s")
        ),
        ratio(
            median(samples, "kubenet-classic", "service", "rr_p50_us"),
            median(samples, "netplane", "service", "rr_p50_us")
        ),
        ratio(
            median(samples, "netplane", "service", "crr_per_s"),
            median(samples, "netplane", "pod", "crr_per_s")
        ),
        ratio(
            median(samples, "kubenet-classic", "service", "crr_per_s"),
            median(samples, "kubenet-classic", "pod", "crr_per_s")
        ),
    );
    s.push_str(
        "\n`tcp-crr` opens one connection at a time. When the Service and the pod \
         IP reach the same rate on both data paths, the limit is the two ends' \
         TCP stacks, not the translation.\n",
    );
    s
}
