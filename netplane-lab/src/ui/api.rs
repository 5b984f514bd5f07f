//! The JSON endpoints: the same shapes as the CLI's `--json` (both are
//! built by `inspect`), and errors as `{"error": "..."}` with a 4xx for a
//! bad request and a 503 when there is nothing running to read.
use std::net::Ipv4Addr;

use axum::{
    Json, Router,
    extract::{Query, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};

use netplane::inspect::{self, flows, port_use, route_table};

use crate::{Role, trace};

/// Each endpoint, with what it returns (`GET /api` lists them).
pub const ENDPOINTS: &[(&str, &str)] = &[
    (
        "/api/topology",
        "the VNet, nodes, pods, agents, the outbound hop, inet",
    ),
    ("/api/status", "`netplane lab status --json`"),
    (
        "/api/routes?node=",
        "`netplane routes --json`: each agent's UDR",
    ),
    (
        "/api/ports?node=",
        "`netplane ports --json`: SNAT port use per block",
    ),
    ("/api/nat?node=", "`netplane nat --json`: live translations"),
    (
        "/api/stats?node=",
        "`netplane stats --json`: packets per path, drops per reason",
    ),
    ("/api/pods?node=", "`netplane pods --json`"),
    (
        "/api/flows?node=&last=",
        "the last flow events of each agent's log",
    ),
    ("/api/trace?from=&to=&source_ip=", "`netplane trace --json`"),
    (
        "/api/events",
        "server-sent events: topology, ports, stats, flows, unavailable",
    ),
];

pub fn routes() -> Router {
    Router::new()
        .route("/api", get(index))
        .route("/api/topology", get(topology))
        .route("/api/status", get(status))
        .route("/api/routes", get(routes_view))
        .route("/api/ports", get(ports))
        .route("/api/nat", get(nat))
        .route("/api/stats", get(stats))
        .route("/api/pods", get(pods))
        .route("/api/flows", get(flow_events))
        .route("/api/trace", get(trace_walk))
        .route("/api/{*rest}", get(unknown))
}

/// An error as the page and scripts get it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

/// Failures reading the running cluster: nothing to read is a 503 (the
/// lab is down, an agent is gone), anything else a 500.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        let message = format!("{e:#}");
        let status = if message.contains("no agent is running")
            || message.contains("is the agent running")
            || message.contains("is its agent running")
        {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type Reply = Result<Json<Value>, ApiError>;

/// Runs a blocking read (maps, files, test runs) off the async thread.
async fn blocking(f: impl FnOnce() -> Result<Value, ApiError> + Send + 'static) -> Reply {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeQuery {
    node: Option<String>,
}

/// The agents a `?node=` names: that one if it runs, else all.
fn agents(node: Option<&str>) -> Result<Vec<String>, ApiError> {
    let all = inspect::agents(None)?;
    match node {
        None => Ok(all),
        Some(n) if all.iter().any(|a| a == n) => Ok(vec![n.to_string()]),
        Some(n) => Err(ApiError::not_found(format!(
            "no agent {n:?}; agents: {}",
            all.join(", ")
        ))),
    }
}

async fn index() -> Json<Value> {
    let endpoints: Vec<Value> = ENDPOINTS
        .iter()
        .map(|(path, what)| json!({ "path": path, "returns": what }))
        .collect();
    Json(json!({ "endpoints": endpoints }))
}

async fn unknown() -> ApiError {
    ApiError::not_found("no such endpoint; GET /api lists them")
}

async fn topology() -> Reply {
    blocking(|| {
        let t = super::topology::topology(&crate::running_cluster()?)?;
        Ok(serde_json::to_value(t).map_err(anyhow::Error::from)?)
    })
    .await
}

async fn status() -> Reply {
    blocking(|| Ok(serde_json::to_value(crate::status()?).map_err(anyhow::Error::from)?)).await
}

/// One of the CLI's per-agent views under `key`, for the agents a
/// `?node=` names.
async fn per_agent_view<T: serde::Serialize + 'static>(
    q: Result<Query<NodeQuery>, QueryRejection>,
    key: &'static str,
    view: fn(&str) -> anyhow::Result<T>,
) -> Reply {
    let Query(q) = q?;
    blocking(move || {
        let all = inspect::per_agent(&agents(q.node.as_deref())?, view)?;
        Ok(json!({ key: all }))
    })
    .await
}

async fn routes_view(q: Result<Query<NodeQuery>, QueryRejection>) -> Reply {
    per_agent_view(q, "nodes", route_table).await
}

async fn ports(q: Result<Query<NodeQuery>, QueryRejection>) -> Reply {
    per_agent_view(q, "agents", port_use).await
}

async fn nat(q: Result<Query<NodeQuery>, QueryRejection>) -> Reply {
    per_agent_view(q, "agents", inspect::translations).await
}

async fn stats(q: Result<Query<NodeQuery>, QueryRejection>) -> Reply {
    per_agent_view(q, "nodes", inspect::stats).await
}

async fn pods(q: Result<Query<NodeQuery>, QueryRejection>) -> Reply {
    let Query(q) = q?;
    blocking(move || {
        let all = inspect::nodes(None)?;
        let nodes = match q.node {
            None => all,
            Some(n) if all.contains(&n) => vec![n],
            Some(n) => {
                return Err(ApiError::not_found(format!(
                    "no node {n:?}; nodes: {}",
                    all.join(", ")
                )));
            }
        };
        Ok(json!({ "pods": inspect::pods(&nodes)? }))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowsQuery {
    node: Option<String>,
    last: Option<usize>,
}

/// At most this many events per log in one answer.
const MAX_FLOW_EVENTS: usize = 1000;

async fn flow_events(q: Result<Query<FlowsQuery>, QueryRejection>) -> Reply {
    let Query(q) = q?;
    let last = q.last.unwrap_or(50);
    if last > MAX_FLOW_EVENTS {
        return Err(ApiError::bad_request(format!(
            "last: at most {MAX_FLOW_EVENTS} events per agent"
        )));
    }
    blocking(move || {
        let (_, events) = flows::LogTail::open(&agents(q.node.as_deref())?, last);
        Ok(json!({ "events": events }))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceQuery {
    from: String,
    to: String,
    source_ip: Option<String>,
}

async fn trace_walk(q: Result<Query<TraceQuery>, QueryRejection>) -> Reply {
    let Query(q) = q?;
    blocking(move || {
        let state = crate::load_state()?.ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the lab is down: traces walk the lab (netplane lab up)",
            )
        })?;
        let pods = || {
            state
                .hosts
                .iter()
                .filter(|h| h.role == Role::Pod)
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let from = crate::find_host(&state, &q.from).ok_or_else(|| {
            ApiError::not_found(format!("from: no pod {:?}; pods: {}", q.from, pods()))
        })?;
        if from.role != Role::Pod {
            return Err(ApiError::bad_request(format!(
                "from: {} is not a pod (traces start at a pod: {})",
                from.name,
                pods()
            )));
        }
        trace::parse_target(&state, &q.to)
            .map_err(|e| ApiError::bad_request(format!("to: {e:#}")))?;
        let source_ip = match q.source_ip.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| {
                ApiError::bad_request(format!("source_ip: {s:?} is not an IPv4 address"))
            })?),
        };
        let t = trace::trace(&state, &from.name, &q.to, source_ip)?;
        Ok(serde_json::to_value(t).map_err(anyhow::Error::from)?)
    })
    .await
}
