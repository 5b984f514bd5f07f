//! The guest kernels: Debian's `linux-image-amd64`, from bookworm (6.1:
//! BTF, no tcx) or bookworm-backports (6.12: tcx), fetched with `apt-get
//! download` and unpacked with `dpkg-deb -x` under target/vm/kernel-<v>/ —
//! the host keeps its own kernel and packages. Both have 9p, virtio-net,
//! bpf_redirect_peer and _neigh, bpf_loop and global BPF functions.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// A guest kernel the VM test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// Debian 12's own (6.1): the TC programs attach through clsact filters.
    #[value(name = "6.1")]
    V6_1,
    /// bookworm-backports' (6.12): tcx.
    #[value(name = "6.12")]
    V6_12,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::V6_1 => "6.1",
            Kernel::V6_12 => "6.12",
        }
    }

    /// Whether an apt version of linux-image-amd64 is this kernel's.
    fn is_version(self, v: &str) -> bool {
        match self {
            Kernel::V6_1 => v.starts_with("6.1.") && !v.contains("bpo"),
            Kernel::V6_12 => v.starts_with("6.12.") && v.contains("~bpo12"),
        }
    }
}

/// The versioned image package the meta-package of `kernel` depends on.
fn image_package(kernel: Kernel) -> Result<String> {
    let policy = Command::new("apt-cache")
        .args(["policy", "linux-image-amd64"])
        .output()
        .context("apt-cache")?;
    let text = String::from_utf8_lossy(&policy.stdout);
    let version = text
        .split_whitespace()
        .find(|w| kernel.is_version(w))
        .with_context(|| {
            format!(
                "no linux-image-amd64 {} in apt's lists (cargo xtask setup adds bookworm-backports)",
                kernel.name()
            )
        })?;
    let deps = Command::new("apt-cache")
        .args(["depends", &format!("linux-image-amd64={version}")])
        .output()?;
    String::from_utf8_lossy(&deps.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| format!("linux-image-amd64={version} names no image package"))
}

/// The unpacked kernel's vmlinuz (its modules beside it, where virtme-ng
/// finds them), fetched on first use.
pub fn ensure(kernel: Kernel) -> Result<PathBuf> {
    let dir = workspace_root().join(format!("target/vm/kernel-{}", kernel.name()));
    let existing = || -> Option<PathBuf> {
        std::fs::read_dir(dir.join("boot"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
    };
    if let Some(v) = existing() {
        eprintln!("== guest kernel: {}", v.display());
        return Ok(v);
    }
    let package = image_package(kernel)?;
    eprintln!(
        "== guest kernel: downloading {package} (once, into {})",
        dir.display()
    );
    std::fs::create_dir_all(&dir)?;
    let debs = dir.join("deb");
    std::fs::create_dir_all(&debs)?;
    let ok = Command::new("apt-get")
        .args(["download", &package])
        .current_dir(&debs)
        .status()?
        .success();
    if !ok {
        bail!("apt-get download {package} failed");
    }
    let deb = std::fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("the downloaded .deb")?;
    let ok = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&dir)
        .status()?
        .success();
    if !ok {
        bail!("dpkg-deb -x {} failed", deb.display());
    }
    std::fs::remove_dir_all(&debs)?;
    existing().context("no vmlinuz in the unpacked package")
}
