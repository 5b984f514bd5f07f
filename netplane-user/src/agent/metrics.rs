//! Prometheus metrics of an agent, read from its pinned maps on every
//! scrape: packets and bytes per path, drops per reason, live translations,
//! SNAT ports per block, map fill, collection runs.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Result;
use netplane_common::registry;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::nat_view::{self, SlotUse};
use crate::datapath::{Counters, memory, pins::Pins};

/// What the agent itself counts (the rest is in the maps).
#[derive(Debug, Default)]
pub struct AgentCounters {
    pub collection_runs: AtomicU64,
    pub expired: AtomicU64,
    /// Failed reconcile ticks and collection steps: logged, counted, and
    /// tried again on the next tick.
    pub errors: AtomicU64,
    /// Nodes the source listed that were not routed (each refusal once).
    pub nodes_refused: AtomicU64,
    /// The Kubernetes watch: 0 none (file source), 1 starting, 2 synced,
    /// 3 resyncing, 4 disconnected; and since when (Unix seconds).
    pub watch_state: AtomicU64,
    pub disconnected_since: AtomicU64,
}

impl AgentCounters {
    pub fn set_watch(&self, w: crate::source::WatchState) {
        use crate::source::WatchState::*;
        let (state, since) = match w {
            Starting => (1, 0),
            Synced => (2, 0),
            Resyncing => (3, 0),
            Disconnected { since } => (4, since),
        };
        self.watch_state.store(state, Ordering::Relaxed);
        self.disconnected_since.store(since, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct DataPath {
    pins: Pins,
    own: Arc<AgentCounters>,
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    let c = ConstCounter::new(0u64);
    let mut family = enc.encode_descriptor(name, help, None, c.metric_type())?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> std::fmt::Result {
    let g = ConstGauge::new(0f64);
    let mut family = enc.encode_descriptor(name, help, None, g.metric_type())?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Entries in one of the maps whose fill the metrics show.
fn entries(pins: &Pins, name: &str) -> Option<usize> {
    Some(match name {
        n if n == registry::ROUTES.name => pins.lpm_trie(registry::ROUTES).ok()?.keys().count(),
        n if n == registry::LOCAL_PODS.name => pins.hash(registry::LOCAL_PODS).ok()?.keys().count(),
        n if n == registry::NAT_OUT.name => pins.hash(registry::NAT_OUT).ok()?.keys().count(),
        n if n == registry::NAT_IN.name => pins.hash(registry::NAT_IN).ok()?.keys().count(),
        _ => return None,
    })
}

impl Collector for DataPath {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        if let Ok(c) = Counters::read_pinned(&self.pins) {
            let rows = |f: fn(&crate::datapath::PathStat) -> u64| -> Vec<(Labels, u64)> {
                c.paths
                    .iter()
                    .map(|p| (vec![("path", p.path.to_string())], f(p)))
                    .collect()
            };
            counter(
                &mut enc,
                "netplane_path_packets",
                "Packets the data path sent each way.",
                &rows(|p| p.packets),
            )?;
            counter(
                &mut enc,
                "netplane_path_bytes",
                "Bytes the data path sent each way.",
                &rows(|p| p.bytes),
            )?;
            let drops: Vec<(Labels, u64)> = c
                .drops
                .iter()
                .map(|d| {
                    (
                        vec![
                            ("reason", d.reason.to_string()),
                            ("code", d.code.to_string()),
                        ],
                        d.packets,
                    )
                })
                .collect();
            counter(
                &mut enc,
                "netplane_drops",
                "Packets dropped, by numbered reason.",
                &drops,
            )?;
        }
        if let Ok(slots) = nat_view::slot_use(&self.pins) {
            let lab = |s: &SlotUse| {
                vec![
                    ("snat_ip", s.snat_ip.to_string()),
                    ("ports", s.ports.clone()),
                ]
            };
            let alloc: Vec<_> = slots.iter().map(|s| (lab(s), s.allocated as f64)).collect();
            let cap: Vec<_> = slots
                .iter()
                .map(|s| (lab(s), f64::from(s.capacity)))
                .collect();
            let fails: Vec<_> = slots.iter().map(|s| (lab(s), s.failures)).collect();
            let evicted: Vec<_> = slots.iter().map(|s| (lab(s), s.evicted)).collect();
            gauge(
                &mut enc,
                "netplane_snat_ports_allocated",
                "SNAT ports in use per SNAT IP and block.",
                &alloc,
            )?;
            gauge(
                &mut enc,
                "netplane_snat_ports_capacity",
                "SNAT ports per SNAT IP and block.",
                &cap,
            )?;
            counter(
                &mut enc,
                "netplane_snat_allocation_failures",
                "New flows refused for want of a port.",
                &fails,
            )?;
            counter(
                &mut enc,
                "netplane_snat_evictions",
                "Unreplied flows given up to make room in a full NAT table.",
                &evicted,
            )?;
        }
        let nat = entries(&self.pins, registry::NAT_OUT.name).unwrap_or(0);
        gauge(
            &mut enc,
            "netplane_nat_entries",
            "Live translations.",
            &[(vec![], nat as f64)],
        )?;
        let memory = memory::kernel_memory(&self.pins).unwrap_or_default();
        let max_entries = |name: &str| {
            memory
                .maps
                .iter()
                .find(|m| m.map == name)
                .map(|m| m.max_entries)
        };
        let fill: Vec<(Labels, f64)> = [
            registry::ROUTES.name,
            registry::LOCAL_PODS.name,
            registry::NAT_OUT.name,
            registry::NAT_IN.name,
        ]
        .iter()
        .filter_map(|name| {
            let max = max_entries(name).filter(|m| *m > 0)?;
            Some((
                vec![("map", name.to_string())],
                entries(&self.pins, name)? as f64 / f64::from(max),
            ))
        })
        .collect();
        gauge(
            &mut enc,
            "netplane_map_fill_ratio",
            "Entries over capacity, per map.",
            &fill,
        )?;
        let held: Vec<(Labels, f64)> = memory
            .maps
            .iter()
            .map(|m| (vec![("map", m.map.to_string())], m.bytes as f64))
            .collect();
        gauge(
            &mut enc,
            "netplane_kernel_memory_bytes",
            "Kernel memory each map of the data path holds (memlock from its fdinfo).",
            &held,
        )?;
        if let Some(rss) = memory::rss_bytes(std::process::id()) {
            gauge(
                &mut enc,
                "netplane_agent_rss_bytes",
                "The agent's own resident memory.",
                &[(vec![], rss as f64)],
            )?;
        }
        let runs = self.own.collection_runs.load(Ordering::Relaxed);
        let expired = self.own.expired.load(Ordering::Relaxed);
        let errors = self.own.errors.load(Ordering::Relaxed);
        counter(
            &mut enc,
            "netplane_agent_errors",
            "Reconcile ticks and collection steps that failed (logged, tried again next tick).",
            &[(vec![], errors)],
        )?;
        counter(
            &mut enc,
            "netplane_nodes_refused",
            "Nodes the source listed that break a rule of the cluster file (the 401st route, a pod CIDR outside the cluster's) or are incomplete.",
            &[(vec![], self.own.nodes_refused.load(Ordering::Relaxed))],
        )?;
        let state = self.own.watch_state.load(Ordering::Relaxed);
        if state != 0 {
            let states = ["starting", "synced", "resyncing", "disconnected"];
            let rows: Vec<(Labels, f64)> = states
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let on = u64::try_from(i + 1).is_ok_and(|i| i == state);
                    (vec![("state", s.to_string())], f64::from(u8::from(on)))
                })
                .collect();
            gauge(
                &mut enc,
                "netplane_kubernetes_watch",
                "The Kubernetes node watch's state (1 for the current one).",
                &rows,
            )?;
            gauge(
                &mut enc,
                "netplane_kubernetes_disconnected_since_seconds",
                "Unix time the API server was last lost (0 while connected).",
                &[(
                    vec![],
                    self.own.disconnected_since.load(Ordering::Relaxed) as f64,
                )],
            )?;
        }
        counter(
            &mut enc,
            "netplane_collection_runs",
            "Passes of the expired-translation collector.",
            &[(vec![], runs)],
        )?;
        counter(
            &mut enc,
            "netplane_nat_expired",
            "Translations expired and their ports returned.",
            &[(vec![], expired)],
        )?;
        Ok(())
    }
}

/// The metrics text of an agent (Prometheus text exposition format).
pub fn render(pins: PathBuf, own: Arc<AgentCounters>) -> Result<String> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DataPath {
        pins: Pins::at(pins),
        own,
    }));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Serves GET /metrics on `listener` (bound in the agent's network
/// namespace) until the runtime ends.
pub async fn serve(listener: tokio::net::TcpListener, pins: PathBuf, own: Arc<AgentCounters>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (pins, own) = (pins.clone(), Arc::clone(&own));
            async move {
                match render(pins, own) {
                    Ok(body) => (
                        axum::http::StatusCode::OK,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    ),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        format!("{e:#}"),
                    ),
                }
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics server: {e}");
    }
}
