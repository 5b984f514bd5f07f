//! What moves on the page, pushed to it: one sampler reads the cluster
//! every PUSH_INTERVAL and broadcasts what it saw to every open page as
//! server-sent events — `topology` when it changes, `ports` and `stats`
//! every time, `flows` when the agents logged new events, and `unavailable` when
//! there is nothing to read (the lab down, no agent). A page that connects
//! gets the latest of each first.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::PUSH_INTERVAL;
use netplane::inspect::{self, flows::LogTail, port_use};

/// One named event and its JSON.
#[derive(Debug, Clone, PartialEq)]
struct Push {
    name: &'static str,
    data: String,
}

/// Pages connected at once, times events they may fall behind by before
/// they skip (a slow page misses samples, never blocks the sampler).
const BACKLOG: usize = 64;

pub struct Hub {
    tx: broadcast::Sender<Arc<Push>>,
    /// The last event of each name (flows excepted), for new pages.
    latest: Mutex<BTreeMap<&'static str, Arc<Push>>>,
}

/// What the sampler remembers between samples.
#[derive(Default)]
struct Sampler {
    topology: Option<String>,
    agents: Vec<String>,
    tail: Option<LogTail>,
}

impl Sampler {
    /// Reads the cluster once: the events to push.
    fn sample(&mut self) -> Vec<Push> {
        let mut out = Vec::new();
        let push = |out: &mut Vec<Push>, name, v: Value| {
            out.push(Push {
                name,
                data: v.to_string(),
            });
        };
        match crate::running_cluster()
            .and_then(|c| super::topology::topology(&c))
            .and_then(|t| Ok(serde_json::to_string(&t)?))
        {
            Ok(t) if self.topology.as_ref() != Some(&t) => {
                self.topology = Some(t.clone());
                out.push(Push {
                    name: "topology",
                    data: t,
                });
            }
            Ok(_) => {}
            Err(e) => push(
                &mut out,
                "unavailable",
                json!({ "error": format!("{e:#}") }),
            ),
        }
        let agents = match inspect::agents(None) {
            Ok(a) if !a.is_empty() => a,
            Ok(_) | Err(_) => {
                self.agents.clear();
                self.tail = None;
                push(
                    &mut out,
                    "unavailable",
                    json!({ "error": "no agent is running" }),
                );
                return out;
            }
        };
        if agents != self.agents || self.tail.is_none() {
            // New agents: follow their logs from now on.
            self.tail = Some(LogTail::open(&agents, 0).0);
            self.agents = agents.clone();
        }
        // One agent that cannot be read (stopping, its pins going) does
        // not hide the others; it is named under "errors".
        let mut errors = BTreeMap::new();
        let mut ports = BTreeMap::new();
        let mut stats = BTreeMap::new();
        for a in &agents {
            match port_use(a) {
                Ok(p) => {
                    ports.insert(a.clone(), p);
                }
                Err(e) => {
                    errors.insert(a.clone(), format!("{e:#}"));
                }
            }
            match inspect::counters(a) {
                Ok(c) => {
                    stats.insert(a.clone(), c);
                }
                Err(e) => {
                    errors.insert(a.clone(), format!("{e:#}"));
                }
            }
        }
        push(
            &mut out,
            "ports",
            json!({ "agents": ports, "errors": errors }),
        );
        push(
            &mut out,
            "stats",
            json!({ "nodes": stats, "errors": errors }),
        );
        if let Some(tail) = &mut self.tail {
            match tail.poll() {
                Ok(events) if !events.is_empty() => {
                    push(&mut out, "flows", json!({ "events": events }));
                }
                Ok(_) => {}
                Err(e) => push(
                    &mut out,
                    "unavailable",
                    json!({ "error": format!("{e:#}") }),
                ),
            }
        }
        out
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            tx: broadcast::channel(BACKLOG).0,
            latest: Mutex::new(BTreeMap::new()),
        }
    }

    /// Samples forever (the reads are blocking: off the async thread).
    pub async fn run(self: Arc<Self>) {
        let sampler = Arc::new(Mutex::new(Sampler::default()));
        let mut tick = tokio::time::interval(PUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let s = sampler.clone();
            let Ok(pushes) =
                tokio::task::spawn_blocking(move || s.lock().expect("sampler").sample()).await
            else {
                continue;
            };
            let mut latest = self.latest.lock().expect("latest");
            for p in pushes {
                let p = Arc::new(p);
                match p.name {
                    // Nothing readable: new pages must not get stale views.
                    "unavailable" => {
                        latest.remove("ports");
                        latest.remove("stats");
                    }
                    "flows" => {}
                    _ => {
                        latest.remove("unavailable");
                    }
                }
                if p.name != "flows" {
                    latest.insert(p.name, p.clone());
                }
                let _ = self.tx.send(p); // no page open: nobody to tell
            }
        }
    }
}

/// `GET /api/events`: the latest of each view, then every new sample.
pub async fn events(
    State(hub): State<Arc<Hub>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = hub.tx.subscribe();
    let first: Vec<Arc<Push>> = hub
        .latest
        .lock()
        .expect("latest")
        .values()
        .cloned()
        .collect();
    let first = futures_util::stream::iter(first);
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(p) => return Some((p, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt as _;
    let stream = first
        .chain(rest)
        .map(|p| Ok(Event::default().event(p.name).data(p.data.clone())));
    Sse::new(stream).keep_alive(KeepAlive::default())
}
