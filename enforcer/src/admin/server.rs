//! The agent's admin HTTP listener (hyper 1, HTTP/1.1 only).
//!
//! Routes (GET/HEAD only; any other method → 405):
//! - `GET /debug/registryz[?service=NAME]` — JSON [`Registryz`], pretty-printed
//! - `GET /metrics` — Prometheus text 0.0.4, or OpenMetrics 1.0 when the `Accept` header asks for
//!   it (see [`crate::metrics::Format::negotiate`])
//! - `GET /healthz` — 200 "ok"
//! - `GET /readyz` — 200 "ready" / 503 "not ready"
//! - `GET /ui` — the live view (embedded page, see [`crate::ui`]); `GET /ui/...` — its files
//! - `GET /debug/graph` — JSON [`crate::ui::Graph`]: workloads -> services with their counters
//! - `GET /debug/events/stream` — server-sent events for the page (graph, refusals with fixes)
//! - anything else → 404 with the list of routes

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;

use super::model::Registryz;

/// What the admin listener serves; implemented by the daemon over its live state.
pub trait AdminSource: Send + Sync + 'static {
    fn registryz(&self) -> Registryz;
    /// The exposition for GET /metrics, in `format`.
    fn metrics(&self, format: Format) -> String;
    fn ready(&self) -> bool;
    /// Recent events as NDJSON lines (oldest first) and, for `?follow=1`, a follower of new
    /// ones. Default: none.
    fn events(&self) -> (Vec<String>, Option<crate::events::Follower>) {
        (Vec::new(), None)
    }
    /// The live graph for `/debug/graph` and the page. Default: none (404).
    fn graph(&self) -> Option<crate::ui::Graph> {
        None
    }
}

use crate::metrics::Format;
pub use crate::metrics::exposition::OPENMETRICS_CONTENT_TYPE;
const JSON_CONTENT_TYPE: &str = "application/json";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// How long in-flight requests get to finish after shutdown is signalled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Slow clients must send their request headers within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const ROUTES_HELP: &str = "\
enforcer admin endpoints:
  GET /debug/registryz[?service=NAME]  registry and endpoints as JSON
  GET /metrics                         Prometheus text 0.0.4 (OpenMetrics with Accept)
  GET /healthz                         liveness
  GET /readyz                          readiness
  GET /debug/events[?follow=1]         denied/audited connections as NDJSON (follow: stream)
  GET /debug/events/stream             the same with fixes, and the graph, as server-sent events
  GET /debug/graph                     workloads -> services with their counters, as JSON
  GET /ui                              the live view (a page in your browser)
";

/// Binds the admin listener. An address already in use gets an error naming it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let msg = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "admin address {addr} is already in use (is another `enforcer daemon` running? pass --admin ADDR to use another)"
            ),
            std::io::ErrorKind::AddrNotAvailable => {
                format!("admin address {addr} is not available on this host: {e}")
            }
            std::io::ErrorKind::PermissionDenied => {
                format!("not permitted to bind admin address {addr}: {e}")
            }
            _ => format!("binding admin address {addr}: {e}"),
        };
        std::io::Error::new(e.kind(), msg)
    })
}

/// Serves the admin API on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish (up to a few seconds) and returns. `name` names the
/// listener in its log lines (`admin listener`, `public listener`): a daemon serving both says
/// which is which.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "{name} serving");
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    tokio::pin!(shutdown);
    // Ends the live view's streams at shutdown (a graceful shutdown would wait for them).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // e.g. EMFILE or a connection reset before accept; not fatal.
                    tracing::warn!(error = %e, "admin listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let source = Arc::clone(&source);
        let stop_rx = stop_rx.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let source = Arc::clone(&source);
            let stop_rx = stop_rx.clone();
            async move {
                if req.uri().path().trim_end_matches('/') == "/debug/events/stream" && req.method() == Method::GET {
                    return Ok::<_, Infallible>(crate::ui::stream::response(source, stop_rx));
                }
                if req.uri().path().trim_end_matches('/') == "/debug/events" && req.method() == Method::GET {
                    return Ok::<_, Infallible>(events_response(source.as_ref(), &req));
                }
                Ok::<_, Infallible>(handle(source.as_ref(), &req).map(|b| b.map_err(|never| match never {}).boxed()))
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with error");
            }
        });
    }

    drop(listener);
    tracing::info!(addr = %local, "{name} shutting down");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("{name} connections still open after {SHUTDOWN_GRACE:?}; dropping them");
    }
    Ok(())
}

