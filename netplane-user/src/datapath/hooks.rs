//! Program attachments that outlive the agent. A TC hook (program on an
//! interface) is attached one of two ways, whichever the kernel has
//! ([`TcMode`], probed at start):
//! - tcx (Linux 6.6+): a link pinned in the node's bpffs directory. The pin
//!   keeps the program attached, so the agent can stop, crash or restart
//!   while traffic flows. A new agent adopts each pinned link by swapping
//!   in its freshly loaded program atomically (BPF_LINK_UPDATE); removing a
//!   pin detaches. The running agent also holds each link open, so that if
//!   the bpffs is unmounted under it (which drops every pin) nothing
//!   detaches and it can pin them again (`repin`).
//! - clsact filters (any kernel): a direct-action bpf filter at netplane's
//!   own priority and handle, on the interface's clsact qdisc, with a
//!   record (interface, direction) in the node's state directory. The
//!   filter lives in the kernel until it is deleted, agent or not; a new
//!   agent adopts it by replacing its program in place (RTM_NEWTFILTER on
//!   the same priority and handle, no gap); removing the hook deletes the
//!   filter and its record.
use std::{
    cell::RefCell,
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::programs::{
    SchedClassifier, TcAttachType,
    links::{FdLink, Link as _, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
};
use serde::{Deserialize, Serialize};

use super::{Datapath, syscall::detach_pinned};

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

/// How TC programs attach on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TcMode {
    /// tcx links (Linux 6.6+), pinned.
    Tcx,
    /// Filters on a clsact qdisc, set up over netlink (every kernel).
    Clsact,
}

impl TcMode {
    /// tcx where the kernel has it: a BPF_PROG_QUERY for tcx on `lo`
    /// succeeds from 6.6 on and fails with EINVAL before.
    pub fn probe() -> TcMode {
        match SchedClassifier::query_tcx("lo", TcAttachType::Ingress) {
            Ok(_) => TcMode::Tcx,
            Err(_) => TcMode::Clsact,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TcMode::Tcx => "tcx links",
            TcMode::Clsact => "clsact filters",
        }
    }
}

/// netplane's clsact filters: one per interface and direction, always at
/// this priority and handle, so that a new agent finds its predecessor's.
pub const FILTER_PRIORITY: u16 = 1;
pub const FILTER_HANDLE: u32 = 0x4e50; // "NP"

/// A clsact filter's record, one file per hook.
#[derive(Debug, Serialize, Deserialize)]
struct FilterRecord {
    iface: String,
    egress: bool,
}

impl FilterRecord {
    fn kind(&self) -> TcAttachType {
        if self.egress {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        }
    }

    /// The filter as aya knows a netlink link (no kernel object to open).
    fn link(&self) -> std::io::Result<SchedClassifierLink> {
        SchedClassifierLink::attached(
            &self.iface,
            self.kind(),
            FILTER_PRIORITY,
            TcHandle::from(FILTER_HANDLE),
            None,
        )
    }
}

/// A TC program on an interface, by the hook's name.
#[derive(Clone, Copy)]
struct TcHook<'a> {
    prog: &'a str,
    iface: &'a str,
    kind: TcAttachType,
    hook: &'a str,
}

pub struct Hooks {
    dir: PathBuf,
    /// Clsact filters' records (plain files: a bpffs holds no files).
    filters: PathBuf,
    mode: TcMode,
    /// Every tcx or XDP link this agent attached or adopted, held open.
    held: RefCell<BTreeMap<String, FdLink>>,
}

impl Hooks {
    /// `pins`: the node's bpffs directory; `state`: its plain directory.
    pub fn new(pins: &Path, state: &Path, mode: TcMode) -> Result<Hooks> {
        let dir = links_dir(pins);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let filters = state.join("tc-filters");
        std::fs::create_dir_all(&filters)
            .with_context(|| format!("creating {}", filters.display()))?;
        Ok(Hooks {
            dir,
            filters,
            mode,
            held: RefCell::new(BTreeMap::new()),
        })
    }

