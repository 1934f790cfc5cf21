//! A DestinationRule's `trafficPolicy` (top level, per subset, per port): Istio's
//! `validateTrafficPolicy`, `validateConnectionPool`, `validateOutlierDetection`,
//! and the CRD schema's rules; `loadBalancer` is in `load_balancer.rs`, `tls` in `client_tls.rs`. Only `tls` and
//! `connectionPool.tcp.connectTimeout` are kept in the model; the rest is validated.

use std::collections::BTreeMap;
use std::time::Duration;

use super::field::Field;
use super::loader::{Ctx, FileLoader};
use super::model::*;
use super::validate;
use super::yaml::Node;

const POLICY_FIELDS: [&str; 8] = [
    "connectionPool",
    "loadBalancer",
    "outlierDetection",
    "portLevelSettings",
    "proxyProtocol",
    "retryBudget",
    "tls",
    "tunnel",
];
const PORT_POLICY_FIELDS: [&str; 5] = ["port", "connectionPool", "loadBalancer", "outlierDetection", "tls"];
const INT32_MAX: i128 = i32::MAX as i128;
const UINT32_MAX: i128 = u32::MAX as i128;

/// What the model keeps of a traffic policy.
#[derive(Default)]
pub(super) struct PolicyOut {
    pub tls: Option<TlsSettings>,
    pub port_tls: BTreeMap<u16, TlsSettings>,
    pub connect_timeout: Option<Duration>,
}

/// Is any of `keys` present (and not null) in `n`?
fn has_any(n: &Node<'_>, keys: &[&str]) -> bool {
    keys.iter().any(|k| n.get(k).is_some_and(|v| !v.is_null()))
}

fn present<'n, 'y>(n: &'n Node<'y>, key: &str) -> Option<&'n Node<'y>> {
    n.get(key).filter(|v| !v.is_null())
}

