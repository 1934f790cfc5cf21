//! `GET /debug/events/stream`: server-sent events (text/event-stream) for the page, one stream
//! for everything live:
//! - `retry: 1000` first (browsers wait that long before reconnecting on their own);
//! - `event: graph`, data a [`super::Graph`]: at once, then every [`GRAPH_EVERY`];
//! - `event: refusal`, data a `/debug/events` record with its [`super::refusal::Fix`]: the last
//!   [`RECENT`] at once, then each new one as the agent reads it;
//! - `event: notice`, data any other record (proxy errors, kernel or follower drops).
//!
//! The stream ends when the admin listener shuts down (`stop`), so an open page never holds up a
//! stopping agent; it also ends when the client goes away (the next send fails, at the latest
//! one [`GRAPH_EVERY`] later).

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, StreamBody, combinators::BoxBody};
use hyper::{
    Response,
    body::{Bytes, Frame},
    header::{self, HeaderValue},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};

use crate::admin::AdminSource;

/// Records sent when a client (re)connects.
pub const RECENT: usize = 200;
/// How often the graph is sent.
pub const GRAPH_EVERY: Duration = Duration::from_secs(1);

/// One SSE message (`data` must not hold newlines; JSON from serde never does, but split anyway).
pub fn frame(event: &str, data: &str) -> String {
    let mut s = format!("event: {event}\n");
    for l in data.split('\n') {
        s.push_str("data: ");
        s.push_str(l);
        s.push('\n');
    }
    s.push('\n');
    s
}

/// The SSE message for one `/debug/events` record.
fn record(line: &str) -> String {
    let refusal = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("verdict").and_then(|v| v.as_str()).map(|v| v == "denied" || v == "audit"))
        .unwrap_or(false);
    if refusal { frame("refusal", &super::refusal::enrich(line)) } else { frame("notice", line) }
}

fn graph(source: &dyn AdminSource) -> Option<String> {
    let g = source.graph()?;
    serde_json::to_string(&g).ok().map(|j| frame("graph", &j))
}

/// The next event line; `None` once the hub is gone. Lines a slow page missed are counted by the
/// follower (`enforcer_events_dropped_total{reason="follower_lag"}`).
async fn next(rx: &mut Option<crate::events::Follower>) -> Option<String> {
    match rx {
        Some(rx) => rx.next_line().await,
        None => std::future::pending().await,
    }
}

/// The streaming response. `stop` turns true when the listener shuts down.
pub fn response(source: Arc<dyn AdminSource>, mut stop: watch::Receiver<bool>) -> Response<BoxBody<Bytes, Infallible>> {
    let (tx, rx) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let (recent, mut events) = source.events();
        let mut head = String::from("retry: 1000\n\n");
        head.extend(graph(source.as_ref()));
        let skip = recent.len().saturating_sub(RECENT);
        head.extend(recent.iter().skip(skip).map(|l| record(l)));
        if tx.send(head).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(GRAPH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            let msg = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tick.tick() => match graph(source.as_ref()) {
                    Some(g) => g,
                    None => continue,
                },
                r = next(&mut events) => match r {
                    Some(line) => record(&line),
                    None => {
                        events = None;
                        continue;
                    }
                },
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let body = StreamBody::new(ReceiverStream::new(rx).map(|s| Ok::<_, Infallible>(Frame::data(Bytes::from(s)))));
    let mut resp = Response::new(body.boxed());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(frame("graph", "{}"), "event: graph\ndata: {}\n\n");
        assert_eq!(frame("x", "a\nb"), "event: x\ndata: a\ndata: b\n\n");
        assert!(record(r#"{"verdict":"dropped","count":1}"#).starts_with("event: notice\n"));
        let r = record(
            r#"{"verdict":"denied","hook":"connect","pid":1,"tid":1,"comm":"curl","cgroup_id":1,"destination":"192.0.2.1:80","address":"192.0.2.1","port":80,"protocol":"tcp","reason":"not_in_registry","service":null,"message":"m"}"#,
        );
        assert!(r.starts_with("event: refusal\ndata: {"), "{r}");
        assert!(r.contains("--allow 192.0.2.1:80"), "{r}");
    }
}