    pub fn mode(&self) -> TcMode {
        self.mode
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

    /// Attaches TC program `prog` to `iface`, or adopts the hook an earlier
    /// agent left and swaps `prog` in without a gap.
    pub fn tc(
        &self,
        dp: &mut Datapath,
        prog: &str,
        iface: &str,
        kind: TcAttachType,
        hook: &str,
    ) -> Result<Attach> {
        let want = TcHook {
            prog,
            iface,
            kind,
            hook,
        };
        match self.mode {
            TcMode::Tcx => {
                self.remove_filter(hook)?; // left by an agent forced to clsact
                self.tcx(dp, &want)
            }
            TcMode::Clsact => {
                self.remove_link(hook)?;
                self.clsact(dp, &want)
            }
        }
    }

    fn tcx(&self, dp: &mut Datapath, want: &TcHook) -> Result<Attach> {
        let pin = self.pin(want.hook);
        let program = dp.classifier(want.prog)?;
        if pin.exists() {
            let adopted = PinnedLink::from_pin(&pin)
                .map_err(anyhow::Error::from)
                .and_then(|p| Ok(SchedClassifierLink::try_from(FdLink::from(p))?))
                .and_then(|link| Ok(program.attach_to_link(link)?));
            match adopted {
                Ok(id) => {
                    let link: FdLink = program.take_link(id)?.try_into()?;
                    self.held.borrow_mut().insert(want.hook.to_string(), link);
                    return Ok(Attach::Adopted);
                }
                // The interface went away with the link (a deleted pod): start over.
                Err(e) => {
                    tracing::warn!(
                        hook = want.hook,
                        "stale pinned link ({e:#}); attaching anew"
                    );
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let id = program
            .attach_with_options(
                want.iface,
                want.kind,
                TcAttachOptions::TcxOrder(Default::default()),
            )
            .with_context(|| format!("attaching {} to {} (tcx)", want.prog, want.iface))?;
        let link: FdLink = program.take_link(id)?.try_into()?;
        let pinned = link
            .pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        self.held
            .borrow_mut()
            .insert(want.hook.to_string(), FdLink::from(pinned));
        Ok(Attach::New)
    }

    fn clsact(&self, dp: &mut Datapath, want: &TcHook) -> Result<Attach> {
        let record = FilterRecord {
            iface: want.iface.to_string(),
            egress: want.kind == TcAttachType::Egress,
        };
        let program = dp.classifier(want.prog)?;
        // A filter at netplane's priority and handle on this interface is
        // an earlier agent's: replace its program in place. None there
        // (ENOENT): make it.
        let replaced = record
            .link()
            .map_err(anyhow::Error::from)
            .and_then(|link| Ok(program.attach_to_link(link)?));
        let (id, attach) = match replaced {
            Ok(id) => (id, Attach::Adopted),
            Err(_) => {
                ensure_clsact(want.iface)?;
                let opts = NlOptions {
                    priority: FILTER_PRIORITY,
                    handle: TcHandle::from(FILTER_HANDLE),
                    classid: None,
                };
                let id = program
                    .attach_with_options(want.iface, want.kind, TcAttachOptions::Netlink(opts))
                    .with_context(|| {
                        format!("attaching {} to {} (clsact filter)", want.prog, want.iface)
                    })?;
                (id, Attach::New)
            }
        };
        // aya detaches a netlink link it drops; the filter must outlive
        // this agent as a pinned link does. Forgetting it leaks nothing (it
        // is an interface index and a handle, no file descriptor).
        std::mem::forget(program.take_link(id)?);
        let path = self.filters.join(want.hook);
        std::fs::write(&path, serde_json::to_vec(&record)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(attach)
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

    /// Detaches a hook now and removes its pin or record. Absent is fine.
    pub fn remove(&self, hook: &str) -> Result<()> {
        self.remove_link(hook)?;
        self.remove_filter(hook)
    }

    /// A pinned link: BPF_LINK_DETACH, then the pin. Only unpinning would
    /// detach too, but later: the kernel frees an unlinked bpffs inode
    /// after an RCU grace period.
    fn remove_link(&self, hook: &str) -> Result<()> {
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

    /// A clsact filter: deleted (RTM_DELTFILTER), then its record.
    fn remove_filter(&self, hook: &str) -> Result<()> {
        let path = self.filters.join(hook);
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(());
        };
        if let Ok(record) = serde_json::from_slice::<FilterRecord>(&bytes) {
            // A filter whose interface is gone went with it.
            match record.link() {
                Ok(link) => {
                    if let Err(e) = link.detach() {
                        tracing::debug!(hook, "deleting the clsact filter: {e}");
                    }
                }
                Err(e) => tracing::debug!(hook, "clsact filter's interface: {e}"),
            }
        }
        match std::fs::remove_file(&path) {
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

    /// The hooks attached now: pinned links and recorded filters.
    pub fn pinned(&self) -> Vec<String> {
        let mut hooks: Vec<String> = [&self.dir, &self.filters]
            .into_iter()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        hooks.sort();
        hooks.dedup();
        hooks
    }
}

/// Adds the clsact qdisc to `iface`; one already there is fine.
fn ensure_clsact(iface: &str) -> Result<()> {
    let there = |e: &tc::TcError| matches!(e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
    match tc::qdisc_add_clsact(iface) {
        Err(e) if !there(&e) => Err(e).with_context(|| format!("adding clsact to {iface}")),
        _ => Ok(()),
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
