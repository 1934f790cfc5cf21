//! Turning kernel events and flow counters into lines people read and JSON scripts read.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use enforcer_common::{
    Event, FlowKey, HOOK_CONNECT4, HOOK_CONNECT6, REASON_NOT_IN_REGISTRY, REASON_PORT_NOT_LISTED, REASON_PROTOCOL,
    VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED,
};
use serde::Serialize;

use crate::policy::{Desired, addr_from_bytes, proto_name};

/// Write one `enforcer: ...` line to stderr in a single write(2), so it is never torn by the
/// confined command's own output on the same terminal or pipe.
pub fn print_line(line: &str) {
    use std::io::Write as _;
    let mut buf = String::with_capacity(line.len() + 11);
    buf.push_str("enforcer: ");
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}

/// One event as a JSON object on stderr (`--event-format json`).
pub fn print_json(ev: &Event, desired: &Desired, workload: &str) {
    use std::io::Write as _;
    let mut j = event_json(ev, desired);
    j.workload = Some(workload.to_string());
    j.line = format_event(ev, desired);
    if let Ok(mut s) = serde_json::to_string(&j) {
        s.push('\n');
        let _ = std::io::stderr().lock().write_all(s.as_bytes());
    }
}

pub fn comm(bytes: &[u8; 16]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn hook_verb(hook: u8) -> &'static str {
    match hook {
        HOOK_CONNECT4 | HOOK_CONNECT6 => "connect",
        _ => "sendmsg",
    }
}

pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Why, in words, with the fix.
pub fn explain(ev: &Event, desired: &Desired) -> String {
    let addr = addr_from_bytes(ev.family, &ev.addr);
    let ep = endpoint(addr, ev.port);
    let svc = desired.service(ev.service_id).map(|s| s.name.clone()).unwrap_or_else(|| "a registry service".into());
    // DESTS is shared by all policies: an address of another workload's registry is simply not in
    // this one's.
    let other_policy = desired
        .service(ev.service_id)
        .is_some_and(|s| s.kind == crate::policy::ServiceKind::ServiceEntry && s.policy != ev.policy_id);
    if other_policy && ev.reason == REASON_PORT_NOT_LISTED {
        return format!("not in this workload's registry; allow it with --allow {ep} or a ServiceEntry");
    }
    match ev.reason {
        REASON_NOT_IN_REGISTRY => format!("not in registry; allow it with --allow {ep} or a ServiceEntry"),
        REASON_PORT_NOT_LISTED => format!(
            "port {} not listed for {svc}; add it to that ServiceEntry's ports or allow it with --allow {ep}",
            ev.port
        ),
        REASON_PROTOCOL => format!(
            "{svc} lists port {} for {} only; declare a {} port in the ServiceEntry",
            ev.port,
            proto_name(if ev.proto == 6 { 17 } else { 6 }),
            if ev.proto == 17 { "UDP" } else { "TCP" }
        ),
        enforcer_common::REASON_DNS_FORWARDER_DOWN => {
            "DNS forwarder not running (the agent stopped or was killed); DNS is refused until it is back (--dns-fallback)"
                .into()
        }
        _ => "denied".into(),
    }
}

/// One line: `denied connect curl[1234] -> 93.184.216.34:443/tcp: not in registry; ...`.
pub fn format_event(ev: &Event, desired: &Desired) -> String {
    let verdict = match ev.verdict {
        VERDICT_AUDIT => "audit: would deny",
        _ => "denied",
    };
    format!(
        "{verdict} {} {}[{}] -> {}/{}: {}",
        hook_verb(ev.hook),
        comm(&ev.comm),
        ev.pid,
        endpoint(addr_from_bytes(ev.family, &ev.addr), ev.port),
        proto_name(ev.proto),
        explain(ev, desired)
    )
}

