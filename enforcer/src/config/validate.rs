//! Istio's value validators, kind-independent (istio/istio `pkg/config/validation/agent`,
//! `pkg/config/labels`, `pkg/config/visibility`). Each returns the message Istio would give; the
//! loader adds file, line, field and the fix.

use std::net::IpAddr;

/// RFC 1123 label as Istio checks it: `[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?`, at most 63
/// characters. Upper case is allowed (Istio `labels.IsDNS1123Label`).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A first host label that may be a wildcard: `*`, or a label optionally prefixed by `*` or `*-`
/// (Istio `labels.IsWildcardDNS1123Label`; the prefixed forms are partial wildcards).
pub fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s.len() > 63 {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s.strip_prefix("*-").or_else(|| s.strip_prefix('*')).unwrap_or(s);
    is_dns1123_label(rest)
}

/// Istio `CheckDNS1123Preconditions`.
fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".to_string());
    }
    Ok(())
}

/// Like Go's `strconv.Atoi` succeeding: an optional sign and at least one digit.
fn is_go_int(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Istio `ValidateDNS1123Labels`: every label valid, the top-level domain not all-numeric, a
/// trailing dot allowed.
fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts[parts.len() - 1];
    if is_go_int(tld) {
        return Err(format!("domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!("domain name {domain:?} invalid (label {label:?} invalid)"));
        }
    }
    Ok(())
}

/// Istio `ValidateFQDN` (a single label such as `reviews` is accepted).
pub fn fqdn(name: &str) -> Result<(), String> {
    dns1123_preconditions(name)?;
    dns1123_labels(name)
}

/// Istio `ValidateWildcardDomain`: a DNS name whose first label may be a wildcard (`*`, `*.x`,
/// and the partial `*x`).
pub fn wildcard_domain(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!("domain name {domain:?} invalid (label {first:?} invalid)"));
    }
    match rest {
        Some(r) => dns1123_labels(r),
        None => Ok(()),
    }
}

/// Istio `ValidatePartialWildCard`: a `*` anywhere but as `*` alone or a leading `*.`.
pub fn is_partial_wildcard(host: &str) -> bool {
    host.contains('*') && host.len() != 1 && !host.starts_with("*.")
}

/// Istio `ValidateIPSubnet`: an IP address, or a CIDR block when there is exactly one `/`.
pub fn ip_subnet(s: &str) -> Result<ipnet::IpNet, String> {
    if s.matches('/').count() == 1 {
        let (addr, len) = s.split_once('/').unwrap_or((s, ""));
        let ip: IpAddr = addr.parse().map_err(|_| format!("{s} is not a valid CIDR block"))?;
        // Go's netip.ParsePrefix: decimal prefix length without sign or leading zeros.
        let ok_len =
            !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) && (len == "0" || !len.starts_with('0'));
        let bits: u8 = if ok_len { len.parse().map_err(|_| format!("{s} is not a valid CIDR block"))? } else { 255 };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(format!("{s} is not a valid CIDR block"));
        }
        return ipnet::IpNet::new(ip, bits).map_err(|_| format!("{s} is not a valid CIDR block"));
    }
    s.parse::<IpAddr>().map(ipnet::IpNet::from).map_err(|_| format!("{s} is not a valid IP"))
}

/// Istio `ValidatePort`.
pub fn port(n: i128) -> Result<u16, String> {
    if (1..=65535).contains(&n) { Ok(n as u16) } else { Err(format!("port number {n} must be in the range 1..65535")) }
}

/// Istio `ValidateUnixAddress` (the path after `unix://`).
pub fn unix_address(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("unix address must not be empty".to_string());
    }
    if path.starts_with('@') {
        return Ok(());
    }
    if !path.starts_with('/') || path.ends_with('/') {
        return Err(format!("{path} is not an absolute path to a file"));
    }
    Ok(())
}

/// A Kubernetes label key (Istio `validateTagKey`): an optional DNS-name prefix and `/`, then a
/// name of `[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]` of at most 63 characters.
pub fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if p.is_empty() || !p.split('.').all(is_dns1123_label) {
            return Err(format!("invalid tag key: {k:?}"));
        }
        if p.len() > 253 {
            return Err(format!("invalid tag key: {k:?} (DNS prefix is too long)"));
        }
    }
    if !is_qualified_name(name) {
        return Err(format!("invalid tag key: {k:?}"));
    }
    if name.len() > 63 {
        return Err(format!("invalid tag key: {k:?} (name is too long)"));
    }
    Ok(())
}

fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A Kubernetes label value (Istio `labelValueRegexp`): empty, or a qualified name.
pub fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_qualified_name(v) { Ok(()) } else { Err(format!("invalid tag value: {v:?}")) }
}

/// The problems of an `exportTo` list (Istio `validateExportTo`), as messages.
///
/// `namespace` is the object's namespace; `service_entry` allows `~` (visible to no one);
/// `dr_with_selector` restricts a DestinationRule with a workload selector to its own namespace.
pub fn export_to(namespace: &str, export_to: &[String], service_entry: bool, dr_with_selector: bool) -> Vec<String> {
    let mut errs = Vec::new();
    if export_to.is_empty() {
        return errs;
    }
    let mut set: Vec<&str> = Vec::new();
    for e in export_to {
        let key = if e == "." { namespace } else { e.as_str() };
        if set.contains(&key) {
            if key != e {
                errs.push(format!("duplicate entries in exportTo: . and current namespace {namespace}"));
            } else {
                errs.push(format!("duplicate entries in exportTo for entry {e}"));
            }
        } else if service_entry && e == "~" {
            set.push(key);
        } else {
            match key {
                "." | "*" => set.push(key),
                "~" => errs.push("exportTo ~ (none) is not allowed for Istio configuration objects".to_string()),
                k if is_dns1123_label(k) => set.push(key),
                _ => errs.push("only .,*, or a valid DNS 1123 label is allowed as exportTo entry".to_string()),
            }
        }
    }
    if dr_with_selector && !set.is_empty() {
        if set.contains(&namespace) {
            if set.len() > 1 {
                errs.push(
                    "destination rule with workload selector cannot have multiple entries in exportTo".to_string(),
                );
            }
        } else {
            errs.push(
                "destination rule with workload selector cannot have exportTo beyond current namespace".to_string(),
            );
        }
    }
    if set.contains(&"*") && export_to.len() > 1 {
        errs.push("cannot have both public (*) and non-public exportTo values for a resource".to_string());
    }
    if set.contains(&"~") && export_to.len() > 1 {
        errs.push("cannot export service entry to no one (~) and someone".to_string());
    }
    errs
}

/// A Go `time.ParseDuration` string (what Istio's JSON decoding accepts for durations: `1s`,
/// `500ms`, `1m30s`, `1.5h`, `-2s`, `0`), as signed nanoseconds. `None` if malformed.
pub fn go_duration(s: &str) -> Option<i128> {
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    let mut exact: i128 = 0;
    let mut all_int = true;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num = &rest[..num_end];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let ns: i128 = match &rest[..unit_end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_end..];
        if let Some((int, frac)) = num.split_once('.') {
            all_int = false;
            let v: f64 = format!("{}.{}", if int.is_empty() { "0" } else { int }, frac).parse().ok()?;
            total += v * ns as f64;
        } else {
            let v: i128 = num.parse().ok()?;
            exact = exact.checked_add(v.checked_mul(ns)?)?;
        }
    }
    let value = if all_int { exact } else { exact + total.round() as i128 };
    Some(if neg { -value } else { value })
}

/// Istio `ValidateDuration` on nanoseconds: at least 1ms, whole milliseconds.
pub fn duration_ms_precision(ns: i128) -> Result<(), String> {
    if ns < 1_000_000 {
        return Err("duration must be greater than 1ms".to_string());
    }
    if ns % 1_000_000 != 0 {
        return Err("only durations to ms precision are supported".to_string());
    }
    Ok(())
}

