//! The flow logs as `netplane flows` and the page read them: the last
//! events of each agent's log, then what it appends (the agent writes them:
//! `agent::flows`).
use std::{
    fs::File,
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::Value;

use crate::agent::flows::log_path;

/// A line for people.
pub fn render(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let what = match s("event").as_str() {
        "translation" => format!("translated to {}", s("translated")),
        "expiry" => format!("expired (was {})", s("translated")),
        "drop" => format!("dropped: {} ({})", s("reason"), v["code"]),
        _ => "new flow".into(),
    };
    format!(
        "{:<9} {:<12} {:<5} {:<22} -> {:<22} {what}",
        s("agent"),
        s("event"),
        s("proto"),
        s("src"),
        s("dst")
    )
}

/// Follows the flow logs of some agents: the last events of each first,
/// then whatever they append (a rotated log is read again from its start).
pub struct LogTail {
    readers: Vec<(PathBuf, u64)>,
}

impl LogTail {
    /// Opens the logs of `agents` and returns the last `last` events of
    /// each, oldest first within each log.
    pub fn open(agents: &[String], last: usize) -> (LogTail, Vec<Value>) {
        let mut readers = Vec::new();
        let mut events = Vec::new();
        for a in agents {
            let path = log_path(a);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            events.extend(
                lines[lines.len().saturating_sub(last)..]
                    .iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
            );
            readers.push((path, text.len() as u64));
        }
        (LogTail { readers }, events)
    }

    /// The events appended since the last call.
    pub fn poll(&mut self) -> Result<Vec<Value>> {
        let mut events = Vec::new();
        for (path, offset) in &mut self.readers {
            let Ok(mut f) = File::open(&*path) else {
                continue;
            };
            let len = f.metadata()?.len();
            if len < *offset {
                *offset = 0; // rotated
            }
            f.seek(SeekFrom::Start(*offset))?;
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                if !line.ends_with('\n') {
                    break; // a line still being written
                }
                *offset += line.len() as u64;
                if let Ok(v) = serde_json::from_str::<Value>(line.trim_end()) {
                    events.push(v);
                }
                line.clear();
            }
        }
        Ok(events)
    }
}

/// Reads the logs of `agents` (the last `last` events each), then with
/// `follow` keeps printing new events until `until` (or forever).
pub fn show(
    agents: &[String],
    last: usize,
    follow: bool,
    until: Option<Duration>,
    out: &mut dyn FnMut(&Value),
) -> Result<()> {
    let (mut tail, first) = LogTail::open(agents, last);
    first.iter().for_each(&mut *out);
    if !follow {
        return Ok(());
    }
    let deadline = until.map(|d| Instant::now() + d);
    while deadline.is_none_or(|d| Instant::now() < d) {
        tail.poll()?.iter().for_each(&mut *out);
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
