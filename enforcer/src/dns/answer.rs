//! Pure answer processing: the rebinding filter, the CNAME chain walk and the map lifetime.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::{DNSClass, Name, RData, Record};

use super::{Config, DnsPolicy};

/// Most CNAME hops followed from the query name.
pub(crate) const MAX_CNAME_HOPS: usize = 16;

/// The policy key for a query name: lowercase, no trailing dot.
pub(crate) fn name_key(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

/// True for addresses a public name must not resolve to (DNS rebinding): loopback, unspecified,
/// private (RFC 1918, fc00::/7), link-local (169.254/16 incl. the metadata address, fe80::/10),
/// CGNAT 100.64/10, multicast, broadcast, "this network" 0/8, and IPv4-mapped forms of these.
pub fn is_rebinding_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_rebinding_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_rebinding_v4(v4);
            }
            is_rebinding_v6(v6)
        }
    }
}

fn is_rebinding_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_unspecified()
        || o[0] == 0 // 0.0.0.0/8 "this network"
        || ip.is_private()
        || ip.is_link_local()
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 CGNAT
        || ip.is_multicast()
        || ip.is_broadcast()
}

fn is_rebinding_v6(ip: Ipv6Addr) -> bool {
    let seg0 = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || (seg0 & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (seg0 & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || ip.is_multicast()
}

/// Map lifetime for an answer whose used records' minimum TTL is `ttl_secs`:
/// clamp(ttl, min_ttl, max_ttl) + grace. Never panics on a misconfigured min > max (max wins).
pub(crate) fn lifetime(ttl_secs: u32, cfg: &Config) -> Duration {
    let ttl = Duration::from_secs(u64::from(ttl_secs));
    ttl.max(cfg.min_ttl).min(cfg.max_ttl) + cfg.grace
}

/// Result of processing a matched name's answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Processed {
    /// Addresses reachable from the query name (deduplicated, answer order), after filtering.
    pub addrs: Vec<IpAddr>,
    /// Minimum TTL of the records used to reach `addrs` (CNAMEs and address records).
    pub min_ttl: Option<u32>,
    /// Address records removed from the answer section by the rebinding filter.
    pub dropped: usize,
}

fn note_ttl(t: u32, min_ttl: &mut Option<u32>) {
    *min_ttl = Some(min_ttl.map_or(t, |m| m.min(t)));
}

fn record_addr(rec: &Record) -> Option<IpAddr> {
    match rec.data() {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// Filter the answer section of `msg` (rebinding protection, unless the registry lists the
/// address), then collect the A/AAAA addresses reachable from `qname` through CNAME chains.
/// `msg` is modified only when something was dropped (`dropped > 0`).
pub(crate) fn process_matched(msg: &mut Message, qname: &Name, policy: &dyn DnsPolicy) -> Processed {
    let mut out = Processed::default();

    let answers = msg.answers_mut();
    let before = answers.len();
    answers.retain(|rec| match record_addr(rec) {
        Some(ip) => !is_rebinding_addr(ip) || policy.explicitly_listed(ip),
        None => true,
    });
    out.dropped = before - answers.len();

    let answers = msg.answers();
    let mut current = qname.clone();
    let mut visited: HashSet<Name> = HashSet::new();
    let mut hops = 0usize;
    let mut min_ttl: Option<u32> = None;
    loop {
        visited.insert(current.clone());
        let mut next: Option<&Name> = None;
        for rec in answers.iter() {
            if rec.dns_class() != DNSClass::IN || rec.name() != &current {
                continue;
            }
            if let Some(ip) = record_addr(rec) {
                if !out.addrs.contains(&ip) {
                    out.addrs.push(ip);
                }
                note_ttl(rec.ttl(), &mut min_ttl);
            } else if let RData::CNAME(cname) = rec.data()
                && next.is_none()
            {
                note_ttl(rec.ttl(), &mut min_ttl);
                next = Some(&cname.0);
            }
        }
        match next {
            Some(target) if hops < MAX_CNAME_HOPS && !visited.contains(target) => {
                hops += 1;
                current = target.clone();
            }
            _ => break,
        }
    }
    if !out.addrs.is_empty() {
        out.min_ttl = min_ttl;
    }
    out
}