/// Envoy's prime test used by Istio for the Maglev table size.
pub fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let mut f = 3u64;
    while f.saturating_mul(f) <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_and_domains() {
        assert!(is_dns1123_label("Http-Web") && is_dns1123_label("a") && !is_dns1123_label("-a"));
        assert!(!is_dns1123_label("a_b") && !is_dns1123_label(&"a".repeat(64)) && !is_dns1123_label(""));
        assert!(fqdn("reviews").is_ok() && fqdn("istio.io.").is_ok() && fqdn("a.b-c.com").is_ok());
        assert!(fqdn("foo.123").unwrap_err().contains("cannot be all-numeric"));
        assert!(fqdn("1.2.3.4").is_err());
        assert!(fqdn("*.a.com").is_err());
        assert!(fqdn("").unwrap_err().contains("empty domain"));
        assert!(fqdn(&"a.".repeat(130)).unwrap_err().contains("too long"));
        for ok in ["*", "*.a.com", "*a.com", "*-a.com", "a.com", "reviews"] {
            assert!(wildcard_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["a.*.com", "**.a.com", "a*.com", "-", "a..com", "x.42", "bad_host.com"] {
            assert!(wildcard_domain(bad).is_err(), "{bad}");
        }
        assert!(is_partial_wildcard("*x") && is_partial_wildcard("a.*.com") && !is_partial_wildcard("*.a"));
        assert!(!is_partial_wildcard("*"));
    }

    #[test]
    fn subnets_and_ports() {
        assert_eq!(ip_subnet("10.1.2.3/24").unwrap().to_string(), "10.1.2.3/24");
        assert_eq!(ip_subnet("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert!(ip_subnet("001:db8::").is_ok());
        for bad in ["10.1.2.3/33", "1.2.3.4/", "1.2.3.4/08", "x/8", "1.2.3.4/8/8", "not-an-ip", "01.2.3.4"] {
            assert!(ip_subnet(bad).is_err(), "{bad}");
        }
        assert_eq!(port(443), Ok(443));
        assert!(port(0).is_err() && port(65536).is_err());
        assert!(unix_address("/a/b").is_ok() && unix_address("@abs").is_ok());
        assert!(unix_address("./rel").is_err() && unix_address("/dir/").is_err() && unix_address("").is_err());
    }

    #[test]
    fn labels() {
        for ok in ["app", "app.kubernetes.io/name", "security.istio.io/tlsMode", "A_b.c-9"] {
            assert!(label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-app", "app-", "a b", "/app", "bad_prefix/app", "x/", &"a".repeat(64)] {
            assert!(label_key(bad).is_err(), "{bad:?}");
        }
        assert!(label_value("").is_ok() && label_value("v1.2_3").is_ok());
        assert!(label_value("*").is_err() && label_value("-v").is_err());
    }

    #[test]
    fn export_to_rules() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(export_to("ns", &v(&["."]), false, false).is_empty());
        assert!(export_to("ns", &v(&["*"]), false, false).is_empty());
        assert!(export_to("ns", &v(&[".", "other"]), false, false).is_empty());
        assert!(export_to("ns", &v(&["~"]), true, false).is_empty());
        assert!(export_to("ns", &v(&["~"]), false, false)[0].contains("not allowed"));
        assert!(export_to("ns", &v(&["Bad_NS"]), true, false)[0].contains("valid DNS 1123 label"));
        assert!(export_to("ns", &v(&["*", "a"]), true, false)[0].contains("public (*)"));
        assert!(export_to("ns", &v(&["~", "a"]), true, false)[0].contains("no one (~)"));
        assert!(export_to("ns", &v(&["ns", "."]), true, false)[0].contains(". and current namespace ns"));
        assert!(export_to("ns", &v(&[".", "ns"]), true, false)[0].contains("for entry ns"));
        assert!(export_to("ns", &v(&["a", "a"]), true, false)[0].contains("duplicate entries in exportTo for entry a"));
        assert!(export_to("ns", &v(&["*"]), false, true)[0].contains("beyond current namespace"));
        assert!(export_to("ns", &v(&[".", "b"]), false, true)[0].contains("multiple entries"));
        assert!(export_to("ns", &v(&["."]), false, true).is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(go_duration("1s"), Some(1_000_000_000));
        assert_eq!(go_duration("500ms"), Some(500_000_000));
        assert_eq!(go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(go_duration(".5s"), Some(500_000_000));
        assert_eq!(go_duration("-2s"), Some(-2_000_000_000));
        assert_eq!(go_duration("0"), Some(0));
        assert_eq!(go_duration("10us"), Some(10_000));
        for bad in ["", "1", "soon", "1x", ".s", "1..2s", "-", "s"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
        assert!(duration_ms_precision(0).unwrap_err().contains("greater than 1ms"));
        assert!(duration_ms_precision(1_500_000).unwrap_err().contains("ms precision"));
        assert!(duration_ms_precision(1_000_000).is_ok());
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(2) && !is_prime(65536) && !is_prime(9) && is_prime(5000011));
    }
}
