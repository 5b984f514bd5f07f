//! `netplane install-cni DIR`: puts netplane-cni (beside this binary) into
//! kubelet's plugin directory, whole or not at all, as the reference CNI
//! DaemonSets' init containers do; the image needs no shell or coreutils.
use std::path::PathBuf;

use anyhow::{Context, Result};

pub fn run(dir: PathBuf) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let plugin = std::env::current_exe()?.with_file_name("netplane-cni");
    let dest = dir.join("netplane-cni");
    let tmp = dir.join(".netplane-cni.tmp");
    std::fs::copy(&plugin, &tmp)
        .with_context(|| format!("copying {} to {}", plugin.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    eprintln!("installed {}", dest.display());
    Ok(())
}
