//! The agent's life after attaching, as tasks on one tokio runtime: the
//! status file, signals, the cluster file watched by inotify (and SIGHUP),
//! the reconcile tick, collection of expired translations, flow events from
//! the ring buffer (drained on a clock, or woken by `AsyncFd` when it fills
//! up) and the programs' log (woken by `AsyncFd`), and one
//! HTTP server for metrics. A current-thread runtime: the node's network
//! namespace was entered on this thread, and one thread owns the maps.
use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures_util::StreamExt as _;
use inotify::{Inotify, WatchMask};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{debug, error, info, warn};

use super::{
    AgentStatus, COLLECT_BUDGET, COLLECT_INTERVAL, Options, RECONCILE_INTERVAL,
    SERVICES_STATUS_FILE,
    collector::{Collector, expired_at, monotonic_ns},
    flows::EventLog,
    is_sweep,
    metrics::{self, AgentCounters},
    nat_view::record_peaks,
    roles::Role,
    service_table::ServiceTable,
};
use netplane_common::events::EVENT_DRAIN_INTERVAL_MS;

use crate::{
    config::Cluster,
    datapath::{Datapath, Pins, hooks::Hooks},
    paths,
    source::{NodeView, RefusedNode, SOURCE_STATUS_FILE, SourceStatus, service_watch::ServiceView},
};

/// The agent's runtime: current-thread, on the thread that entered the
/// node's network namespace (the Kubernetes client's sockets live there
/// too).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the agent's runtime")
}

/// The Kubernetes watches an agent follows, when it has them.
#[derive(Default)]
pub struct Watches {
    pub nodes: Option<watch::Receiver<NodeView>>,
    /// A node's agent: Services and their EndpointSlices.
    pub services: Option<watch::Receiver<ServiceView>>,
}

/// Runs the agent until SIGTERM or SIGINT, then leaves the data path
/// attached (or removes it with `--detach-on-exit`).
#[allow(clippy::too_many_arguments)]
pub fn serve(
    runtime: tokio::runtime::Runtime,
    mut dp: Datapath,
    hooks: Hooks,
    status: &AgentStatus,
    cluster: Cluster,
    watches: Watches,
    opts: &Options,
    role: impl Role,
) -> Result<()> {
    let name = status.node.as_str();
    let status_path = paths::agent_status(name);
    let service_table = match watches.services {
        Some(_) => Some(ServiceTable::adopt(&mut dp)?),
        None => None,
    };
    let mut agent = Agent {
        dp,
        hooks,
        settings: cluster.clone(),
        cluster,
        nodes: watches.nodes,
        services: watches.services,
        service_table,
        refusals_said: HashSet::new(),
        role,
        opts: opts.clone(),
        status: status.clone(),
        own: Arc::new(AgentCounters::default()),
        collector: Collector::default(),
        last_collect: Instant::now(),
        failing: HashMap::new(),
    };
    let result = runtime.block_on(agent.run());
    let _ = std::fs::remove_file(&status_path);
    if opts.detach_on_exit {
        info!(agent = name, "stopping: detaching programs, removing pins");
        agent.hooks.remove_all()?;
        drop(agent.dp);
        let _ = std::fs::remove_dir_all(&status.pins);
        let _ = std::fs::remove_file(paths::node_dir(name).join(super::applied::APPLIED_FILE));
    } else {
        info!(
            agent = name,
            "stopping: programs stay attached, maps pinned (--detach-on-exit to remove)"
        );
    }
    result
}

struct Agent<R> {
    dp: Datapath,
    hooks: Hooks,
    /// The cluster file as last read (its nodes unused with the Kubernetes
    /// source).
    settings: Cluster,
    /// What is applied: the settings with the nodes of the source.
    cluster: Cluster,
    /// The Kubernetes watch's latest view, when the nodes come from there.
    nodes: Option<watch::Receiver<NodeView>>,
    /// The Services watch, and what of it is in the maps.
    services: Option<watch::Receiver<ServiceView>>,
    service_table: Option<ServiceTable>,
    /// Refused nodes already logged, with why.
    refusals_said: HashSet<(String, String)>,
    role: R,
    opts: Options,
    status: AgentStatus,
    own: Arc<AgentCounters>,
    collector: Collector,
    last_collect: Instant,
    /// What is failing now, and how (logged once until it changes).
    failing: HashMap<&'static str, String>,
}

impl<R: Role> Agent<R> {
    async fn run(&mut self) -> Result<()> {
        let name = self.status.node.clone();
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        if let Some(addr) = self.opts.metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on {addr}"))?;
            let pins = PathBuf::from(&self.status.pins);
            tokio::spawn(metrics::serve(listener, pins, Arc::clone(&self.own)));
            info!(%addr, "metrics on /metrics");
        }
        std::fs::create_dir_all(paths::node_dir(&name))?;
        self.publish();
        std::fs::write(
            paths::agent_status(&name),
            serde_json::to_vec_pretty(&self.status)?,
        )?;
        info!(
            agent = name,
            uplink = self.status.uplink,
            pins = self.status.pins,
            adopted = self.status.adopted.len(),
            "data path attached"
        );

