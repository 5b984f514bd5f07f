//! Program attachments that outlive the agent: every hook (program on an
//! interface) is a tcx link pinned in the node's bpffs directory. The pin
//! keeps the program attached, so the agent can stop, crash or restart
//! while traffic flows. A new agent adopts each pinned link by swapping in
//! its freshly loaded program atomically (BPF_LINK_UPDATE); removing a pin
//! detaches. The running agent also holds each link open, so that if the
//! bpffs is unmounted under it (which drops every pin) nothing detaches
//! and it can pin them again (`repin`).
use std::{
    cell::RefCell,
    collections::BTreeMap,
    path::{Path, PathBuf},
};

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
    /// Every link this agent attached or adopted, held open.
    held: RefCell<BTreeMap<String, FdLink>>,
}

impl Hooks {
    pub fn new(pins: &Path) -> Result<Hooks> {
        let dir = links_dir(pins);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Hooks {
            dir,
            held: RefCell::new(BTreeMap::new()),
        })
    }

    /// Pins again every held link whose pin is gone (the bpffs was
    /// unmounted and mounted anew); returns how many.
    pub fn repin(&self) -> Result<usize> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let mut held = self.held.borrow_mut();
        let missing: Vec<String> = held
            .keys()
            .filter(|h| !self.pin(h).exists())
            .cloned()
            .collect();
        for hook in &missing {
            let link = held.remove(hook).expect("listed above");
            let pinned = link
                .pin(self.pin(hook))
                .with_context(|| format!("pinning {hook} again"))?;
            held.insert(hook.clone(), FdLink::from(pinned));
        }
        Ok(missing.len())
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
                    let link: FdLink = program.take_link(id)?.try_into()?;
                    self.held.borrow_mut().insert(hook.to_string(), link);
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
        let pinned = link
            .pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        self.held
            .borrow_mut()
            .insert(hook.to_string(), FdLink::from(pinned));
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
        let pinned = link.pin(self.pin(hook))?;
        self.held
            .borrow_mut()
            .insert(hook.to_string(), FdLink::from(pinned));
        Ok(())
    }

    /// Detaches a hook now (BPF_LINK_DETACH) and removes its pin. Absent is
    /// fine. Only unpinning would detach too, but later: the kernel frees an
    /// unlinked bpffs inode after an RCU grace period.
    pub fn remove(&self, hook: &str) -> Result<()> {
        let held = self.held.borrow_mut().remove(hook);
        let pin = self.pin(hook);
        if !pin.exists() {
            return Ok(());
        }
        if let Err(e) = detach_pinned(&pin) {
            // A link whose device is gone is already detached.
            tracing::debug!(hook, "BPF_LINK_DETACH: {e}");
        }
        drop(held);
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
