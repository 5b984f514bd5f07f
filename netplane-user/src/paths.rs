//! Where netplane keeps its runtime state. Pins live in a bpffs mounted under
//! /run, not /sys/fs/bpf: `ip netns exec` remounts /sys, so a pin there is
//! not the same file inside a lab namespace.
use std::path::PathBuf;

/// Root of all runtime state; `NETPLANE_RUN_DIR` moves it (tests, parallel labs).
pub fn run_dir() -> PathBuf {
    std::env::var_os("NETPLANE_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/netplane"))
}

/// The bpffs mount that holds every node's pinned maps.
pub fn bpffs() -> PathBuf {
    run_dir().join("bpf")
}

/// A node's pinned maps.
pub fn pins(node: &str) -> PathBuf {
    bpffs().join(node)
}

/// A node's plain files: the agent's status and the pod registry.
pub fn node_dir(node: &str) -> PathBuf {
    run_dir().join("nodes").join(node)
}

/// Pods attached on a node, one JSON record each (written by the pod
/// attach step, read by the agent).
pub fn pod_registry(node: &str) -> PathBuf {
    node_dir(node).join("pods")
}

/// The running agent's status file (written once it is attached).
pub fn agent_status(node: &str) -> PathBuf {
    node_dir(node).join("agent.json")
}

/// The verifier's logs of programs the kernel refused, one per program.
pub fn verifier_logs() -> PathBuf {
    run_dir().join("verifier")
}

/// The lab's state (hosts, agents, logs).
pub fn lab_dir() -> PathBuf {
    run_dir().join("lab")
}
