//! The two exposition formats of `/metrics`, chosen by the request's `Accept` header: the
//! Prometheus text format 0.0.4 by default (what `promtool check metrics`, curl and old scrapers
//! read) and OpenMetrics 1.0 when asked for (what Prometheus asks for first).
//!
//! prometheus-client encodes OpenMetrics only; [`openmetrics_to_text`] rewrites its output into
//! the 0.0.4 format: no `# EOF` and no `# UNIT` lines, counters' `# HELP`/`# TYPE` named like their
//! samples (`x_total`), `unknown` as `untyped`, exemplars and `_created` samples dropped, HELP
//! text escaped the 0.0.4 way.

use std::fmt::Write as _;

pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// The format for an `Accept` header (RFC 9110 content negotiation): the highest-weighted
    /// media range that one of the formats matches, the most specific range deciding a format's
    /// weight; the text format on ties, without a header, or when nothing acceptable is offered
    /// (as Prometheus' own client libraries do).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        let ranges: Vec<(mime::Mime, f32)> = accept
            .split(',')
            .filter_map(|r| {
                let m: mime::Mime = r.trim().parse().ok()?;
                let q = m.get_param("q").and_then(|q| q.as_str().parse::<f32>().ok()).unwrap_or(1.0);
                Some((m, q.clamp(0.0, 1.0)))
            })
            .collect();
        let weight = |f: Format| -> f32 {
            // (specificity, q) of the most specific matching range.
            let mut best: Option<(u8, f32)> = None;
            for (m, q) in &ranges {
                let Some(spec) = f.matches(m) else { continue };
                if best.is_none_or(|(s, _)| spec > s) {
                    best = Some((spec, *q));
                }
            }
            best.map(|(_, q)| q).unwrap_or(0.0)
        };
        let (om, text) = (weight(Format::OpenMetrics), weight(Format::Text));
        if om > text { Format::OpenMetrics } else { Format::Text }
    }

    /// How specifically `m` names this format: 3 type/subtype with a version we speak, 2
    /// type/subtype, 1 type/*, 0 */*; None if it does not match (or names another version).
    fn matches(self, m: &mime::Mime) -> Option<u8> {
        let (ty, sub, versions): (&str, &str, &[&str]) = match self {
            Format::Text => ("text", "plain", &["0.0.4"]),
            // OpenMetrics 0.0.1 is the same text as 1.0.0 for everything we expose.
            Format::OpenMetrics => ("application", "openmetrics-text", &["1.0.0", "0.0.1"]),
        };
        if m.type_() == mime::STAR && m.subtype() == mime::STAR {
            return Some(0);
        }
        if m.type_().as_str() != ty {
            return None;
        }
        if m.subtype() == mime::STAR {
            return Some(1);
        }
        if m.subtype().as_str() != sub {
            return None;
        }
        match m.get_param("version") {
            None => Some(2),
            Some(v) if versions.contains(&v.as_str()) => Some(3),
            Some(_) => None,
        }
    }
}

/// Rewrites prometheus-client's OpenMetrics text into the Prometheus text format 0.0.4.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // The family being copied: its name and type, from its `# TYPE` line (prometheus-client writes
    // `# HELP` first, so that line is held until the type is known).
    let mut pending_help: Option<(&str, &str)> = None;
    let mut family: Option<(String, &str)> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (exposed, ty04) = match ty {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" => (name.to_string(), "gauge"),
                "histogram" => (name.to_string(), "histogram"),
                "summary" => (name.to_string(), "summary"),
                "info" => (format!("{name}_info"), "gauge"),
                _ => (name.to_string(), "untyped"),
            };
            if let Some((hname, help)) = pending_help.take()
                && hname == name
            {
                let _ = writeln!(out, "# HELP {exposed} {}", escape_help(help));
            }
            let _ = writeln!(out, "# TYPE {exposed} {ty04}");
            family = Some((name.to_string(), ty));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" || line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        // A sample: drop its exemplar, and `_created` samples (0.0.4 has no such thing).
        let sample = match line.split_once(" # ") {
            Some((s, _exemplar)) => s,
            None => line,
        };
        let name = sample.split(['{', ' ']).next().unwrap_or("");
        if let Some((fam, ty)) = &family
            && matches!(*ty, "counter" | "histogram" | "summary")
            && name.strip_prefix(fam.as_str()) == Some("_created")
        {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// HELP text in 0.0.4 escapes backslash and newline only (OpenMetrics also escapes `"`).
fn escape_help(help: &str) -> String {
    let mut s = String::with_capacity(help.len());
    let mut chars = help.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'"') => {
                // OpenMetrics' \" is a plain quote in 0.0.4.
                chars.next();
                s.push('"');
            }
            '\\' if matches!(chars.peek(), Some('\\') | Some('n')) => {
                s.push('\\');
                s.push(chars.next().expect("peeked"));
            }
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        use Format::*;
        assert_eq!(Format::negotiate(None), Text);
        assert_eq!(Format::negotiate(Some("*/*")), Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Text);
        assert_eq!(Format::negotiate(Some("application/json")), Text);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text")), OpenMetrics);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text; version=1.0.0")), OpenMetrics);
        // Prometheus 2.x's scrape header.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            OpenMetrics
        );
        // Prometheus 3.x's, with scrape_protocols preferring the text format.
        assert_eq!(
            Format::negotiate(Some(
                "text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.1"
            )),
            Text
        );
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;version=9.9.9,*/*;q=0.1")), Text);
        assert_eq!(Format::negotiate(Some("application/*;q=0.9, text/plain;q=0.2")), OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain;q=0, application/openmetrics-text;q=0")), Text);
    }

    #[test]
    fn converts_openmetrics_to_text_0_0_4() {
        let om = "# HELP reqs Requests \\\"quoted\\\" a\\\\b.\n# TYPE reqs counter\nreqs_total{a=\"x\\\"y\"} 3 # {trace=\"1\"} 1.0\nreqs_created 1.7e9\n# HELP dur_seconds Duration.\n# TYPE dur_seconds histogram\n# UNIT dur_seconds seconds\ndur_seconds_bucket{le=\"1.0\"} 1\ndur_seconds_bucket{le=\"+Inf\"} 2\ndur_seconds_sum 3.5\ndur_seconds_count 2\n# HELP g A gauge.\n# TYPE g gauge\ng 7\n# HELP u Unknown.\n# TYPE u unknown\nu 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP reqs_total Requests \"quoted\" a\\\\b.\n# TYPE reqs_total counter\nreqs_total{a=\"x\\\"y\"} 3\n# HELP dur_seconds Duration.\n# TYPE dur_seconds histogram\ndur_seconds_bucket{le=\"1.0\"} 1\ndur_seconds_bucket{le=\"+Inf\"} 2\ndur_seconds_sum 3.5\ndur_seconds_count 2\n# HELP g A gauge.\n# TYPE g gauge\ng 7\n# HELP u Unknown.\n# TYPE u untyped\nu 1\n"
        );
    }
}