        let mut events = EventLog::open(&name, &mut self.dp)?;
        let mut ring = events.take_ring().map(watch_fd).transpose()?;
        // The programs' own messages, into this log (tracing picks up `log`).
        let mut bpf_log = match self.dp.logger() {
            Ok(l) => Some(watch_fd(l)?),
            Err(e) => {
                warn!("no eBPF log: {e}");
                None
            }
        };
        let mut config_changes = match self.opts.config.as_deref() {
            Some(path) => Some(watch(path)?),
            None => None,
        };
        let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The programs wake the agent only when the ring fills up: below
        // that it drains on this clock.
        let mut drain = tokio::time::interval(Duration::from_millis(EVENT_DRAIN_INTERVAL_MS));
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = hangup.recv() => self.reload(),
                Some(changed) = next_change(&mut config_changes) => {
                    if changed {
                        self.reload();
                    }
                }
                Some(()) = node_change(&mut self.nodes) => self.apply_nodes(),
                Some(()) = node_change(&mut self.services) => self.apply_services(),
                _ = tick.tick() => self.tick(&mut events),
                _ = drain.tick() => {
                    if let Some(r) = ring.as_mut() {
                        events.drain(r.get_mut());
                    }
                }
                ready = readable(&mut ring) => {
                    let mut guard = ready?;
                    events.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                ready = readable(&mut bpf_log) => {
                    let mut guard = ready?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
        }
        Ok(())
    }

    /// Re-reads the cluster file and applies it; a bad file is reported
    /// and the previous state kept.
    fn reload(&mut self) {
        let path = self.opts.config.as_deref();
        let read = match self.nodes {
            None => Cluster::load(path),
            Some(_) => Cluster::load_settings(path),
        };
        match read {
            Ok(settings) => {
                let previous = std::mem::replace(&mut self.settings, settings);
                let view = self.nodes.as_ref().map(|rx| rx.borrow().clone());
                let cluster = match view {
                    None => self.settings.clone(),
                    Some(view) => self.admit(&view),
                };
                if let Err(e) = self.role.apply(&mut self.dp, &cluster) {
                    self.settings = previous;
                    error!("cluster file not applied, keeping the previous one: {e:#}");
                    return;
                }
                self.cluster = cluster;
                info!("cluster file applied");
            }
            Err(e) => error!("cluster file not applied, keeping the previous one: {e:#}"),
        }
        self.publish();
    }

    /// Applies what the Kubernetes API now says about the nodes (once its
    /// first list is complete), held to the cluster file's rules.
    fn apply_nodes(&mut self) {
        let Some(rx) = self.nodes.as_mut() else {
            return;
        };
        let view = rx.borrow_and_update().clone();
        if view.listed {
            let cluster = self.admit(&view);
            if cluster.nodes != self.cluster.nodes {
                match self.role.apply(&mut self.dp, &cluster) {
                    Ok(()) => {
                        info!(
                            nodes = cluster.nodes.len(),
                            "nodes from the Kubernetes API applied"
                        );
                        self.cluster = cluster;
                    }
                    Err(e) => {
                        self.own.errors.fetch_add(1, Ordering::Relaxed);
                        error!("nodes from the Kubernetes API not applied: {e:#}");
                    }
                }
            }
        }
        self.publish();
    }

