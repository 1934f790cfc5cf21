//! The one host matcher: Istio's host-name rules, used for ServiceEntry hosts, DestinationRule
//! hosts, Sidecar egress hosts, DNS learning and the SNI check.
//!
//! A host is an exact DNS name (`api.example.com`), a wildcard `*.suffix` or `*` alone. Rules
//! (Istio `pkg/config/host`):
//! - Comparison is case-insensitive and ignores one trailing dot (`API.example.com.` is
//!   `api.example.com`).
//! - `*.example.com` matches `a.example.com` and `a.b.example.com`, never `example.com` itself,
//!   and only on a label boundary (not `evilexample.com`).
//! - `*` matches every name.
//! - A partial wildcard such as `*example.com` (which Istio accepts with a warning) is kept
//!   literally and matches only itself: enforcer matches wildcards on label boundaries only.
//!
//! Two relations between patterns:
//! - [`HostPattern::is_subset_of`] (Istio `Name.SubsetOf`): every name `a` matches is also matched
//!   by `b`. This is how a Sidecar egress host imports a service: `*.wikipedia.org` imports
//!   `en.wikipedia.org`, but an exact Sidecar host `en.wikipedia.org` does NOT import a wildcard
//!   ServiceEntry `*.wikipedia.org`.
//! - [`HostPattern::overlaps`] (Istio `Name.Matches`): some name is matched by both.
//!
//! [`most_specific`] picks, for a host, the most specific of several patterns that cover it (how
//! Istio chooses the DestinationRule of a service host).
//!
//! For a concrete name (a DNS question, a TLS SNI, an HTTP Host) and many patterns:
//! [`HostMap`] indexes patterns for lookup by hash (DNS learning: which registry host a queried
//! name belongs to); [`best_match`] scans a short list without allocating (the proxy's SNI and
//! Host routing). Both pick the most specific pattern: an exact name, else the longest
//! `*.suffix`, else `*` (Envoy's virtual-host domain order, Istio's `MostSpecificHostMatch`).

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::fmt;

/// A host name or host pattern, normalized (lower case, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `*`: every name.
    Any,
    /// `*.<suffix>`; holds the suffix without `*.`, e.g. `wikipedia.org`.
    Suffix(String),
    /// An exact name (or a partial wildcard kept literally).
    Exact(String),
}

/// Lower-case `name` and strip one trailing dot (borrowing when nothing changes).
pub fn normalize(name: &str) -> Cow<'_, str> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Does `name` (a concrete DNS name) end in `.suffix` on a label boundary? Both normalized.
pub(crate) fn in_suffix(name: &str, suffix: &str) -> bool {
    strip_domain(name, suffix).is_some()
}

/// The labels of `name` before `.domain` when `name` ends in `.domain` on a label boundary
/// (`a.b` for `a.b.example.com` in `example.com`; `None` for `example.com` itself or
/// `evilexample.com`). Both normalized. Also how a search-domain expansion is undone.
pub fn strip_domain<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    name.strip_suffix(domain)?.strip_suffix('.').filter(|base| !base.is_empty())
}

impl HostPattern {
    /// Read a host as written in Istio configuration, without validating it (validation is
    /// `config`'s job and reports errors with their place; this never fails).
    pub fn parse(s: &str) -> HostPattern {
        match PatternRef::parse(s) {
            PatternRef::Any => HostPattern::Any,
            PatternRef::Suffix(suffix) => HostPattern::Suffix(suffix.to_ascii_lowercase()),
            PatternRef::Exact(h) => HostPattern::Exact(h.to_ascii_lowercase()),
        }
    }

    pub fn is_wildcard(&self) -> bool {
        !matches!(self, HostPattern::Exact(_))
    }

    /// Does the concrete DNS name `name` match this pattern? Case-insensitive, one trailing dot
    /// ignored; wildcards on label boundaries only.
    pub fn matches(&self, name: &str) -> bool {
        self.as_ref().matches(&normalize(name))
    }