impl FileLoader<'_> {
    /// `trafficPolicy` at `f`: at least one field; tunnel and proxyProtocol exclusive.
    pub(super) fn traffic_policy(&mut self, ctx: &Ctx, tp: &Node<'_>, f: &Field<'_>) -> PolicyOut {
        let mut out = PolicyOut::default();
        if !self.is_map(ctx, tp, f) {
            return out;
        }
        self.known_fields(ctx, tp, f, &POLICY_FIELDS);
        if !has_any(tp, &POLICY_FIELDS) {
            self.error(
                ctx,
                tp.line,
                f,
                "traffic policy must have at least one field",
                "set e.g. tls or connectionPool, or remove the empty trafficPolicy",
            );
            return out;
        }
        if has_any(tp, &["tunnel"]) && has_any(tp, &["proxyProtocol"]) {
            self.error(
                ctx,
                tp.line,
                f,
                "tunnel and proxyProtocol must not be set together",
                "keep one of tunnel, proxyProtocol",
            );
            return out;
        }
        let outlier = self.map_child(ctx, tp, "outlierDetection", f);
        if let Some(o) = outlier {
            self.outlier_detection(ctx, o, &f.key("outlierDetection"));
        }
        if let Some(cp) = self.map_child(ctx, tp, "connectionPool", f) {
            out.connect_timeout = self.connection_pool(ctx, cp, &f.key("connectionPool"));
        }
        if let Some(lb) = self.map_child(ctx, tp, "loadBalancer", f) {
            self.load_balancer(ctx, lb, &f.key("loadBalancer"), outlier.is_some());
        }
        if let Some(t) = self.map_child(ctx, tp, "tls", f) {
            out.tls = self.client_tls(ctx, t, &f.key("tls"));
        }
        if let Some(pls) = present(tp, "portLevelSettings") {
            out.port_tls = self.port_level_settings(ctx, pls, &f.key("portLevelSettings"));
        }
        if let Some(t) = self.map_child(ctx, tp, "tunnel", f) {
            self.tunnel(ctx, t, &f.key("tunnel"));
        }
        if let Some(p) = self.map_child(ctx, tp, "proxyProtocol", f) {
            let pf = f.key("proxyProtocol");
            self.known_fields(ctx, p, &pf, &["version"]);
            if let Some(v) = present(p, "version") {
                self.enum_of(ctx, v, &pf.key("version"), "proxy protocol version", &["V1", "V2"]);
            }
        }
        if let Some(rb) = self.map_child(ctx, tp, "retryBudget", f) {
            let rf = f.key("retryBudget");
            self.known_fields(ctx, rb, &rf, &["budgetInterval", "minRetryConcurrency", "percent"]);
            if let Some(p) = present(rb, "percent")
                && let Some(v) = self.number_of(ctx, p, &rf.key("percent"))
                && !(0.0..=100.0).contains(&v)
            {
                self.error(
                    ctx,
                    p.line,
                    &rf.key("percent"),
                    format!("percent {v} is not in range 0..100"),
                    "use a percentage between 0 and 100",
                );
            }
            if let Some(m) = present(rb, "minRetryConcurrency") {
                self.ranged_int(ctx, m, &rf.key("minRetryConcurrency"), 0, UINT32_MAX);
            }
            if let Some(d) = present(rb, "budgetInterval") {
                self.duration_of(ctx, d, &rf.key("budgetInterval"));
            }
        }
        out
    }

    /// `portLevelSettings[]`: a port each, at least one policy field each. Duplicate ports are
    /// valid in Istio (the first entry wins); an entry without `tls` means no TLS for that port
    /// (port-level settings do not inherit the top level).
    fn port_level_settings(&mut self, ctx: &Ctx, pls: &Node<'_>, f: &Field<'_>) -> BTreeMap<u16, TlsSettings> {
        let mut out = BTreeMap::new();
        let items = self.seq_of(ctx, pls, f);
        for (_, pf, item) in self.map_items(ctx, items, f, "traffic policy may not be null", &PORT_POLICY_FIELDS) {
            let portf = pf.key("port");
            let number = match self.map_child(ctx, item, "port", &pf) {
                None => {
                    self.error(
                        ctx,
                        item.line,
                        &portf,
                        "portTrafficPolicy must have valid port",
                        "add port: {number: <1-65535>}",
                    );
                    None
                }
                Some(p) => {
                    self.known_fields(ctx, p, &portf, &["number"]);
                    match present(p, "number") {
                        Some(n) => self.ranged_int(ctx, n, &portf.key("number"), 0, UINT32_MAX).map(|v| (v, n.line)),
                        None => None,
                    }
                }
            };
            if !has_any(item, &["outlierDetection", "connectionPool", "loadBalancer", "tls"]) {
                self.error(
                    ctx,
                    item.line,
                    &pf,
                    "port traffic policy must have at least one field",
                    "set tls, connectionPool, loadBalancer or outlierDetection for this port, or remove the entry",
                );
                continue;
            }
            let outlier = self.map_child(ctx, item, "outlierDetection", &pf);
            if let Some(o) = outlier {
                self.outlier_detection(ctx, o, &pf.key("outlierDetection"));
            }
            if let Some(cp) = self.map_child(ctx, item, "connectionPool", &pf) {
                self.connection_pool(ctx, cp, &pf.key("connectionPool"));
            }
            if let Some(lb) = self.map_child(ctx, item, "loadBalancer", &pf) {
                self.load_balancer(ctx, lb, &pf.key("loadBalancer"), outlier.is_some());
            }
            let tls = match self.map_child(ctx, item, "tls", &pf) {
                Some(t) => self.client_tls(ctx, t, &pf.key("tls")),
                None => Some(TlsSettings {
                    mode: TlsMode::Disable,
                    sni: None,
                    ca_certificates: None,
                    insecure_skip_verify: false,
                    subject_alt_names: Vec::new(),
                }),
            };
            let Some((n, line)) = number else { continue };
            let Ok(port) = u16::try_from(n).map_err(|_| ()).and_then(|p| if p == 0 { Err(()) } else { Ok(p) }) else {
                // Istio accepts any uint32 here (no webhook rule, no CRD range).
                self.note(
                    ctx,
                    line,
                    &portf.key("number"),
                    format!("port {n} is not a valid port number (1..65535); this entry matches no port"),
                    "use the service port number this setting is for",
                );
                continue;
            };
            if out.contains_key(&port) {
                self.note(
                    ctx,
                    line,
                    &portf.key("number"),
                    format!("port {port} already has a portLevelSettings entry; Istio uses the first one, this one is ignored"),
                    "merge the entries for this port",
                );
                continue;
            }
            if let Some(t) = tls {
                out.insert(port, t);
            }
        }
        out
    }

    /// `connectionPool`: http and/or tcp. Returns `tcp.connectTimeout`.
    pub(super) fn connection_pool(&mut self, ctx: &Ctx, cp: &Node<'_>, f: &Field<'_>) -> Option<Duration> {
        self.known_fields(ctx, cp, f, &["http", "tcp"]);
        if !has_any(cp, &["http", "tcp"]) {
            self.error(
                ctx,
                cp.line,
                f,
                "connection pool must have at least one field",
                "set connectionPool.tcp or connectionPool.http, or remove it",
            );
            return None;
        }
        if let Some(h) = self.map_child(ctx, cp, "http", f) {
            let hf = f.key("http");
            self.known_fields(
                ctx,
                h,
                &hf,
                &[
                    "h2UpgradePolicy",
                    "http1MaxPendingRequests",
                    "http2KeepAlive",
                    "http2MaxRequests",
                    "idleTimeout",
                    "maxConcurrentStreams",
                    "maxRequestsPerConnection",
                    "maxRetries",
                    "useClientProtocol",
                ],
            );
            for (k, what) in [
                ("http1MaxPendingRequests", "http1 max pending requests"),
                ("http2MaxRequests", "http2 max requests"),
                ("maxRequestsPerConnection", "max requests per connection"),
                ("maxRetries", "max retries"),
                ("maxConcurrentStreams", "max concurrent streams"),
            ] {
                self.non_negative_i32(ctx, h, k, &hf, what);
            }
            if let Some(d) = present(h, "idleTimeout") {
                self.ms_duration(ctx, d, &hf.key("idleTimeout"));
            }
            let upgrade = match present(h, "h2UpgradePolicy") {
                Some(p) => {
                    self.enum_of(
                        ctx,
                        p,
                        &hf.key("h2UpgradePolicy"),
                        "h2UpgradePolicy",
                        &["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"],
                    ) == Some("UPGRADE")
                }
                None => false,
            };
            let client_protocol = match present(h, "useClientProtocol") {
                Some(u) => self.bool_of(ctx, u, &hf.key("useClientProtocol")).unwrap_or(false),
                None => false,
            };
            if upgrade && client_protocol {
                self.error(
                    ctx,
                    h.line,
                    &hf.key("useClientProtocol"),
                    "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
                    "set useClientProtocol: false, or another h2UpgradePolicy",
                );
            }
            if let Some(ka) = self.map_child(ctx, h, "http2KeepAlive", &hf) {
                let kf = hf.key("http2KeepAlive");
                self.known_fields(ctx, ka, &kf, &["interval", "timeout"]);
                for k in ["interval", "timeout"] {
                    match present(ka, k) {
                        Some(d) => {
                            self.ms_duration(ctx, d, &kf.key(k));
                        }
                        None => self.error(
                            ctx,
                            ka.line,
                            &kf.key(k),
                            format!("http2 keepalive {k} is required"),
                            format!("set http2KeepAlive.{k}, e.g. 10s"),
                        ),
                    }
                }
            }
        }
        let mut connect_timeout = None;
        if let Some(t) = self.map_child(ctx, cp, "tcp", f) {
            let tf = f.key("tcp");
            self.known_fields(
                ctx,
                t,
                &tf,
                &["connectTimeout", "idleTimeout", "maxConnectionDuration", "maxConnections", "tcpKeepalive"],
            );
            self.non_negative_i32(ctx, t, "maxConnections", &tf, "max connections");
            if let Some(d) = present(t, "connectTimeout") {
                connect_timeout =
                    self.ms_duration(ctx, d, &tf.key("connectTimeout")).map(|ns| Duration::from_nanos(ns as u64));
            }
            if let Some(d) = present(t, "maxConnectionDuration") {
                self.ms_duration(ctx, d, &tf.key("maxConnectionDuration"));
            }
            if let Some(d) = present(t, "idleTimeout") {
                // 0s (anything under 1ms) disables the timeout and is valid.
                let itf = tf.key("idleTimeout");
                if let Some(ns) = self.duration_of(ctx, d, &itf)
                    && ns / 1_000_000 != 0
                    && let Err(msg) = validate::duration_ms_precision(ns)
                {
                    self.error(ctx, d.line, &itf, msg, "use whole milliseconds, or 0s to disable the timeout");
                }
            }
            if let Some(ka) = self.map_child(ctx, t, "tcpKeepalive", &tf) {
                let kf = tf.key("tcpKeepalive");
                self.known_fields(ctx, ka, &kf, &["interval", "probes", "time"]);
                for k in ["time", "interval"] {
                    if let Some(d) = present(ka, k) {
                        self.ms_duration(ctx, d, &kf.key(k));
                    }
                }
                if let Some(p) = present(ka, "probes") {
                    self.ranged_int(ctx, p, &kf.key("probes"), 0, UINT32_MAX);
                }
            }
        }
        connect_timeout
    }

    fn non_negative_i32(&mut self, ctx: &Ctx, n: &Node<'_>, key: &str, f: &Field<'_>, what: &str) {
        if let Some(v) = present(n, key) {
            let kf = f.key(key);
            if let Some(i) = self.int_of(ctx, v, &kf) {
                if i < 0 {
                    self.error(ctx, v.line, &kf, format!("{what} must be non-negative"), "use 0 or a positive number");
                } else if i > INT32_MAX {
                    self.error(
                        ctx,
                        v.line,
                        &kf,
                        format!("{i} is out of range for a 32-bit integer"),
                        format!("use at most {INT32_MAX}"),
                    );
                }
            }
        }
    }

    /// `outlierDetection`.
    fn outlier_detection(&mut self, ctx: &Ctx, o: &Node<'_>, f: &Field<'_>) {
        self.known_fields(
            ctx,
            o,
            f,
            &[
                "baseEjectionTime",
                "consecutive5xxErrors",
                "consecutiveErrors",
                "consecutiveGatewayErrors",
                "consecutiveLocalOriginFailures",
                "interval",
                "maxEjectionPercent",
                "minHealthPercent",
                "outlierDetectionHttpErrorCodes",
                "splitExternalLocalOriginErrors",
            ],
        );
        for k in ["baseEjectionTime", "interval"] {
            if let Some(d) = present(o, k) {
                self.ms_duration(ctx, d, &f.key(k));
            }
        }
        if let Some(c) = present(o, "consecutiveErrors")
            && let Some(v) = self.ranged_int(ctx, c, &f.key("consecutiveErrors"), i32::MIN as i128, INT32_MAX)
            && v != 0
        {
            self.warn(
                ctx,
                c.line,
                &f.key("consecutiveErrors"),
                "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
                "replace consecutiveErrors with consecutive5xxErrors",
            );
        }
        for k in ["consecutive5xxErrors", "consecutiveGatewayErrors"] {
            if let Some(c) = present(o, k) {
                self.ranged_int(ctx, c, &f.key(k), 0, UINT32_MAX);
            }
        }
        let local_origin = match present(o, "consecutiveLocalOriginFailures") {
            Some(c) => self.ranged_int(ctx, c, &f.key("consecutiveLocalOriginFailures"), 0, UINT32_MAX).unwrap_or(0),
            None => 0,
        };
        let split = match present(o, "splitExternalLocalOriginErrors") {
            Some(s) => self.bool_of(ctx, s, &f.key("splitExternalLocalOriginErrors")).unwrap_or(false),
            None => false,
        };
        if !split && local_origin > 0 {
            self.error(
                ctx,
                o.key_line("consecutiveLocalOriginFailures"),
                &f.key("consecutiveLocalOriginFailures"),
                "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
                "set splitExternalLocalOriginErrors: true, or remove consecutiveLocalOriginFailures",
            );
        }
        for k in ["maxEjectionPercent", "minHealthPercent"] {
            if let Some(p) = present(o, k)
                && let Some(v) = self.int_of(ctx, p, &f.key(k))
                && !(0..=100).contains(&v)
            {
                self.error(
                    ctx,
                    p.line,
                    &f.key(k),
                    format!("percentage {v} is not in range 0..100"),
                    "use a percentage between 0 and 100",
                );
            }
        }
        if let Some(codes) = present(o, "outlierDetectionHttpErrorCodes") {
            let cf = f.key("outlierDetectionHttpErrorCodes");
            for (i, c) in self.seq_of(ctx, codes, &cf).iter().enumerate() {
                let ci = cf.idx(i);
                if let Some(v) = self.int_of(ctx, c, &ci)
                    && !(100..=599).contains(&v)
                {
                    self.error(
                        ctx,
                        c.line,
                        &ci,
                        format!("HTTP status {v} is not in range 100..599"),
                        "use HTTP status codes between 100 and 599",
                    );
                }
            }
        }
    }

    /// `tunnel`: CONNECT or POST to a host (FQDN or IP) and port.
    fn tunnel(&mut self, ctx: &Ctx, t: &Node<'_>, f: &Field<'_>) {
        self.known_fields(ctx, t, f, &["protocol", "targetHost", "targetPort"]);
        if let Some(p) = present(t, "protocol")
            && let Some(s) = self.str_of(ctx, p, &f.key("protocol"))
            && !s.is_empty()
            && s != "CONNECT"
            && s != "POST"
        {
            self.error(
                ctx,
                p.line,
                &f.key("protocol"),
                "tunnel protocol must be \"CONNECT\" or \"POST\"",
                "use protocol: CONNECT",
            );
        }
        let host = present(t, "targetHost").and_then(Node::as_str).unwrap_or("");
        if validate::fqdn(host).is_err() && host.parse::<std::net::IpAddr>().is_err() {
            self.error(
                ctx,
                t.key_line("targetHost"),
                &f.key("targetHost"),
                format!("tunnel target host must be valid FQDN or IP address: {host:?}"),
                "set targetHost to the proxy's DNS name or IP",
            );
        }
        match present(t, "targetPort") {
            Some(p) => {
                self.port_of(ctx, p, &f.key("targetPort"));
            }
            None => self.error(
                ctx,
                t.line,
                &f.key("targetPort"),
                "tunnel target port is invalid: port number 0 must be in the range 1..65535",
                "set targetPort",
            ),
        }
    }
}
