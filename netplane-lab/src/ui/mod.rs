//! `netplane ui`: one live web page of the running cluster — topology, the
//! UDR, SNAT port blocks filling, flows, counters, and a packet's walk drawn
//! hop by hop — and the JSON endpoints behind it (docs/ui.md).
//!
//! It only reads: the same pinned maps and state files as the CLI (through
//! `inspect`), and traces run on copies of the maps, as `netplane trace`
//! does. The page's assets are compiled into the binary.
//!
//! - `api`: the JSON endpoints and their errors;
//! - `live`: the sampler that pushes the changing views to every open page
//!   (server-sent events).
mod api;
mod live;
pub mod topology;

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

/// Where `netplane ui` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How often the open pages get new port use, counters and flows.
pub const PUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// The line `netplane ui` prints first; `lab up --ui` waits for it.
pub const LISTENING: &str = "netplane ui listening on";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The page and its endpoints.
pub fn router() -> Router {
    let hub = Arc::new(live::Hub::new());
    let sampler = hub.clone();
    tokio::spawn(async move { sampler.run().await });
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route("/api/events", get(live::events).with_state(hub))
        .merge(api::routes())
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// Serves the page on `listen` until the process ends; `announce` gets the
/// address actually bound (port 0 picks a free one).
pub fn serve(listen: SocketAddr, announce: impl FnOnce(SocketAddr)) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        announce(listener.local_addr()?);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // Not a graceful shutdown: open pages hold event streams that
        // never end by themselves.
        tokio::select! {
            r = axum::serve(listener, router()) => r.context("serving the page"),
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
