//! Walk generic YAML documents and turn them into typed registry objects,
//! mirroring Istio's `ValidateServiceEntry` checks (pkg/config/validation).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::*;
use super::yaml::{self, Node, Yaml};

pub(crate) const API_VERSIONS: [&str; 3] =
    ["networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"];

/// Accumulates results for one file.
pub(crate) struct FileLoader<'a> {
    file: &'a Path,
    lines: Vec<&'a str>,
    pub registry: Registry,
    pub errors: Vec<Diagnostic>,
}

/// Per-object context: where we are and what to call it.
#[derive(Clone)]
struct Ctx {
    doc: usize,
    prefix: String,
    object: Option<String>,
}

impl<'a> FileLoader<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        FileLoader { file, lines: text.lines().collect(), registry: Registry::default(), errors: Vec::new() }
    }

    fn src(&self, ctx: &Ctx, line: usize) -> SourceRef {
        SourceRef { file: self.file.to_path_buf(), document: ctx.doc, line: line.max(1) }
    }

    fn diag(&self, ctx: &Ctx, line: usize, field: &str, msg: String, fix: Option<&str>) -> Diagnostic {
        let field = if field.is_empty() {
            ctx.prefix.trim_end_matches('.').to_string()
        } else {
            format!("{}{}", ctx.prefix, field)
        };
        Diagnostic {
            source: self.src(ctx, line),
            object: ctx.object.clone(),
            field,
            message: msg,
            fix: fix.map(str::to_string),
        }
    }

    fn error(&mut self, ctx: &Ctx, line: usize, field: &str, msg: impl Into<String>, fix: &str) {
        let d = self.diag(ctx, line, field, msg.into(), Some(fix));
        self.errors.push(d);
    }

    fn warn(&mut self, ctx: &Ctx, line: usize, field: &str, msg: impl Into<String>, fix: &str) {
        let d = self.diag(ctx, line, field, msg.into(), Some(fix));
        self.registry.warnings.push(d);
    }

    pub fn load(&mut self, text: &'a str) {
        for doc in yaml::split_documents(text) {
            let ctx = Ctx { doc: doc.index, prefix: String::new(), object: None };
            match yaml::parse_document(&doc) {
                Ok(node) => self.document(&ctx, &node),
                Err(e) => {
                    let col = if e.column > 0 { format!(":{}", e.column) } else { String::new() };
                    self.error(
                        &ctx,
                        e.line,
                        "",
                        format!("YAML syntax error at line {}{}: {}", e.line, col, e.message),
                        "fix the YAML syntax (check indentation, quoting and brackets)",
                    );
                }
            }
        }
    }

    /// Load one object given as a tree (see [`Node::from_json`]), as document 1.
    pub fn load_node(&mut self, node: &Node) {
        self.document(&Ctx { doc: 1, prefix: String::new(), object: None }, node);
    }

    fn document(&mut self, ctx: &Ctx, node: &Node) {
        match &node.value {
            Yaml::Null => {}
            Yaml::Map(_) => self.object(ctx, node),
            other => self.error(
                ctx,
                node.line,
                "",
                format!("expected a mapping (a Kubernetes object), got {}", other.describe()),
                "each YAML document must be an object with apiVersion, kind, metadata and spec",
            ),
        }
    }

    fn object(&mut self, ctx: &Ctx, node: &Node) {
        let kind = match node.get("kind") {
            None => None,
            Some(k) => match k.as_str() {
                Some(s) => Some(s.to_string()),
                None => {
                    self.error(
                        ctx,
                        k.line,
                        "kind",
                        format!("expected string, got {}", k.value.describe()),
                        "set kind to e.g. ServiceEntry",
                    );
                    return;
                }
            },
        };
        match kind.as_deref() {
            None => {
                if node.get("outboundTrafficPolicy").is_some() {
                    self.mesh_config(ctx, node, "MeshConfig");
                } else {
                    self.warn(
                        ctx,
                        node.line,
                        "",
                        "document has no kind and is not a MeshConfig; ignored",
                        "add apiVersion/kind, or remove the document",
                    );
                }
            }
            Some("ServiceEntry") => {
                if self.check_api_version(ctx, node, "ServiceEntry") {
                    self.service_entry(ctx, node);
                }
            }
            Some("DestinationRule") => {
                if self.check_api_version(ctx, node, "DestinationRule") {
                    self.destination_rule(ctx, node);
                }
            }
            Some(k) if k == "List" || k.ends_with("List") => self.list(ctx, node, k),
            Some("ConfigMap") => self.config_map(ctx, node),
            Some("IstioOperator") => {
                let mode = node
                    .get("spec")
                    .and_then(|s| s.get("meshConfig"))
                    .filter(|m| m.get("outboundTrafficPolicy").is_some());
                match mode {
                    Some(mc) => {
                        let mut c = ctx.clone();
                        c.prefix = format!("{}spec.meshConfig.", ctx.prefix);
                        c.object = Some(object_label("IstioOperator", node));
                        self.mesh_config(&c, mc, "IstioOperator");
                    }
                    None => {
                        let mut c = ctx.clone();
                        c.object = Some(object_label("IstioOperator", node));
                        self.warn(
                            &c,
                            node.line,
                            "spec.meshConfig.outboundTrafficPolicy.mode",
                            "IstioOperator sets no outbound traffic policy; ignored",
                            "set spec.meshConfig.outboundTrafficPolicy.mode to ALLOW_ANY or REGISTRY_ONLY",
                        );
                    }
                }
            }
            Some(k) => {
                let mut c = ctx.clone();
                c.object = Some(object_label(k, node));
                self.warn(
                    &c,
                    node.line,
                    "kind",
                    format!("kind {k} is not used by enforcer; ignored"),
                    "only ServiceEntry, DestinationRule, MeshConfig (ConfigMap istio / IstioOperator) are read; remove it from the enforcer's input if unintended",
                );
            }
        }
    }

    fn check_api_version(&mut self, ctx: &Ctx, node: &Node, kind: &str) -> bool {
        let mut c = ctx.clone();
        c.object = Some(object_label(kind, node));
        match node.get("apiVersion") {
            Some(v) if v.as_str().is_some_and(|s| API_VERSIONS.contains(&s)) => true,
            Some(v) => {
                let shown = v.as_str().map(str::to_string).unwrap_or_else(|| v.value.describe());
                self.error(
                    &c,
                    v.line,
                    "apiVersion",
                    format!("unsupported apiVersion {shown:?} for kind {kind}"),
                    &format!("use one of {}", API_VERSIONS.join(", ")),
                );
                false
            }
            None => {
                self.error(
                    &c,
                    node.line,
                    "apiVersion",
                    format!("missing apiVersion for kind {kind}"),
                    &format!("add apiVersion: {}", API_VERSIONS[2]),
                );
                false
            }
        }
    }

    fn list(&mut self, ctx: &Ctx, node: &Node, kind: &str) {
        match node.get("items") {
            Some(Node { value: Yaml::Seq(items), .. }) => {
                for (i, item) in items.iter().enumerate() {
                    let c = Ctx { doc: ctx.doc, prefix: format!("{}items[{i}].", ctx.prefix), object: None };
                    self.document(&c, item);
                }
            }
            Some(Node { value: Yaml::Null, .. }) => {}
            Some(other) => self.error(
                ctx,
                other.line,
                "items",
                format!("expected a list, got {}", other.value.describe()),
                "items must be a YAML list of objects",
            ),
            None => self.warn(
                ctx,
                node.line,
                "items",
                format!("{kind} has no items; ignored"),
                "add items or remove the document",
            ),
        }
    }

    fn config_map(&mut self, ctx: &Ctx, node: &Node) {
        let mut c = ctx.clone();
        c.object = Some(object_label("ConfigMap", node));
        let mesh = node.get("data").and_then(|d| d.get("mesh"));
        let Some(mesh) = mesh else {
            self.warn(
                &c,
                node.line,
                "kind",
                "kind ConfigMap is not used by enforcer (no data.mesh); ignored",
                "only Istio's mesh ConfigMap (istio-system/istio with data.mesh) is read",
            );
            return;
        };
        let Some(text) = mesh.as_str() else {
            self.error(
                &c,
                mesh.line,
                "data.mesh",
                format!("expected string, got {}", mesh.value.describe()),
                "data.mesh must be a YAML document in a string (use `mesh: |`)",
            );
            return;
        };
        // For block scalars (`mesh: |`) the content starts on the next line.
        let raw_line = self.lines.get(mesh.line.saturating_sub(1)).copied().unwrap_or("");
        let after_colon = raw_line.split_once("mesh:").map(|(_, r)| r.trim()).unwrap_or("");
        let base = if after_colon.starts_with('|') || after_colon.starts_with('>') { mesh.line + 1 } else { mesh.line };
        match yaml::parse_embedded(text, base) {
            Ok(inner) => {
                let mut ic = c.clone();
                ic.prefix = format!("{}data.mesh.", ctx.prefix);
                if inner.get("outboundTrafficPolicy").is_some() {
                    self.mesh_config(&ic, &inner, "ConfigMap");
                } else {
                    self.warn(
                        &ic,
                        base,
                        "outboundTrafficPolicy.mode",
                        "mesh config sets no outbound traffic policy (Istio's default is ALLOW_ANY)",
                        "add outboundTrafficPolicy: {mode: REGISTRY_ONLY} to data.mesh to restrict egress",
                    );
                }
            }
            Err(e) => self.error(
                &c,
                e.line,
                "data.mesh",
                format!("YAML syntax error in embedded mesh config at line {}: {}", e.line, e.message),
                "fix the YAML inside data.mesh",
            ),
        }
    }

    fn mesh_config(&mut self, ctx: &Ctx, mc: &Node, origin: &str) {
        let mut c = ctx.clone();
        if c.object.is_none() {
            c.object = Some(origin.to_string());
        }
        let Some(otp) = mc.get("outboundTrafficPolicy") else {
            return;
        };
        let Some(mode_node) = otp.get("mode") else {
            self.warn(
                &c,
                otp.line,
                "outboundTrafficPolicy.mode",
                "outboundTrafficPolicy has no mode (Istio's default is ALLOW_ANY)",
                "set mode: ALLOW_ANY or mode: REGISTRY_ONLY",
            );
            return;
        };
        let Some(s) = self.str_of(&c, mode_node, "outboundTrafficPolicy.mode") else {
            return;
        };
        let mode: Mode = match s.parse() {
            Ok(m) => m,
            Err(_) => {
                self.error(
                    &c,
                    mode_node.line,
                    "outboundTrafficPolicy.mode",
                    format!("unknown outbound traffic policy mode {s:?}"),
                    "use one of ALLOW_ANY, REGISTRY_ONLY, AUDIT",
                );
                return;
            }
        };
        let src = self.src(&c, mode_node.line);
        match &self.registry.mode {
            None => self.registry.mode = Some((mode, src)),
            Some((m, first)) if *m != mode => {
                let mut d = mode_conflict(*m, first, mode, &src);
                d.object = c.object.clone();
                d.field = format!("{}outboundTrafficPolicy.mode", c.prefix);
                self.errors.push(d);
            }
            Some(_) => {}
        }
    }

    // --- typed accessors ---------------------------------------------------

    fn str_of(&mut self, ctx: &Ctx, n: &Node, field: &str) -> Option<String> {
        match &n.value {
            Yaml::Str(s) => Some(s.clone()),
            // A flow-sequence item like `[001:db8::]` is read by the YAML 1.2
            // parser as the implicit pair `{"001:db8:": null}`; Kubernetes'
            // YAML reader (and so Istio) treats it as the string `001:db8::`.
            Yaml::Map(entries)
                if entries.len() == 1 && entries[0].0.contains(':') && entries[0].2.value == Yaml::Null =>
            {
                Some(format!("{}:", entries[0].0))
            }
            other => {
                self.error(
                    ctx,
                    n.line,
                    field,
                    format!("expected string, got {}", other.describe()),
                    "quote the value or use a string",
                );
                None
            }
        }
    }

    fn seq_of<'n>(&mut self, ctx: &Ctx, n: &'n Node, field: &str) -> &'n [Node] {
        match &n.value {
            Yaml::Seq(items) => items,
            Yaml::Null => &[],
            other => {
                self.error(
                    ctx,
                    n.line,
                    field,
                    format!("expected a list, got {}", other.describe()),
                    "write the value as a YAML list (`- item` lines or `[a, b]`)",
                );
                &[]
            }
        }
    }

    fn is_map(&mut self, ctx: &Ctx, n: &Node, field: &str) -> bool {
        match &n.value {
            Yaml::Map(_) => true,
            other => {
                self.error(
                    ctx,
                    n.line,
                    field,
                    format!("expected a mapping, got {}", other.describe()),
                    "write the value as `key: value` pairs",
                );
                false
            }
        }
    }

    /// Parse a port number in 1..=65535 (Istio `ValidatePort`).
    fn port_of(&mut self, ctx: &Ctx, n: &Node, field: &str) -> Option<u16> {
        let v = match &n.value {
            Yaml::Int(i) => *i,
            other => {
                self.error(
                    ctx,
                    n.line,
                    field,
                    format!("expected integer, got {}", other.describe()),
                    "use a port number between 1 and 65535, without quotes",
                );
                return None;
            }
        };
        if (1..=65535).contains(&v) {
            Some(v as u16)
        } else {
            self.error(
                ctx,
                n.line,
                field,
                format!("port number {v} must be in the range 1..65535"),
                "use a port number between 1 and 65535",
            );
            None
        }
    }

    fn metadata(&mut self, ctx: &Ctx, node: &Node) -> (Option<String>, String) {
        let Some(md) = node.get("metadata") else {
            self.error(ctx, node.line, "metadata.name", "missing metadata.name", "add metadata: {name: <name>}");
            return (None, "default".into());
        };
        let name = match md.get("name") {
            Some(n) => self.str_of(ctx, n, "metadata.name").filter(|s| !s.is_empty()),
            None => None,
        };
        if name.is_none() && md.get("name").is_none_or(|n| n.as_str().is_some()) {
            self.error(ctx, md.line, "metadata.name", "missing metadata.name", "add metadata.name: <name>");
        }
        let namespace = md
            .get("namespace")
            .and_then(|n| self.str_of(ctx, n, "metadata.namespace"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string());
        (name, namespace)
    }

    fn unknown_top_level(&mut self, ctx: &Ctx, node: &Node) {
        for (k, line, _) in node.entries() {
            if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&k.as_str()) {
                self.warn(
                    ctx,
                    *line,
                    k,
                    format!("unknown field {}{k}; check spelling", ctx.prefix),
                    "known top-level fields are apiVersion, kind, metadata, spec",
                );
            }
        }
    }

    // --- ServiceEntry ------------------------------------------------------

    fn service_entry(&mut self, ctx0: &Ctx, node: &Node) {
        let errors_before = self.errors.len();
        let mut ctx = ctx0.clone();
        ctx.object = Some(object_label("ServiceEntry", node));
        let (name, namespace) = self.metadata(&ctx, node);
        self.unknown_top_level(&ctx, node);
        let Some(spec) = node.get("spec") else {
            self.error(&ctx, node.line, "spec", "missing spec", "add spec with hosts and ports");
            return;
        };
        if !self.is_map(&ctx, spec, "spec") {
            return;
        }

        // Warnings for known-but-unsupported and unknown fields.
        const KNOWN: [&str; 9] = [
            "hosts",
            "addresses",
            "ports",
            "location",
            "resolution",
            "endpoints",
            "workloadSelector",
            "exportTo",
            "subjectAltNames",
        ];
        for (k, line, _) in spec.entries() {
            match k.as_str() {
                "exportTo" => self.warn(
                    &ctx,
                    *line,
                    "spec.exportTo",
                    "exportTo is not supported by enforcer; the entry applies to every workload the enforcer guards",
                    "remove spec.exportTo, or run a separate enforcer per namespace",
                ),
                "workloadSelector" => self.warn(
                    &ctx,
                    *line,
                    "spec.workloadSelector",
                    "workloadSelector is not supported by enforcer; ignored",
                    "list endpoints explicitly, or remove spec.workloadSelector",
                ),
                "subjectAltNames" => self.warn(
                    &ctx,
                    *line,
                    "spec.subjectAltNames",
                    "subjectAltNames is not checked by enforcer; ignored",
                    "remove spec.subjectAltNames, or set DestinationRule tls.subjectAltNames",
                ),
                k if KNOWN.contains(&k) => {}
                k => self.warn(
                    &ctx,
                    *line,
                    &format!("spec.{k}"),
                    format!("unknown field spec.{k}; check spelling"),
                    &format!("known fields are {}", KNOWN.join(", ")),
                ),
            }
        }

        // resolution (needed by other checks)
        let mut resolution = Resolution::None;
        let mut dynamic_dns = false;
        if let Some(r) = spec.get("resolution")
            && let Some(s) = self.str_of(&ctx, r, "spec.resolution")
        {
            match s.to_ascii_uppercase().as_str() {
                "NONE" => resolution = Resolution::None,
                "STATIC" => resolution = Resolution::Static,
                "DNS" => resolution = Resolution::Dns,
                "DNS_ROUND_ROBIN" => {
                    resolution = Resolution::DnsRoundRobin;
                    self.warn(
                        &ctx,
                        r.line,
                        "spec.resolution",
                        "DNS_ROUND_ROBIN is treated like DNS: every resolved address is allowed",
                        "use resolution: DNS to make this explicit",
                    );
                }
                "DYNAMIC_DNS" => {
                    resolution = Resolution::Dns;
                    dynamic_dns = true;
                    self.warn(
                        &ctx,
                        r.line,
                        "spec.resolution",
                        "DYNAMIC_DNS is treated like DNS: every resolved address is allowed",
                        "use resolution: DNS to make this explicit",
                    );
                }
                _ => self.error(
                    &ctx,
                    r.line,
                    "spec.resolution",
                    format!("unsupported resolution type {s}"),
                    "use one of NONE, STATIC, DNS, DNS_ROUND_ROBIN",
                ),
            }
        }

        // location
        let mut location = Location::MeshExternal;
        if let Some(l) = spec.get("location")
            && let Some(s) = self.str_of(&ctx, l, "spec.location")
        {
            match s.to_ascii_uppercase().as_str() {
                "MESH_EXTERNAL" => {}
                "MESH_INTERNAL" => {
                    location = Location::MeshInternal;
                    self.warn(
                        &ctx,
                        l.line,
                        "spec.location",
                        "MESH_INTERNAL is treated like MESH_EXTERNAL for egress",
                        "use location: MESH_EXTERNAL for external destinations",
                    );
                }
                _ => self.error(
                    &ctx,
                    l.line,
                    "spec.location",
                    format!("unsupported location {s}"),
                    "use MESH_EXTERNAL or MESH_INTERNAL",
                ),
            }
        }

        // hosts
        let mut hosts = Vec::new();
        match spec.get("hosts") {
            None => self.error(
                &ctx,
                spec.line,
                "spec.hosts",
                "service entry must have at least one host",
                "add spec.hosts with at least one DNS name, e.g. hosts: [api.example.com]",
            ),
            Some(h) => {
                let items = self.seq_of(&ctx, h, "spec.hosts");
                if items.is_empty() && matches!(h.value, Yaml::Seq(_) | Yaml::Null) {
                    self.error(
                        &ctx,
                        h.line,
                        "spec.hosts",
                        "service entry must have at least one host",
                        "add at least one DNS name to spec.hosts",
                    );
                }
                for (i, item) in items.iter().enumerate() {
                    let field = format!("spec.hosts[{i}]");
                    if let Some(s) = self.str_of(&ctx, item, &field) {
                        match parse_host(&s) {
                            Ok(host) => hosts.push(host),
                            // Istio accepts a `*` prefix inside the first label (`*x`, `*foo.com`;
                            // its own test data says "weird case but we allow it"), so a real
                            // manifest must load: accepted, but it matches nothing here.
                            Err(_) if is_partial_wildcard(&s) => self.warn(
                                &ctx,
                                item.line,
                                &field,
                                format!("partial wildcard host {s} is accepted as Istio does, but enforcer matches wildcards only on label boundaries, so this host matches nothing"),
                                "use a whole-label wildcard like *.example.com, or list exact DNS names",
                            ),
                            Err((msg, fix)) => self.error(&ctx, item.line, &field, msg, fix),
                        }
                    }
                }
            }
        }

        // addresses
        let mut addresses = Vec::new();
        let mut cidr_line = None;
        if let Some(a) = spec.get("addresses") {
            for (i, item) in self.seq_of(&ctx, a, "spec.addresses").iter().enumerate() {
                let field = format!("spec.addresses[{i}]");
                let Some(s) = self.str_of(&ctx, item, &field) else {
                    continue;
                };
                match parse_net(&s) {
                    Some(net) => {
                        if s.contains('/') {
                            cidr_line.get_or_insert(item.line);
                        }
                        addresses.push(net)
                    }
                    None => self.error(
                        &ctx,
                        item.line,
                        &field,
                        format!("invalid address {s:?}: not an IP address or CIDR"),
                        "use an IP address (10.0.0.1, 2001:db8::1) or a CIDR block (10.0.0.0/24)",
                    ),
                }
            }
        }
        if let Some(line) = cidr_line
            && !matches!(resolution, Resolution::None | Resolution::Static)
        {
            self.error(
                &ctx,
                line,
                "spec.addresses",
                "CIDR addresses are allowed only for NONE/STATIC resolution types",
                "set resolution: STATIC or NONE, or list single IP addresses",
            );
        }

        // ports
        let mut ports: Vec<Port> = Vec::new();
        let mut port_names: HashSet<String> = HashSet::new();
        let mut port_numbers: HashSet<u16> = HashSet::new();
        match spec.get("ports") {
            None => self.warn(
                &ctx,
                spec.line,
                "spec.ports",
                "no ports declared (Istio accepts this); enforcer has no port to allow for these hosts",
                "declare the ports you need, e.g. ports: [{number: 443, name: https, protocol: TLS}]",
            ),
            Some(p) => {
                let items = self.seq_of(&ctx, p, "spec.ports");
                for (i, item) in items.iter().enumerate() {
                    let f = format!("spec.ports[{i}]");
                    if !self.is_map(&ctx, item, &f) {
                        continue;
                    }
                    for (k, line, _) in item.entries() {
                        if !["number", "protocol", "name", "targetPort"].contains(&k.as_str()) {
                            self.warn(
                                &ctx,
                                *line,
                                &format!("{f}.{k}"),
                                format!("unknown field {f}.{k}; check spelling"),
                                "known port fields are number, protocol, name, targetPort",
                            );
                        }
                    }
                    let number = match item.get("number") {
                        Some(n) => self.port_of(&ctx, n, &format!("{f}.number")),
                        None => {
                            self.error(
                                &ctx,
                                item.line,
                                &format!("{f}.number"),
                                "port number is required",
                                "add number: <1-65535>",
                            );
                            None
                        }
                    };
                    let name = match item.get("name") {
                        Some(n) => self.str_of(&ctx, n, &format!("{f}.name")),
                        None => Some(String::new()),
                    };
                    let name_line = item.get("name").map_or(item.line, |n| n.line);
                    if let Some(nm) = &name {
                        if !is_dns1123_label(nm) {
                            self.error(
                                &ctx,
                                name_line,
                                &format!("{f}.name"),
                                if nm.is_empty() {
                                    "port name is required".to_string()
                                } else {
                                    format!("invalid port name: {nm}")
                                },
                                "use a DNS-1123 label: lowercase letters, digits and '-', e.g. name: https",
                            );
                        } else if !port_names.insert(nm.clone()) {
                            self.error(
                                &ctx,
                                name_line,
                                &format!("{f}.name"),
                                format!("service entry port name {nm:?} already defined"),
                                "give every port a unique name",
                            );
                        }
                    }
                    if let Some(num) = number
                        && !port_numbers.insert(num)
                    {
                        let line = item.get("number").map_or(item.line, |n| n.line);
                        self.error(
                            &ctx,
                            line,
                            &format!("{f}.number"),
                            format!("service entry port {num} already defined"),
                            "remove the duplicate port or use a different number",
                        );
                    }
                    let protocol = match item.get("protocol") {
                        None => Some(Protocol::Tcp),
                        Some(pn) => match self.str_of(&ctx, pn, &format!("{f}.protocol")) {
                            None => None,
                            Some(s) if s.is_empty() => Some(Protocol::Tcp),
                            Some(s) => match Protocol::parse(&s) {
                                Some(p) => Some(p),
                                None => {
                                    self.error(
                                        &ctx,
                                        pn.line,
                                        &format!("{f}.protocol"),
                                        format!("unsupported protocol: {s}"),
                                        &format!("use one of {}", Protocol::ACCEPTED),
                                    );
                                    None
                                }
                            },
                        },
                    };
                    let target_port = match item.get("targetPort") {
                        Some(t) => self.port_of(&ctx, t, &format!("{f}.targetPort")).map(Some),
                        None => Some(None),
                    };
                    if let (Some(number), Some(name), Some(protocol), Some(target_port)) =
                        (number, name, protocol, target_port)
                    {
                        ports.push(Port { number, protocol, name, target_port });
                    }
                }
            }
        }

        // endpoints
        let mut endpoints = Vec::new();
        let mut endpoints_line = None;
        let mut has_unix = false;
        if let Some(e) = spec.get("endpoints") {
            let items = self.seq_of(&ctx, e, "spec.endpoints");
            if !items.is_empty() {
                endpoints_line = Some(spec.key_line("endpoints"));
            }
            if spec.get("workloadSelector").is_some() && !items.is_empty() {
                self.error(
                    &ctx,
                    e.line,
                    "spec.endpoints",
                    "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
                    "remove spec.workloadSelector or spec.endpoints",
                );
            }
            for (i, item) in items.iter().enumerate() {
                let f = format!("spec.endpoints[{i}]");
                if !self.is_map(&ctx, item, &f) {
                    continue;
                }
                for (k, line, _) in item.entries() {
                    match k.as_str() {
                        "address" | "ports" => {}
                        "labels" | "network" | "locality" | "weight" | "serviceAccount" => {
                            self.warn(&ctx, *line, &format!("{f}.{k}"),
                                format!("endpoint {k} is not used by enforcer; ignored"),
                                &format!("remove {f}.{k}"))
                        }
                        _ => self.warn(&ctx, *line, &format!("{f}.{k}"),
                            format!("unknown field {f}.{k}; check spelling"),
                            "known endpoint fields are address, ports, labels, network, locality, weight, serviceAccount"),
                    }
                }
                let Some(addr_node) = item.get("address") else {
                    self.error(
                        &ctx,
                        item.line,
                        &format!("{f}.address"),
                        "endpoint address is required",
                        "add address: <IP or hostname>",
                    );
                    continue;
                };
                let af = format!("{f}.address");
                let Some(addr) = self.str_of(&ctx, addr_node, &af) else {
                    continue;
                };
                let address = if let Some(path) = addr.strip_prefix("unix://") {
                    has_unix = true;
                    if !path.starts_with('/') && !path.starts_with('@') {
                        self.error(
                            &ctx,
                            addr_node.line,
                            &af,
                            format!("unix address {addr:?} must be absolute"),
                            "use unix:///absolute/path or unix://@abstract",
                        );
                    }
                    EndpointAddress::Unix(path.to_string())
                } else if let Ok(ip) = addr.parse::<IpAddr>() {
                    EndpointAddress::Ip(ip)
                } else {
                    let lower = addr.to_ascii_lowercase();
                    let trimmed = lower.strip_suffix('.').unwrap_or(&lower).to_string();
                    match resolution {
                        Resolution::Static => self.error(
                            &ctx,
                            addr_node.line,
                            &af,
                            format!(
                                "endpoint address {addr:?} is not an IP address; STATIC endpoints must be IP addresses"
                            ),
                            "use resolution: DNS for hostnames, or list IP endpoints",
                        ),
                        _ if !is_fqdn(&trimmed) => self.error(
                            &ctx,
                            addr_node.line,
                            &af,
                            format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
                            "use an IP address or a DNS name like api.example.com",
                        ),
                        _ => {}
                    }
                    EndpointAddress::Hostname(trimmed)
                };
                let mut eports = BTreeMap::new();
                if let Some(pm) = item.get("ports") {
                    let pf = format!("{f}.ports");
                    if self.is_map(&ctx, pm, &pf) {
                        if matches!(address, EndpointAddress::Unix(_)) && !pm.entries().is_empty() {
                            self.error(
                                &ctx,
                                pm.line,
                                &pf,
                                format!("unix endpoint {addr} must not include ports"),
                                &format!("remove {pf}"),
                            );
                        }
                        for (pname, pline, pval) in pm.entries() {
                            let ef = format!("{pf}.{pname}");
                            let v = self.port_of(&ctx, pval, &ef);
                            if !port_names.contains(pname) {
                                let mut declared: Vec<_> = port_names.iter().cloned().collect();
                                declared.sort();
                                self.error(
                                    &ctx,
                                    *pline,
                                    &ef,
                                    format!("endpoint port {pname} is not defined by the service entry"),
                                    &if declared.is_empty() {
                                        "declare a port with this name in spec.ports".to_string()
                                    } else {
                                        format!("use a port name declared in spec.ports ({})", declared.join(", "))
                                    },
                                );
                            }
                            if let Some(v) = v {
                                eports.insert(pname.clone(), v);
                            }
                        }
                    }
                }
                endpoints.push(Endpoint { address, ports: eports });
            }
        }

        // Resolution-specific checks (Istio ValidateServiceEntry).
        match resolution {
            Resolution::None => {
                if let Some(line) = endpoints_line {
                    self.error(
                        &ctx,
                        line,
                        "spec.endpoints",
                        "no endpoints should be provided for resolution type none",
                        "set resolution: STATIC (IP endpoints) or DNS (hostname endpoints), or remove spec.endpoints",
                    );
                }
            }
            Resolution::Static => {
                if has_unix && ports.len() != 1 {
                    self.error(
                        &ctx,
                        endpoints_line.unwrap_or(spec.line),
                        "spec.ports",
                        "exactly 1 service port required for unix endpoints",
                        "declare exactly one port",
                    );
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                if endpoints.is_empty()
                    && let Some(h) = hosts.iter().find(|h| h.is_wildcard())
                {
                    let line = spec.get("hosts").map_or(spec.line, |n| n.line);
                    self.error(
                        &ctx,
                        line,
                        "spec.hosts",
                        format!(
                            "hosts must be FQDN if no endpoints are provided for resolution mode {}; {h} is a wildcard",
                            if dynamic_dns { "DYNAMIC_DNS".to_string() } else { resolution.to_string() }
                        ),
                        "set resolution: NONE for wildcard hosts, or list endpoints",
                    );
                }
            }
        }

        // Multiple hosts with non-HTTP/TLS ports cannot be told apart.
        if resolution != Resolution::None
            && hosts.len() > 1
            && ports.iter().any(|p| !p.protocol.is_http() && !p.protocol.is_tls())
        {
            self.error(
                &ctx,
                spec.get("hosts").map_or(spec.line, |n| n.line),
                "spec.hosts",
                "multiple hosts provided with non-HTTP, non-TLS ports",
                "split into one ServiceEntry per host, or set resolution: NONE",
            );
        }

        if self.errors.len() > errors_before {
            return;
        }
        let Some(name) = name else { return };
        let source = self.src(&ctx, node.line);
        self.registry.services.push(ServiceEntry {
            name,
            namespace,
            hosts,
            addresses,
            ports,
            endpoints,
            resolution,
            location,
            source,
        });
    }

    // --- DestinationRule ---------------------------------------------------

    fn destination_rule(&mut self, ctx0: &Ctx, node: &Node) {
        let errors_before = self.errors.len();
        let mut ctx = ctx0.clone();
        ctx.object = Some(object_label("DestinationRule", node));
        let (name, namespace) = self.metadata(&ctx, node);
        self.unknown_top_level(&ctx, node);
        let Some(spec) = node.get("spec") else {
            self.error(&ctx, node.line, "spec", "missing spec", "add spec.host");
            return;
        };
        if !self.is_map(&ctx, spec, "spec") {
            return;
        }
        const KNOWN: [&str; 5] = ["host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"];
        for (k, line, _) in spec.entries() {
            if !KNOWN.contains(&k.as_str()) {
                self.warn(
                    &ctx,
                    *line,
                    &format!("spec.{k}"),
                    format!("unknown field spec.{k}; check spelling"),
                    &format!("known fields are {}", KNOWN.join(", ")),
                );
            }
        }
        let host = match spec.get("host") {
            Some(h) => self.str_of(&ctx, h, "spec.host"),
            None => {
                self.error(
                    &ctx,
                    spec.line,
                    "spec.host",
                    "destination rule must have a host",
                    "add spec.host: <host of a ServiceEntry>",
                );
                None
            }
        };
        if let (Some(h), Some(hn)) = (&host, spec.get("host"))
            && (h == "*" || parse_host(h).is_err())
        {
            self.error(
                &ctx,
                hn.line,
                "spec.host",
                format!("invalid host {h}"),
                "use a DNS name, optionally with a leading `*.` label",
            );
        }
        let mut tls = None;
        let mut port_tls = BTreeMap::new();
        let mut connect_timeout = None;
        if let Some(tp) = spec.get("trafficPolicy")
            && self.is_map(&ctx, tp, "spec.trafficPolicy")
        {
            if let Some(t) = tp.get("tls") {
                tls = self.tls(&ctx, t, "spec.trafficPolicy.tls");
            }
            if let Some(ct) = tp.get("connectionPool").and_then(|c| c.get("tcp")).and_then(|t| t.get("connectTimeout"))
            {
                let f = "spec.trafficPolicy.connectionPool.tcp.connectTimeout";
                if let Some(s) = self.str_of(&ctx, ct, f) {
                    match parse_duration(&s) {
                        Some(d) => connect_timeout = Some(d),
                        None => self.error(
                            &ctx,
                            ct.line,
                            f,
                            format!("invalid duration {s:?}"),
                            "use a duration like 1s, 500ms, 1m30s",
                        ),
                    }
                }
            }
            if let Some(pls) = tp.get("portLevelSettings") {
                let items = self.seq_of(&ctx, pls, "spec.trafficPolicy.portLevelSettings");
                for (i, item) in items.iter().enumerate() {
                    let f = format!("spec.trafficPolicy.portLevelSettings[{i}]");
                    let num = match item.get("port").and_then(|p| p.get("number")) {
                        Some(n) => self.port_of(&ctx, n, &format!("{f}.port.number")),
                        None => {
                            self.error(
                                &ctx,
                                item.line,
                                &format!("{f}.port.number"),
                                "port-level setting requires port.number",
                                "add port: {number: <1-65535>}",
                            );
                            None
                        }
                    };
                    if let Some(t) = item.get("tls") {
                        let settings = self.tls(&ctx, t, &format!("{f}.tls"));
                        if let (Some(n), Some(s)) = (num, settings)
                            && port_tls.insert(n, s).is_some()
                        {
                            self.error(
                                &ctx,
                                item.line,
                                &format!("{f}.port.number"),
                                format!("port {n} has more than one portLevelSettings entry"),
                                "merge the entries for this port",
                            );
                        }
                    }
                }
            }
        }
        if self.errors.len() > errors_before {
            return;
        }
        let (Some(name), Some(host)) = (name, host) else {
            return;
        };
        // Only tls.mode SIMPLE (TLS origination by the L7 proxy) and DISABLE are acted on.
        for t in tls.iter().chain(port_tls.values()) {
            if !matches!(t.mode, TlsMode::Simple | TlsMode::Disable) {
                self.warn(
                    &ctx,
                    node.line,
                    "spec.trafficPolicy.tls.mode",
                    format!("tls.mode {} for {host} is not supported by enforcer (only SIMPLE origination and DISABLE): connections go out as the application makes them", t.mode),
                    "use mode SIMPLE for TLS origination, or remove the setting",
                );
            }
        }
        let source = self.src(&ctx, node.line);
        self.registry.destination_rules.push(DestinationRule {
            name,
            namespace,
            host: host.to_ascii_lowercase(),
            tls,
            port_tls,
            connect_timeout,
            source,
        });
    }

    fn tls(&mut self, ctx: &Ctx, t: &Node, f: &str) -> Option<TlsSettings> {
        if !self.is_map(ctx, t, f) {
            return None;
        }
        const KNOWN: [&str; 10] = [
            "mode",
            "sni",
            "caCertificates",
            "insecureSkipVerify",
            "subjectAltNames",
            "clientCertificate",
            "privateKey",
            "credentialName",
            "caCrl",
            "sniHosts",
        ];
        for (k, line, _) in t.entries() {
            if !KNOWN.contains(&k.as_str()) {
                self.warn(
                    ctx,
                    *line,
                    &format!("{f}.{k}"),
                    format!("unknown field {f}.{k}; check spelling"),
                    &format!("known tls fields are {}", KNOWN.join(", ")),
                );
            }
        }
        let mode = match t.get("mode") {
            None => TlsMode::Disable,
            Some(m) => {
                let s = self.str_of(ctx, m, &format!("{f}.mode"))?;
                match s.to_ascii_uppercase().as_str() {
                    "DISABLE" => TlsMode::Disable,
                    "SIMPLE" => TlsMode::Simple,
                    "MUTUAL" => TlsMode::Mutual,
                    "ISTIO_MUTUAL" => TlsMode::IstioMutual,
                    _ => {
                        self.error(
                            ctx,
                            m.line,
                            &format!("{f}.mode"),
                            format!("unsupported TLS mode {s}"),
                            "use one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
                        );
                        return None;
                    }
                }
            }
        };
        let sni = t.get("sni").and_then(|n| self.str_of(ctx, n, &format!("{f}.sni")));
        let ca_certificates = t
            .get("caCertificates")
            .and_then(|n| self.str_of(ctx, n, &format!("{f}.caCertificates")))
            .map(PathBuf::from);
        let insecure_skip_verify = match t.get("insecureSkipVerify") {
            None => false,
            Some(Node { value: Yaml::Bool(b), .. }) => *b,
            Some(n) => {
                self.error(
                    ctx,
                    n.line,
                    &format!("{f}.insecureSkipVerify"),
                    format!("expected boolean, got {}", n.value.describe()),
                    "use true or false",
                );
                false
            }
        };
        let mut subject_alt_names = Vec::new();
        if let Some(s) = t.get("subjectAltNames") {
            let sf = format!("{f}.subjectAltNames");
            for (i, item) in self.seq_of(ctx, s, &sf).iter().enumerate() {
                if let Some(v) = self.str_of(ctx, item, &format!("{sf}[{i}]")) {
                    subject_alt_names.push(v);
                }
            }
        }
        Some(TlsSettings { mode, sni, ca_certificates, insecure_skip_verify, subject_alt_names })
    }
}

