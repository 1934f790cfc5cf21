//! A small generic YAML value tree that remembers the source line of every
//! node, built on top of `serde_saphyr` (`Spanned<T>` gives per-node spans).
//!
//! Documents are split by hand on `---` lines so that a syntax error in one
//! document does not hide the others, and so that every document knows the
//! 1-based line it starts on within its file.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A YAML node with the 1-based line (absolute, within the file) it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Yaml,
    /// 1-based line in the file; 0 when unknown.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Yaml {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys are kept in document order; each key carries its own line.
    Map(Vec<(String, usize, Node)>),
}

impl Yaml {
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

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Yaml::Map(entries) => entries.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| v),
            _ => None,
        }
    }

    /// Line of the key `key` in this mapping (falls back to the node's line).
    pub fn key_line(&self, key: &str) -> usize {
        match &self.value {
            Yaml::Map(entries) => entries.iter().find(|(k, _, _)| k == key).map(|(_, l, _)| *l).unwrap_or(self.line),
            _ => self.line,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn entries(&self) -> &[(String, usize, Node)] {
        match &self.value {
            Yaml::Map(e) => e,
            _ => &[],
        }
    }

    fn shift(&mut self, offset: usize) {
        if self.line > 0 {
            self.line += offset;
        }
        match &mut self.value {
            Yaml::Seq(items) => items.iter_mut().for_each(|n| n.shift(offset)),
            Yaml::Map(entries) => entries.iter_mut().for_each(|(_, l, n)| {
                if *l > 0 {
                    *l += offset;
                }
                n.shift(offset)
            }),
            _ => {}
        }
    }
}

impl Node {
    /// The same tree from a JSON value (Kubernetes objects from the API server): the node adapter
    /// through which cluster objects enter the loader without being re-serialized. Lines are 0
    /// (unknown); diagnostics then name the object and field instead.
    pub fn from_json(v: &serde_json::Value) -> Node {
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
            J::String(s) => Yaml::Str(s.clone()),
            J::Array(a) => Yaml::Seq(a.iter().map(Node::from_json).collect()),
            J::Object(m) => Yaml::Map(m.iter().map(|(k, v)| (k.clone(), 0, Node::from_json(v))).collect()),
        };
        Node { value, line: 0 }
    }
}

// --- Deserialization -------------------------------------------------------

/// Raw value as produced by serde; children are `Spanned` so we learn lines.
struct RawYaml(Yaml);

struct SpannedNode(Node);

impl<'de> Deserialize<'de> for SpannedNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<RawYaml>::deserialize(d)?;
        Ok(SpannedNode(Node { value: s.value.0, line: s.referenced.line() as usize }))
    }
}

struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Keys may be scalars of any type (e.g. `80: foo`); render them as text.
        match RawYaml::deserialize(d)?.0 {
            Yaml::Str(s) => Ok(KeyString(s)),
            Yaml::Int(i) => Ok(KeyString(i.to_string())),
            Yaml::Bool(b) => Ok(KeyString(b.to_string())),
            Yaml::Float(f) => Ok(KeyString(f.to_string())),
            Yaml::Null => Ok(KeyString("null".into())),
            other => Err(de::Error::custom(format!("mapping keys must be scalars, got {}", other.describe()))),
        }
    }
}

impl<'de> Deserialize<'de> for RawYaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor).map(RawYaml)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Yaml;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Yaml, E> {
        Ok(Yaml::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Yaml, E> {
        Ok(Yaml::Int(v as i128))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Yaml, E> {
        Ok(Yaml::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Yaml, E> {
        Ok(Yaml::Int(v as i128))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Yaml, E> {
        i128::try_from(v).map(Yaml::Int).map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Yaml, E> {
        Ok(Yaml::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Yaml, E> {
        Ok(Yaml::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Yaml, E> {
        Ok(Yaml::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Yaml, E> {
        Ok(Yaml::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_none<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_unit<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        RawYaml::deserialize(d).map(|r| r.0)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        RawYaml::deserialize(d).map(|r| r.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Yaml, A::Error> {
        let mut out = Vec::new();
        while let Some(SpannedNode(n)) = seq.next_element()? {
            out.push(n);
        }
        Ok(Yaml::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Yaml, A::Error> {
        let mut out: Vec<(String, usize, Node)> = Vec::new();
        while let Some(k) = map.next_key::<Spanned<KeyString>>()? {
            let SpannedNode(v) = map.next_value()?;
            let line = k.referenced.line() as usize;
            // Last key wins, like most YAML loaders (duplicates are rare).
            out.retain(|(existing, _, _)| existing != &k.value.0);
            out.push((k.value.0, line, v));
        }
        Ok(Yaml::Map(out))
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

/// A YAML syntax or type error with an absolute 1-based line and column.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
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
        if is_doc_separator(content) || is_doc_end(content) {
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

/// Parse one document into a node tree whose lines are absolute in the file.
pub(crate) fn parse_document(doc: &RawDoc<'_>) -> Result<Node, SyntaxError> {
    if is_blank_doc(doc.text) {
        return Ok(Node { value: Yaml::Null, line: doc.start_line });
    }
    match serde_saphyr::from_str::<SpannedNode>(doc.text) {
        Ok(SpannedNode(mut node)) => {
            node.shift(doc.start_line - 1);
            if node.line == 0 {
                node.line = doc.start_line;
            }
            Ok(node)
        }
        Err(e) => {
            let (line, column) = match e.location() {
                Some(loc) if loc.line() > 0 => (loc.line() as usize + doc.start_line - 1, loc.column() as usize),
                _ => (doc.start_line, 0),
            };
            Err(SyntaxError { line, column, message: first_line_message(&e) })
        }
    }
}

fn first_line_message(e: &serde_saphyr::Error) -> String {
    // `render` may include a source snippet; keep the headline only.
    let rendered = e.without_snippet().to_string();
    let head = rendered.lines().next().unwrap_or("").trim().to_string();
    if head.is_empty() { "invalid YAML".to_string() } else { head }
}

/// Parse an embedded YAML string (e.g. a ConfigMap's `data.mesh`) whose first
/// content line is at absolute line `base_line` of the file.
pub(crate) fn parse_embedded(text: &str, base_line: usize) -> Result<Node, SyntaxError> {
    let doc = RawDoc { index: 1, start_line: base_line.max(1), text };
    parse_document(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let n = parse_document(&docs[1]).unwrap();
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
        let e = parse_document(&docs[1]).unwrap_err();
        assert!(e.line >= 4, "{e:?}");
    }
}
