//! The pod registry: one JSON record per pod attached on a node, written by
//! by the CNI plugin (netplane-cni) when it attaches a pod, and read by the
//! node's agent, which registers the pod in the data path.
use std::{fs, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::paths;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// The runtime's container ID (CNI_CONTAINERID): the record's key.
    pub container_id: String,
    /// The pod's name (K8S_POD_NAME), else the container ID.
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// The pod's network namespace.
    pub netns: String,
    /// Host side of the pod's veth, in the node's namespace.
    pub host_ifname: String,
    /// MAC of the pod's eth0.
    pub pod_mac: String,
}

fn record_path(node: &str, container_id: &str) -> PathBuf {
    paths::pod_registry(node).join(format!("{container_id}.json"))
}

/// Writes a record atomically (the agent never sees half a file).
pub fn register(rec: &PodRecord) -> Result<()> {
    let dir = paths::pod_registry(&rec.node);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", rec.container_id));
    let written = fs::write(&tmp, serde_json::to_vec_pretty(rec)?)
        .and_then(|()| fs::rename(&tmp, record_path(&rec.node, &rec.container_id)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp); // a full disk leaves no half record
    }
    Ok(written?)
}

pub fn unregister(node: &str, container_id: &str) -> Result<()> {
    match fs::remove_file(record_path(node, container_id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// All records of a node, sorted by name. Unreadable records are skipped
/// with a warning rather than stopping the node.
pub fn lookup(node: &str, container_id: &str) -> Option<PodRecord> {
    let bytes = fs::read(record_path(node, container_id)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn registered(node: &str) -> Result<Vec<PodRecord>> {
    let dir = paths::pod_registry(node);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice(&b)?))
        {
            Ok(rec) => out.push(rec),
            Err(e) => tracing::warn!("skipping pod record {}: {e:#}", path.display()),
        }
    }
    out.sort_by(|a: &PodRecord, b| a.container_id.cmp(&b.container_id));
    Ok(out)
}
