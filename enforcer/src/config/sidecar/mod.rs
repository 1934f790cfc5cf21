//! `Sidecar`: Istio's `ValidateSidecar` and the CRD schema's rules, into [`Sidecar`] (egress hosts,
//! outbound mode, workload selector; ingress listeners are validated, not modelled).

use std::collections::{HashMap, HashSet};

mod ingress;

use super::field::Field;
use super::host::HostPattern;
use super::loader::{Ctx, FileLoader};
use super::model::*;
use super::validate;
use super::yaml::{Node, Yaml};

const SPEC_FIELDS: [&str; 5] =
    ["egress", "inboundConnectionPool", "ingress", "outboundTrafficPolicy", "workloadSelector"];
const EGRESS_FIELDS: [&str; 4] = ["bind", "captureMode", "hosts", "port"];
pub(super) const INGRESS_FIELDS: [&str; 6] =
    ["bind", "captureMode", "connectionPool", "defaultEndpoint", "port", "tls"];
const PORT_FIELDS: [&str; 4] = ["name", "number", "protocol", "targetPort"];
pub(super) const CAPTURE_MODES: [&str; 3] = ["DEFAULT", "IPTABLES", "NONE"];
pub(super) const SERVER_TLS_MODES: [&str; 6] =
    ["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"];

pub(super) fn present<'n, 'y>(n: &'n Node<'y>, key: &str) -> Option<&'n Node<'y>> {
    n.get(key).filter(|v| !v.is_null())
}

fn non_empty_seq(n: Option<&Node<'_>>) -> bool {
    n.is_some_and(|n| matches!(&n.value, Yaml::Seq(s) if !s.is_empty()))
}

/// A validated port of a listener.
pub(super) struct ListenerPort {
    pub(super) number: u32,
    pub(super) protocol: String,
    pub(super) name: String,
}

