//! The guest kernel: Debian's `linux-image-amd64` from bookworm-backports
//! (6.12: BTF, tcx, 9p, virtio-net, bpf_redirect_peer and _neigh), fetched
//! with `apt-get download` and unpacked with `dpkg-deb -x` under
//! target/vm/kernel/ — the host keeps its own kernel and packages.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// The versioned image package the backports meta-package depends on.
fn image_package() -> Result<String> {
    let policy = Command::new("apt-cache")
        .args(["policy", "linux-image-amd64"])
        .output()
        .context("apt-cache")?;
    let text = String::from_utf8_lossy(&policy.stdout);
    let version = text
        .split_whitespace()
        .find(|w| w.contains("~bpo12"))
        .context(
            "no bookworm-backports linux-image-amd64 (cargo xtask setup adds bookworm-backports)",
        )?;
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
pub fn ensure() -> Result<PathBuf> {
    let dir = workspace_root().join("target/vm/kernel");
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
    let package = image_package()?;
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
