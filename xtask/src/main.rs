//! `cargo xtask setup|demo|test|lint`: the project's entry points.
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod fuzz;
mod image;
mod kubernetes;
mod layering;
mod setup;
mod soak;
mod vm;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (apt packages, rust-src for
    /// nightly, bpf-linker). Idempotent.
    Setup,
    /// Set up, build, bring the lab up and show pod traffic.
    Demo {
        /// With a real Kubernetes API server as the source of nodes (builds
        /// kube-apiserver from Debian's source on first use).
        #[arg(long)]
        kubernetes: bool,
    },
    /// Set up, build, and run every test (unit, packet tables, lab).
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// cargo fmt --check and both clippy passes (-D warnings).
    Lint,
    /// The OCI image deploy/ runs (localhost/netplane:latest), as an OCI
    /// archive in target/netplane-image.tar (buildah, from scratch).
    Image,
    /// The userspace inputs under libFuzzer (cargo-fuzz): cluster file,
    /// CNI call, Kubernetes Node; each target for a bounded time.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Build kube-apiserver from Debian's Kubernetes source, once per
    /// machine (target/kubernetes/), for `lab up --source kubernetes`.
    Apiserver,
    /// netplane (E) vs classic kubenet (K) vs plain routing (R), side by
    /// side in interleaved rounds: docs/benchmarks.md, docs/bench/.
    Bench {
        /// A few-minute version: 1 s per test, conntrack up to 100k.
        #[arg(long)]
        quick: bool,
        /// Rounds (each runs E, K and R back to back); 5 or more for results.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Fail when ratios fall below generous floors (bench/gate.rs).
        #[arg(long)]
        gate: bool,
        /// The traffic tests on VMs (QEMU; KVM where it works): each data
        /// path on two node VMs and a load balancer VM (docs/bench/vm.md).
        #[arg(long, conflicts_with = "gate")]
        vm: bool,
        /// Measure nothing: write docs/benchmarks.md, the plots and the
        /// README table again from docs/bench/results.json.
        #[arg(long, conflicts_with_all = ["quick", "gate", "vm"])]
        report_only: bool,
    },
    /// Measure what flow events cost per program run (docs/bench/flows.md).
    BenchFlows {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Measure TC only against TC + XDP on the uplinks (docs/decisions.md).
    BenchAttach {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The lab under churn for a bounded time (connections through both
    /// SNAT stages, UDP, ICMP, pods added and removed, routes changed,
    /// agents killed), then checked for leaks: ports, translations, memory,
    /// kernel objects.
    Soak {
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
    },
    /// netplane on virtual machines (QEMU, virtme-ng): `vm test` boots two
    /// node VMs and a load balancer VM and checks the data path on them.
    Vm {
        #[command(subcommand)]
        command: VmCmd,
    },
    /// The lab at 10, 100 and 400 nodes (one pod each): time to come up and
    /// down, memory, routes, random pod pairs (docs/bench/scale.md).
    BenchScale {
        /// Lab sizes, in nodes.
        #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 400])]
        nodes: Vec<usize>,
        /// Random pod pairs pinged at each size.
        #[arg(long, default_value_t = 20)]
        pairs: usize,
    },
    /// A ClusterIP Service on netplane against real kube-proxy, and each
    /// against the pod IP (docs/bench/services.md).
    BenchServices {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

#[derive(Subcommand)]
enum VmCmd {
    /// Boot the VMs, run the checks, tear everything down.
    Test {
        /// The guests' kernel: Debian 12's 6.1 (no tcx: clsact filters) or
        /// bookworm-backports' 6.12 (tcx).
        #[arg(long, value_enum, default_value = "6.12")]
        kernel: vm::kernel::Kernel,
    },
    /// The Vagrant deployment (vagrant/) for real: build the box, start a
    /// private libvirtd, `vagrant up`, check the README's demo, `vagrant
    /// destroy`. Minutes under software emulation; not in CI.
    Vagrant {
        /// libvirt's domain type: qemu (software emulation) or kvm.
        #[arg(long, default_value = "qemu", value_parser = ["qemu", "kvm"])]
        driver: String,
        /// A cluster file with the default cluster's two nodes (either
        /// outbound type); default: the default cluster.
        #[arg(long)]
        cluster: Option<std::path::PathBuf>,
    },
    /// A Kubernetes 1.20 cluster on the VMs (built from Debian's source),
    /// netplane deployed with `kubectl apply -f deploy/`, and its checks:
    /// pod to pod, node to pod, ClusterIP, egress, the CNI's DEL and CHECK.
    K8s {
        #[arg(long, value_enum, default_value = "6.12")]
        kernel: vm::kernel::Kernel,
        /// kubenet's bridge plugin and kube-proxy instead of netplane (the
        /// oracle): no netplane checks, only the conformance run.
        #[arg(long)]
        classic: bool,
        /// Then Kubernetes' sig-network conformance tests (e2e.test).
        #[arg(long)]
        conformance: bool,
        /// Leave the cluster up afterwards (passed or not), until
        /// target/vm/k8s/up is removed.
        #[arg(long)]
        keep: bool,
    },
    /// Kubernetes' conformance focus again, on the cluster `vm k8s --keep`
    /// keeps up (its data path, netplane or kubenet-classic).
    K8sConformance {
        /// Instead, record the last run's report again (its run.json and
        /// JUnit report under target/vm/k8s/) in docs/k8s-conformance/.
        #[arg(long)]
        record: bool,
        /// With --record: the kubenet-classic run's report.
        #[arg(long, requires = "record")]
        classic: bool,
    },
    /// Inside a VM (virtme-ng runs it): provision, then serve the host's
    /// commands from DIR.
    #[command(hide = true)]
    Guest { dir: std::path::PathBuf },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Demo { kubernetes } => {
            setup::run()?;
            build()?;
            if kubernetes {
                kubernetes::ensure(kubernetes::LAB)?;
                demo::run_kubernetes()
            } else {
                demo::run()
            }
        }
        Cmd::Test { args } => {
            setup::run()?;
            kubernetes::ensure(kubernetes::LAB)?;
            build()?;
            test(&args)
        }
        Cmd::Image => {
            setup::run()?;
            image::build()
        }
        Cmd::Fuzz { seconds, targets } => {
            setup::run()?;
            fuzz::run(seconds.max(1), &targets)
        }
        Cmd::Apiserver => {
            setup::run()?;
            kubernetes::ensure(kubernetes::LAB)
        }
        Cmd::Lint => {
            setup::run()?;
            lint()
        }
        Cmd::Bench {
            report_only: true, ..
        } => bench::report::rewrite_from_json(),
        Cmd::Bench {
            quick,
            rounds,
            gate,
            vm,
            ..
        } => {
            if rounds < 5 {
                eprintln!(
                    "== --rounds {rounds}: fewer than 5 rounds make weak medians; fine for a try, not for docs"
                );
            }
            let rounds = rounds.max(1);
            setup::run()?;
            eprintln!("== build (release: the traffic generators run at full speed)");
            cmd("cargo", &[&BUILD_BINS[..], &["--release"]].concat())?;
            bench::run(&bench::Options {
                quick,
                rounds,
                gate,
                vm,
            })
        }
        Cmd::BenchFlows { rounds } => {
            setup::run()?;
            build()?;
            bench::extra::flows(rounds.max(1))
        }
        Cmd::BenchAttach { rounds } => {
            setup::run()?;
            build()?;
            bench::extra::attach(rounds.max(1))
        }
        Cmd::Soak { minutes } => {
            setup::run()?;
            build()?;
            soak::run_soak(minutes)
        }
        Cmd::Vm {
            command: VmCmd::Test { kernel },
        } => {
            setup::run()?;
            build()?;
            vm::test(kernel)
        }
        Cmd::Vm {
            command: VmCmd::Vagrant { driver, cluster },
        } => {
            setup::run()?;
            setup::apt_install(vm::vagrant::PACKAGES)?;
            eprintln!("== build (release: the binaries the Vagrantfile copies in)");
            cmd("cargo", &[&BUILD_BINS[..], &["--release"]].concat())?;
            vm::vagrant::test(&vm::vagrant::Options { driver, cluster })
        }
        Cmd::Vm {
            command:
                VmCmd::K8s {
                    kernel,
                    classic,
                    conformance,
                    keep,
                },
        } => {
            setup::run()?;
            build()?;
            vm::k8s::run(&vm::k8s::Options {
                kernel,
                classic,
                conformance,
                keep,
            })
        }
        Cmd::Vm {
            command: VmCmd::K8sConformance { record, classic },
        } => {
            if record {
                vm::k8s::record_conformance_again(classic)
            } else {
                vm::k8s::conformance_on_kept()
            }
        }
        Cmd::Vm {
            command: VmCmd::Guest { dir },
        } => vm::guest::run(&dir),
        Cmd::BenchScale { nodes, pairs } => {
            setup::run()?;
            eprintln!("== build (release: as users run the lab)");
            cmd("cargo", &[&BUILD_BINS[..], &["--release"]].concat())?;
            bench::scale::run(&nodes, pairs.max(1))
        }
        Cmd::BenchServices { rounds } => {
            setup::run()?;
            kubernetes::ensure(kubernetes::LAB)?;
            eprintln!("== build (release: the traffic generators run at full speed)");
            cmd("cargo", &[&BUILD_BINS[..], &["--release"]].concat())?;
            bench::clusterip::services(rounds.max(1))
        }
    }
}

/// Runs a command in the workspace root, failing on a non-zero exit.
pub fn cmd(program: &str, args: &[&str]) -> Result<()> {
    step(program, args, &[])
}

pub fn step(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A command's trimmed output, run in the workspace ("" if it fails): for
/// the commit and date a report records.
pub fn output_of(argv: &[&str]) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(workspace_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The netplane binary the demo and the lab tests run.
pub fn netplane_bin() -> std::path::PathBuf {
    workspace_root().join("target/debug/netplane")
}

/// The benchmark's tools (`netplane-bench`), built beside `netplane`.
pub fn bench_bin_beside(netplane: &str) -> String {
    format!("{netplane}-bench")
}

fn build() -> Result<()> {
    eprintln!("== build");
    cmd("cargo", &BUILD_BINS)
}

/// `netplane` (with the lab), `netplane-cni` and the benchmark's
/// `netplane-bench`.
const BUILD_BINS: [&str; 8] = [
    "build",
    "-p",
    "netplane-cli",
    "-p",
    "netplane-user",
    "-p",
    "netplane-tests",
    "--bins",
];

fn test(args: &[String]) -> Result<()> {
    // The lab tests need the np- namespaces to themselves.
    if lab_is_up() {
        eprintln!("== a lab is up (from `cargo xtask demo`?): taking it down for the lab tests");
        cmd(
            netplane_bin().to_str().expect("utf-8 path"),
            &["lab", "down"],
        )?;
    }
    eprintln!("== test");
    let mut child = Command::new("cargo")
        .args(["test", "--workspace", "--exclude", "netplane-ebpf"])
        .args(args)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through, and add up the per-binary results.
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, "passed");
            failed += count_before(rest, "failed");
        }
    }
    let status = child.wait()?;
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The number just before `label` in "ok. 7 passed; 0 failed; ...".
fn count_before(s: &str, label: &str) -> u64 {
    s.split(';')
        .find_map(|part| {
            let mut words = part.split_whitespace().rev();
            (words.next() == Some(label)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

/// `netplane lab status --json` says the lab is up.
pub fn lab_is_up() -> bool {
    lab_is_up_with(&netplane_bin())
}

/// As `lab_is_up`, asking a given netplane binary.
pub fn lab_is_up_with(netplane: &std::path::Path) -> bool {
    Command::new(netplane)
        .args(["lab", "status", "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .is_some_and(|v| v["up"] == true)
}

fn lint() -> Result<()> {
    eprintln!("== fmt");
    cmd("cargo", &["fmt", "--all", "--check"])?;
    eprintln!("== layering (crates and folders point down, no cycles)");
    layering::check(&workspace_root())?;
    eprintln!("== clippy (workspace without the eBPF crate)");
    cmd(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "netplane-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    eprintln!("== clippy (eBPF crate, BPF target)");
    cmd(
        "cargo",
        &[
            "+nightly",
            "clippy",
            "-p",
            "netplane-ebpf",
            "--bins",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_come_from_cargo_test_summaries() {
        let line =
            "ok. 7 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(super::count_before(line, "passed"), 7);
        assert_eq!(super::count_before(line, "failed"), 2);
        assert_eq!(
            super::count_before("FAILED. 0 passed; 1 failed;", "failed"),
            1
        );
    }
}
