//! CPU profiles (perf's cpu-clock: a VM has no hardware counters).
//!
//! - Whole machine, while the lab carries a workload: the top kernel
//!   symbols, the processes, and the shares of netplane's programs,
//!   netfilter, the bridges and the FIB.
//! - One program path, while `netplane-bench run-path` repeats it through
//!   BPF_PROG_TEST_RUN: of the samples inside the program, how many fell in
//!   its own instructions and how many in each helper or map function it
//!   called (call graphs, `perf record -g`).
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use netplane_bench_model::tools::{RunPath, TcpCrr, UdpSink};

use super::{
    Options,
    model::{Dp, PathProfile, Profile, Symbol},
    traffic::{
        CLIENT_CPU, INET, client, finish, in_netns, server, stop, tcp_echo_args, udp_flood,
        udp_sink,
    },
};
use crate::workspace_root;

/// What the lab carries while the whole machine is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// The 64-byte UDP flood across nodes (the first table's).
    UdpFlood,
    /// New TCP connections from pod-0-0 to the internet: both SNAT stages.
    SnatConnections,
}

impl Workload {
    pub const ALL: [Workload; 2] = [Workload::UdpFlood, Workload::SnatConnections];

    pub fn describe(self) -> &'static str {
        match self {
            Workload::UdpFlood => "the 64-byte UDP flood",
            Workload::SnatConnections => "new connections through SNAT",
        }
    }
}

const SAMPLE_HZ: &str = "1999";

/// A whole-machine profile of `dp`'s lab (up) under `workload`.
pub(super) fn machine(np: &str, dp: Dp, workload: Workload, opts: &Options) -> Result<Profile> {
    let secs = opts.secs();
    let data = perf_data(&format!("{}-{workload:?}", dp.letter()))?;
    let record = |what: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let perf = Command::new("perf")
            .args([
                "record",
                "-a",
                "-e",
                "cpu-clock",
                "-F",
                SAMPLE_HZ,
                "-o",
                &data,
            ])
            .args(["--", "sleep"])
            .arg((secs - 0.5).max(0.5).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("perf (package linux-perf)")?;
        let traffic = what();
        let recorded = perf.wait_with_output()?;
        traffic?;
        if !recorded.status.success() {
            bail!("perf record failed");
        }
        Ok(())
    };
    match workload {
        Workload::UdpFlood => {
            let sink = udp_sink(np, secs)?;
            record(&mut || udp_flood(np, secs).map(drop))?;
            finish::<UdpSink>(sink)?;
        }
        Workload::SnatConnections => {
            // As in the SNAT connection test: the client's whole port range.
            in_netns(
                "pod-0-0",
                CLIENT_CPU,
                &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"],
            )
            .status()?;
            let echo = server(np, "inet", &tcp_echo_args(PROFILE_PORT, secs + 5.0))?;
            let to = format!("{INET}:{PROFILE_PORT}");
            let max = (u64::from(super::model::BENCH_POOL) * 9 / 10).to_string();
            let secs_arg = secs.to_string();
            let args = [
                "tcp-crr",
                "--to",
                &to,
                "--secs",
                &secs_arg,
                "--max-connections",
                &max,
            ];
            let run = record(&mut || client::<TcpCrr>(np, "pod-0-0", &args).map(drop));
            stop(echo);
            run?;
        }
    }
    let rows = report(&data, "symbol")?;
    let share = |pred: &dyn Fn(&str) -> bool| -> f64 {
        // (A float sum of nothing is -0.0.)
        rows.iter()
            .filter(|s| pred(&s.symbol))
            .map(|s| s.percent)
            .sum::<f64>()
            + 0.0
    };
    Ok(Profile {
        workload: workload.describe().into(),
        samples_of_machine: format!("all CPUs, cpu-clock at {SAMPLE_HZ} Hz"),
        bpf_programs_percent: share(&|s| s.starts_with("bpf_prog_")),
        netfilter_percent: share(&|s| {
            ["nf_", "ipt_", "nft_", "__nf_", "ipv4_conntrack", "nf_nat"]
                .iter()
                .any(|p| s.starts_with(p))
        }),
        bridge_percent: share(&|s| s.starts_with("br_") || s.starts_with("__br_")),
        fib_percent: share(&|s| s.starts_with("fib_") || s.starts_with("ip_route")),
        top: rows.into_iter().take(12).collect(),
        processes: report(&data, "comm")?.into_iter().take(8).collect(),
    })
}

/// The SNAT connection profile's own port in `inet`: its translations take
/// no port another test holds.
const PROFILE_PORT: u16 = 7003;