fn handle<B>(source: &dyn AdminSource, req: &Request<B>) -> Response<Full<Bytes>> {
    let method = req.method();
    let path = req.uri().path();
    tracing::trace!(%method, path, "admin request");
    if method != Method::GET && method != Method::HEAD {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed; the admin API is read-only (GET)\n"),
        );
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path.trim_end_matches('/') {
        "/debug/registryz" => {
            let mut r = source.registryz();
            if let Some(q) = query_param(req.uri().query(), "service") {
                r = r.filtered(&q);
            }
            match serde_json::to_string_pretty(&r) {
                Ok(mut body) => {
                    body.push('\n');
                    respond(StatusCode::OK, JSON_CONTENT_TYPE, body)
                }
                Err(e) => {
                    tracing::error!(error = %e, "serializing registryz");
                    text(StatusCode::INTERNAL_SERVER_ERROR, format!("serializing registryz: {e}\n"))
                }
            }
        }
        "/metrics" => {
            let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let mut body = source.metrics(format);
            if format == Format::OpenMetrics && !body.trim_end().ends_with("# EOF") {
                // OpenMetrics requires the exposition to end with "# EOF".
                if !body.is_empty() && !body.ends_with('\n') {
                    body.push('\n');
                }
                body.push_str("# EOF\n");
            }
            let mut resp = respond(StatusCode::OK, format.content_type(), body);
            resp.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
            resp
        }
        "/debug/graph" => match source.graph().map(|g| serde_json::to_string(&g)) {
            Some(Ok(body)) => respond(StatusCode::OK, JSON_CONTENT_TYPE, body),
            Some(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("serializing the graph: {e}\n")),
            None => text(StatusCode::NOT_FOUND, "this agent keeps no live counters\n"),
        },
        p if p == "/ui" || p.starts_with("/ui/") => match crate::ui::asset(p) {
            Some((content_type, body)) => {
                let mut resp = respond(StatusCode::OK, content_type, body.to_string());
                resp.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(crate::ui::CONTENT_SECURITY_POLICY),
                );
                resp
            }
            None => text(StatusCode::NOT_FOUND, format!("404 page not found: {path}\n\n{ROUTES_HELP}")),
        },
        "/healthz" => text(StatusCode::OK, "ok"),
        "/readyz" => {
            if source.ready() {
                text(StatusCode::OK, "ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
            }
        }
        _ => text(StatusCode::NOT_FOUND, format!("404 page not found: {path}\n\n{ROUTES_HELP}")),
    }
}

type EventBody = BoxBody<Bytes, Infallible>;

/// `/debug/events`: the recent events, then (with `follow=1`) new ones as they come, one JSON
/// object per line, until the client goes away. A follower that falls behind is told how many
/// events it missed (and they are counted, see [`crate::events::EventHub`]).
fn events_response<B>(source: &dyn AdminSource, req: &Request<B>) -> Response<EventBody> {
    let follow = query_param(req.uri().query(), "follow").is_some_and(|v| v == "1" || v == "true");
    let (recent, rx) = source.events();
    let head: String = recent.into_iter().map(|l| l + "\n").collect();
    let body: EventBody = match (follow, rx) {
        (true, Some(follower)) => {
            let first = futures_stream_once(head);
            let rest = follower.into_stream().map(|line| Ok(Frame::data(Bytes::from(line + "\n"))));
            StreamBody::new(first.chain(rest)).boxed()
        }
        _ => Full::new(Bytes::from(head)).map_err(|never| match never {}).boxed(),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn futures_stream_once(s: String) -> impl tokio_stream::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    tokio_stream::once(Ok(Frame::data(Bytes::from(s))))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    respond(status, TEXT_CONTENT_TYPE, body.into())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The percent-decoded value of `key` in a query string (`+` means space).
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            out.push(b' ');
        } else if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
            out.push(b);
        } else {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