/// One line for a name the DNS forwarder refused (or answered without allowing, or in AUDIT
/// would have refused): `denied dns evil.example (A): not in registry; answered REFUSED; ...`.
pub fn format_dns_refusal(r: &crate::dns::Refusal, workload: &str) -> String {
    use crate::dns::{Action, Why};
    let queried = if r.queried != r.name { format!(" (queried as {})", r.queried) } else { String::new() };
    let why = match r.why {
        Why::NotInRegistry => "not in registry",
        Why::SearchExpansion => "not in registry (a search-domain expansion of it)",
        Why::Rebinding => "the answer had private/loopback/link-local addresses",
        Why::MapWrite => "its addresses could not be written to the kernel map",
    };
    let fix = format!("allow it with --allow {} or a ServiceEntry", r.name);
    let (name, qtype) = (&r.name, &r.qtype);
    match r.action {
        Action::Refused => {
            format!("denied dns {workload} -> {name} ({qtype}){queried}: {why}; answered REFUSED; {fix}")
        }
        Action::Nxdomain => {
            format!("denied dns {workload} -> {name} ({qtype}){queried}: {why}; answered NXDOMAIN; {fix}")
        }
        Action::Answered => format!(
            "denied dns {workload} -> {name} ({qtype}){queried}: {why}; answered (--unknown-names answer), nothing allowed; {fix}"
        ),
        Action::AuditWouldRefuse => {
            format!("audit: would refuse dns {workload} -> {name} ({qtype}){queried}: {why}; answered; {fix}")
        }
        Action::RebindingDropped => format!(
            "denied dns {workload} -> {name} ({qtype}): {why}; dropped from the answer (DNS rebinding protection); list them in the ServiceEntry's endpoints or addresses to allow them"
        ),
        Action::LearnFailed => {
            format!("denied dns {workload} -> {name} ({qtype}): {why}; answered SERVFAIL; see the agent log")
        }
    }
}

/// The JSON form of a DNS event (`hook: "dns"`, `host`: the name, no address or port).
pub fn dns_event_json(r: &crate::dns::Refusal, workload: &str) -> EventJson {
    use crate::dns::{Action, Why};
    EventJson {
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        verdict: if r.action == Action::AuditWouldRefuse { "audit" } else { "denied" }.into(),
        hook: "dns".into(),
        destination: r.name.clone(),
        protocol: "dns".into(),
        reason: match r.why {
            Why::NotInRegistry => "not_in_registry",
            Why::SearchExpansion => "search_expansion",
            Why::Rebinding => "rebinding",
            Why::MapWrite => "learn_failed",
        }
        .into(),
        message: r.action.label().into(),
        workload: Some(workload.to_string()),
        host: Some(r.name.clone()),
        line: format_dns_refusal(r, workload),
        ..Default::default()
    }
}

/// A DNS refusal as a JSON object on stderr (`--event-format json`).
pub fn print_dns_json(r: &crate::dns::Refusal, workload: &str) {
    use std::io::Write as _;
    if let Ok(mut s) = serde_json::to_string(&dns_event_json(r, workload)) {
        s.push('\n');
        let _ = std::io::stderr().lock().write_all(s.as_bytes());
    }
}

#[derive(Serialize, serde::Deserialize, Debug, Clone, Default)]
pub struct EventJson {
    /// Seconds since the Unix epoch when the agent read the event.
    #[serde(default)]
    pub time: f64,
    pub verdict: String,
    pub hook: String,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub destination: String,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub reason: String,
    pub service: Option<String>,
    pub message: String,
    /// The workload (cgroup name, or the command under `enforcer run`).
    #[serde(default)]
    pub workload: Option<String>,
    /// The DNS name last seen for the address, if any.
    #[serde(default)]
    pub host: Option<String>,
    /// The human-readable line.
    #[serde(default)]
    pub line: String,
    /// `mode` records: the default policy's mode from this record on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

pub fn reason_code(r: u8) -> &'static str {
    match r {
        REASON_NOT_IN_REGISTRY => "not_in_registry",
        REASON_PORT_NOT_LISTED => "port_not_listed",
        REASON_PROTOCOL => "protocol_not_listed",
        enforcer_common::REASON_DNS_FORWARDER_DOWN => "dns_forwarder_down",
        _ => "unknown",
    }
}

