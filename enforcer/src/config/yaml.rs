//! A small generic YAML value tree that remembers the source line of every node, built directly
//! from the YAML event parser (`granit_parser`, the parser under `serde_saphyr`). Going through
//! serde cost ~30 µs per ServiceEntry; building the tree from events is several times cheaper.
//!
//! Scalars are resolved like YAML 1.2's core schema (what `serde_saphyr` did): plain `null`/`~`/
//! empty, `true`/`false`, integers (decimal, `0x`, `0o`), floats; quoted scalars are strings.
//! Strings borrow from the input when they can. Duplicate mapping keys are reported (Kubernetes'
//! strict YAML decoding, and so `istioctl validate`, rejects them). Anchors, aliases and `<<`
//! merge keys work.
//!
//! Documents are split by hand on `---` lines so that a syntax error in one document does not
//! hide the others, and so that every document knows the 1-based line it starts on.
//!
//! Each document may hold at most [`Limits::max_nodes`] nodes (default [`DEFAULT_MAX_NODES`],
//! raised with the `ENFORCER_YAML_MAX_NODES` environment variable) and nest at most
//! [`MAX_DEPTH`] deep: a guard against runaway input whose error says how to split or raise it.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle};

/// Default [`Limits::max_nodes`]: 4M nodes is ~1M addresses in one ServiceEntry, four times
/// what the kernel's allow map can hold.
pub const DEFAULT_MAX_NODES: usize = 4_000_000;
/// The environment variable that overrides [`DEFAULT_MAX_NODES`].
pub const MAX_NODES_ENV: &str = "ENFORCER_YAML_MAX_NODES";
/// Maximum nesting of mappings and sequences (Istio objects need < 15).
pub const MAX_DEPTH: usize = 128;

/// Resource limits for one document.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_nodes: usize,
}

impl Limits {
    /// The default, or `ENFORCER_YAML_MAX_NODES` when it is set to a positive number.
    pub fn from_env() -> Limits {
        let max_nodes = std::env::var(MAX_NODES_ENV)
            .ok()
            .and_then(|v| v.trim().replace('_', "").parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_NODES);
        Limits { max_nodes }
    }
}

/// A YAML node with the 1-based line (absolute, within the file) it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node<'a> {
    pub value: Yaml<'a>,
    /// 1-based line in the file; 0 when unknown.
    pub line: usize,
}

/// One `key: value` of a mapping; `line` is the key's line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry<'a> {
    pub key: Cow<'a, str>,
    pub line: usize,
    pub value: Node<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Yaml<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Cow<'a, str>),
    Seq(Vec<Node<'a>>),
    /// Keys are kept in document order.
    Map(Vec<Entry<'a>>),
}

impl Node<'static> {
    /// The same tree from a JSON value (Kubernetes objects from the API server): the node adapter
    /// through which cluster objects enter the loader without being re-serialized. Lines are 0
    /// (unknown); diagnostics then name the object and field instead.
    pub fn from_json(v: &serde_json::Value) -> Node<'static> {
        use serde_json::Value as J;
        let value = match v {
            J::Null => Yaml::Null,
            J::Bool(b) => Yaml::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Int(i as i128),
                None => match n.as_u64() {
                    Some(u) => Yaml::Int(u as i128),
                    None => Yaml::Float(n.as_f64().unwrap_or(0.0)),
                },
            },
            J::String(s) => Yaml::Str(Cow::Owned(s.clone())),
            J::Array(a) => Yaml::Seq(a.iter().map(Node::from_json).collect()),
            J::Object(m) => Yaml::Map(
                m.iter()
                    .map(|(k, v)| Entry { key: Cow::Owned(k.clone()), line: 0, value: Node::from_json(v) })
                    .collect(),
            ),
        };
        Node { value, line: 0 }
    }
}

impl Yaml<'_> {
    /// Short human description of the node type, used in "expected X, got Y".
    pub fn describe(&self) -> String {
        match self {
            Yaml::Null => "null".to_string(),
            Yaml::Bool(b) => format!("boolean {b}"),
            Yaml::Int(i) => format!("integer {i}"),
            Yaml::Float(f) => format!("number {f}"),
            Yaml::Str(s) => format!("string {s:?}"),
            Yaml::Seq(_) => "a list".to_string(),
            Yaml::Map(_) => "a mapping".to_string(),
        }
    }
}