    fn as_ref(&self) -> PatternRef<'_> {
        match self {
            HostPattern::Any => PatternRef::Any,
            HostPattern::Suffix(s) => PatternRef::Suffix(s),
            HostPattern::Exact(h) => PatternRef::Exact(h),
        }
    }

    /// Is every name this pattern matches also matched by `other`? (Istio `SubsetOf`.)
    ///
    /// `a.example.com` ⊆ `*.example.com` ⊆ `*.com` ⊆ `*`; `*.example.com` is not a subset of
    /// `a.example.com`, so an exact Sidecar host does not import a wildcard ServiceEntry.
    pub fn is_subset_of(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (_, HostPattern::Any) => true,
            (HostPattern::Any, _) => false,
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(a), HostPattern::Suffix(s)) => in_suffix(a, s),
            (HostPattern::Suffix(_), HostPattern::Exact(_)) => false,
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => a == b || in_suffix(a, b),
        }
    }

    /// Is some name matched by both patterns? (Istio `Matches`: one is a subset of the other.)
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        self.is_subset_of(other) || other.is_subset_of(self)
    }

    /// The names matched by both patterns, as a pattern: the narrower one, or `None` when they do
    /// not overlap.
    pub fn intersection(&self, other: &HostPattern) -> Option<HostPattern> {
        if self.is_subset_of(other) {
            Some(self.clone())
        } else if other.is_subset_of(self) {
            Some(other.clone())
        } else {
            None
        }
    }

    /// Istio's `MoreSpecific`: exact names before wildcards, longer wildcards before shorter, `*`
    /// last. Used to rank patterns that all cover one host.
    fn specificity(&self) -> (u8, usize) {
        self.as_ref().specificity()
    }
}

/// A host pattern borrowed from the text it was written in (one trailing dot dropped, case kept):
/// what [`HostPattern`] and [`best_match`] share, so both match by the same rules.
#[derive(Debug, Clone, Copy)]
enum PatternRef<'a> {
    Any,
    Suffix(&'a str),
    Exact(&'a str),
}

impl<'a> PatternRef<'a> {
    /// `*.` (an empty suffix) becomes `Suffix("")`, which matches nothing, not `*`.
    fn parse(s: &'a str) -> PatternRef<'a> {
        let s = s.trim();
        if s == "*" {
            PatternRef::Any
        } else if let Some(suffix) = s.strip_prefix("*.") {
            PatternRef::Suffix(suffix.strip_suffix('.').unwrap_or(suffix))
        } else {
            PatternRef::Exact(s.strip_suffix('.').unwrap_or(s))
        }
    }

    /// Does the normalized concrete name `name` match? The pattern side compares
    /// case-insensitively.
    fn matches(self, name: &str) -> bool {
        match self {
            PatternRef::Any => !name.is_empty(),
            PatternRef::Exact(h) => h.eq_ignore_ascii_case(name),
            PatternRef::Suffix(suffix) => {
                name.len() > suffix.len() + 1
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }

    fn specificity(self) -> (u8, usize) {
        match self {
            PatternRef::Exact(h) => (2, h.len()),
            PatternRef::Suffix(s) => (1, s.len()),
            PatternRef::Any => (0, 0),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Suffix(s) => write!(f, "*.{s}"),
            HostPattern::Exact(h) => f.write_str(h),
        }
    }
}

/// Does `name` match the host `pattern` (both as written in configuration)?
pub fn name_matches(pattern: &str, name: &str) -> bool {
    HostPattern::parse(pattern).matches(name)
}

/// Is host `a` a subset of host `b` (both as written in configuration)? See
/// [`HostPattern::is_subset_of`].
pub fn is_subset_of(a: &str, b: &str) -> bool {
    HostPattern::parse(a).is_subset_of(&HostPattern::parse(b))
}

/// Of `candidates` (pattern, value), the value whose pattern covers `host` most specifically
/// (Istio `MostSpecificHostMatch`): an equal pattern first, then the most specific pattern `host`
/// is a subset of. Ties keep the first candidate.
pub fn most_specific<P: Borrow<HostPattern>, T>(
    host: &HostPattern,
    candidates: impl IntoIterator<Item = (P, T)>,
) -> Option<T> {
    let mut best: Option<((u8, usize), T)> = None;
    for (pattern, value) in candidates {
        let pattern = pattern.borrow();
        if pattern == host {
            return Some(value);
        }
        if !host.is_subset_of(pattern) {
            continue;
        }
        let rank = pattern.specificity();
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, value));
        }
    }
    best.map(|(_, v)| v)
}

/// Of `candidates` (pattern as written in configuration, value), the value whose pattern matches
/// the concrete name `name` most specifically: an exact name, else the longest `*.suffix`, else
/// `*`; ties keep the first. Allocation-free (unless `name` needs lower-casing), for short lists
/// looked up per connection or request; index many patterns in a [`HostMap`] instead.
pub fn best_match<'p, T>(name: &str, candidates: impl IntoIterator<Item = (&'p str, T)>) -> Option<T> {
    let name = normalize(name);
    let mut best: Option<((u8, usize), T)> = None;
    for (pattern, value) in candidates {
        let pattern = PatternRef::parse(pattern);
        if !pattern.matches(&name) {
            continue;
        }
        let rank = pattern.specificity();
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, value));
        }
    }
    best.map(|(_, v)| v)
}

