//! `cargo xtask image`: the OCI image deploy/netplane.yaml runs
//! (`localhost/netplane:latest`), exported as an OCI archive. Built with
//! buildah from scratch, rootless of any registry: the release binaries and
//! the few shared libraries they link (glibc and libgcc from this Debian
//! machine's packages, found by ldd), nothing else. Everything buildah
//! keeps lives under target/image/ (its own storage, vfs driver, chroot
//! isolation), so the machine's container configuration is untouched.
//! `netplane` is built without the `lab` feature: the image carries the
//! agent, the CNI plugin and the views, not the lab.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, workspace_root};

pub const IMAGE: &str = "localhost/netplane:latest";
const MIB: f64 = 1024.0 * 1024.0;
const BINARIES: [&str; 2] = ["netplane", "netplane-cni"];

pub fn archive() -> PathBuf {
    workspace_root().join("target/netplane-image.tar")
}

fn buildah(args: &[&str]) -> Result<String> {
    let dir = workspace_root().join("target/image");
    let out = Command::new("buildah")
        .arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .context("running buildah (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "buildah {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn build() -> Result<()> {
    eprintln!("== image {IMAGE}");
    // The agent without the lab (its page, control plane and tools stay
    // on the developer's machine).
    cmd(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "netplane-cli",
            "-p",
            "netplane-user",
            "--no-default-features",
            "--bins",
        ],
    )?;
    let release = workspace_root().join("target/release");
    let ctr = buildah(&["from", "scratch"])?;
    let result = (|| -> Result<()> {
        let root = PathBuf::from(buildah(&["mount", &ctr])?);
        let files: Vec<(PathBuf, String)> = BINARIES
            .iter()
            .map(|b| (release.join(b), format!("/usr/local/bin/{b}")))
            .collect();
        let libs = copy_with_libraries(&root, &files)?;
        for d in ["etc", "tmp", "run", "sys/fs/bpf"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        buildah(&["umount", &ctr])?;
        buildah(&[
            "config",
            "--env",
            "PATH=/usr/local/bin",
            "--entrypoint",
            "[\"/usr/local/bin/netplane\"]",
            "--cmd",
            "agent --source kubernetes",
            "--label",
            "org.opencontainers.image.title=netplane",
            &ctr,
        ])?;
        buildah(&["commit", "--format", "oci", &ctr, IMAGE])?;
        let archive = archive();
        let _ = std::fs::remove_file(&archive);
        buildah(&[
            "push",
            IMAGE,
            &format!("oci-archive:{}:{IMAGE}", archive.display()),
        ])?;
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len()) as f64 / MIB;
        eprintln!(
            "   {} ({:.1} MiB: {} binaries, {} libraries from this machine's Debian packages)",
            archive.display(),
            size(&archive),
            BINARIES.len(),
            libs
        );
        for b in BINARIES {
            eprintln!("   {b}: {:.1} MiB", size(&release.join(b)));
        }
        Ok(())
    })();
    let _ = buildah(&["rm", &ctr]);
    result?;
    check()
}

/// The archive runs: both binaries answer from inside it (chroot
/// isolation): `netplane --version`, and netplane-cni's CNI VERSION.
fn check() -> Result<()> {
    let from = format!("oci-archive:{}", archive().display());
    let ctr = buildah(&["from", &from])?;
    let result = (|| -> Result<()> {
        let run = |env: &str, argv: &[&str]| {
            let mut args = vec!["run", "--isolation", "chroot", "--env", env, &ctr, "--"];
            args.extend_from_slice(argv);
            buildah(&args)
        };
        let version = run(
            "NETPLANE_IMAGE_CHECK=1",
            &["/usr/local/bin/netplane", "--version"],
        )?;
        let cni = run("CNI_COMMAND=VERSION", &["/usr/local/bin/netplane-cni"])?;
        // Built without the lab: its commands are not there.
        let help = run(
            "NETPLANE_IMAGE_CHECK=1",
            &["/usr/local/bin/netplane", "--help"],
        )?;
        if help.lines().any(|l| l.trim_start().starts_with("lab ")) {
            bail!("the image's netplane has the lab's commands:\n{help}");
        }
        if !version.starts_with("netplane ") || !cni.contains("supportedVersions") {
            bail!("the image's binaries answered {version:?} and {cni:?}");
        }
        eprintln!("   in the image: {version}; netplane-cni: {cni}");
        Ok(())
    })();
    let _ = buildah(&["rm", &ctr]);
    result
}

/// Copies each (file, path in the image) under `root`, with the shared
/// libraries they load where the loader looks for them (the files
/// themselves, symlinks resolved: one copy under each name needed);
/// returns how many libraries.
fn copy_with_libraries(root: &Path, files: &[(PathBuf, String)]) -> Result<usize> {
    let mut libs = Vec::new();
    for (from, to) in files {
        let to = root.join(to.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("has a parent"))?;
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        libs.extend(linked_libraries(from)?);
    }
    libs.sort();
    libs.dedup();
    for lib in &libs {
        let to = root.join(lib.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(to.parent().expect("has a parent"))?;
        std::fs::copy(lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    Ok(libs.len())
}

/// The shared libraries `binary` loads, from ldd.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("ldd")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// A test image from this machine's files (`vm k8s`: pause and agnhost,
/// built here because no registry is reachable): each file at its path in
/// the image with the shared libraries it links, symlinks (link, target),
/// exported as an OCI archive named `name`.
pub struct TestImage<'a> {
    pub name: &'a str,
    pub files: Vec<(PathBuf, String)>,
    pub links: Vec<(String, String)>,
    pub entrypoint: &'a str,
    pub cmd: &'a str,
}

impl TestImage<'_> {
    pub fn build(&self, archive: &Path) -> Result<()> {
        let ctr = buildah(&["from", "scratch"])?;
        let result = (|| -> Result<()> {
            let root = PathBuf::from(buildah(&["mount", &ctr])?);
            copy_with_libraries(&root, &self.files)?;
            for (link, target) in &self.links {
                let link = root.join(link.trim_start_matches('/'));
                std::fs::create_dir_all(link.parent().expect("has a parent"))?;
                std::os::unix::fs::symlink(target, &link)?;
            }
            for d in ["etc", "tmp"] {
                std::fs::create_dir_all(root.join(d))?;
            }
            buildah(&["umount", &ctr])?;
            buildah(&[
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--entrypoint",
                &format!("[\"{}\"]", self.entrypoint),
                "--cmd",
                self.cmd,
                &ctr,
            ])?;
            buildah(&["commit", "--format", "oci", &ctr, self.name])?;
            let _ = std::fs::remove_file(archive);
            buildah(&[
                "push",
                self.name,
                &format!("oci-archive:{}:{}", archive.display(), self.name),
            ])?;
            Ok(())
        })();
        let _ = buildah(&["rm", &ctr]);
        result
    }
}
