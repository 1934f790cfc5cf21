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

use std::borrow::{Borrow, Cow};
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
    name.len() > suffix.len() + 1 && name.ends_with(suffix) && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

impl HostPattern {
    /// Read a host as written in Istio configuration, without validating it (validation is
    /// `config`'s job and reports errors with their place; this never fails).
    pub fn parse(s: &str) -> HostPattern {
        let s = normalize(s.trim());
        if s == "*" {
            HostPattern::Any
        } else if let Some(suffix) = s.strip_prefix("*.") {
            HostPattern::Suffix(suffix.to_string())
        } else {
            HostPattern::Exact(s.into_owned())
        }
    }

    pub fn is_wildcard(&self) -> bool {
        !matches!(self, HostPattern::Exact(_))
    }

    /// Does the concrete DNS name `name` match this pattern? Case-insensitive, one trailing dot
    /// ignored; wildcards on label boundaries only.
    pub fn matches(&self, name: &str) -> bool {
        let name = normalize(name);
        match self {
            HostPattern::Any => !name.is_empty(),
            HostPattern::Exact(h) => *h == name,
            HostPattern::Suffix(suffix) => in_suffix(&name, suffix),
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
        match self {
            HostPattern::Exact(h) => (2, h.len()),
            HostPattern::Suffix(s) => (1, s.len()),
            HostPattern::Any => (0, 0),
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