/// `perf report --sort <key>`'s rows: (percent, key), largest first.
fn report(data: &str, key: &str) -> Result<Vec<Symbol>> {
    let out = Command::new("perf")
        .args([
            "report",
            "-i",
            data,
            "--stdio",
            "--no-children",
            "--sort",
            key,
        ])
        .output()?;
    if !out.status.success() {
        bail!("perf report: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let percent = w.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
            let rest: Vec<&str> = w.collect();
            // Symbol rows read "[k] name"; process rows just "name".
            let symbol = match rest.as_slice() {
                [kind, name, ..] if kind.starts_with('[') => name,
                [name, ..] => name,
                [] => return None,
            };
            Some(Symbol {
                percent,
                symbol: symbol.to_string(),
            })
        })
        .collect())
}

/// The profile of one program path (`netplane-bench run-path`'s name)
/// repeated for `secs`.
pub(super) fn path(np: &str, path: &str, secs: f64) -> Result<PathProfile> {
    let data = perf_data(&format!("path-{path}"))?;
    let secs = secs.to_string();
    let out = Command::new("perf")
        .args(["record", "-g", "-e", "cpu-clock", "-F", "4999", "-o", &data])
        .arg("--")
        .arg(crate::bench_bin_beside(np))
        .args(["run-path", "--path", path, "--secs", &secs])
        .stderr(Stdio::null())
        .output()
        .context("perf (package linux-perf)")?;
    if !out.status.success() {
        bail!("perf record of run-path {path} failed");
    }
    let ran: RunPath = serde_json::from_slice(&out.stdout).context("netplane-bench run-path")?;
    let cost_row = ran.cost_row.as_str();
    let script = Command::new("perf")
        .args(["script", "-i", &data, "-F", "ip,sym"])
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&script.stdout);
    let (all, parts) = attribute(&text);
    let inside: u64 = parts.iter().map(|(_, n)| n).sum();
    if inside == 0 {
        bail!("no sample of {path} fell inside a program");
    }
    Ok(PathProfile {
        path: path.into(),
        cost_row: cost_row.into(),
        samples: inside,
        of_process_percent: 100.0 * inside as f64 / all.max(1) as f64,
        parts: parts
            .into_iter()
            .map(|(symbol, n)| Symbol {
                percent: 100.0 * n as f64 / inside as f64,
                symbol,
            })
            .collect(),
    })
}

/// What the program itself was doing at each sample of `perf script`'s
/// call graphs (blank-line separated, leaf first): its own instructions
/// ("the program's own code") when the leaf is a JIT-compiled program,
/// else the function it called. Returns all samples and, for those inside
/// a program, the counts per part, largest first.
fn attribute(script: &str) -> (u64, Vec<(String, u64)>) {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    let mut all = 0;
    for sample in script.split("\n\n") {
        let frames: Vec<&str> = sample
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        if frames.is_empty() {
            continue;
        }
        all += 1;
        // The innermost program frame: subprograms are programs too.
        let Some(at) = frames.iter().position(|f| is_jit_program(f)) else {
            continue;
        };
        let part = if at == 0 {
            OWN_CODE.to_string()
        } else {
            frames[at - 1].to_string()
        };
        *counts.entry(part).or_default() += 1;
    }
    let mut parts: Vec<(String, u64)> = counts.into_iter().collect();
    parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    (all, parts)
}

pub const OWN_CODE: &str = "the program's own code";

/// A JIT-compiled program's kernel symbol: `bpf_prog_<16 hex digits>_<name>`
/// (not the kernel's `bpf_prog_test_run_skb` and the like).
fn is_jit_program(symbol: &str) -> bool {
    symbol
        .strip_prefix("bpf_prog_")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(tag, _)| tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn perf_data(name: &str) -> Result<String> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let data = dir.join(format!("perf-{name}.data"));
    Ok(data.to_str().context("utf-8 path")?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_charged_to_what_the_program_was_doing() {
        let script = "\
netplane-bench
\tffffffff1 __htab_map_lookup_elem
\tffffffff2 bpf_prog_3b98b658f56f228b_from_pod
\tffffffff3 bpf_prog_eae1d5ddfbc1839b_from_pod
\tffffffff4 bpf_test_run

\tffffffff2 bpf_prog_3b98b658f56f228b_from_pod
\tffffffff3 bpf_prog_eae1d5ddfbc1839b_from_pod

\tffffffff5 _copy_to_user
\tffffffff6 bpf_prog_test_run_skb

\tffffffff1 __htab_map_lookup_elem
\tffffffff2 bpf_prog_3b98b658f56f228b_from_pod
";
        let (all, parts) = attribute(script);
        assert_eq!(all, 4);
        assert_eq!(
            parts,
            vec![
                ("__htab_map_lookup_elem".to_string(), 2),
                (OWN_CODE.to_string(), 1)
            ]
        );
    }

    #[test]
    fn only_jit_symbols_are_programs() {
        assert!(is_jit_program("bpf_prog_3b98b658f56f228b_from_pod"));
        assert!(!is_jit_program("bpf_prog_test_run_skb"));
        assert!(!is_jit_program("bpf_prog_run_pin_on_cpu"));
    }
}
