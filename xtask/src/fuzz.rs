//! `cargo xtask fuzz [--seconds N] [TARGET...]`: the userspace inputs
//! under libFuzzer (cargo-fuzz, nightly): the cluster file, a CNI call, a
//! Kubernetes Node. Each target runs for a bounded time from the corpus
//! kept in tests/fuzz/corpus/ (read only; what the run finds goes to
//! target/fuzz-corpus/). A crash fails the run and says how to replay it.
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{step, workspace_root};

pub const TARGETS: [&str; 3] = ["cluster_file", "cni_call", "k8s_node"];
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run(seconds: u32, only: &[String]) -> Result<()> {
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let fuzz_dir = root.join("tests/fuzz");
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        TARGETS
            .iter()
            .copied()
            .filter(|t| only.iter().any(|o| o == t))
            .collect()
    };
    if targets.is_empty() {
        bail!("no such target; the targets are {}", TARGETS.join(", "));
    }
    for t in targets {
        eprintln!("== fuzz {t} for {seconds} s");
        let scratch = root.join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&scratch)?;
        let seeds = fuzz_dir.join("corpus").join(t);
        let status = Command::new("cargo")
            // No AddressSanitizer: the code under test is safe Rust, and
            // what the targets look for is panics, hangs and broken
            // invariants; without it the build takes half the time.
            .args([
                "+nightly",
                "fuzz",
                "run",
                "--sanitizer",
                "none",
                "--fuzz-dir",
            ])
            .arg(&fuzz_dir)
            .args(["--target-dir"])
            .arg(root.join("target/fuzz"))
            .arg(t)
            .arg(&scratch)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"])
            .current_dir(&root)
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzz target {t} failed: the input is in tests/fuzz/artifacts/{t}/; replay it with \
                 `cargo +nightly fuzz run --fuzz-dir tests/fuzz {t} tests/fuzz/artifacts/{t}/<file>`"
            );
        }
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION));
    if have {
        return Ok(());
    }
    eprintln!("== installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    step(
        "cargo",
        &[
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ],
        &[],
    )
}
