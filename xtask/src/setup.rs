//! One idempotent setup step: what a fresh machine of this kind lacks for
//! building the eBPF object and running the lab (docs/decisions.md §23).
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::step;

/// Debian packages: LLVM 22 for bpf-linker; the lab's and tests' tools.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "iproute2",
    "iputils-ping",
    "traceroute",
    "iperf3",
    "tcpdump",
    "ethtool",
    "conntrack",
    "iptables",
    "containernetworking-plugins", // the classic kubenet lab's bridge and host-local
    "curl",
    "prometheus",      // for promtool, which checks the metrics format in a test
    "linux-perf",      // the benchmark's CPU profiles
    "golang-1.19-go",  // builds Kubernetes from Debian's source (kubernetes.rs)
    "etcd-server",     // the lab's control plane stores its objects here
    "buildah",         // cargo xtask image
    "dnsmasq-base",    // the lab's DNS pod behind the DNS Service
    "bind9-dnsutils",  // dig, which the demo and the tests resolve with
    "chromium",        // the web page's browser test (headless)
    "chromium-driver", // ... driven over WebDriver
    "fonts-noto-cjk",  // its Japanese labels in the screenshots
    "kmod",            // cargo xtask vm test: virtme-ng builds the guest's
    "udev",            // ... initramfs and /dev with these
    "busybox-static",
    "containerd",     // cargo xtask vm k8s: the nodes' container runtime
    "runc",           // ... and its OCI runtime
    "jq",             // ... reading the CNI config on a node
    "netcat-openbsd", // ... in the agnhost image, as upstream's has it
];
/// The VM test's QEMU comes from bookworm-backports: bookworm's own
/// qemu-system-x86 would remove the backports qemu-utils the machine ships.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
const VIRTME_NG: &str = "virtme-ng==1.42";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    eprintln!("== setup");
    apt()?;
    vm_tools()?;
    rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// QEMU from bookworm-backports and virtme-ng from PyPI, for `cargo xtask
/// vm test` (docs/decisions.md §39).
fn vm_tools() -> Result<()> {
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    if !installed("qemu-system-x86") {
        if !nix_is_root() {
            bail!("qemu-system-x86 missing; run as root");
        }
        if !std::path::Path::new(BACKPORTS_SOURCE).exists() {
            std::fs::write(
                BACKPORTS_SOURCE,
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
                 Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            )?;
        }
        eprintln!("   qemu-system-x86: installing from bookworm-backports");
        step("apt-get", &["update", "-qq"], &env)?;
        step(
            "apt-get",
            &[
                "install",
                "-y",
                "-qq",
                "-t",
                "bookworm-backports",
                "qemu-system-x86",
            ],
            &env,
        )?;
    } else {
        eprintln!("   qemu-system-x86: present");
    }
    let vng = Command::new("vng").arg("--version").output();
    if vng.is_ok_and(|o| o.status.success()) {
        eprintln!("   virtme-ng: present");
        return Ok(());
    }
    eprintln!("   virtme-ng: installing {VIRTME_NG} (pip)");
    step("python3", &["-m", "pip", "install", "-q", VIRTME_NG], &[])
}

fn apt() -> Result<()> {
    apt_install(APT_PACKAGES)
}

/// Installs the Debian packages of `packages` that are missing.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("   apt packages: present");
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "missing packages {missing:?}; run as root or `apt-get install {}`",
            missing.join(" ")
        );
    }
    eprintln!("   apt packages: installing {}", missing.join(" "));
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    step("apt-get", &["update", "-qq"], &env)?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    step("apt-get", &args, &env)
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup (the eBPF build needs the nightly toolchain)")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("   rust-src (nightly): present");
        return Ok(());
    }
    eprintln!("   rust-src (nightly): installing");
    step(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
        &[],
    )
}

fn bpf_linker() -> Result<()> {
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if have {
        eprintln!("   bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    eprintln!("   bpf-linker {BPF_LINKER_VERSION}: building against LLVM 22 (about a minute)");
    step(
        "cargo",
        &[
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
        ],
        &[("LLVM_PREFIX", "/usr/lib/llvm-22")],
    )
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { geteuid() == 0 }
}

unsafe extern "C" {
    fn geteuid() -> u32;
}