    /// Writes the Services the API now lists (once both lists are
    /// complete; until then an earlier agent's stay in force).
    fn apply_services(&mut self) {
        let (Some(rx), Some(table)) = (self.services.as_mut(), self.service_table.as_mut()) else {
            return;
        };
        let view = rx.borrow_and_update().clone();
        if !view.listed {
            return;
        }
        let applied = table.apply(&mut self.dp, &view.frontends);
        if applied.is_ok() {
            let path = paths::node_dir(&self.status.node).join(SERVICES_STATUS_FILE);
            if let Err(e) = serde_json::to_vec_pretty(&view.frontends)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(std::fs::write(&path, b)?))
            {
                warn!("writing {}: {e}", path.display());
            }
        }
        self.report("applying services", applied);
    }

    /// The settings with the view's nodes; refusals logged once each, and
    /// counted.
    fn admit(&mut self, view: &NodeView) -> Cluster {
        let (cluster, refused) = crate::source::admit(&self.settings, view);
        let now: HashSet<(String, String)> =
            refused.into_iter().map(|r| (r.node, r.reason)).collect();
        for (node, reason) in now.difference(&self.refusals_said) {
            warn!(node, "node not routed: {reason}");
            self.own.nodes_refused.fetch_add(1, Ordering::Relaxed);
        }
        self.refusals_said = now;
        cluster
    }

    /// What the views read: the cluster as applied (`agent::applied`),
    /// where the nodes came from and the watch's state (for `routes` and
    /// the metrics).
    fn publish(&self) {
        let applied = super::applied::Applied {
            // Absolute, so a reader anywhere finds the same file.
            config: self
                .opts
                .config
                .as_deref()
                .map(|p| std::fs::canonicalize(p).unwrap_or(p.into())),
            cluster: self.cluster.clone(),
            outbound: self.role.outbound_plan(&self.cluster),
        };
        if let Err(e) = super::applied::publish(&self.status.node, &applied) {
            warn!("{e:#}");
        }
        let status = SourceStatus {
            source: if self.nodes.is_some() {
                "kubernetes"
            } else {
                "file"
            }
            .into(),
            watch: self.nodes.as_ref().map(|rx| rx.borrow().state),
            nodes: self.cluster.nodes(),
            refused: {
                let mut r: Vec<RefusedNode> = self
                    .refusals_said
                    .iter()
                    .map(|(node, reason)| RefusedNode {
                        node: node.clone(),
                        reason: reason.clone(),
                    })
                    .collect();
                r.sort();
                r
            },
        };
        if let Some(w) = status.watch {
            self.own.set_watch(w);
        }
        let path = paths::node_dir(&self.status.node).join(SOURCE_STATUS_FILE);
        if let Err(e) = serde_json::to_vec_pretty(&status)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(std::fs::write(&path, b)?))
        {
            warn!("writing {}: {e}", path.display());
        }
    }

    /// Every RECONCILE_INTERVAL: the role's reconcile, and a step of
    /// collection (a pass starts every COLLECT_INTERVAL). A failure is
    /// logged (once until it changes), counted, and tried again next tick:
    /// the agent ending would leave the pinned programs allocating ports
    /// with nobody collecting them.
    fn tick(&mut self, events: &mut EventLog) {
        let restored = self.restore_pins();
        self.report("restoring the pins", restored);
        let reconciled = self.role.tick(&mut self.dp, &self.hooks);
        self.report("reconcile", reconciled);
        let collected = self.collect(events);
        if collected.is_err() {
            // Start the pass over: a step that failed midway left it unsure.
            self.collector = Collector::default();
        }
        self.report("collection", collected);
    }

    /// The bpffs unmounted under the agent drops every pin. The agent
    /// still holds its maps and links open, so nothing detaches; it mounts
    /// the bpffs again and pins them anew, so the CLI, the metrics and the
    /// next agent find them.
    fn restore_pins(&mut self) -> Result<()> {
        let pins = PathBuf::from(&self.status.pins);
        // The links' directory is made last: while it is there, all is.
        let links_dir = crate::datapath::hooks::links_dir(&pins);
        if links_dir.exists() {
            return Ok(());
        }
        crate::sys::ensure_bpffs(&paths::bpffs())?;
        std::fs::create_dir_all(&pins)?;
        self.dp.repin_maps(&pins)?;
        let links = match self.hooks.repin() {
            Ok(n) => n,
            Err(e) => {
                // Try it whole again next tick (the links are held open).
                let _ = std::fs::remove_dir_all(&links_dir);
                return Err(e);
            }
        };
        self.own.errors.fetch_add(1, Ordering::Relaxed);
        warn!(
            pins = %pins.display(),
            links,
            "the pins were gone (bpffs unmounted?): bpffs mounted again, maps and links pinned again; nothing was detached"
        );
        Ok(())
    }

    /// Logs a failure when it first appears or changes, and counts each.
    fn report(&mut self, what: &'static str, result: Result<()>) {
        match result {
            Ok(()) => {
                if self.failing.remove(what).is_some() {
                    info!("{what} works again");
                }
            }
            Err(e) => {
                self.own.errors.fetch_add(1, Ordering::Relaxed);
                let text = format!("{e:#}");
                if self.failing.get(what) != Some(&text) {
                    error!("{what} failed (tried again every tick): {text}");
                    self.failing.insert(what, text);
                }
            }
        }
    }

    fn collect(&mut self, events: &mut EventLog) -> Result<()> {
        let name = self.status.node.as_str();
        if self.last_collect.elapsed() >= COLLECT_INTERVAL && self.collector.idle() {
            self.last_collect = Instant::now();
            let runs = self.own.collection_runs.fetch_add(1, Ordering::Relaxed);
            if is_sweep(runs) {
                self.collector.start_sweep();
            } else {
                self.collector.start();
            }
            // The peaks are for people; their failure must not stop the
            // collection, which returns ports.
            let peaks = record_peaks(name, &Pins::at(&self.status.pins));
            self.report("recording port peaks", peaks);
        }
        if !self.collector.idle() {
            let (t, now) = (self.role.timeouts(&self.cluster), monotonic_ns());
            let expired = self
                .collector
                .step(&mut self.dp, COLLECT_BUDGET, &mut |k, e| {
                    expired_at(&t, now, k, e)
                })?;
            self.own
                .expired
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
            if !expired.is_empty() {
                debug!(
                    expired = expired.len(),
                    "translations expired, ports returned"
                );
                events.expired(&expired);
                let told = self.role.expired(&self.cluster, &expired);
                self.report("telling the ends of expired flows", told);
            }
        }
        Ok(())
    }
}