impl<'a> Node<'a> {
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        match &self.value {
            Yaml::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    /// Line of the key `key` in this mapping (falls back to the node's line).
    pub fn key_line(&self, key: &str) -> usize {
        match &self.value {
            Yaml::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| e.line).unwrap_or(self.line),
            _ => self.line,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn entries(&self) -> &[Entry<'a>] {
        match &self.value {
            Yaml::Map(e) => e,
            _ => &[],
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Yaml::Null)
    }

    fn count(&self) -> usize {
        1 + match &self.value {
            Yaml::Seq(items) => items.iter().map(Node::count).sum(),
            Yaml::Map(entries) => entries.iter().map(|e| 1 + e.value.count()).sum(),
            _ => 0,
        }
    }
}

// --- Document splitting ----------------------------------------------------

/// One YAML document of a (possibly multi-document) file.
#[derive(Debug)]
pub(crate) struct RawDoc<'a> {
    /// 1-based document index within the file (counting every `---` section,
    /// empty ones included, so it matches what a human counts).
    pub index: usize,
    /// 1-based line of the first line of the document's text.
    pub start_line: usize,
    pub text: &'a str,
}

/// A YAML syntax or structure error with an absolute 1-based line and column.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The problem is a resource limit (or a duplicate key), not a syntax error.
    pub kind: SyntaxErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyntaxErrorKind {
    Syntax,
    DuplicateKey,
    TooManyNodes { limit: usize },
    TooDeep,
}

fn is_doc_separator(line: &str) -> bool {
    let l = line.trim_end_matches(['\r']);
    l == "---" || l.starts_with("--- ") || l.starts_with("---\t")
}

fn is_doc_end(line: &str) -> bool {
    let l = line.trim_end_matches(['\r']);
    l == "..." || l.starts_with("... ")
}

/// Split file text into documents on lines that are exactly `---` (optionally
/// followed by inline content) or `...`.
pub(crate) fn split_documents(text: &str) -> Vec<RawDoc<'_>> {
    let mut docs = Vec::new();
    let mut start_byte = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    let mut line_no = 1usize;
    let mut index = 0usize;
    let mut seen_separator = false;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches('\n');
        // (the cheap prefix test first: this runs for every line of big registries)
        if (content.starts_with("---") || content.starts_with("..."))
            && (is_doc_separator(content) || is_doc_end(content))
        {
            let chunk = &text[start_byte..offset];
            // The implicit document before the first `---` only counts if it
            // has content (a leading `---` is the usual Kubernetes style).
            if seen_separator || !is_blank_doc(chunk) {
                index += 1;
                docs.push(RawDoc { index, start_line, text: chunk });
            }
            seen_separator = true;
            if is_doc_separator(content) {
                // Inline content after `--- ` is part of the next document.
                let rest = &content[3..];
                if !rest.trim().is_empty() && !rest.trim().starts_with('#') {
                    start_byte = offset + 3;
                    start_line = line_no;
                    offset += line.len();
                    line_no += 1;
                    continue;
                }
            }
            start_byte = offset + line.len();
            start_line = line_no + 1;
        }
        offset += line.len();
        line_no += 1;
    }
    let chunk = &text[start_byte..];
    if !seen_separator || !is_blank_doc(chunk) {
        index += 1;
        docs.push(RawDoc { index, start_line, text: chunk });
    }
    docs
}

/// True if the text holds no YAML content (only blanks, comments, directives).
pub(crate) fn is_blank_doc(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t.starts_with('%')
    })
}

// --- Parsing -----------------------------------------------------------------

/// Resolve a plain scalar like the YAML 1.2 core schema.
fn resolve_plain(s: Cow<'_, str>) -> Yaml<'_> {
    match &*s {
        "" | "~" | "null" | "Null" | "NULL" => return Yaml::Null,
        "true" | "True" | "TRUE" => return Yaml::Bool(true),
        "false" | "False" | "FALSE" => return Yaml::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Yaml::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Yaml::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Yaml::Float(f64::NAN),
        _ => {}
    }
    let b = s.as_bytes();
    let first = b[0];
    if first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.' {
        if let Some(i) = parse_int(&s) {
            return Yaml::Int(i);
        }
        if is_core_float(&s)
            && let Ok(f) = s.parse::<f64>()
        {
            return Yaml::Float(f);
        }
    }
    Yaml::Str(s)
}

