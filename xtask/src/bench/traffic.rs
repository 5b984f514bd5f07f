//! Running the traffic tools in the lab's pods: `netplane-bench loadgen`
//! servers and clients pinned to their CPUs, iperf3, and the machine's busy
//! CPU time.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use netplane_bench_model::tools::UdpFlood;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The lab's internet host: destinations of the SNAT tests.
pub(super) const INET: &str = "203.0.113.10";

/// Pod-to-pod server: pod-1-0.
pub(super) const SERVER_POD_IP: &str = "10.244.1.2";

pub(super) const UDP_PORT: u16 = 9000;

pub(super) const CLIENT_CPU: &str = "0";

pub(super) const SERVER_CPU: &str = "1";

/// The UDP sink in pod-1-0, ending a little after the flood.
pub(super) fn udp_sink(np: &str, secs: f64) -> Result<Child> {
    let secs = (secs + 3.0).to_string();
    let port = UDP_PORT.to_string();
    server(
        np,
        "pod-1-0",
        &[
            "udp-sink",
            "--port",
            &port,
            "--secs",
            &secs,
            "--idle-ms",
            "300",
        ],
    )
}

/// 64-byte frames pod-0-0 → pod-1-0 for `secs`: 18 bytes of payload plus
/// UDP, IPv4 and Ethernet headers (+ 4 of FCS on a wire).
pub(super) fn udp_flood(np: &str, secs: f64) -> Result<UdpFlood> {
    let to = format!("{SERVER_POD_IP}:{UDP_PORT}");
    let secs = secs.to_string();
    client(
        np,
        "pod-0-0",
        &["udp-flood", "--to", &to, "--payload", "18", "--secs", &secs],
    )
}

pub(super) fn tcp_echo_args(port: u16, secs: f64) -> Vec<String> {
    [
        "tcp-echo",
        "--port",
        &port.to_string(),
        "--secs",
        &secs.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// iperf3 pod-0-0 → pod-1-0: Gbit/s received and CPU seconds used.
pub(super) fn iperf(streams: u32, secs: f64) -> Result<(f64, f64)> {
    let server = in_netns("pod-1-0", SERVER_CPU, &["iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu = CpuMeter::start()?;
    let out = in_netns(
        "pod-0-0",
        CLIENT_CPU,
        &[
            "iperf3",
            "-c",
            SERVER_POD_IP,
            "-p",
            "5201",
            "-J",
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
        ],
    )
    .output()?;
    let busy = cpu.busy_seconds()?;
    stop(server);
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")?;
    Ok((bps / 1e9, busy))
}

pub(super) fn sum_field(v: &Value, field: &str) -> f64 {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                if k == field {
                    x.as_f64().unwrap_or(0.0)
                } else {
                    sum_field(x, field)
                }
            })
            .sum(),
        Value::Array(a) => a.iter().map(|x| sum_field(x, field)).sum(),
        _ => 0.0,
    }
}

/// `ip netns exec np-<host> taskset -c <cpu> <argv>`.
pub(super) fn in_netns(host: &str, cpu: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &format!("np-{host}"), "taskset", "-c", cpu])
        .args(argv);
    c
}

/// A loadgen server on the server CPU; it ends by its own deadline, or is
/// stopped by PID.
pub(super) fn server<S: AsRef<str>>(np: &str, host: &str, args: &[S]) -> Result<Child> {
    let bench = crate::bench_bin_beside(np);
    let mut argv = vec![bench.as_str(), "loadgen"];
    argv.extend(args.iter().map(AsRef::as_ref));
    let child = in_netns(host, SERVER_CPU, &argv)
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

/// Waits for a server that ends by itself, and reads what it printed.
pub(super) fn finish<T: DeserializeOwned>(child: Child) -> Result<T> {
    let out = child.wait_with_output()?;
    serde_json::from_slice(&out.stdout).context("loadgen server output")
}

/// Stops a server we started (by its PID, through Child).
pub(super) fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A loadgen client on the client CPU; returns what it printed.
pub(super) fn client<T: DeserializeOwned>(np: &str, host: &str, args: &[&str]) -> Result<T> {
    let bench = crate::bench_bin_beside(np);
    let mut argv = vec![bench.as_str(), "loadgen"];
    argv.extend_from_slice(args);
    let out = in_netns(host, CLIENT_CPU, &argv).output()?;
    if !out.status.success() {
        bail!(
            "loadgen {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("loadgen {} output", args.join(" ")))
}

/// Busy CPU time of the whole machine (all CPUs), from /proc/stat.
pub(super) struct CpuMeter {
    start: f64,
}

impl CpuMeter {
    pub(super) fn start() -> Result<Self> {
        Ok(Self {
            start: busy_seconds()?,
        })
    }
    pub(super) fn busy_seconds(&self) -> Result<f64> {
        Ok(busy_seconds()? - self.start)
    }
}

pub(super) fn busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal, in USER_HZ (100 per
    // second on Linux): busy is user + nice + system + irq + softirq (steal
    // is the hypervisor's, not ours).
    let busy: f64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum();
    Ok(busy / 100.0)
}