/// Host patterns indexed for fast lookup of concrete names: exact names by hash, `*.suffix`
/// patterns by each label-boundary suffix of the name (longest first), then `*`. A lookup costs
/// one hash probe per label of the name, whatever the number of patterns. The first value
/// inserted for a pattern keeps it.
#[derive(Debug, Clone)]
pub struct HostMap<T> {
    exact: HashMap<String, T>,
    suffix: HashMap<String, T>,
    any: Option<T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        HostMap { exact: HashMap::new(), suffix: HashMap::new(), any: None }
    }
}

impl<T> HostMap<T> {
    /// Add `pattern` -> `value` unless `pattern` is already present; `true` when added.
    pub fn insert(&mut self, pattern: HostPattern, value: T) -> bool {
        use std::collections::hash_map::Entry;
        let entry = match pattern {
            HostPattern::Any => {
                if self.any.is_some() {
                    return false;
                }
                self.any = Some(value);
                return true;
            }
            HostPattern::Exact(h) => self.exact.entry(h),
            HostPattern::Suffix(s) => self.suffix.entry(s),
        };
        match entry {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(value);
                true
            }
        }
    }

    /// The value of the most specific pattern matching the concrete name `name` (case-insensitive,
    /// one trailing dot ignored): an exact name, else the longest `*.suffix`, else `*`.
    pub fn get(&self, name: &str) -> Option<&T> {
        let name = normalize(name);
        if name.is_empty() {
            return None;
        }
        if let Some(v) = self.exact.get(name.as_ref()) {
            return Some(v);
        }
        // Every proper suffix on a label boundary, longest first: a.b.example.com ->
        // b.example.com, example.com, com.
        let mut rest = name.as_ref();
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(v) = self.suffix.get(suffix) {
                return Some(v);
            }
            rest = suffix;
        }
        self.any.as_ref()
    }

    /// The value of `name` as an exact pattern (not one a wildcard covers).
    pub fn get_exact(&self, name: &str) -> Option<&T> {
        self.exact.get(normalize(name).as_ref())
    }

    /// How many patterns are indexed.
    pub fn len(&self) -> usize {
        self.exact.len() + self.suffix.len() + usize::from(self.any.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> FromIterator<(HostPattern, T)> for HostMap<T> {
    fn from_iter<I: IntoIterator<Item = (HostPattern, T)>>(iter: I) -> Self {
        let mut map = HostMap::default();
        for (p, v) in iter {
            map.insert(p, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s)
    }

    #[test]
    fn parse_normalizes() {
        assert_eq!(p("*"), HostPattern::Any);
        assert_eq!(p("*.Example.COM."), HostPattern::Suffix("example.com".into()));
        assert_eq!(p("API.example.com."), HostPattern::Exact("api.example.com".into()));
        assert_eq!(p("*x.com"), HostPattern::Exact("*x.com".into()));
        assert_eq!(p("*.wikipedia.org").to_string(), "*.wikipedia.org");
        assert!(p("*").is_wildcard() && p("*.a").is_wildcard() && !p("a").is_wildcard());
        assert!(matches!(normalize("a.b"), Cow::Borrowed("a.b")));
    }

    #[test]
    fn matches_on_label_boundaries() {
        let w = p("*.example.com");
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(w.matches("A.Example.COM."));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("evilexample.com"));
        assert!(!w.matches(".example.com"));
        assert!(!w.matches("example.com.evil"));
        let e = p("example.com");
        assert!(e.matches("example.com") && e.matches("EXAMPLE.com.") && !e.matches("a.example.com"));
        assert!(p("*").matches("anything.at.all") && !p("*").matches(""));
        // A partial wildcard matches nothing but itself.
        assert!(!p("*example.com").matches("aexample.com") && !p("*example.com").matches("example.com"));
        assert!(name_matches("*.a.com", "x.A.com"));
    }

    #[test]
    fn subset_of_is_istios() {
        // Cases from Istio's pkg/config/host/name_test.go (TestNameSubsetOf), label-boundary form.
        let cases = [
            ("foo.com", "foo.com", true),
            ("foo.com", "bar.com", false),
            ("foo.com", "*.com", true),
            ("*.com", "foo.com", false),
            ("*.foo.com", "*.com", true),
            ("*.com", "*.foo.com", false),
            ("*.foo.com", "*.foo.com", true),
            ("*.foo.com", "foo.com", false),
            ("foo.com", "*.foo.com", false),
            ("*", "*", true),
            ("foo.com", "*", true),
            ("*.com", "*", true),
            ("*", "*.com", false),
            ("*", "foo.com", false),
            ("a.b.foo.com", "*.foo.com", true),
            ("evilfoo.com", "*.foo.com", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(is_subset_of(a, b), want, "{a} subset of {b}");
        }
        // An exact Sidecar host does not import a wildcard ServiceEntry; a wildcard one imports
        // the narrower exact entry.
        assert!(!p("*.wikipedia.org").is_subset_of(&p("en.wikipedia.org")));
        assert!(p("en.wikipedia.org").is_subset_of(&p("*.wikipedia.org")));
    }

    #[test]
    fn overlaps_and_intersection() {
        assert!(p("*.wikipedia.org").overlaps(&p("en.wikipedia.org")));
        assert!(p("*").overlaps(&p("*.a.com")));
        assert!(!p("*.a.com").overlaps(&p("*.b.com")));
        assert!(!p("a.com").overlaps(&p("*.a.com")));
        assert_eq!(p("*.wikipedia.org").intersection(&p("en.wikipedia.org")), Some(p("en.wikipedia.org")));
        assert_eq!(p("*.com").intersection(&p("*.a.com")), Some(p("*.a.com")));
        assert_eq!(p("a.com").intersection(&p("b.com")), None);
    }

    #[test]
    fn strip_domain_on_label_boundaries() {
        assert_eq!(strip_domain("a.b.example.com", "example.com"), Some("a.b"));
        assert_eq!(strip_domain("example.com", "example.com"), None);
        assert_eq!(strip_domain(".example.com", "example.com"), None);
        assert_eq!(strip_domain("evilexample.com", "example.com"), None);
        assert!(in_suffix("a.example.com", "example.com") && !in_suffix("com", "example.com"));
    }

    #[test]
    fn empty_wildcard_matches_nothing() {
        assert_eq!(p("*."), HostPattern::Suffix(String::new()));
        assert!(!p("*.").matches("example.com") && !p("*.").matches("com"));
        assert!(!p("api.example.com").matches(""));
    }

    #[test]
    fn best_match_prefers_exact_then_longest_wildcard_then_any() {
        let pats = ["*", "*.com", "*.Example.com", "API.example.com.", "*.example.com"];
        let pick = |h: &str| best_match(h, pats.iter().enumerate().map(|(i, x)| (*x, i)));
        assert_eq!(pick("api.example.com"), Some(3));
        assert_eq!(pick("API.Example.COM."), Some(3));
        assert_eq!(pick("www.example.com"), Some(2), "ties keep the first");
        assert_eq!(pick("x.com"), Some(1));
        assert_eq!(pick("x.org"), Some(0));
        assert_eq!(pick(""), None);
        let few = ["a.example.com", "*.example.com", "*."];
        let pick = |h: &str| best_match(h, few.iter().map(|x| (*x, *x)));
        assert_eq!(pick("a.example.com"), Some("a.example.com"));
        assert_eq!(pick("a.b.example.com"), Some("*.example.com"));
        assert_eq!(pick("example.com"), None);
        assert_eq!(pick("evilexample.com"), None);
        assert_eq!(pick(".example.com"), None);
        assert_eq!(pick("x.api.example.com"), Some("*.example.com"));
        assert_eq!(pick("com"), None);
    }

    #[test]
    fn host_map_agrees_with_the_pattern_rules() {
        let pats = ["*.svc.test", "api.example.com", "*.example.com", "*.a.example.com", "*", "*x.org"];
        let mut map: HostMap<usize> = pats.iter().enumerate().map(|(i, x)| (p(x), i)).collect();
        assert!(!map.insert(p("*.SVC.test."), 99), "the first value of a pattern keeps it");
        assert_eq!(map.len(), pats.len());
        let names = [
            "a.svc.test",
            "x.y.svc.test.",
            "SVC.TEST",
            "evilsvc.test",
            "api.example.com",
            "API.EXAMPLE.COM.",
            "x.api.example.com",
            "b.a.example.com",
            "a.example.com",
            "example.com",
            "aexample.com",
            "x.org",
            "*x.org",
            "",
        ];
        for name in names {
            let scan = best_match(name, pats.iter().enumerate().map(|(i, x)| (*x, i)));
            assert_eq!(map.get(name).copied(), scan, "{name:?}");
        }
        assert_eq!(map.get("b.a.example.com"), Some(&3));
        assert_eq!(map.get("x.y.svc.test"), Some(&0));
        assert_eq!(map.get("svc.test"), Some(&4), "only `*` covers the bare domain");
        assert_eq!(map.get_exact("API.example.com."), Some(&1));
        assert_eq!(map.get_exact("a.svc.test"), None);
        let no_any: HostMap<()> = [(p("*.svc.test"), ())].into_iter().collect();
        assert_eq!(no_any.get("svc.test"), None);
        assert_eq!(no_any.get("evilsvc.test"), None);
        assert!(HostMap::<()>::default().is_empty());
    }

    #[test]
    fn most_specific_prefers_exact_then_longest_wildcard() {
        let pats = [p("*"), p("*.com"), p("*.example.com"), p("api.example.com")];
        let pick = |h: &str| most_specific(&p(h), pats.iter().enumerate().map(|(i, x)| (x, i)));
        assert_eq!(pick("api.example.com"), Some(3));
        assert_eq!(pick("www.example.com"), Some(2));
        assert_eq!(pick("x.com"), Some(1));
        assert_eq!(pick("x.org"), Some(0));
        assert_eq!(pick("*.example.com"), Some(2));
        assert_eq!(pick("*.a.example.com"), Some(2));
        let none: [HostPattern; 1] = [p("*.org")];
        assert_eq!(most_specific(&p("a.com"), none.iter().map(|x| (x, ()))), None);
    }
}