fn parse_int(s: &str) -> Option<i128> {
    if let Some(hex) = s.strip_prefix("0x") {
        return i128::from_str_radix(hex, 16).ok().filter(|_| !hex.is_empty());
    }
    if let Some(oct) = s.strip_prefix("0o") {
        return i128::from_str_radix(oct, 8).ok().filter(|_| !oct.is_empty());
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i128>().ok()
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_core_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
                && !(int.is_empty() && frac.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exp_ok = exp.is_none_or(|e| {
        let d = e.strip_prefix(['-', '+']).unwrap_or(e);
        !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exp_ok
}

/// A collection being built.
enum Frame<'a> {
    Seq {
        items: Vec<Node<'a>>,
        line: usize,
        anchor: usize,
    },
    /// `merged`: indices of entries copied by a `<<` merge key, which explicit keys override.
    Map {
        entries: Vec<Entry<'a>>,
        line: usize,
        anchor: usize,
        key: Option<(Cow<'a, str>, usize)>,
        merged: Vec<usize>,
    },
}

struct Builder<'a> {
    stack: Vec<Frame<'a>>,
    anchors: HashMap<usize, Node<'a>>,
    nodes: usize,
    limits: Limits,
    offset: usize,
    root: Option<Node<'a>>,
}

impl<'a> Builder<'a> {
    fn error(&self, line: usize, column: usize, kind: SyntaxErrorKind, message: String) -> SyntaxError {
        SyntaxError { line: line + self.offset, column, message, kind }
    }

    fn count(&mut self, n: usize, line: usize) -> Result<(), SyntaxError> {
        self.nodes += n;
        if self.nodes > self.limits.max_nodes {
            let limit = self.limits.max_nodes;
            return Err(self.error(
                line,
                0,
                SyntaxErrorKind::TooManyNodes { limit },
                format!("document has more than {limit} YAML nodes (enforcer's limit per document)"),
            ));
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame<'a>, line: usize) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(
                line,
                0,
                SyntaxErrorKind::TooDeep,
                format!("YAML nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        self.stack.push(frame);
        Ok(())
    }

    /// A finished node goes into its parent (or becomes the root).
    fn push(&mut self, node: Node<'a>, anchor: usize, key_text: Option<Cow<'a, str>>) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map { entries, key, merged, .. }) => match key.take() {
                None => {
                    // This node is a key: keys must be scalars; render them as text.
                    let text = match (key_text, &node.value) {
                        (Some(t), _) => t,
                        (None, Yaml::Str(s)) => s.clone(),
                        (None, Yaml::Int(i)) => Cow::Owned(i.to_string()),
                        (None, Yaml::Bool(b)) => Cow::Owned(b.to_string()),
                        (None, Yaml::Float(f)) => Cow::Owned(f.to_string()),
                        (None, Yaml::Null) => Cow::Borrowed("null"),
                        (None, other) => {
                            return Err(SyntaxError {
                                line: node.line,
                                column: 0,
                                kind: SyntaxErrorKind::Syntax,
                                message: format!("mapping keys must be scalars, got {}", other.describe()),
                            });
                        }
                    };
                    *key = Some((text, node.line));
                    Ok(())
                }
                Some((k, kline)) => {
                    if k == "<<" && matches!(node.value, Yaml::Map(_) | Yaml::Seq(_)) {
                        merge_into(entries, merged, node);
                        return Ok(());
                    }
                    if let Some(i) = entries.iter().position(|e| e.key == k) {
                        if let Some(m) = merged.iter().position(|m| *m == i) {
                            merged.swap_remove(m);
                            entries[i] = Entry { key: k, line: kline, value: node };
                            return Ok(());
                        }
                        let first = &entries[i];
                        return Err(SyntaxError {
                            line: kline,
                            column: 0,
                            kind: SyntaxErrorKind::DuplicateKey,
                            message: format!(
                                "duplicate key {k:?} (already set at line {}); Kubernetes and istioctl reject duplicate keys",
                                first.line
                            ),
                        });
                    }
                    entries.push(Entry { key: k, line: kline, value: node });
                    Ok(())
                }
            },
        }
    }
}

/// `<<: *base` (or a list of them): copy keys not already present.
fn merge_into<'a>(entries: &mut Vec<Entry<'a>>, merged: &mut Vec<usize>, node: Node<'a>) {
    let maps = match node.value {
        Yaml::Map(m) => vec![m],
        Yaml::Seq(items) => items
            .into_iter()
            .filter_map(|n| match n.value {
                Yaml::Map(m) => Some(m),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    for m in maps {
        for e in m {
            if !entries.iter().any(|x| x.key == e.key) {
                merged.push(entries.len());
                entries.push(e);
            }
        }
    }
}

/// Parse one document into a node tree whose lines are absolute in the file.
pub(crate) fn parse_document<'a>(doc: &RawDoc<'a>, limits: Limits) -> Result<Node<'a>, SyntaxError> {
    if is_blank_doc(doc.text) {
        return Ok(Node { value: Yaml::Null, line: doc.start_line });
    }
    let mut parser = Parser::new_from_str(doc.text);
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        limits,
        offset: doc.start_line - 1,
        root: None,
    };
    let mut documents = 0usize;
    while let Some(ev) = parser.next_event() {
        let (event, span) = ev.map_err(|e| {
            let m = e.marker();
            let line = if m.line() > 0 { m.line() + b.offset } else { doc.start_line };
            SyntaxError { line, column: m.col() + 1, kind: SyntaxErrorKind::Syntax, message: e.info() }
        })?;
        let line = span.start.line() + b.offset;
        match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(b.error(
                        span.start.line(),
                        span.start.col() + 1,
                        SyntaxErrorKind::Syntax,
                        "more than one YAML document in one section".to_string(),
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                b.count(1, span.start.line())?;
                let key_text = matches!(b.stack.last(), Some(Frame::Map { key: None, .. })).then(|| text.clone());
                let value = match tag.as_deref().filter(|t| t.is_yaml_core_schema()).map(|t| t.suffix()) {
                    Some("str") => Yaml::Str(text),
                    Some("null") => Yaml::Null,
                    Some("bool") | Some("int") | Some("float") => resolve_plain(text),
                    _ if style == ScalarStyle::Plain => resolve_plain(text),
                    _ => Yaml::Str(text),
                };
                b.push(Node { value, line }, anchor, key_text)?;
            }
            Event::SequenceStart(_, anchor, _) => {
                b.count(1, span.start.line())?;
                b.open(Frame::Seq { items: Vec::new(), line, anchor }, span.start.line())?;
            }
            Event::MappingStart(_, anchor, _) => {
                b.count(1, span.start.line())?;
                b.open(
                    Frame::Map { entries: Vec::new(), line, anchor, key: None, merged: Vec::new() },
                    span.start.line(),
                )?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match b.stack.pop() {
                    Some(Frame::Seq { items, line, anchor }) => (Node { value: Yaml::Seq(items), line }, anchor),
                    Some(Frame::Map { entries, line, anchor, .. }) => {
                        (Node { value: Yaml::Map(entries), line }, anchor)
                    }
                    None => continue,
                };
                b.push(node, anchor, None)?;
            }
            Event::Alias(id) => {
                let node = match b.anchors.get(&id) {
                    Some(n) => Node { value: n.value.clone(), line },
                    None => Node { value: Yaml::Null, line },
                };
                b.count(node.count(), span.start.line())?;
                b.push(node, 0, None)?;
            }
            _ => {}
        }
    }
    Ok(b.root.unwrap_or(Node { value: Yaml::Null, line: doc.start_line }))
}

/// Parse an embedded YAML string (e.g. a ConfigMap's `data.mesh`) whose first
/// content line is at absolute line `base_line` of the file.
pub(crate) fn parse_embedded(text: &str, base_line: usize, limits: Limits) -> Result<Node<'_>, SyntaxError> {
    let doc = RawDoc { index: 1, start_line: base_line.max(1), text };
    parse_document(&doc, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { max_nodes: DEFAULT_MAX_NODES };

    fn parse(text: &str) -> Result<Node<'_>, SyntaxError> {
        parse_document(&RawDoc { index: 1, start_line: 1, text }, L)
    }

    #[test]
    fn splits_documents_with_lines() {
        let text = "# c\n---\na: 1\n---\nb: 2\nc: 3\n---\n# only comment\n";
        let docs = split_documents(text);
        // The trailing comment-only document is dropped.
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].start_line, 3);
        assert_eq!(docs[1].start_line, 5);
        assert_eq!(docs[1].index, 2);
    }

    #[test]
    fn node_lines_are_absolute() {
        let text = "---\na: 1\n---\nb:\n  c: \"x\"\n  d: [1, 2]\n";
        let docs = split_documents(text);
        let n = parse_document(&docs[1], L).unwrap();
        let b = n.get("b").unwrap();
        assert_eq!(n.key_line("b"), 4);
        assert_eq!(b.key_line("c"), 5);
        assert_eq!(b.get("c").unwrap().line, 5);
        assert_eq!(b.get("c").unwrap().value, Yaml::Str("x".into()));
        match &b.get("d").unwrap().value {
            Yaml::Seq(items) => assert_eq!(items[1].value, Yaml::Int(2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_error_has_absolute_line() {
        let text = "---\na: 1\n---\nb: [1, 2\nc: 3\n";
        let docs = split_documents(text);
        let e = parse_document(&docs[1], L).unwrap_err();
        assert!(e.line >= 4, "{e:?}");
        assert_eq!(e.kind, SyntaxErrorKind::Syntax);
    }

    #[test]
    fn scalars_resolve_like_the_core_schema() {
        let n = parse(
            "a: 80\nb: \"80\"\nc: true\nd: ~\ne: 1.5\nf: 0x1F\ng: abc\nh: !!str 443\ni: 1e3\nj: '1.2.3.4'\nk: 1.2.3.4\nl:\nm: -7\n",
        )
        .unwrap();
        let v = |k: &str| n.get(k).unwrap().value.clone();
        assert_eq!(v("a"), Yaml::Int(80));
        assert_eq!(v("b"), Yaml::Str("80".into()));
        assert_eq!(v("c"), Yaml::Bool(true));
        assert_eq!(v("d"), Yaml::Null);
        assert_eq!(v("e"), Yaml::Float(1.5));
        assert_eq!(v("f"), Yaml::Int(31));
        assert_eq!(v("g"), Yaml::Str("abc".into()));
        assert_eq!(v("h"), Yaml::Str("443".into()));
        assert_eq!(v("i"), Yaml::Float(1000.0));
        assert_eq!(v("j"), Yaml::Str("1.2.3.4".into()));
        assert_eq!(v("k"), Yaml::Str("1.2.3.4".into()));
        assert_eq!(v("l"), Yaml::Null);
        assert_eq!(v("m"), Yaml::Int(-7));
        // Keys keep their text.
        let n = parse("80: x\ntrue: y\n").unwrap();
        assert_eq!(n.entries()[0].key, "80");
        assert_eq!(n.entries()[1].key, "true");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap_err();
        assert_eq!(e.kind, SyntaxErrorKind::DuplicateKey);
        assert_eq!(e.line, 4);
        assert!(e.message.contains("already set at line 3"), "{}", e.message);
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let n = parse("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\nlist: [*b]\n").unwrap();
        let other = n.get("other").unwrap();
        assert_eq!(other.get("x").unwrap().value, Yaml::Int(1));
        assert_eq!(other.get("y").unwrap().value, Yaml::Int(3));
        match &n.get("list").unwrap().value {
            Yaml::Seq(items) => assert_eq!(items[0].get("y").unwrap().value, Yaml::Int(2)),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn node_limit_names_the_limit() {
        let text = format!("a:\n{}", "- 1\n".repeat(20));
        let e = parse_document(&RawDoc { index: 1, start_line: 1, text: &text }, Limits { max_nodes: 10 }).unwrap_err();
        assert_eq!(e.kind, SyntaxErrorKind::TooManyNodes { limit: 10 });
        assert!(e.message.contains("more than 10 YAML nodes"), "{}", e.message);
        let deep = format!("{}1{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn borrowed_strings() {
        let n = parse("a: hello\n").unwrap();
        assert!(matches!(&n.get("a").unwrap().value, Yaml::Str(Cow::Borrowed("hello"))));
    }
}
