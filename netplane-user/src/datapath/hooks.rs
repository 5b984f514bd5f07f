//! Program attachments that outlive the agent: every hook (program on an
//! interface) is a tcx link pinned in the node's bpffs directory. A running
//! agent holds no link open; the pin keeps the program attached, so the
//! agent can stop, crash or restart while traffic flows. A new agent adopts
//! each pinned link by swapping in its freshly loaded program atomically
//! (BPF_LINK_UPDATE); removing a pin detaches.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::{
    TcAttachType,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
};

use super::{Datapath, sys::detach_pinned};

/// Where a node's link pins live, under its map pins.
pub fn links_dir(pins: &Path) -> PathBuf {
    pins.join("links")
}

/// How a hook came to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A pinned link existed: its program was replaced in place.
    Adopted,
    /// Attached anew and pinned.
    New,
}

pub struct Hooks {
    dir: PathBuf,
}

impl Hooks {
    pub fn new(pins: &Path) -> Result<Hooks> {
        let dir = links_dir(pins);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Hooks { dir })
    }

    fn pin(&self, hook: &str) -> PathBuf {
        self.dir.join(hook)
    }

    /// Attaches TC program `prog` to `iface`, or adopts the pinned link of
    /// `hook` and swaps `prog` in without a gap.
    pub fn tc(
        &self,
        dp: &mut Datapath,
        prog: &str,
        iface: &str,
        kind: TcAttachType,
        hook: &str,
    ) -> Result<Attach> {
        let pin = self.pin(hook);
        let program = dp.classifier(prog)?;
        if pin.exists() {
            let adopted = PinnedLink::from_pin(&pin)
                .map_err(anyhow::Error::from)
                .and_then(|p| Ok(SchedClassifierLink::try_from(FdLink::from(p))?))
                .and_then(|link| Ok(program.attach_to_link(link)?));
            match adopted {
                Ok(id) => {
                    // Our handle closes; the pin keeps the link.
                    drop(program.take_link(id)?);
                    return Ok(Attach::Adopted);
                }
                // The interface went away with the link (a deleted pod): start over.
                Err(e) => {
                    tracing::warn!(hook, "stale pinned link ({e:#}); attaching anew");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let id = program
            .attach(iface, kind)
            .with_context(|| format!("attaching {prog} to {iface}"))?;
        let link: FdLink = program.take_link(id)?.try_into()?;
        drop(
            link.pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?,
        );
        Ok(Attach::New)
    }

    /// Attaches XDP program `prog` to `iface` (native mode). aya 0.14 cannot
    /// adopt an XDP link, so a pinned one is replaced: only the optional
    /// early drops pause for that moment, never forwarding.
    pub fn xdp(&self, dp: &mut Datapath, prog: &str, iface: &str, hook: &str) -> Result<()> {
        self.remove(hook)?;
        let program = dp.xdp(prog)?;
        let id = program
            .attach(iface, aya::programs::XdpMode::Driver)
            .with_context(|| format!("attaching {prog} to {iface}"))?;
        let link: FdLink = program.take_link(id)?.try_into()?;
        drop(link.pin(self.pin(hook))?);
        Ok(())
    }

    /// Detaches a hook now (BPF_LINK_DETACH) and removes its pin. Absent is
    /// fine. Only unpinning would detach too, but later: the kernel frees an
    /// unlinked bpffs inode after an RCU grace period.
    pub fn remove(&self, hook: &str) -> Result<()> {
        let pin = self.pin(hook);
        if !pin.exists() {
            return Ok(());
        }
        if let Err(e) = detach_pinned(&pin) {
            // A link whose device is gone is already detached.
            tracing::debug!(hook, "BPF_LINK_DETACH: {e}");
        }
        match std::fs::remove_file(&pin) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Detaches and unpins every hook.
    pub fn remove_all(&self) -> Result<()> {
        for hook in self.pinned() {
            self.remove(&hook)?;
        }
        Ok(())
    }

    /// The hooks pinned now.
    pub fn pinned(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Hook names.
pub const UPLINK_INGRESS: &str = "uplink-ingress";
pub const UPLINK_EGRESS: &str = "uplink-egress";
pub const UPLINK_XDP: &str = "uplink-xdp";
pub const LB_INSIDE: &str = "lb-inside";
pub const LB_OUTSIDE: &str = "lb-outside";

pub fn pod_hook(container_id: &str) -> String {
    format!("pod-{container_id}")
}
