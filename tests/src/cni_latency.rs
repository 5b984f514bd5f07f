//! How long netplane-cni takes for ADD and DEL, as a runtime calls it: in
//! a node namespace of its own, one fresh pod namespace per round, the
//! configuration on stdin, each call timed from spawn to exit.
use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use netplane_bench_model::tools::CniLatency;

const NODE_NS: &str = "np-cnibench-node";
const POD_NS: &str = "np-cnibench-pod";

/// Removes the namespaces and state, also after a failure.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in [POD_NS, NODE_NS] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn measure(plugin: &Path, runs: usize) -> Result<CniLatency> {
    let run_dir = std::env::temp_dir().join(format!("netplane-cnibench-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    let _cleanup = Cleanup(run_dir.clone());
    netns(&["add", NODE_NS])?;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "netplane", "type": "netplane-cni",
        "node": "node-0", "podCidr": "10.244.0.0/24", "maxPods": 110,
    })
    .to_string();
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for i in 0..runs {
        netns(&["add", POD_NS])?;
        let id = format!("bench-{i}");
        add.push(call(plugin, &run_dir, "ADD", &id, &conf)?);
        del.push(call(plugin, &run_dir, "DEL", &id, &conf)?);
        netns(&["del", POD_NS])?;
    }
    Ok(CniLatency {
        runs,
        add_p50_ms: percentile(&mut add, 0.5),
        add_p90_ms: percentile(&mut add, 0.9),
        del_p50_ms: percentile(&mut del, 0.5),
        del_p90_ms: percentile(&mut del, 0.9),
    })
}

fn netns(args: &[&str]) -> Result<()> {
    let ok = Command::new("ip")
        .arg("netns")
        .args(args)
        .status()?
        .success();
    if !ok {
        bail!("ip netns {}", args.join(" "));
    }
    Ok(())
}

/// One plugin call in the node namespace; its wall time in ms.
fn call(plugin: &Path, run_dir: &Path, command: &str, id: &str, conf: &str) -> Result<f64> {
    let node = std::fs::File::open(format!("/run/netns/{NODE_NS}"))?;
    let mut cmd = Command::new(plugin);
    cmd.env("NETPLANE_RUN_DIR", run_dir)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{POD_NS}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    netplane::sys::spawn_in_netns(&mut cmd, &node);
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting the plugin")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "{command} failed: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(ms)
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}