impl FileLoader<'_> {
    pub(in crate::config) fn sidecar(&mut self, ctx: &Ctx, node: &Node<'_>) {
        let errors_before = self.errors.len();
        let meta = self.metadata(ctx, node);
        let sf = Field::ROOT.key("spec");
        let spec = node.get("spec").filter(|s| !s.is_null());
        let Some(spec) = spec else {
            self.error(
                ctx,
                node.line,
                &sf,
                "sidecar: empty configuration provided",
                "add spec.egress (e.g. hosts: [\"./*\", \"istio-system/*\"]) or spec.outboundTrafficPolicy",
            );
            return;
        };
        if !self.is_map(ctx, spec, &sf) {
            return;
        }
        self.known_fields(ctx, spec, &sf, &SPEC_FIELDS);
        // No labels: the Sidecar applies to its whole namespace.
        let selector = self
            .workload_selector(
                ctx,
                spec,
                "labels",
                "Sidecar",
                "sidecar: workload selector specified without labels, will be applied to all services in namespace",
            )
            .filter(|labels| !labels.is_empty());
        let egress_node = present(spec, "egress");
        if !non_empty_seq(egress_node)
            && !non_empty_seq(present(spec, "ingress"))
            && present(spec, "outboundTrafficPolicy").is_none()
            && present(spec, "inboundConnectionPool").is_none()
        {
            self.error(
                ctx,
                spec.line,
                &sf,
                "sidecar: empty configuration provided",
                "add spec.egress (e.g. hosts: [\"./*\", \"istio-system/*\"]) or spec.outboundTrafficPolicy",
            );
            return;
        }
        if let Some(i) = present(spec, "ingress") {
            self.sidecar_ingress(ctx, i);
        }
        if let Some(cp) = self.map_child(ctx, spec, "inboundConnectionPool", &sf) {
            self.connection_pool(ctx, cp, &sf.key("inboundConnectionPool"));
        }
        let egress = match egress_node {
            Some(e) => self.sidecar_egress(ctx, e),
            None => Vec::new(),
        };
        let outbound_mode = self.sidecar_outbound(ctx, spec);

        if self.errors.len() > errors_before {
            return;
        }
        let Some(name) = meta.name else { return };
        let source = self.src(ctx, node.line);
        self.registry.sidecars.push(Sidecar {
            name,
            namespace: meta.namespace,
            workload_selector: selector,
            egress,
            outbound_mode,
            source,
        });
    }

    /// A listener `port`: name optional (DNS-1123), protocol known, number 1..65535 (0 only for
    /// a unix socket egress listener), no targetPort.
    pub(super) fn listener_port(
        &mut self,
        ctx: &Ctx,
        p: &Node<'_>,
        f: &Field<'_>,
        allow_zero: bool,
    ) -> Option<ListenerPort> {
        if !self.is_map(ctx, p, f) {
            return None;
        }
        self.known_fields(ctx, p, f, &PORT_FIELDS);
        let mut ok = true;
        if let Some(t) = present(p, "targetPort")
            && self.ranged_int(ctx, t, &f.key("targetPort"), 0, u32::MAX as i128).is_some_and(|v| v > 0)
        {
            self.error(ctx, t.line, &f.key("targetPort"), "targetPort has no impact on Sidecars", "remove targetPort");
            ok = false;
        }
        let name = match present(p, "name") {
            Some(n) => self.str_of(ctx, n, &f.key("name")).map(|s| s.into_owned()).unwrap_or_default(),
            None => String::new(),
        };
        if !name.is_empty() && !validate::is_dns1123_label(&name) {
            self.error(
                ctx,
                p.key_line("name"),
                &f.key("name"),
                format!("invalid port name: {name}"),
                "use a DNS-1123 label, e.g. http",
            );
            ok = false;
        }
        let protocol = match present(p, "protocol") {
            Some(n) => self.str_of(ctx, n, &f.key("protocol")).map(|s| s.into_owned()).unwrap_or_default(),
            None => String::new(),
        };
        if !protocol.is_empty() && Protocol::parse(&protocol).is_none() {
            self.error(
                ctx,
                p.key_line("protocol"),
                &f.key("protocol"),
                format!("unsupported protocol: {protocol}"),
                format!("use one of {}", Protocol::ACCEPTED),
            );
            ok = false;
        }
        let number = match present(p, "number") {
            Some(n) => self.ranged_int(ctx, n, &f.key("number"), 0, u32::MAX as i128),
            None => Some(0),
        };
        let number = number? as u32;
        if !((1..=65535).contains(&number) || (number == 0 && allow_zero)) {
            self.error(
                ctx,
                p.key_line("number"),
                &f.key("number"),
                format!("port number {number} must be in the range 1..65535"),
                "use a port number between 1 and 65535",
            );
            ok = false;
        }
        ok.then_some(ListenerPort { number, protocol, name })
    }

    /// `spec.egress[]`: the catch-all listener (no port) last and only once, unique ports and unix
    /// binds, at least one `namespace/dnsName` host each.
    fn sidecar_egress(&mut self, ctx: &Ctx, e: &Node<'_>) -> Vec<EgressListener> {
        let sf = Field::ROOT.key("spec");
        let ef = sf.key("egress");
        let items = self.seq_of(ctx, e, &ef);
        let mut out = Vec::new();
        let mut ports = HashSet::new();
        let mut uds = HashSet::new();
        let mut catch_all = false;
        for (index, f, l) in self.map_items(ctx, items, &ef, "egress listener may not be null", &EGRESS_FIELDS) {
            let bind = present(l, "bind")
                .and_then(|b| self.str_of(ctx, b, &f.key("bind")))
                .map(|s| s.into_owned())
                .unwrap_or_default();
            let capture = match present(l, "captureMode") {
                Some(c) => {
                    self.enum_of(ctx, c, &f.key("captureMode"), "captureMode", &CAPTURE_MODES).unwrap_or("DEFAULT")
                }
                None => "DEFAULT",
            };
            let mut port = None;
            match present(l, "port") {
                None => {
                    if catch_all {
                        self.error(
                            ctx,
                            l.line,
                            &f,
                            "sidecar: egress can have only one listener with empty port",
                            "give the other listeners a port",
                        );
                        continue;
                    }
                    if index == items.len() - 1 {
                        catch_all = true;
                    } else {
                        self.error(
                            ctx,
                            l.line,
                            &f,
                            "sidecar: the egress listener with empty port should be the last listener in the list",
                            "move the listener without port to the end of spec.egress",
                        );
                    }
                }
                Some(p) => {
                    let pf = f.key("port");
                    if let Some(lp) = self.listener_port(ctx, p, &pf, true) {
                        if lp.number == 0 {
                            match bind.strip_prefix("unix://") {
                                None => self.error(
                                    ctx,
                                    p.line,
                                    &pf.key("number"),
                                    "sidecar: ports with 0 value must have a unix domain socket bind address",
                                    "set bind: unix:///path/to/socket, or a port number",
                                ),
                                Some(path) => {
                                    if let Err(msg) = validate::unix_address(path) {
                                        self.error(
                                            ctx,
                                            l.key_line("bind"),
                                            &f.key("bind"),
                                            msg,
                                            "use unix:///absolute/path or unix://@abstract",
                                        );
                                    }
                                }
                            }
                            if capture != "DEFAULT" && capture != "NONE" {
                                self.error(
                                    ctx,
                                    l.key_line("captureMode"),
                                    &f.key("captureMode"),
                                    "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
                                    "set captureMode: NONE",
                                );
                            }
                            if !uds.insert(bind.clone()) {
                                self.error(
                                    ctx,
                                    l.key_line("bind"),
                                    &f.key("bind"),
                                    "sidecar: unix domain socket values for listeners must be unique",
                                    "give each unix listener its own socket",
                                );
                            }
                        } else {
                            if !bind.is_empty() && bind.parse::<std::net::IpAddr>().is_err() {
                                self.error(
                                    ctx,
                                    l.key_line("bind"),
                                    &f.key("bind"),
                                    format!("{bind} is not a valid IP"),
                                    "use an IP address (e.g. 127.0.0.1), or omit bind",
                                );
                            }
                            if !ports.insert(lp.number) {
                                self.error(
                                    ctx,
                                    p.line,
                                    &pf.key("number"),
                                    "sidecar: ports on IP bound listeners must be unique",
                                    "use each port in one listener only",
                                );
                            }
                        }
                        port = Some(SidecarPort { number: lp.number, protocol: lp.protocol, name: lp.name });
                    }
                }
            }
            let hosts = self.egress_hosts(ctx, l, &f);
            out.push(EgressListener { port, hosts });
        }
        out
    }

    /// `spec.egress[].hosts`: `namespace/dnsName` each (Istio
    /// `ValidateNamespaceSlashWildcardHostname`); duplicates are warnings.
    fn egress_hosts(&mut self, ctx: &Ctx, l: &Node<'_>, f: &Field<'_>) -> Vec<EgressHost> {
        let hf = f.key("hosts");
        let mut out = Vec::new();
        let items = match present(l, "hosts") {
            Some(h) => self.string_list(ctx, h, &hf),
            None => Vec::new(),
        };
        if items.is_empty() {
            self.error(
                ctx,
                l.key_line("hosts"),
                &hf,
                "sidecar: egress listener must contain at least one host",
                "add hosts, e.g. hosts: [\"./*\", \"istio-system/*\"]",
            );
            return out;
        }
        let mut by_ns: HashMap<String, HashSet<String>> = HashMap::new();
        for (i, (raw, line)) in items.iter().enumerate() {
            let f = hf.idx(i);
            let Some((ns, host)) = raw.split_once('/') else {
                self.error(
                    ctx,
                    *line,
                    &f,
                    format!("host {raw:?} must be of form namespace/dnsName"),
                    format!("write e.g. \"./{raw}\" (the Sidecar's namespace) or \"*/{raw}\" (any namespace)"),
                );
                continue;
            };
            let mut bad = false;
            if ns.is_empty() || host.is_empty() {
                self.error(
                    ctx,
                    *line,
                    &f,
                    format!("config namespace and dnsName in host entry cannot be empty: {raw:?}"),
                    "write namespace/dnsName, e.g. ./* or istio-system/*",
                );
                bad = true;
            }
            let exclude = ns.starts_with('~');
            let bare_ns = ns.strip_prefix('~').unwrap_or(ns);
            if !bare_ns.is_empty() && bare_ns != "*" && bare_ns != "." && !validate::is_dns1123_label(bare_ns) {
                self.error(
                    ctx,
                    *line,
                    &f,
                    format!("invalid namespace value {ns:?} in sidecar"),
                    "use *, ., ~, or a namespace name (optionally ~-prefixed to exclude it)",
                );
                bad = true;
            }
            if !host.is_empty() {
                if host != "*" && !host.contains('.') {
                    self.error(
                        ctx,
                        *line,
                        &f,
                        format!("short names (non FQDN) are not allowed: {host:?}"),
                        format!("use the fully qualified name, e.g. {host}.<namespace>.svc.cluster.local"),
                    );
                    bad = true;
                }
                if let Err(msg) = validate::wildcard_domain(host) {
                    self.error(ctx, *line, &f, msg, "use a DNS name, optionally with a leading `*.` label, or `*`");
                    bad = true;
                } else if validate::is_partial_wildcard(host) {
                    self.error(
                        ctx,
                        *line,
                        &f,
                        format!("partial wildcard {host:?} not allowed"),
                        "use `*`, `*.example.com` or an exact name",
                    );
                    bad = true;
                }
            }
            // Duplicates (Istio warns): `ns/a` twice, or `ns/a` next to `ns/*`.
            if !exclude {
                let key_ns = if ns == "." { ctx.namespace.clone() } else { ns.to_string() };
                let set = by_ns.entry(key_ns).or_default();
                let dup = if host == "*" { !set.is_empty() } else { set.contains(host) || set.contains("*") };
                if dup {
                    self.warn(ctx, *line, &f, format!("duplicated egress host: {raw}"), "remove the duplicate host");
                }
                set.insert(host.to_string());
            }
            if bad {
                continue;
            }
            let namespace = match bare_ns {
                "*" | "" => EgressNamespace::Any,
                "." => EgressNamespace::Named(ctx.namespace.clone()),
                n => EgressNamespace::Named(n.to_string()),
            };
            out.push(EgressHost { namespace, exclude, host: HostPattern::parse(host) });
        }
        if by_ns.get("*").is_some_and(|s| s.contains("*")) && by_ns.len() != 1 {
            self.warn(
                ctx,
                present(l, "hosts").map_or(l.line, |h| h.line),
                &hf,
                "`*/*` host select all resources, no other hosts can be added",
                "remove the other hosts, or replace */* with the namespaces you need",
            );
        }
        out
    }

    /// `spec.outboundTrafficPolicy`: mode REGISTRY_ONLY (default) or ALLOW_ANY; egressProxy only
    /// with ALLOW_ANY, with an FQDN host and a port.
    fn sidecar_outbound(&mut self, ctx: &Ctx, spec: &Node<'_>) -> Option<Mode> {
        let sf = Field::ROOT.key("spec");
        let of = sf.key("outboundTrafficPolicy");
        let otp = self.map_child(ctx, spec, "outboundTrafficPolicy", &sf)?;
        self.known_fields(ctx, otp, &of, &["egressProxy", "mode"]);
        let mut mode = None;
        let mut mode_name = "REGISTRY_ONLY";
        if let Some(m) = present(otp, "mode") {
            let s = m.as_str().unwrap_or("");
            if s == "ALLOW_ANY_DYNAMIC_DNS" {
                self.error(
                    ctx,
                    m.line,
                    &of.key("mode"),
                    "sidecar: ALLOW_ANY_DYNAMIC_DNS mode is only supported in MeshConfig, not in Sidecar resource",
                    "use ALLOW_ANY or REGISTRY_ONLY in a Sidecar",
                );
                return None;
            }
            match self.enum_of(ctx, m, &of.key("mode"), "outbound traffic policy mode", &["REGISTRY_ONLY", "ALLOW_ANY"])
            {
                Some("ALLOW_ANY") => {
                    mode = Some(Mode::AllowAny);
                    mode_name = "ALLOW_ANY";
                }
                Some(_) => mode = Some(Mode::RegistryOnly),
                None => return None,
            }
        }
        if let Some(ep) = present(otp, "egressProxy") {
            let ef = of.key("egressProxy");
            if mode_name != "ALLOW_ANY" {
                self.error(
                    ctx,
                    ep.line,
                    &ef,
                    "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
                    "set outboundTrafficPolicy.mode: ALLOW_ANY, or remove egressProxy",
                );
                return mode;
            }
            if !self.is_map(ctx, ep, &ef) {
                return mode;
            }
            self.known_fields(ctx, ep, &ef, &["host", "port", "subset"]);
            let host = present(ep, "host").and_then(Node::as_str).unwrap_or("");
            if let Err(msg) = validate::fqdn(host) {
                self.error(
                    ctx,
                    ep.key_line("host"),
                    &ef.key("host"),
                    msg,
                    "set egressProxy.host to the proxy's DNS name",
                );
            }
            match self.map_child(ctx, ep, "port", &ef) {
                None => self.error(
                    ctx,
                    ep.line,
                    &ef.key("port"),
                    "sidecar: egress_proxy port must be non-nil",
                    "add port: {number: <port>}",
                ),
                Some(p) => {
                    let pf = ef.key("port");
                    self.known_fields(ctx, p, &pf, &["number"]);
                    match present(p, "number") {
                        Some(n) => {
                            self.port_of(ctx, n, &pf.key("number"));
                        }
                        None => self.error(
                            ctx,
                            p.line,
                            &pf.key("number"),
                            "port number 0 must be in the range 1..65535",
                            "set port.number",
                        ),
                    }
                }
            }
            if let Some(s) = present(ep, "subset")
                && let Some(name) = self.str_of(ctx, s, &ef.key("subset"))
                && !validate::is_dns1123_label(&name)
            {
                self.error(
                    ctx,
                    s.line,
                    &ef.key("subset"),
                    format!("subset name is invalid: {name}"),
                    "use a DNS-1123 label",
                );
            }
            self.note(
                ctx,
                ep.line,
                &ef,
                "egressProxy is not used by enforcer: unknown destinations are allowed directly under ALLOW_ANY",
                "nothing to do",
            );
        }
        mode
    }
}
