//! Which virtual host a Host header selects. The matching is the one host matcher's
//! ([`crate::config::host::best_match`], also used for the TLS SNI): an exact name wins, else the
//! longest `*.suffix` pattern that covers the name (Envoy's virtual host domain order).

use std::borrow::Cow;

use super::{HttpRoutes, VirtualHost};

/// A Host header or `:authority` as a name to match: lower case, without the port (a bracketed
/// IPv6 literal loses its brackets) and without a trailing dot. Borrowed when that is already
/// the given text (the usual case: no allocation per request).
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let h = host.trim();
    let h = if let Some(rest) = h.strip_prefix('[') {
        rest.split_once(']').map(|(a, _)| a).unwrap_or(rest)
    } else {
        match h.rsplit_once(':') {
            // One colon: name:port. More: an unbracketed IPv6 literal, kept whole.
            Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => h,
        }
    };
    let h = h.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(h.to_ascii_lowercase()) } else { Cow::Borrowed(h) }
}

/// The port a Host header or `:authority` names, if it names one (`api.test:8080`,
/// `[2001:db8::1]:443`; not an unbracketed IPv6 literal). `Some(None)`: a port that is not a
/// number (`api.test:x`), which names no port of the connection.
pub fn host_port(host: &str) -> Option<Option<u16>> {
    let h = host.trim();
    let port = if let Some(rest) = h.strip_prefix('[') {
        rest.split_once(']')?.1.strip_prefix(':')?
    } else {
        match h.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') => port,
            _ => return None,
        }
    };
    Some(port.parse().ok())
}

impl HttpRoutes {
    /// The virtual host a request's (normalized) Host selects, by index.
    pub(crate) fn select(&self, host: &str) -> Option<usize> {
        let entries = self
            .vhosts
            .iter()
            .enumerate()
            .flat_map(|(i, v): (usize, &VirtualHost)| v.domains.iter().map(move |d| (d.as_str(), i)));
        crate::config::host::best_match(host, entries)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proxy::{Fallback, ServiceLabels, Upstream};

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("API.Test:8080"), "api.test");
        assert_eq!(normalize_host("api.test."), "api.test");
        assert_eq!(normalize_host("[2001:db8::1]:80"), "2001:db8::1");
        assert_eq!(normalize_host("2001:db8::1"), "2001:db8::1");
        assert_eq!(normalize_host("10.0.0.1:80"), "10.0.0.1");
    }

    #[test]
    fn host_ports() {
        assert_eq!(host_port("api.test:8080"), Some(Some(8080)));
        assert_eq!(host_port(" api.test:80 "), Some(Some(80)));
        assert_eq!(host_port("api.test"), None);
        assert_eq!(host_port("[2001:db8::1]:443"), Some(Some(443)));
        assert_eq!(host_port("[2001:db8::1]"), None);
        assert_eq!(host_port("2001:db8::1"), None);
        assert_eq!(host_port("api.test:"), Some(None));
        assert_eq!(host_port("api.test:x"), Some(None));
        assert_eq!(host_port("api.test:99999"), Some(None));
    }

    fn vh(domains: &[&str]) -> VirtualHost {
        VirtualHost {
            domains: domains.iter().map(|s| s.to_string()).collect(),
            service: ServiceLabels::named(domains[0]),
            upstream: Upstream { port: 1, tls: None, host: domains[0].into(), connect_timeout: Duration::from_secs(1) },
        }
    }

    #[test]
    fn exact_beats_wildcard_and_longer_wildcards_win() {
        let r = HttpRoutes {
            vhosts: vec![vh(&["*.example.com"]), vh(&["*.api.example.com"]), vh(&["x.api.example.com", "10.0.0.1"])],
            fallback: Fallback::BlackHole,
            allow_connect: false,
            http2: false,
        };
        assert_eq!(r.select("a.example.com"), Some(0));
        assert_eq!(r.select("a.api.example.com"), Some(1));
        assert_eq!(r.select("x.api.example.com"), Some(2));
        assert_eq!(r.select("10.0.0.1"), Some(2));
        assert_eq!(r.select("example.com"), None);
        assert_eq!(r.select("other.test"), None);
        assert_eq!(r.select(""), None);
    }
}
