//! Pure answer processing: the rebinding filter, the CNAME chain walk and the map lifetime.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::{DNSClass, Name, RData, Record};

use super::{Config, DnsPolicy};

/// The least grace added to a lifetime, and to a renewed one: the answer is released within
/// this of the write.
pub(crate) const RELEASE_SLACK: Duration = Duration::from_millis(100);

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
/// CGNAT 100.64/10, multicast, broadcast, "this network" 0/8 — and IPv6 forms that embed an IPv4
/// address, judged by the embedded address: IPv4-mapped (::ffff:0:0/96), IPv4-compatible
/// (::/96), NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48 in every RFC 6052 layout),
/// 6to4 (2002::/16) and Teredo (2001::/32: server and client address).
pub fn is_rebinding_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_rebinding_v4(v4),
        IpAddr::V6(v6) => is_rebinding_v6(v6) || embedded_v4(v6).iter().any(|v4| is_rebinding_v4(*v4)),
    }
}

/// The IPv4 addresses an IPv6 address stands for (empty: none).
pub(crate) fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let b = ip.octets();
    let seg = ip.segments();
    let v4 = |o: &[u8]| Ipv4Addr::new(o[0], o[1], o[2], o[3]);
    if let Some(m) = ip.to_ipv4_mapped() {
        return vec![m];
    }
    // ::a.b.c.d (deprecated IPv4-compatible); :: and ::1 are judged as IPv6 themselves.
    if b[..12].iter().all(|x| *x == 0) && !ip.is_loopback() && !ip.is_unspecified() {
        return vec![v4(&b[12..])];
    }
    // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052: only the /96 layout).
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return vec![v4(&b[12..])];
    }
    // NAT64 local-use 64:ff9b:1::/48 (RFC 8215): the operator's prefix is /48, /56, /64 or /96.
    // The /48, /56 and /64 layouts skip the "u" octet (byte 8, zero) and end in zero suffix
    // bits (RFC 6052); every such layout that fits is a candidate (any private candidate
    // condemns the address); an address none of them fits is a /96 one.
    if seg[..3] == [0x64, 0xff9b, 1] {
        let layouts: [[usize; 4]; 3] = [[6, 7, 9, 10], [7, 9, 10, 11], [9, 10, 11, 12]];
        let out: Vec<Ipv4Addr> = layouts
            .iter()
            .filter(|pos| b[8] == 0 && b[pos[3] + 1..].iter().all(|x| *x == 0))
            .map(|pos| Ipv4Addr::new(b[pos[0]], b[pos[1]], b[pos[2]], b[pos[3]]))
            .collect();
        return if out.is_empty() { vec![v4(&b[12..])] } else { out };
    }
    // 6to4: 2002:AABB:CCDD::/48.
    if seg[0] == 0x2002 {
        return vec![v4(&b[2..6])];
    }
    // Teredo 2001:0::/32: server IPv4 in bits 32..63, client IPv4 obfuscated (xor) in 96..127.
    if seg[0] == 0x2001 && seg[1] == 0 {
        let client = [b[12] ^ 0xff, b[13] ^ 0xff, b[14] ^ 0xff, b[15] ^ 0xff];
        return vec![v4(&b[4..8]), v4(&client)];
    }
    Vec::new()
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
/// clamp(ttl, min_ttl, max_ttl) + max(grace, 100 ms), never under [`super::MIN_TTL_FLOOR`] + grace. Never
/// panics on a misconfigured min > max (max wins).
pub(crate) fn lifetime(ttl_secs: u32, cfg: &Config) -> Duration {
    let ttl = Duration::from_secs(u64::from(ttl_secs));
    let floor = cfg.min_ttl.max(super::MIN_TTL_FLOOR);
    // At least RELEASE_SLACK of grace: the answer leaves a few µs after the write, and the entry
    // must still have the floor then.
    ttl.max(floor).min(cfg.max_ttl.max(super::MIN_TTL_FLOOR)) + cfg.grace.max(RELEASE_SLACK)
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

/// Drop answer-section address records a public name must not have (unless the registry lists
/// the address); returns how many went. `msg` is untouched when none did.
pub(crate) fn filter_rebinding(msg: &mut Message, policy: &dyn DnsPolicy) -> usize {
    let bad = |rec: &Record| record_addr(rec).is_some_and(|ip| is_rebinding_addr(ip) && !policy.explicitly_listed(ip));
    if !msg.answers().iter().any(bad) {
        return 0;
    }
    let answers = msg.answers_mut();
    let before = answers.len();
    answers.retain(|rec| !bad(rec));
    before - answers.len()
}

/// The A/AAAA addresses reachable from `qname` through CNAME chains in the answer section
/// (deduplicated, answer order), and the minimum TTL of the records used (None: no address).
pub(crate) fn collect(msg: &Message, qname: &Name) -> (Vec<IpAddr>, Option<u32>) {
    let answers = msg.answers();
    let mut addrs: Vec<IpAddr> = Vec::new();
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
                if !addrs.contains(&ip) {
                    addrs.push(ip);
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
    if addrs.is_empty() {
        min_ttl = None;
    }
    (addrs, min_ttl)
}
