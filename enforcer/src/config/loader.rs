//! The file loader: a file's documents -> objects by kind, the per-object context, diagnostics
//! and the typed accessors every kind shares. The kinds themselves are in `service_entry.rs`,
//! `destination_rule.rs` (+ `traffic_policy.rs`), `sidecar.rs` and `mesh.rs`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use super::field::Field;
use super::model::*;
use super::validate;
use super::yaml::{self, Limits, Node, SyntaxErrorKind, Yaml};

pub(crate) const API_VERSIONS: [&str; 3] =
    ["networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"];

/// Top-level fields of a Kubernetes object (what `istioctl validate` allows).
const TOP_LEVEL: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

/// Accumulates results for one file.
pub(crate) struct FileLoader<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub limits: Limits,
    pub registry: Registry,
    pub errors: Vec<Diagnostic>,
}

/// Per-object context: where we are and what to call it.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub doc: usize,
    /// Prepended to every field path (`items[3].` inside a List).
    pub prefix: String,
    /// E.g. `ServiceEntry default/foo`.
    pub object: Option<String>,
    /// The object's namespace (`default` when unset, as `istioctl validate` assumes).
    pub namespace: String,
}

/// What `metadata` says.
pub(crate) struct Meta {
    pub name: Option<String>,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl<'a> FileLoader<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        FileLoader { file, text, limits: Limits::from_env(), registry: Registry::default(), errors: Vec::new() }
    }

    // --- diagnostics -------------------------------------------------------

    pub fn src(&self, ctx: &Ctx, line: usize) -> SourceRef {
        SourceRef { file: self.file.to_path_buf(), document: ctx.doc, line: line.max(1) }
    }

    fn diag(&self, ctx: &Ctx, line: usize, field: &Field<'_>, msg: String, fix: String, sev: Severity) -> Diagnostic {
        let f = field.to_string();
        let field =
            if f.is_empty() { ctx.prefix.trim_end_matches('.').to_string() } else { format!("{}{f}", ctx.prefix) };
        Diagnostic {
            source: self.src(ctx, line),
            object: ctx.object.clone(),
            field,
            message: msg,
            fix: Some(fix),
            severity: sev,
        }
    }

    /// Istio rejects this: nothing from the file set is loaded.
    pub fn error(&mut self, ctx: &Ctx, line: usize, field: &Field<'_>, msg: impl Into<String>, fix: impl Into<String>) {
        let d = self.diag(ctx, line, field, msg.into(), fix.into(), Severity::Error);
        self.errors.push(d);
    }

    /// Istio accepts this with a warning (or it is very likely a mistake).
    pub fn warn(&mut self, ctx: &Ctx, line: usize, field: &Field<'_>, msg: impl Into<String>, fix: impl Into<String>) {
        let d = self.diag(ctx, line, field, msg.into(), fix.into(), Severity::Warning);
        self.registry.warnings.push(d);
    }

    /// Valid Istio configuration enforcer does not act on.
    pub fn note(&mut self, ctx: &Ctx, line: usize, field: &Field<'_>, msg: impl Into<String>, fix: impl Into<String>) {
        let d = self.diag(ctx, line, field, msg.into(), fix.into(), Severity::Note);
        self.registry.warnings.push(d);
    }

    // --- documents and kinds -----------------------------------------------

    /// Load `docs` (documents of this loader's file, see [`yaml::split_documents`]).
    pub fn load(&mut self, docs: &[yaml::RawDoc<'_>]) {
        // Most registry documents are ServiceEntries: reserve once instead of doubling.
        self.registry.services.reserve(docs.len());
        for doc in docs {
            let ctx = Ctx { doc: doc.index, prefix: String::new(), object: None, namespace: "default".into() };
            match yaml::parse_document(doc, self.limits) {
                Ok(node) => self.document(&ctx, &node),
                Err(e) => {
                    let col = if e.column > 0 { format!(":{}", e.column) } else { String::new() };
                    let (msg, fix) = match e.kind {
                        SyntaxErrorKind::Syntax => (
                            format!("YAML syntax error at line {}{col}: {}", e.line, e.message),
                            "fix the YAML syntax (check indentation, quoting and brackets)".to_string(),
                        ),
                        SyntaxErrorKind::DuplicateKey => {
                            (e.message.clone(), "remove one of the two keys (or merge their values)".to_string())
                        }
                        SyntaxErrorKind::TooManyNodes { limit } => (
                            format!("{} at line {}", e.message, e.line),
                            format!(
                                "split the document: several ServiceEntries (each in its own `---` document) of at most ~{} addresses or endpoints each; or raise the limit with {}=<nodes> (each node costs ~100 bytes of memory while loading)",
                                limit / 4,
                                yaml::MAX_NODES_ENV
                            ),
                        ),
                        SyntaxErrorKind::TooDeep => (
                            format!("{} at line {}", e.message, e.line),
                            "Istio objects nest only a few levels; check the indentation".to_string(),
                        ),
                    };
                    self.error(&ctx, e.line, &Field::ROOT, msg, fix);
                }
            }
        }
    }

    /// Load one object given as a tree (see [`Node::from_json`]), as document 1.
    pub fn load_node(&mut self, node: &Node<'_>) {
        self.document(&Ctx { doc: 1, prefix: String::new(), object: None, namespace: "default".into() }, node);
    }

    pub fn document(&mut self, ctx: &Ctx, node: &Node<'_>) {
        match &node.value {
            Yaml::Null => {}
            Yaml::Map(_) => self.object(ctx, node),
            other => self.error(
                ctx,
                node.line,
                &Field::ROOT,
                format!("expected a mapping (a Kubernetes object), got {}", other.describe()),
                "each YAML document must be an object with apiVersion, kind, metadata and spec",
            ),
        }
    }

    fn object(&mut self, ctx: &Ctx, node: &Node<'_>) {
        let kind = match node.get("kind") {
            None => None,
            Some(k) => match k.as_str() {
                Some(s) => Some(s),
                None => {
                    self.error(
                        ctx,
                        k.line,
                        &Field::ROOT.key("kind"),
                        format!("expected string, got {}", k.value.describe()),
                        "set kind to e.g. ServiceEntry",
                    );
                    return;
                }
            },
        };
        match kind {
            None if super::mesh::looks_like_mesh_config(node) => self.mesh_config(ctx, node, "MeshConfig"),
            None => self.note(
                ctx,
                node.line,
                &Field::ROOT,
                "document has no kind and is not a MeshConfig; ignored",
                "add apiVersion/kind, or remove the document",
            ),
            Some(k @ ("ServiceEntry" | "DestinationRule" | "Sidecar")) => {
                let mut c = ctx.clone();
                c.object = Some(object_label(k, node));
                c.namespace = namespace_of(node).to_string();
                if self.check_api_version(&c, node, k) && self.check_top_level(&c, node) {
                    match k {
                        "ServiceEntry" => self.service_entry(&c, node),
                        "DestinationRule" => self.destination_rule(&c, node),
                        _ => self.sidecar(&c, node),
                    }
                }
            }
            Some(k) if k == "List" || k.ends_with("List") => self.list(ctx, node, k),
            Some("ConfigMap") => self.config_map(ctx, node),
            Some("IstioOperator") => self.istio_operator(ctx, node),
            Some(k) => {
                let mut c = ctx.clone();
                c.object = Some(object_label(k, node));
                self.note(
                    &c,
                    node.line,
                    &Field::ROOT.key("kind"),
                    format!("kind {k} is not used by enforcer; ignored"),
                    "only ServiceEntry, DestinationRule, Sidecar and the mesh config (MeshConfig, ConfigMap istio, IstioOperator) are read; remove it from the enforcer's input if unintended",
                );
            }
        }
    }

    fn check_api_version(&mut self, ctx: &Ctx, node: &Node<'_>, kind: &str) -> bool {
        match node.get("apiVersion") {
            Some(v) if v.as_str().is_some_and(|s| API_VERSIONS.contains(&s)) => true,
            Some(v) => {
                let shown = v.as_str().map(str::to_string).unwrap_or_else(|| v.value.describe());
                self.error(
                    ctx,
                    v.line,
                    &Field::ROOT.key("apiVersion"),
                    format!("unsupported apiVersion {shown:?} for kind {kind}"),
                    format!("use one of {}", API_VERSIONS.join(", ")),
                );
                false
            }
            None => {
                self.error(
                    ctx,
                    node.line,
                    &Field::ROOT.key("apiVersion"),
                    format!("missing apiVersion for kind {kind}"),
                    format!("add apiVersion: {}", API_VERSIONS[2]),
                );
                false
            }
        }
    }

    /// `istioctl validate` rejects unknown top-level fields.
    fn check_top_level(&mut self, ctx: &Ctx, node: &Node<'_>) -> bool {
        let mut ok = true;
        for e in node.entries() {
            if !TOP_LEVEL.contains(&&*e.key) {
                ok = false;
                self.error(
                    ctx,
                    e.line,
                    &Field::ROOT.key(&e.key),
                    format!("unknown field {:?}", e.key),
                    "known top-level fields are apiVersion, kind, metadata, spec (and status); check the indentation",
                );
            }
        }
        ok
    }

    fn list(&mut self, ctx: &Ctx, node: &Node<'_>, kind: &str) {
        match node.get("items") {
            Some(Node { value: Yaml::Seq(items), .. }) => {
                for (i, item) in items.iter().enumerate() {
                    let c = Ctx {
                        doc: ctx.doc,
                        prefix: format!("{}items[{i}].", ctx.prefix),
                        object: None,
                        namespace: "default".into(),
                    };
                    self.document(&c, item);
                }
            }
            Some(Node { value: Yaml::Null, .. }) => {}
            Some(other) => self.error(
                ctx,
                other.line,
                &Field::ROOT.key("items"),
                format!("expected a list, got {}", other.value.describe()),
                "items must be a YAML list of objects",
            ),
            None => self.note(
                ctx,
                node.line,
                &Field::ROOT.key("items"),
                format!("{kind} has no items; ignored"),
                "add items or remove the document",
            ),
        }
    }

    /// `metadata`: name (required), namespace (`default`), labels; Istio's metadata checks
    /// (annotations reserved to Istio, `istio.io/dry-run` outside AuthorizationPolicy).
    pub fn metadata(&mut self, ctx: &Ctx, node: &Node<'_>) -> Meta {
        let md_f = Field::ROOT.key("metadata");
        let mut meta = Meta { name: None, namespace: ctx.namespace.clone(), labels: BTreeMap::new() };
        let Some(md) = node.get("metadata").filter(|m| !m.is_null()) else {
            self.error(ctx, node.line, &md_f.key("name"), "missing metadata.name", "add metadata: {name: <name>}");
            return meta;
        };
        if !self.is_map(ctx, md, &md_f) {
            return meta;
        }
        match md.get("name") {
            Some(n) => match self.str_of(ctx, n, &md_f.key("name")) {
                Some(s) if !s.is_empty() => meta.name = Some(s.into_owned()),
                Some(_) => {
                    self.error(ctx, n.line, &md_f.key("name"), "missing metadata.name", "set metadata.name: <name>")
                }
                None => {}
            },
            None => self.error(ctx, md.line, &md_f.key("name"), "missing metadata.name", "add metadata.name: <name>"),
        }
        if let Some(ns) = md.get("namespace") {
            let _ = self.str_of(ctx, ns, &md_f.key("namespace"));
        }
        if let Some(l) = md.get("labels").filter(|l| !l.is_null()) {
            for (k, v, _) in self.string_map(ctx, l, &md_f.key("labels")) {
                meta.labels.insert(k.to_string(), v.into_owned());
            }
        }
        if let Some(a) = md.get("annotations").filter(|a| !a.is_null()) {
            let af = md_f.key("annotations");
            for e in a.entries() {
                let reserved = [
                    ("istio.io/dry-run", "is only supported on AuthorizationPolicy"),
                    ("internal.istio.io/webhook-always-reject", "makes Istio reject the object"),
                    ("internal.istio.io/parent-namespace", "may not be set by users"),
                    ("internal.istio.io/parents", "may not be set by users"),
                ];
                if let Some((k, why)) = reserved.iter().find(|(k, _)| *k == e.key) {
                    self.error(
                        ctx,
                        e.line,
                        &af.key(k),
                        format!("annotation {k} {why}; Istio rejects the object"),
                        format!("remove the {k} annotation"),
                    );
                }
            }
        }
        meta
    }

    // --- typed accessors ---------------------------------------------------

    pub fn type_error(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>, expected: &str, fix: &str) {
        self.error(ctx, n.line, f, format!("expected {expected}, got {}", n.value.describe()), fix);
    }

    /// A string. A flow-sequence item like `[001:db8::]` is read by the YAML 1.2 parser as the
    /// implicit pair `{"001:db8:": null}`; Kubernetes' YAML reader (and so Istio) reads the string
    /// `001:db8::`.
    pub fn str_of<'n>(&mut self, ctx: &Ctx, n: &'n Node<'_>, f: &Field<'_>) -> Option<Cow<'n, str>> {
        match &n.value {
            Yaml::Str(s) => Some(Cow::Borrowed(s)),
            Yaml::Map(entries) if entries.len() == 1 && entries[0].key.contains(':') && entries[0].value.is_null() => {
                Some(Cow::Owned(format!("{}:", entries[0].key)))
            }
            _ => {
                self.type_error(ctx, n, f, "string", "quote the value or use a string");
                None
            }
        }
    }

    /// A list (null is an empty list).
    pub fn seq_of<'n, 'y>(&mut self, ctx: &Ctx, n: &'n Node<'y>, f: &Field<'_>) -> &'n [Node<'y>] {
        match &n.value {
            Yaml::Seq(items) => items,
            Yaml::Null => &[],
            _ => {
                self.type_error(ctx, n, f, "a list", "write the value as a YAML list (`- item` lines or `[a, b]`)");
                &[]
            }
        }
    }

    /// The mapping items of a list, each with its index and field. A null item is an error
    /// (`null_msg`: Istio's words), any other non-mapping a type error, unknown keys errors
    /// (`known`); those items are left out.
    pub fn map_items<'n, 'y, 'f>(
        &mut self,
        ctx: &Ctx,
        items: &'n [Node<'y>],
        f: &'f Field<'_>,
        null_msg: &str,
        known: &[&str],
    ) -> Vec<(usize, Field<'f>, &'n Node<'y>)> {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let itf = f.idx(i);
            if item.is_null() {
                self.error(ctx, item.line, &itf, null_msg, "remove the empty list item");
                continue;
            }
            if !self.is_map(ctx, item, &itf) {
                continue;
            }
            self.known_fields(ctx, item, &itf, known);
            out.push((i, itf, item));
        }
        out
    }

    pub fn is_map(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>) -> bool {
        match &n.value {
            Yaml::Map(_) => true,
            _ => {
                self.type_error(ctx, n, f, "a mapping", "write the value as `key: value` pairs");
                false
            }
        }
    }

    pub fn bool_of(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>) -> Option<bool> {
        match n.value {
            Yaml::Bool(b) => Some(b),
            _ => {
                self.type_error(ctx, n, f, "boolean", "use true or false");
                None
            }
        }
    }

    /// An integer (an integral float such as `80.0` counts, as in JSON).
    pub fn int_of(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>) -> Option<i128> {
        match n.value {
            Yaml::Int(i) => Some(i),
            Yaml::Float(x) if x.fract() == 0.0 && x.abs() < 1e18 => Some(x as i128),
            _ => {
                self.type_error(ctx, n, f, "integer", "use a number without quotes");
                None
            }
        }
    }

    /// An integer in `min..=max` (the protobuf field's range).
    pub fn ranged_int(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>, min: i128, max: i128) -> Option<i128> {
        let v = self.int_of(ctx, n, f)?;
        if (min..=max).contains(&v) {
            Some(v)
        } else {
            self.error(
                ctx,
                n.line,
                f,
                format!("{v} is out of range {min}..{max}"),
                format!("use a value between {min} and {max}"),
            );
            None
        }
    }

    /// A number (integer or float).
    pub fn number_of(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>) -> Option<f64> {
        match n.value {
            Yaml::Int(i) => Some(i as f64),
            Yaml::Float(x) => Some(x),
            _ => {
                self.type_error(ctx, n, f, "number", "use a number without quotes");
                None
            }
        }
    }

    /// A port number in 1..=65535 (Istio `ValidatePort`).
    pub fn port_of(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>) -> Option<u16> {
        let v = match n.value {
            Yaml::Int(i) => i,
            _ => {
                self.type_error(ctx, n, f, "integer", "use a port number between 1 and 65535, without quotes");
                return None;
            }
        };
        match validate::port(v) {
            Ok(p) => Some(p),
            Err(msg) => {
                self.error(ctx, n.line, f, msg, "use a port number between 1 and 65535");
                None
            }
        }
    }

    /// A duration string (`1s`, `500ms`, `1m30s`), in nanoseconds.
    pub fn duration_of(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>) -> Option<i128> {
        let s = self.str_of(ctx, n, f)?;
        match validate::go_duration(&s) {
            Some(ns) => Some(ns),
            None => {
                self.error(ctx, n.line, f, format!("invalid duration {s:?}"), "use a duration like 1s, 500ms, 1m30s");
                None
            }
        }
    }

    /// A duration Istio requires to be at least 1ms and whole milliseconds (`ValidateDuration`).
    pub fn ms_duration(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>) -> Option<i128> {
        let ns = self.duration_of(ctx, n, f)?;
        match validate::duration_ms_precision(ns) {
            Ok(()) => Some(ns),
            Err(msg) => {
                self.error(
                    ctx,
                    n.line,
                    f,
                    msg,
                    "use a duration of at least 1ms in whole milliseconds, e.g. 10ms or 1s",
                );
                None
            }
        }
    }

    /// An enum value, spelled exactly (Kubernetes' CRD schema and Istio's decoder are
    /// case-sensitive: `mode: simple` is rejected).
    pub fn enum_of(
        &mut self,
        ctx: &Ctx,
        n: &Node<'_>,
        f: &Field<'_>,
        what: &str,
        allowed: &[&'static str],
    ) -> Option<&'static str> {
        let s = self.str_of(ctx, n, f)?;
        if let Some(v) = allowed.iter().find(|a| **a == s) {
            return Some(v);
        }
        match allowed.iter().find(|a| a.eq_ignore_ascii_case(&s)) {
            Some(v) => self.error(
                ctx,
                n.line,
                f,
                format!("{what} {s:?} must be upper case: Istio's values are case-sensitive"),
                format!("write {v}"),
            ),
            None => self.error(
                ctx,
                n.line,
                f,
                format!("unsupported {what} {s}"),
                format!("use one of {}", allowed.join(", ")),
            ),
        }
        None
    }

    /// A list of strings with their lines.
    pub fn string_list<'n>(&mut self, ctx: &Ctx, n: &'n Node<'_>, f: &Field<'_>) -> Vec<(Cow<'n, str>, usize)> {
        let items = self.seq_of(ctx, n, f);
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = self.str_of(ctx, item, &f.idx(i)) {
                out.push((s, item.line));
            }
        }
        out
    }

    /// A `string -> string` map (labels): (key, value, key line). Values that are numbers or
    /// booleans are rejected (Kubernetes label values are strings).
    pub fn string_map<'n>(&mut self, ctx: &Ctx, n: &'n Node<'_>, f: &Field<'_>) -> Vec<(&'n str, Cow<'n, str>, usize)> {
        let mut out = Vec::new();
        if n.is_null() || !self.is_map(ctx, n, f) {
            return out;
        }
        for e in n.entries() {
            let vf = f.key(&e.key);
            match &e.value.value {
                Yaml::Str(s) => out.push((&*e.key, Cow::Borrowed(&**s), e.line)),
                Yaml::Null => out.push((&*e.key, Cow::Borrowed(""), e.line)),
                _ => self.type_error(ctx, &e.value, &vf, "string", "quote the value, e.g. \"true\" or \"1\""),
            }
        }
        out
    }

    /// Report every key of `n` not in `known` (Istio's decoder rejects unknown fields).
    pub fn known_fields(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>, known: &[&str]) {
        for e in n.entries() {
            if !known.contains(&&*e.key) {
                let what = if f.to_string().is_empty() { "the object".to_string() } else { f.to_string() };
                self.error(
                    ctx,
                    e.line,
                    &f.key(&e.key),
                    format!("unknown field {:?} in {what}; check spelling and indentation", e.key),
                    format!("known fields are {}", known.join(", ")),
                );
            }
        }
    }

    /// A note on `spec.<key>` when it is set (present and not null): what enforcer does not act on.
    pub fn note_if_set(&mut self, ctx: &Ctx, spec: &Node<'_>, key: &str, msg: &str, fix: &str) {
        if spec.get(key).is_some_and(|n| !n.is_null()) {
            self.note(ctx, spec.key_line(key), &Field::ROOT.key("spec").key(key), msg, fix);
        }
    }

    /// A mapping child: `None` when absent or null (null means unset, as in JSON), with a type
    /// error when it is not a mapping.
    pub fn map_child<'n, 'y>(&mut self, ctx: &Ctx, n: &'n Node<'y>, key: &str, f: &Field<'_>) -> Option<&'n Node<'y>> {
        let c = n.get(key).filter(|c| !c.is_null())?;
        if self.is_map(ctx, c, &f.key(key)) { Some(c) } else { None }
    }

    /// `spec.workloadSelector` of a `kind` (ServiceEntry, Sidecar: `labels`; DestinationRule:
    /// `matchLabels`): `None` when absent; present without labels warns with Istio's
    /// `no_labels` message and gives `Some` of no labels.
    pub fn workload_selector(
        &mut self,
        ctx: &Ctx,
        spec: &Node<'_>,
        labels_key: &str,
        kind: &str,
        no_labels: &str,
    ) -> Option<BTreeMap<String, String>> {
        let sf = Field::ROOT.key("spec");
        let wf = sf.key("workloadSelector");
        let ws = self.map_child(ctx, spec, "workloadSelector", &sf)?;
        self.known_fields(ctx, ws, &wf, &[labels_key]);
        let labels = match ws.get(labels_key) {
            Some(l) => self.selector_labels(
                ctx,
                l,
                &wf.key(labels_key),
                &format!("a {kind} selects workloads by exact labels"),
            ),
            None => BTreeMap::new(),
        };
        if labels.is_empty() {
            self.warn(
                ctx,
                ws.line,
                &wf,
                no_labels,
                format!("add labels to spec.workloadSelector.{labels_key}, or remove the selector"),
            );
        }
        Some(labels)
    }

    /// Workload selector labels (Istio `ValidateAlphaWorkloadSelector` / `validateWorkloadSelector`):
    /// no empty key, no `*` in keys or values, values at most 63 characters; no labels is a
    /// warning (`what_applies` says what it then applies to).
    pub fn selector_labels(
        &mut self,
        ctx: &Ctx,
        n: &Node<'_>,
        f: &Field<'_>,
        what_applies: &str,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let pairs = self.string_map(ctx, n, f);
        if pairs.is_empty() && (n.is_null() || matches!(n.value, Yaml::Map(_))) {
            return out;
        }
        for (k, v, line) in pairs {
            let kf = f.key(k);
            if k.is_empty() {
                self.error(
                    ctx,
                    line,
                    &kf,
                    format!("empty key is not supported in selector: \"={v}\""),
                    "give the label a key",
                );
            }
            if k.contains('*') || v.contains('*') {
                self.error(
                    ctx,
                    line,
                    &kf,
                    format!("wildcard is not supported in selector: \"{k}={v}\""),
                    format!("select exact label values; {what_applies}"),
                );
            }
            if v.len() > 63 {
                self.error(
                    ctx,
                    line,
                    &kf,
                    format!("label value {v:?} is longer than 63 characters"),
                    "use a label value of at most 63 characters",
                );
            }
            out.insert(k.to_string(), v.into_owned());
        }
        out
    }

    /// Endpoint or subset labels (Istio `labels.Instance.Validate`): Kubernetes label keys and
    /// values.
    pub fn labels(&mut self, ctx: &Ctx, n: &Node<'_>, f: &Field<'_>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v, line) in self.string_map(ctx, n, f) {
            let kf = f.key(k);
            if let Err(msg) = validate::label_key(k) {
                self.error(
                    ctx,
                    line,
                    &kf,
                    msg,
                    "use a Kubernetes label key: [prefix/]name of letters, digits, '-', '_', '.'",
                );
            }
            if let Err(msg) = validate::label_value(&v) {
                self.error(ctx, line, &kf, msg, "use a label value of letters, digits, '-', '_', '.' (or empty)");
            }
            out.insert(k.to_string(), v.into_owned());
        }
        out
    }

    /// `exportTo` (Istio `validateExportTo`): returns the values as written.
    pub fn export_to(&mut self, ctx: &Ctx, spec: &Node<'_>, service_entry: bool, dr_selector: bool) -> Vec<String> {
        let Some(n) = spec.get("exportTo") else { return Vec::new() };
        let f = Field::ROOT.key("spec");
        let f = f.key("exportTo");
        let values: Vec<String> = self.string_list(ctx, n, &f).into_iter().map(|(s, _)| s.into_owned()).collect();
        for msg in validate::export_to(&ctx.namespace, &values, service_entry, dr_selector) {
            let fix = if msg.contains("workload selector") {
                "a DestinationRule with a workloadSelector can only be exported to its own namespace (`.`)".to_string()
            } else if service_entry {
                "use `*` alone, `~` alone, or a list of `.` and namespace names, each once".to_string()
            } else {
                "use `*` alone, or a list of `.` and namespace names, each once (`~` is only for ServiceEntries)"
                    .to_string()
            };
            self.error(ctx, n.line, &f, msg, fix);
        }
        values
    }
}

/// `Kind namespace/name` for messages.
pub(crate) fn object_label(kind: &str, node: &Node<'_>) -> String {
    let md = node.get("metadata");
    let name = md.and_then(|m| m.get("name")).and_then(Node::as_str).unwrap_or("<unnamed>");
    format!("{kind} {}/{name}", namespace_of(node))
}

/// `metadata.namespace`, `default` when unset.
pub(crate) fn namespace_of<'n>(node: &'n Node<'_>) -> &'n str {
    node.get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Node::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}