/// The cluster file's changes: inotify on its directory (editors and
/// `mv` replace the file, so the directory is what to watch), filtered by
/// name. Where no inotify instance is left (128 per user by default: a
/// 400-node lab runs 401 agents as root), the file is checked every
/// [`CONFIG_POLL`] instead.
enum ConfigWatch {
    Inotify {
        events: inotify::EventStream<Vec<u8>>,
        name: OsString,
    },
    Poll {
        path: PathBuf,
        seen: Option<FileStamp>,
    },
}

/// How often a polled cluster file is looked at.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// What tells a changed file from the same one: replaced (inode), written
/// (mtime) or resized.
type FileStamp = (u64, std::time::SystemTime, u64);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

fn watch(path: &Path) -> Result<ConfigWatch> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .context("the cluster file has no file name")?
        .to_os_string();
    let inotify = Inotify::init().and_then(|i| {
        i.watches().add(
            &dir,
            WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE,
        )?;
        Ok(i)
    });
    Ok(match inotify {
        Ok(i) => ConfigWatch::Inotify {
            events: i.into_event_stream(vec![0u8; 4096])?,
            name,
        },
        Err(e) => {
            warn!(
                "no inotify watch on {} ({e}): checking the cluster file every {} s instead (SIGHUP reloads at once)",
                dir.display(),
                CONFIG_POLL.as_secs()
            );
            ConfigWatch::Poll {
                path: path.to_path_buf(),
                seen: stamp(path),
            }
        }
    })
}

/// The next event of the watch: Some(true) when it concerns the cluster
/// file; never resolves without a watch.
async fn next_change(watch: &mut Option<ConfigWatch>) -> Option<bool> {
    match watch {
        Some(ConfigWatch::Inotify { events, name }) => match events.next().await {
            Some(Ok(ev)) => Some(ev.name.is_some_and(|n| n == *name)),
            Some(Err(e)) => {
                warn!("watching the cluster file: {e}");
                Some(false)
            }
            None => std::future::pending().await,
        },
        Some(ConfigWatch::Poll { path, seen }) => {
            tokio::time::sleep(CONFIG_POLL).await;
            let now = stamp(path);
            let changed = now.is_some() && now != *seen;
            *seen = now;
            Some(changed)
        }
        None => std::future::pending().await,
    }
}

/// The next change of a Kubernetes watch; never resolves without one
/// (or once its sender is gone: the last state stays in force).
async fn node_change<T>(watch: &mut Option<watch::Receiver<T>>) -> Option<()> {
    match watch {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Registers a ring buffer (the flow events', or aya-log's) with the
/// runtime, for readability.
fn watch_fd<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: both callers pass an owner of its fd (aya's RingBuf holds the
    // map's OwnedFd; EbpfLogger holds its RingBuf), which stays open and
    // unchanged for as long as the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Readiness of an optional fd; never resolves without one.
async fn readable<T: std::os::fd::AsRawFd>(
    fd: &mut Option<AsyncFd<T>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, T>> {
    match fd {
        Some(fd) => fd.readable_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback when no inotify instance is left (a 400-node lab): a
    /// write and a replacement are changes, an untouched or removed file
    /// is not (nothing to reload), and a file that comes back is.
    #[tokio::test]
    async fn a_polled_cluster_file_tells_changes_from_none() {
        let dir = std::env::temp_dir().join(format!("netplane-poll-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.toml");
        std::fs::write(&path, "a").unwrap();
        let mut w = Some(ConfigWatch::Poll {
            path: path.clone(),
            seen: stamp(&path),
        });
        assert_eq!(next_change(&mut w).await, Some(false), "untouched");
        std::fs::write(&path, "ab").unwrap();
        assert_eq!(next_change(&mut w).await, Some(true), "written");
        // Replaced as editors and ConfigMap updates do: same size, new inode.
        let new = dir.join("cluster.toml.new");
        std::fs::write(&new, "xy").unwrap();
        std::fs::rename(&new, &path).unwrap();
        assert_eq!(next_change(&mut w).await, Some(true), "replaced");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(next_change(&mut w).await, Some(false), "removed");
        std::fs::write(&path, "a").unwrap();
        assert_eq!(next_change(&mut w).await, Some(true), "back");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
