//! Flow events, the writing side: the agent drains the data path's ring
//! buffer (new flows, translations, drops) and adds its own (expiries) to
//! a JSON-lines log per agent. `inspect::flows` reads and follows them.
use std::{fs::OpenOptions, io::Write, net::Ipv4Addr, path::PathBuf};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use netplane_common::{
    DropReason,
    events::{FlowEvent, kind},
    nat::{FlowKey, NatEntry, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    registry,
};
use serde_json::{Value, json};

use crate::{datapath::Datapath, paths};

/// A log is rotated (to `.1`) past this size.
pub const MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;

pub fn log_path(agent: &str) -> PathBuf {
    paths::node_dir(agent).join("flows.jsonl")
}

/// The agent's end: the ring buffer and the log it writes.
pub struct EventLog {
    agent: String,
    ring: Option<RingBuf<MapData>>,
}

impl EventLog {
    pub fn open(agent: &str, dp: &mut Datapath) -> Result<EventLog> {
        let ring = dp.take_ring(registry::FLOW_EVENTS).transpose()?;
        Ok(EventLog {
            agent: agent.to_string(),
            ring,
        })
    }

    /// The ring buffer, for the caller to wait on (the agent wraps it in
    /// an `AsyncFd`); `drain` then reads it.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// Moves what the data path reported into the log.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let mut lines = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<FlowEvent>() {
                // SAFETY: the data path writes whole FlowEvents.
                let ev: FlowEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr() as *const FlowEvent) };
                lines.push(to_json(&self.agent, &ev));
            }
        }
        self.append(&lines);
    }

    /// Expired translations, as expiry events.
    pub fn expired(&mut self, flows: &[(FlowKey, NatEntry)]) {
        let now = super::collector::monotonic_ns();
        let lines: Vec<Value> = flows
            .iter()
            .map(|(k, e)| {
                to_json(
                    &self.agent,
                    &FlowEvent {
                        kind: kind::EXPIRY,
                        proto: k.proto,
                        src_ip: k.src_ip,
                        dst_ip: k.dst_ip,
                        src_port: k.src_port,
                        dst_port: k.dst_port,
                        nat_ip: e.nat_ip,
                        nat_port: e.nat_port,
                        ts_ns: now,
                        ..Default::default()
                    },
                )
            })
            .collect();
        self.append(&lines);
    }

    fn append(&self, lines: &[Value]) {
        if lines.is_empty() {
            return;
        }
        let path = log_path(&self.agent);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
            let _ = std::fs::rename(&path, path.with_extension("jsonl.1"));
        }
        let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&path) else {
            return;
        };
        let mut text = String::new();
        for l in lines {
            text.push_str(&l.to_string());
            text.push('\n');
        }
        let _ = f.write_all(text.as_bytes());
    }
}

fn addr(ip: u32) -> Ipv4Addr {
    Ipv4Addr::from(ip.to_ne_bytes())
}

fn endpoint(ip: u32, port: u16, proto: u8) -> String {
    match proto {
        PROTO_TCP | PROTO_UDP => format!("{}:{port}", addr(ip)),
        _ => addr(ip).to_string(),
    }
}

/// One event as a JSON object.
pub fn to_json(agent: &str, ev: &FlowEvent) -> Value {
    let proto = match ev.proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "other",
    };
    let mut v = json!({
        "agent": agent,
        "ts_ns": ev.ts_ns,
        "proto": proto,
        "src": endpoint(ev.src_ip, ev.src_port, ev.proto),
        "dst": endpoint(ev.dst_ip, ev.dst_port, ev.proto),
    });
    match ev.kind {
        kind::NEW_FLOW => v["event"] = "new_flow".into(),
        kind::TRANSLATION => {
            v["event"] = "translation".into();
            v["translated"] = endpoint(ev.nat_ip, ev.nat_port, ev.proto).into();
        }
        kind::EXPIRY => {
            v["event"] = "expiry".into();
            v["translated"] = endpoint(ev.nat_ip, ev.nat_port, ev.proto).into();
        }
        _ => {
            v["event"] = "drop".into();
            v["code"] = ev.code.into();
            v["reason"] = DropReason::ALL
                .iter()
                .find(|r| **r as u16 == ev.code)
                .map_or("unknown", |r| r.name())
                .into();
        }
    }
    v
}