fn object_label(kind: &str, node: &Node) -> String {
    let md = node.get("metadata");
    let name = md.and_then(|m| m.get("name")).and_then(Node::as_str).unwrap_or("<unnamed>");
    let ns = md.and_then(|m| m.get("namespace")).and_then(Node::as_str).unwrap_or("default");
    format!("{kind} {ns}/{name}")
}

/// DNS-1123 label: 1..=63 of [a-z0-9-], not starting or ending with '-'.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS name made of DNS-1123 labels (case-insensitive), at most 255 chars.
pub(crate) fn is_fqdn(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.split('.').all(|l| is_dns1123_label(&l.to_ascii_lowercase()))
}

/// Parse a ServiceEntry host like Istio's `ValidateWildcardDomain`, but only
/// accepting a wildcard as the whole first label (`*.example.com`).
pub(crate) fn parse_host(raw: &str) -> Result<Host, (String, &'static str)> {
    let s = raw.trim().to_ascii_lowercase();
    let s = s.strip_suffix('.').unwrap_or(&s);
    if s == "*" {
        return Err((
            format!("invalid host {raw}: `*` alone is not allowed in a ServiceEntry"),
            "list the DNS names you need, or use a wildcard like *.example.com",
        ));
    }
    if let Some(suffix) = s.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err((
                format!("invalid host {raw}: `*` is only allowed as the whole first label"),
                "use a single leading wildcard label, e.g. *.example.com",
            ));
        }
        if !is_fqdn(suffix) {
            return Err((
                format!("invalid host {raw}: {suffix:?} is not a valid DNS name"),
                "use DNS labels of letters, digits and '-', separated by dots",
            ));
        }
        return Ok(Host::Wildcard(suffix.to_string()));
    }
    if s.contains('*') {
        return Err((
            format!("invalid host {raw}: `*` is only allowed as the whole first label (`*.`)"),
            "use a wildcard like *.example.com, or list exact DNS names",
        ));
    }
    if !is_fqdn(s) {
        return Err((
            format!("invalid host {raw}: not a valid DNS name"),
            "use DNS labels of letters, digits and '-', separated by dots, e.g. api.example.com",
        ));
    }
    Ok(Host::Exact(s.to_string()))
}

/// `*x`, `*foo.example.com`: a `*` prefix inside the first label, which Istio's
/// `ValidateWildcardDomain` allows.
fn is_partial_wildcard(raw: &str) -> bool {
    let s = raw.trim().to_ascii_lowercase();
    let s = s.strip_suffix('.').unwrap_or(&s);
    match s.strip_prefix('*') {
        Some(rest) if !rest.is_empty() && !rest.starts_with('.') && !rest.contains('*') => is_fqdn(rest),
        _ => false,
    }
}

fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Some(net);
    }
    s.parse::<IpAddr>().ok().map(ipnet::IpNet::from)
}

/// Parse a protobuf/Go style duration: "1s", "500ms", "1.5s", "1m30s", "10us".
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}
