//! DNS forwarder for enforced workloads.
//!
//! The BPF hooks steer enforced workloads' port-53 traffic (UDP and TCP) to this forwarder. It
//! forwards each query as-is to the configured upstreams and, when the query name belongs to a
//! registry host, puts the answer's A/AAAA addresses into the kernel allow map (via
//! [`DnsPolicy::learn`]) *before* the answer is released to the client, so the first `connect()`
//! after a lookup never races the map update.
//!
//! - `judge`: the name policy (every question judged; search-domain expansions; opcodes).
//! - `sanitize`: the query an enforcing forwarder sends upstream (allowed EDNS options only).
//! - `answer`: the pure parts (rebinding filter, CNAME chain walk, map lifetime).
//! - `upstream`: one exchange with one upstream over UDP or TCP (fresh socket, `SO_MARK`,
//!   answer validation).
//! - `server`: listeners, per-query policy, synthesized responses, statistics.
//! - `isolate`: what `enforcer run` changes in the command's mount namespace so that every
//!   resolver path (nscd, nss-resolve, musl, Go) ends in port-53 queries the kernel steers here.
//!
//! All DNS parsing and encoding is done with `hickory-proto`.

mod answer;
pub mod conns;
pub mod isolate;
mod judge;
mod metrics;
pub mod peer;
mod sanitize;
mod server;
mod upstream;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_rules;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use answer::is_rebinding_addr;
pub use judge::{BlockReason, NameMatch, Why};
pub use server::Forwarder;

/// The shortest map lifetime / re-resolution interval whatever the flags: a TTL-0 name is asked
/// at most once a second per name, and a learned entry never expires before its answer is used.
pub const MIN_TTL_FLOOR: Duration = Duration::from_secs(1);

/// What the forwarder does for the policy's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    /// REGISTRY_ONLY: unregistered names get [`Config::unknown_names`], queries are sanitized.
    Enforce,
    /// AUDIT: everything is forwarded; names REGISTRY_ONLY would refuse are reported.
    Audit,
    /// ALLOW_ANY: everything is forwarded untouched.
    Open,
}

/// What happened to a name outside the registry (reported once per name by the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Answered REFUSED by the forwarder.
    Refused,
    /// Answered NXDOMAIN by the forwarder.
    Nxdomain,
    /// `--unknown-names answer`: forwarded and answered, nothing allowed.
    Answered,
    /// AUDIT: forwarded and answered; REGISTRY_ONLY would have refused it.
    AuditWouldRefuse,
    /// A registered name's answer had private/loopback/link-local addresses: dropped from it.
    RebindingDropped,
    /// A registered name's addresses could not be written to the kernel map: SERVFAIL.
    LearnFailed,
}

impl Action {
    pub fn label(self) -> &'static str {
        match self {
            Action::Refused => "refused",
            Action::Nxdomain => "nxdomain",
            Action::Answered => "answered-not-allowed",
            Action::AuditWouldRefuse => "audit-would-refuse",
            Action::RebindingDropped => "rebinding-dropped",
            Action::LearnFailed => "learn-failed",
        }
    }
}

/// A name the forwarder did not answer as asked (or, in AUDIT, would not have).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The name as the workload meant it (for a search-domain expansion, before the domain).
    pub name: String,
    /// The name queried (differs from `name` for an expansion).
    pub queried: String,
    pub qtype: String,
    pub action: Action,
    pub why: Why,
    /// The socket that asked (to name its workload); None in tests.
    pub client: Option<peer::Client>,
}

/// What the forwarder asks of the registry/dataplane. Implemented by the agent; tests use an
/// in-memory impl.
pub trait DnsPolicy: Send + Sync + 'static {
    /// The registry service whose host matches `qname` (lowercase, no trailing dot): exact host,
    /// or `*.suffix` wildcard on a label boundary (`--allow` hosts count as exact hosts). None:
    /// not in the registry.
    fn match_name(&self, qname: &str) -> Option<NameMatch>;
    /// The registry lists this exact address (STATIC endpoint / addresses) — exempts it from the
    /// rebinding filter.
    fn explicitly_listed(&self, ip: IpAddr) -> bool;
    /// The mode queries are judged under.
    fn mode(&self) -> PolicyMode;
    /// Put these addresses into the kernel allow map for `service_id` for `life`, counted from
    /// the moment of the write (after any wait for a lock). Returns the expiry written, only once
    /// the map holds them. Err => the client gets SERVFAIL.
    ///
    /// Called from a blocking-pool thread (`spawn_blocking`), so it may block.
    fn learn(
        &self,
        service_id: enforcer_common::ServiceId,
        name: &str,
        addrs: &[IpAddr],
        life: Duration,
    ) -> Result<Instant, String>;
    /// [`DnsPolicy::learn`] if it can be done at once without waiting for a lock (None: it
    /// cannot; the forwarder then calls `learn` on the blocking pool). Default: None.
    fn try_learn(
        &self,
        _service_id: enforcer_common::ServiceId,
        _name: &str,
        _addrs: &[IpAddr],
        _life: Duration,
    ) -> Option<Result<Instant, String>> {
        None
    }
    /// An unregistered name was answered with these addresses (nothing was allowed). Default: ignore.
    fn observe(&self, _name: &str, _addrs: &[std::net::IpAddr]) {}
    /// A name was refused (or answered without allowing anything, or in AUDIT would have been
    /// refused). Called for every query; the agent reports each name once. Default: ignore.
    fn report(&self, _r: &Refusal) {}
}

