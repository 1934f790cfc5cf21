//! DNS forwarder for enforced workloads.
//!
//! The BPF hooks steer enforced workloads' port-53 traffic (UDP and TCP) to this forwarder. It
//! forwards each query as-is to the configured upstreams and, when the query name belongs to a
//! registry host, puts the answer's A/AAAA addresses into the kernel allow map (via
//! [`DnsPolicy::learn`]) *before* the answer is released to the client, so the first `connect()`
//! after a lookup never races the map update.
//!
//! - `answer`: the pure parts (rebinding filter, CNAME chain walk, map lifetime).
//! - `upstream`: one exchange with one upstream over UDP or TCP (fresh socket, `SO_MARK`,
//!   answer validation).
//! - `server`: listeners, per-query policy, synthesized responses, statistics.
//!
//! All DNS parsing and encoding is done with `hickory-proto`.

mod answer;
mod metrics;
mod server;
mod upstream;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use answer::is_rebinding_addr;
pub use server::Forwarder;

/// What the forwarder asks of the registry/dataplane. Implemented by the agent; tests use an
/// in-memory impl.
pub trait DnsPolicy: Send + Sync + 'static {
    /// The registry service whose host matches `qname` (lowercase, no trailing dot): exact host,
    /// or `*.suffix` wildcard on a label boundary. None: not in the registry.
    fn match_name(&self, qname: &str) -> Option<enforcer_common::ServiceId>;
    /// The registry lists this exact address (STATIC endpoint / addresses) — exempts it from the
    /// rebinding filter.
    fn explicitly_listed(&self, ip: IpAddr) -> bool;
    /// True under REGISTRY_ONLY (unknown names get [`Config::unknown_names`]); false under
    /// ALLOW_ANY/AUDIT (unknown names are forwarded untouched).
    fn enforcing(&self) -> bool;
    /// Put these addresses into the kernel allow map for `service_id` for `ttl`. Returns only
    /// once the map holds them. Err => the client gets SERVFAIL.
    ///
    /// Called from a blocking-pool thread (`spawn_blocking`), so it may block.
    fn learn(
        &self,
        service_id: enforcer_common::ServiceId,
        name: &str,
        addrs: &[IpAddr],
        ttl: Duration,
    ) -> Result<(), String>;
    /// An unregistered name was answered with these addresses (nothing was allowed). Default: ignore.
    fn observe(&self, _name: &str, _addrs: &[std::net::IpAddr]) {}
}

/// What an enforcing forwarder does with a name that is not in the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnknownNames {
    /// Answer NXDOMAIN without asking the upstream.
    Nxdomain,
    /// Answer REFUSED without asking the upstream.
    Refused,
    /// Forward and answer, but learn nothing (the connect is then decided by the kernel).
    #[default]
    AnswerNoAllow,
}

/// Forwarder configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen addresses (UDP and TCP on each). Port 0 picks a port; the first address's port is
    /// reused for the other port-0 addresses when possible.
    pub listen: Vec<SocketAddr>,
    /// Upstream servers, tried in order; a timeout/failure moves to the next.
    pub upstreams: Vec<SocketAddr>,
    /// Per upstream attempt; an answer (or SERVFAIL) comes within `timeout * upstreams.len()`.
    pub timeout: Duration,
    /// What enforcing mode does with names that are not in the registry.
    pub unknown_names: UnknownNames,
    /// Map lifetime floor for short TTLs (TTL 0 gets this), before `grace`.
    pub min_ttl: Duration,
    /// Added to the (clamped) answer TTL for the map lifetime.
    pub grace: Duration,
    /// Map lifetime ceiling, before `grace`.
    pub max_ttl: Duration,
    /// `SO_MARK` set on upstream sockets (the BPF hooks skip marked sockets). EPERM is ignored
    /// (logged once).
    pub upstream_mark: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)],
            upstreams: Vec::new(),
            timeout: Duration::from_secs(2),
            unknown_names: UnknownNames::default(),
            min_ttl: Duration::from_secs(5),
            grace: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            upstream_mark: None,
        }
    }
}

/// Forwarder counters (monotonic).
#[derive(Debug, Default)]
pub struct Stats {
    /// Queries received over UDP (including malformed ones).
    pub queries_udp: AtomicU64,
    /// Queries received over TCP (including malformed ones).
    pub queries_tcp: AtomicU64,
    /// Upstream answers released to clients.
    pub answered: AtomicU64,
    /// Addresses handed to a successful `learn`.
    pub learned_addrs: AtomicU64,
    /// Unknown names answered NXDOMAIN/REFUSED by policy.
    pub blocked: AtomicU64,
    /// SERVFAIL responses synthesized (upstream failure, learn failure, overload).
    pub servfail: AtomicU64,
    /// Upstream attempts that timed out.
    pub upstream_timeouts: AtomicU64,
    /// Answer addresses removed by the rebinding filter.
    pub rebinding_dropped: AtomicU64,
    /// `learn` returned an error (or did not return in time).
    pub learn_failures: AtomicU64,
    /// FORMERR responses to malformed queries (addition to the brief's list).
    pub formerr: AtomicU64,
    /// Queries refused with SERVFAIL because too many were in flight (addition; also counted in
    /// `servfail`).
    pub overloaded: AtomicU64,
}

impl Stats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
