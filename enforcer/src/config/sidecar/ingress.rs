//! A Sidecar's `spec.ingress[]`: validated like Istio's `ValidateSidecar`; not modelled (enforcer
//! judges egress).

use std::collections::HashSet;

use super::super::field::Field;
use super::super::loader::{Ctx, FileLoader};
use super::super::model::*;
use super::super::validate;
use super::super::yaml::{Node, Yaml};
use super::{CAPTURE_MODES, INGRESS_FIELDS, SERVER_TLS_MODES, present};

impl FileLoader<'_> {
    /// `spec.ingress[]`: validated like Istio; not modelled (enforcer judges egress).
    pub(super) fn sidecar_ingress(&mut self, ctx: &Ctx, i: &Node<'_>) {
        let sf = Field::ROOT.key("spec");
        let inf = sf.key("ingress");
        let mut ports = HashSet::new();
        let items = self.seq_of(ctx, i, &inf);
        for (_, f, l) in self.map_items(ctx, items, &inf, "sidecar: ingress may not be null", &INGRESS_FIELDS) {
            let Some(p) = present(l, "port") else {
                self.error(
                    ctx,
                    l.line,
                    &f.key("port"),
                    "sidecar: port is required for ingress listeners",
                    "add port: {number: <port>, protocol: HTTP, name: http}",
                );
                continue;
            };
            let pf = f.key("port");
            let lp = self.listener_port(ctx, p, &pf, false);
            if let Some(b) = present(l, "bind")
                && let Some(bind) = self.str_of(ctx, b, &f.key("bind"))
                && !bind.is_empty()
                && bind.parse::<std::net::IpAddr>().is_err()
            {
                self.error(
                    ctx,
                    b.line,
                    &f.key("bind"),
                    format!("{bind} is not a valid IP"),
                    "use an IP address, or omit bind",
                );
            }
            if let Some(c) = present(l, "captureMode") {
                self.enum_of(ctx, c, &f.key("captureMode"), "captureMode", &CAPTURE_MODES);
            }
            let number = present(p, "number").and_then(|n| match n.value {
                Yaml::Int(i) => Some(i),
                _ => None,
            });
            if let Some(n) = number
                && !ports.insert(n)
            {
                self.error(
                    ctx,
                    p.line,
                    &pf.key("number"),
                    "sidecar: ports on IP bound listeners must be unique",
                    "use each port in one listener only",
                );
            }
            if let Some(d) = present(l, "defaultEndpoint") {
                self.default_endpoint(ctx, d, &f.key("defaultEndpoint"));
            }
            let protocol = lp.as_ref().map(|lp| lp.protocol.clone()).unwrap_or_default();
            if let Some(t) = self.map_child(ctx, l, "tls", &f) {
                self.ingress_tls(ctx, t, &f.key("tls"), &protocol);
            }
            if let Some(cp) = self.map_child(ctx, l, "connectionPool", &f) {
                self.connection_pool(ctx, cp, &f.key("connectionPool"));
                let http = Protocol::parse(&protocol).is_some_and(|p| p.is_http());
                if present(cp, "http").is_some() && !http {
                    self.warn(
                        ctx,
                        cp.line,
                        &f.key("connectionPool").key("http"),
                        format!(
                            "sidecar: HTTP connection pool settings are configured for port {} but its protocol is not HTTP ({protocol}); only TCP settings will apply",
                            number.unwrap_or(0)
                        ),
                        "remove connectionPool.http, or declare an HTTP protocol for the port",
                    );
                }
            }
        }
    }

    /// `defaultEndpoint`: `127.0.0.1:<port>`, `0.0.0.0:<port>`, `[::1]:<port>`, `[::]:<port>`,
    /// `:<port>` or `unix:///path`.
    pub(super) fn default_endpoint(&mut self, ctx: &Ctx, d: &Node<'_>, f: &Field<'_>) {
        let Some(s) = self.str_of(ctx, d, f) else { return };
        if s.is_empty() {
            return;
        }
        let fix = "use 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> or unix:///path";
        if let Some(path) = s.strip_prefix("unix://") {
            if let Err(msg) = validate::unix_address(path) {
                self.error(ctx, d.line, f, msg, fix);
            }
            return;
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
            None => {
                self.error(ctx, d.line, f, format!("address {s}: missing port in address"), fix);
                return;
            }
        };
        if !["", "127.0.0.1", "0.0.0.0", "::1", "::"].contains(&host) {
            self.error(
                ctx,
                d.line,
                f,
                "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath or unset",
                fix,
            );
        }
        match port.parse::<i128>() {
            Ok(p) => {
                if let Err(msg) = validate::port(p) {
                    self.error(ctx, d.line, f, msg, fix);
                }
            }
            Err(_) => {
                self.error(ctx, d.line, f, format!("sidecar: defaultEndpoint port ({port}) is not a number"), fix)
            }
        }
    }

    /// Ingress `tls` (server settings): what a Sidecar cannot use.
    pub(super) fn ingress_tls(&mut self, ctx: &Ctx, t: &Node<'_>, f: &Field<'_>, protocol: &str) {
        for (k, msg) in [
            ("subjectAltNames", "sidecar: subjectAltNames is not supported in ingress tls"),
            ("httpsRedirect", "sidecar: httpsRedirect is not supported"),
            ("credentialName", "sidecar: credentialName is not currently supported"),
            ("credentialNames", "sidecar: credentialNames is not currently supported"),
            ("tlsCertificates", "sidecar: tls_certificates is not currently supported"),
        ] {
            let set = match present(t, k).map(|v| &v.value) {
                Some(Yaml::Seq(s)) => !s.is_empty(),
                Some(Yaml::Bool(b)) => *b,
                Some(Yaml::Str(s)) => !s.is_empty(),
                Some(_) => true,
                None => false,
            };
            if set {
                self.error(ctx, t.key_line(k), &f.key(k), msg, format!("remove {k} from the Sidecar's ingress tls"));
            }
        }
        if let Some(m) = present(t, "mode")
            && let Some(mode) = self.enum_of(ctx, m, &f.key("mode"), "TLS mode", &SERVER_TLS_MODES)
            && (mode == "ISTIO_MUTUAL" || mode == "AUTO_PASSTHROUGH")
        {
            self.error(
                ctx,
                m.line,
                &f.key("mode"),
                format!("configuration is invalid: cannot set mode to {mode} in sidecar ingress tls"),
                "use SIMPLE or MUTUAL",
            );
        }
        if !Protocol::parse(protocol).is_some_and(|p| p.is_tls()) {
            self.error(
                ctx,
                t.line,
                f,
                "server cannot have TLS settings for non HTTPS/TLS ports",
                "declare the port's protocol HTTPS or TLS, or remove tls",
            );
        }
    }
}