/// What an enforcing forwarder does with a name that is not in the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnknownNames {
    /// Answer NXDOMAIN without asking the upstream.
    Nxdomain,
    /// Answer REFUSED without asking the upstream (the default: the name never leaves the host).
    #[default]
    Refused,
    /// Forward and answer, but learn nothing (the connect is then decided by the kernel).
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
    /// The workloads' resolver search list (resolv.conf `search`/`domain`, `--dns-search`):
    /// lowercase, no trailing dot. Expansions of refused names are refused too.
    pub search: Vec<String>,
    /// Forward EDNS CLIENT-SUBNET options (`--dns-forward-ecs`); off: stripped.
    pub forward_ecs: bool,
    /// Map lifetime floor for short TTLs (TTL 0 gets this), before `grace`; never below
    /// [`MIN_TTL_FLOOR`]. A learned entry outlives the release of its answer by at least this.
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
            search: Vec::new(),
            forward_ecs: false,
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
    /// Queries answered NXDOMAIN/REFUSED by policy (every reason below).
    pub blocked: AtomicU64,
    /// Of `blocked`: a single question outside the registry.
    pub refused_not_in_registry: AtomicU64,
    /// Of `blocked`: a search-domain expansion of an unregistered name.
    pub refused_search_expansion: AtomicU64,
    /// Of `blocked`: a multi-question query with an unregistered question.
    pub refused_multi_question: AtomicU64,
    /// Of `blocked`: an opcode other than QUERY.
    pub refused_opcode: AtomicU64,
    /// Of `blocked`: NXDOMAIN for a search-domain expansion of a registered name (not a refusal).
    pub search_miss: AtomicU64,
    /// AUDIT: queries REGISTRY_ONLY would have refused (forwarded).
    pub audit_would_refuse: AtomicU64,
    /// EDNS options and query records not forwarded (sanitized queries).
    pub stripped: AtomicU64,
    /// From an upstream answer's arrival to its addresses being in the map (answers that learned).
    pub learn_delay: Histogram,
    /// A learned entry had to be renewed before its answer was released (the learn took longer
    /// than the grace): the entry still outlives the release by the floor.
    pub relearned: AtomicU64,
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
    /// The counter of a block reason.
    pub fn refused(&self, r: BlockReason) -> &AtomicU64 {
        match r {
            BlockReason::NotInRegistry => &self.refused_not_in_registry,
            BlockReason::SearchExpansion => &self.refused_search_expansion,
            BlockReason::MultiQuestion => &self.refused_multi_question,
            BlockReason::Opcode => &self.refused_opcode,
            BlockReason::SearchMiss => &self.search_miss,
        }
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The search list of a resolv.conf (`search` or `domain`, the last such line wins, as in
/// glibc): lowercase, no trailing dot.
pub fn search_domains(resolv_conf: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in resolv_conf.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("search") | Some("domain") => {
                out = f
                    .take_while(|w| !w.starts_with('#') && !w.starts_with(';'))
                    .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                    .filter(|d| !d.is_empty())
                    .collect();
            }
            _ => {}
        }
    }
    out
}

/// A lock-free latency histogram: 10 µs buckets up to 1 ms, 1 ms buckets up to 100 ms, one
/// overflow bucket. Quantiles are bucket upper bounds (10 µs / 1 ms resolution).
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<AtomicU64>,
}

const FINE_BUCKETS: usize = 100; // 10 µs each, up to 1 ms
const COARSE_BUCKETS: usize = 99; // 1 ms each, 1..100 ms

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: (0..FINE_BUCKETS + COARSE_BUCKETS + 1).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl Histogram {
    fn bucket(d: Duration) -> usize {
        let us = d.as_micros() as usize;
        if us < 1000 { us / 10 } else { (FINE_BUCKETS + us / 1000 - 1).min(FINE_BUCKETS + COARSE_BUCKETS) }
    }

    fn upper(i: usize) -> Duration {
        if i < FINE_BUCKETS {
            Duration::from_micros(10 * (i as u64 + 1))
        } else if i < FINE_BUCKETS + COARSE_BUCKETS {
            Duration::from_millis((i - FINE_BUCKETS) as u64 + 2)
        } else {
            Duration::MAX
        }
    }

    pub fn record(&self, d: Duration) {
        self.buckets[Self::bucket(d)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1); None when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper(i));
            }
        }
        None
    }

    /// Forget everything recorded (benchmarks, between phases).
    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for us in [5u64, 15, 25, 35, 2500] {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(30)));
        assert_eq!(h.quantile(0.99), Some(Duration::from_millis(3)));
        h.record(Duration::from_secs(1));
        assert_eq!(h.quantile(1.0), Some(Duration::MAX));
    }
}