pub fn event_json(ev: &Event, desired: &Desired) -> EventJson {
    let addr = addr_from_bytes(ev.family, &ev.addr);
    EventJson {
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        verdict: if ev.verdict == VERDICT_AUDIT { "audit" } else { "denied" }.into(),
        hook: hook_verb(ev.hook).into(),
        pid: ev.pid,
        tid: ev.tid,
        comm: comm(&ev.comm),
        cgroup_id: ev.cgroup_id,
        destination: endpoint(addr, ev.port),
        address: addr.to_string(),
        port: ev.port,
        protocol: proto_name(ev.proto).into(),
        reason: reason_code(ev.reason).into(),
        service: desired.service(ev.service_id).map(|s| s.name.clone()),
        message: explain(ev, desired),
        workload: None,
        host: None,
        line: String::new(),
        mode: None,
    }
}

/// Prints each denied destination once (the first time), remembers the rest for the summary.
#[derive(Default)]
pub struct DenyPrinter {
    seen: HashSet<(u8, [u8; 16], u16, u8, u8)>,
}

impl DenyPrinter {
    /// The line to print for this event, or None if the destination was already reported.
    pub fn first_time(&mut self, ev: &Event, desired: &Desired) -> Option<String> {
        self.seen.insert((ev.family, ev.addr, ev.port, ev.proto, ev.verdict)).then(|| format_event(ev, desired))
    }
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct SummaryRow {
    pub verdict: &'static str,
    pub destination: String,
    pub protocol: &'static str,
    pub service: String,
    pub count: u64,
}

#[derive(Serialize, Debug)]
pub struct Summary {
    pub mode: String,
    pub exit_status: i32,
    pub allowed: Vec<SummaryRow>,
    pub denied: Vec<SummaryRow>,
    pub audited: Vec<SummaryRow>,
    pub events_dropped: u64,
}

/// Build the summary from the flow counters.
pub fn summarize(flows: &[(FlowKey, u64)], desired: &Desired, mode: String, exit_status: i32) -> Summary {
    let mut rows: BTreeMap<(u8, String, &'static str), (String, u64)> = BTreeMap::new();
    for (k, n) in flows {
        let dest = endpoint(addr_from_bytes(k.family, &k.addr), k.port);
        let svc = match desired.service(k.service_id) {
            Some(s) => s.name.clone(),
            None if k.verdict == VERDICT_DENIED => "BlackHoleCluster".into(),
            // Allowed, or audited (it went through): no registry service.
            None => "PassthroughCluster".into(),
        };
        let e = rows.entry((k.verdict, dest, proto_name(k.proto))).or_insert((svc, 0));
        e.1 += n;
    }
    let mut s = Summary { mode, exit_status, allowed: vec![], denied: vec![], audited: vec![], events_dropped: 0 };
    for ((verdict, destination, protocol), (service, count)) in rows {
        let (list, name) = match verdict {
            VERDICT_ALLOWED => (&mut s.allowed, "allowed"),
            VERDICT_DENIED => (&mut s.denied, "denied"),
            _ => (&mut s.audited, "audit"),
        };
        list.push(SummaryRow { verdict: name, destination, protocol, service, count });
    }
    s
}

pub fn format_summary(s: &Summary) -> String {
    let mut out = format!(
        "summary ({}): {} allowed, {} denied{} destination(s)",
        s.mode,
        s.allowed.len(),
        s.denied.len(),
        if s.audited.is_empty() { String::new() } else { format!(", {} audited", s.audited.len()) }
    );
    for r in s.allowed.iter().chain(&s.denied).chain(&s.audited) {
        let unit = if r.verdict == "allowed" { "connection" } else { "attempt" };
        out.push_str(&format!(
            "\n  {:<8} {:<28} {:<4} {:<32} {} {unit}{}",
            r.verdict,
            r.destination,
            r.protocol,
            r.service,
            r.count,
            if r.count == 1 { "" } else { "s" }
        ));
    }
    if s.events_dropped > 0 {
        out.push_str(&format!("\n  ({} deny events were dropped: the ring buffer was full)", s.events_dropped));
    }
    out
}

/// Recent events for `/debug/events` and live followers (`enforcer events --follow`). Bounded:
/// keeps the last `capacity` events; a slow follower is told how many it missed. Every lost event
/// is counted in `enforcer_events_dropped_total{reason}`: `ring_buffer` (the kernel's ring buffer
/// was full) and `follower_lag` (a follower fell behind the broadcast; counted per follower).
pub struct EventHub {
    recent: std::sync::Mutex<std::collections::VecDeque<String>>,
    capacity: usize,
    tx: tokio::sync::broadcast::Sender<String>,
    /// Names seen in DNS answers for addresses (unregistered names too), for `suggest`.
    names: std::sync::Mutex<std::collections::HashMap<IpAddr, String>>,
    drops: std::sync::Arc<Drops>,
    /// The default policy's mode and since when (Unix seconds), for `suggest`'s default window.
    mode: std::sync::Mutex<Option<(String, f64)>>,
}

/// Events lost, by reason.
#[derive(Debug, Default)]
pub struct Drops {
    pub ring_buffer: std::sync::atomic::AtomicU64,
    pub follower_lag: std::sync::atomic::AtomicU64,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A live follower of the hub: new event lines; a gap is reported (and counted) as a `dropped`
/// record.
pub struct Follower {
    rx: tokio::sync::broadcast::Receiver<String>,
    drops: std::sync::Arc<Drops>,
}

impl Follower {
    /// The next line (an event, or a `dropped` record after a gap); None when the hub is gone.
    pub async fn next_line(&mut self) -> Option<String> {
        match self.rx.recv().await {
            Ok(l) => Some(l),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                self.drops.follower_lag.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                Some(format!(
                    "{{\"verdict\":\"dropped\",\"reason\":\"follower_lag\",\"count\":{n},\"message\":\"{n} events dropped: this follower fell behind\"}}"
                ))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    }

    /// As a stream of lines.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = String> + Send + 'static {
        futures::stream::unfold(self, |mut f| async move { f.next_line().await.map(|l| (l, f)) })
    }
}

impl EventHub {
    pub fn new(capacity: usize) -> Self {
        Self::with_follower_buffer(capacity, 4096)
    }

    /// `follower_buffer`: how many events a follower may fall behind before it loses some.
    pub fn with_follower_buffer(capacity: usize, follower_buffer: usize) -> Self {
        let (tx, _) = tokio::sync::broadcast::channel(follower_buffer);
        Self {
            recent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(capacity)),
            capacity,
            tx,
            names: Default::default(),
            drops: Default::default(),
            mode: Default::default(),
        }
    }

    /// Register `enforcer_events_dropped_total{reason}` (once, by the agent).
    pub fn register(&self, reg: &mut prometheus_client::registry::Registry) {
        let drops = std::sync::Arc::clone(&self.drops);
        let c = crate::metrics::ValueCollector::new().counters(
            "events_dropped",
            "Events lost: the kernel ring buffer was full (reason=ring_buffer), or a follower of /debug/events fell behind (reason=follower_lag, per follower)",
            move || {
                vec![
                    (vec![("reason", "ring_buffer".to_string())], crate::metrics::load(&drops.ring_buffer)),
                    (vec![("reason", "follower_lag".to_string())], crate::metrics::load(&drops.follower_lag)),
                ]
            },
        );
        reg.sub_registry_with_prefix("enforcer").register_collector(Box::new(c));
    }

    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    fn push(&self, line: String) {
        let mut r = self.recent.lock().expect("events lock");
        if r.len() == self.capacity {
            r.pop_front();
        }
        r.push_back(line.clone());
        drop(r);
        let _ = self.tx.send(line);
    }

    /// Record a kernel event (as JSON, with the human line in `message` and the DNS name of the
    /// address when one was seen).
    pub fn publish(&self, ev: &Event, desired: &Desired, workload: &str) {
        let mut j = event_json(ev, desired);
        j.workload = Some(workload.to_string());
        j.host = self.names.lock().ok().and_then(|n| n.get(&addr_from_bytes(ev.family, &ev.addr)).cloned());
        j.line = format_event(ev, desired);
        if let Ok(s) = serde_json::to_string(&j) {
            self.push(s);
        }
    }

    /// A denial or failure seen by the L7 proxy (SNI or Host not allowed, TLS verification
    /// failed, ...): recorded; returned for the caller to print as `--quiet` / `--event-format` say.
    pub fn publish_proxy(&self, e: &crate::proxy::ProxyEvent) -> EventJson {
        use crate::proxy::ProxyEventKind as K;
        let (verdict, reason, what) = e.kind.describe(e.original, &e.detail);
        let workload = &*e.workload;
        let line =
            format!("{verdict} proxy {workload} -> {}/tcp: {what}", endpoint(e.original.ip(), e.original.port()));
        let j = EventJson {
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            verdict: verdict.into(),
            hook: "proxy".into(),
            destination: endpoint(e.original.ip(), e.original.port()),
            address: e.original.ip().to_string(),
            port: e.original.port(),
            protocol: "tcp".into(),
            reason: reason.into(),
            message: what,
            workload: Some(workload.to_string()),
            host: match &e.kind {
                K::SniDenied { sni } => sni.clone(),
                K::HostDenied { host } => host.clone(),
                _ => None,
            },
            line,
            ..Default::default()
        };
        if let Ok(s) = serde_json::to_string(&j) {
            self.push(s);
        }
        j
    }

    /// A name the DNS forwarder refused (each name once per run; see `dns_bridge`).
    pub fn publish_dns(&self, r: &crate::dns::Refusal, workload: &str) {
        if let Ok(s) = serde_json::to_string(&dns_event_json(r, workload)) {
            self.push(s);
        }
    }

    /// Say that the kernel dropped events (ring buffer full).
    pub fn publish_drops(&self, n: u64) {
        self.drops.ring_buffer.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.push(format!(
            "{{\"verdict\":\"dropped\",\"reason\":\"ring_buffer\",\"count\":{n},\"message\":\"{n} events dropped by the kernel: the ring buffer was full\"}}"
        ));
    }

    /// The default policy's mode is (now) `mode`: when it changes, a `mode` record marks the start
    /// of the new period in the stream (`enforcer suggest` reads only this AUDIT period by default).
    pub fn note_mode(&self, mode: &str) {
        let mut m = self.mode.lock().expect("mode lock");
        if m.as_ref().is_some_and(|(cur, _)| cur == mode) {
            return;
        }
        let time = now_secs();
        *m = Some((mode.to_string(), time));
        drop(m);
        let j = EventJson {
            time,
            verdict: "mode".into(),
            message: format!("mode is now {mode}"),
            line: format!("mode is now {mode}"),
            mode: Some(mode.to_string()),
            ..Default::default()
        };
        if let Ok(s) = serde_json::to_string(&j) {
            self.push(s);
        }
    }

    pub fn observe_name(&self, name: &str, addrs: &[IpAddr]) {
        if let Ok(mut n) = self.names.lock() {
            if n.len() > 100_000 {
                n.clear();
            }
            for a in addrs {
                n.insert(*a, name.to_string());
            }
        }
    }

    /// The recent lines (oldest first) and a follower of the lines after them.
    pub fn snapshot(&self) -> (Vec<String>, Follower) {
        let r = self.recent.lock().expect("events lock");
        (r.iter().cloned().collect(), Follower { rx: self.tx.subscribe(), drops: std::sync::Arc::clone(&self.drops) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lagging_follower_is_told_and_counted() {
        let hub = EventHub::with_follower_buffer(10, 2);
        let (_, mut f) = hub.snapshot();
        for _ in 0..5 {
            hub.publish_drops(1);
        }
        let first: serde_json::Value = serde_json::from_str(&f.next_line().await.unwrap()).unwrap();
        assert_eq!(first["reason"], "follower_lag");
        assert_eq!(first["count"], 3);
        assert_eq!(hub.drops().follower_lag.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert_eq!(hub.drops().ring_buffer.load(std::sync::atomic::Ordering::Relaxed), 5);
        let next: serde_json::Value = serde_json::from_str(&f.next_line().await.unwrap()).unwrap();
        assert_eq!(next["reason"], "ring_buffer");
    }

    #[test]
    fn mode_changes_are_recorded_once() {
        let hub = EventHub::new(10);
        hub.note_mode("AUDIT");
        hub.note_mode("AUDIT");
        hub.note_mode("REGISTRY_ONLY");
        let (recent, _) = hub.snapshot();
        let modes: Vec<EventJson> = recent.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(modes.iter().map(|e| e.mode.clone().unwrap()).collect::<Vec<_>>(), ["AUDIT", "REGISTRY_ONLY"]);
        assert!(modes.iter().all(|e| e.verdict == "mode" && e.time > 0.0));
    }
}
