//! What each `netplane-bench` command prints, one JSON value per run.
use serde::{Deserialize, Serialize};

/// `loadgen udp-sink`: datagrams counted until its deadline, or until it
/// idles after the first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UdpSink {
    pub packets: u64,
    /// From the first datagram to the last.
    pub seconds: f64,
    pub packets_per_second: f64,
}

/// `loadgen udp-flood`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UdpFlood {
    pub sent: u64,
    /// Sends the kernel refused (full queues).
    pub refused: u64,
    pub seconds: f64,
}

/// `loadgen tcp-rr`: one connection, request and response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpRr {
    pub transactions: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// `loadgen tcp-crr`: a connection per transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpCrr {
    pub connections: u64,
    /// Connects or replies that failed or took longer than 500 ms.
    pub failures: u64,
    pub seconds: f64,
    pub per_second: f64,
}

/// `loadgen udp-spray`: flows opened toward many destinations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UdpSpray {
    pub flows: u64,
    pub refused: u64,
    pub seconds: f64,
}

/// `cni`: ADD and DEL latency of the plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniLatency {
    pub runs: usize,
    /// Milliseconds: median and 90th percentile.
    pub add_p50_ms: f64,
    pub add_p90_ms: f64,
    pub del_p50_ms: f64,
    pub del_p90_ms: f64,
}

/// `run-path`: how often it ran one program path, and that path's row in
/// the program-cost table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunPath {
    pub runs: u64,
    pub cost_row: String,
}

/// `flow-events`: one case's ns per run with the programs built to report
/// flow events and not to, one sample per round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowEventsCase {
    pub name: String,
    pub events_on: Vec<f64>,
    pub events_off: Vec<f64>,
}
