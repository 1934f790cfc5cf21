//! Resolving registry hosts with hickory-resolver, and keeping them fresh: every name is
//! re-resolved on its own TTL (clamped to a floor and a ceiling); failures back off and keep the
//! last good addresses for a bounded grace period; when a record changes, the old addresses stay
//! allowed for a short grace after their TTL (clients may still hold them).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_resolver::{
    Resolver, TokioResolver,
    config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig},
    name_server::TokioConnectionProvider,
};
use tokio::{sync::watch, time::Instant};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("reading the system DNS configuration: {0}")]
    Config(#[source] hickory_resolver::ResolveError),
}

/// How names are kept fresh.
#[derive(Clone, Debug)]
pub struct RefreshConfig {
    /// Shortest refresh interval (a TTL of 0 or 1 s does not hot-loop).
    pub floor: Duration,
    /// Longest refresh interval.
    pub ceiling: Duration,
    /// How long addresses that disappeared from an answer stay allowed after their TTL.
    pub change_grace: Duration,
    /// How long the last good addresses stay allowed while lookups keep failing.
    pub failure_grace: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            floor: Duration::from_secs(5),
            ceiling: Duration::from_secs(3600),
            change_grace: Duration::from_secs(5),
            failure_grace: Duration::from_secs(300),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// One name's state.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedName {
    /// Addresses of the last good answer.
    pub addrs: Vec<IpAddr>,
    /// Their TTL as answered.
    pub ttl: Duration,
    /// When the last good answer stops being current (its clamped TTL), unless refreshed.
    pub expires: Option<Instant>,
    /// While lookups fail: the last good addresses stay usable until then.
    pub keep_until: Option<Instant>,
    /// Addresses a newer answer dropped, usable until their deadline.
    pub previous: Vec<(IpAddr, Instant)>,
    pub last_error: Option<String>,
    pub failures: u32,
    pub next_refresh: Option<Instant>,
}

impl ResolvedName {
    /// Every address the entry still lists (current and graced), whatever the time: what the last
    /// recompute may have put into the maps. A change here must trigger a recompute.
    fn listed(&self) -> BTreeSet<IpAddr> {
        let current = self.last_error.is_none() || self.keep_until.is_some();
        self.addrs.iter().filter(|_| current).chain(self.previous.iter().map(|(a, _)| a)).copied().collect()
    }

    fn empty() -> Self {
        Self {
            addrs: vec![],
            ttl: Duration::ZERO,
            expires: None,
            keep_until: None,
            previous: vec![],
            last_error: None,
            failures: 0,
            next_refresh: None,
        }
    }

    /// Addresses that should be allowed at `now`, each with the time it stops being allowed
    /// (None: until the next refresh).
    pub fn usable(&self, now: Instant) -> Vec<(IpAddr, Option<Instant>)> {
        let mut out: Vec<(IpAddr, Option<Instant>)> = Vec::new();
        let current_ok = match (self.last_error.is_some(), self.keep_until) {
            (true, Some(k)) => now < k,
            (true, None) => false,
            (false, _) => !self.addrs.is_empty(),
        };
        if current_ok {
            let until = if self.last_error.is_some() { self.keep_until } else { None };
            out.extend(self.addrs.iter().map(|a| (*a, until)));
        }
        for (a, until) in &self.previous {
            if now < *until && !out.iter().any(|(b, _)| b == a) {
                out.push((*a, Some(*until)));
            }
        }
        out
    }

    /// True while the last good addresses are kept past their TTL because lookups fail.
    pub fn stale(&self, now: Instant) -> bool {
        self.last_error.is_some() && self.keep_until.is_some_and(|k| now < k)
    }
}

/// What a lookup answers: the addresses of a name and the smallest TTL among them, or an error.
pub type LookupResult = Result<(Vec<IpAddr>, Duration), String>;

/// A lookup: the addresses (A and AAAA) of a name and the smallest TTL among them.
pub trait Lookup: Send + Sync + 'static {
    fn lookup<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = LookupResult> + Send + 'a>>;
}

/// hickory-resolver, with its cache off so every refresh asks the upstream.
pub struct HickoryLookup {
    inner: TokioResolver,
}

impl HickoryLookup {
    /// Upstreams from `upstreams`, or the host's resolv.conf when empty.
    pub fn new(upstreams: &[SocketAddr], timeout: Duration) -> Result<Self, ResolveError> {
        let mut builder = if upstreams.is_empty() {
            Resolver::builder_tokio().map_err(ResolveError::Config)?
        } else {
            let mut group = NameServerConfigGroup::new();
            for u in upstreams {
                group.merge(NameServerConfigGroup::from_ips_clear(&[u.ip()], u.port(), true));
            }
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.cache_size = 0;
        opts.timeout = timeout;
        opts.attempts = 1;
        Ok(Self { inner: builder.build() })
    }
}

impl Lookup for HickoryLookup {
    fn lookup<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = LookupResult> + Send + 'a>> {
        Box::pin(async move {
            // Trailing dot: registry hosts are fully qualified, no search-domain expansion.
            let fqdn = format!("{}.", name.trim_end_matches('.'));
            let lookup = self.inner.lookup_ip(fqdn).await.map_err(|e| e.to_string())?;
            let ttl = lookup.valid_until().saturating_duration_since(std::time::Instant::now());
            let mut ips: Vec<IpAddr> = lookup.iter().collect();
            ips.sort();
            ips.dedup();
            Ok((ips, ttl))
        })
    }
}

#[derive(Default, Debug)]
pub struct RefreshStats {
    pub lookups: AtomicU64,
    pub failures: AtomicU64,
    pub changes: AtomicU64,
}

/// Keeps a set of names resolved. Cloning shares the same state.
#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RefreshConfig,
    lookup: Arc<dyn Lookup>,
    table: RwLock<BTreeMap<String, ResolvedName>>,
    tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    changed: watch::Sender<u64>,
    stats: RefreshStats,
}

impl Refresher {
    pub fn new(cfg: RefreshConfig, lookup: Arc<dyn Lookup>) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                cfg,
                lookup,
                table: RwLock::new(BTreeMap::new()),
                tasks: Mutex::new(HashMap::new()),
                changed,
                stats: RefreshStats::default(),
            }),
        }
    }

    /// Track exactly `names`: new ones are resolved before this returns (concurrently, each
    /// bounded by the lookup's timeout) and then refreshed in the background; dropped ones stop.
    pub async fn set_names(&self, names: &BTreeSet<String>) {
        let new: Vec<String> = {
            let mut tasks = self.inner.tasks.lock().expect("tasks lock");
            let mut table = self.inner.table.write().expect("table lock");
            tasks.retain(|name, handle| {
                let keep = names.contains(name);
                if !keep {
                    handle.abort();
                    table.remove(name);
                }
                keep
            });
            names.iter().filter(|n| !tasks.contains_key(*n)).cloned().collect()
        };
        let mut first = tokio::task::JoinSet::new();
        for name in &new {
            let inner = self.inner.clone();
            let name = name.clone();
            first.spawn(async move {
                let next = inner.resolve_once(&name).await;
                (name, next)
            });
        }
        while let Some(Ok((name, next))) = first.join_next().await {
            let inner = self.inner.clone();
            let task_name = name.clone();
            let handle = tokio::spawn(async move { inner.refresh_loop(task_name, next).await });
            self.inner.tasks.lock().expect("tasks lock").insert(name, handle);
        }
        self.inner.changed.send_modify(|v| *v += 1);
    }

    pub fn snapshot(&self) -> BTreeMap<String, ResolvedName> {
        self.inner.table.read().expect("table lock").clone()
    }

    /// Bumped whenever a name's usable addresses change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    pub fn stats(&self) -> &RefreshStats {
        &self.inner.stats
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.values() {
                t.abort();
            }
        }
    }
}

impl Inner {
    /// The refresh interval for an answer's TTL: never under [`crate::dns::MIN_TTL_FLOOR`]
    /// whatever the configuration (no hot loop on TTL 0), the floor winning over a smaller
    /// ceiling.
    fn clamp(&self, ttl: Duration) -> Duration {
        let floor = self.cfg.floor.max(crate::dns::MIN_TTL_FLOOR);
        ttl.max(floor).min(self.cfg.ceiling.max(floor))
    }

    /// One lookup; updates the table; returns when to look again.
    async fn resolve_once(&self, name: &str) -> Instant {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let res = self.lookup.lookup(name).await;
        let now = Instant::now();
        let mut table = self.table.write().expect("table lock");
        let entry = table.entry(name.to_string()).or_insert_with(ResolvedName::empty);
        let before = entry.listed();
        let next = match res {
            Ok((addrs, ttl)) => {
                let life = self.clamp(ttl);
                // Addresses that left the answer stay usable until the old TTL + grace.
                let old_deadline = entry.expires.unwrap_or(now).max(now) + self.cfg.change_grace;
                for a in &entry.addrs {
                    if !addrs.contains(a) {
                        entry.previous.push((*a, old_deadline));
                    }
                }
                entry.previous.retain(|(a, until)| now < *until && !addrs.contains(a));
                if !addrs.is_empty() || entry.addrs.is_empty() {
                    entry.addrs = addrs;
                }
                entry.ttl = ttl;
                entry.expires = Some(now + life);
                entry.keep_until = None;
                entry.last_error = None;
                entry.failures = 0;
                now + life
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                entry.failures += 1;
                // The grace starts with the first failure of a streak and is not renewed by later
                // ones (keep_until is cleared when it ends).
                if entry.failures == 1 {
                    entry.keep_until = Some(entry.expires.unwrap_or(now).max(now) + self.cfg.failure_grace);
                }
                tracing::warn!(
                    name,
                    failures = entry.failures,
                    "DNS lookup failed: {e}; keeping the last good addresses until the grace period ends"
                );
                entry.last_error = Some(e);
                let backoff = self
                    .cfg
                    .backoff_initial
                    .saturating_mul(1 << (entry.failures - 1).min(16))
                    .min(self.cfg.backoff_max);
                now + backoff
            }
        };
        entry.previous.retain(|(_, until)| now < *until);
        // Wake in time to drop addresses whose grace ends before the next lookup.
        let wake = entry
            .previous
            .iter()
            .map(|(_, u)| *u)
            .chain(entry.keep_until.filter(|_| entry.last_error.is_some()))
            .filter(|u| *u > now)
            .fold(next, |a, b| a.min(b));
        entry.next_refresh = Some(next);
        if entry.keep_until.is_some_and(|k| now >= k) && entry.last_error.is_some() {
            // The failure grace is over: the last good addresses go.
            entry.keep_until = None;
        }
        let after = entry.listed();
        drop(table);
        if before != after {
            self.stats.changes.fetch_add(1, Ordering::Relaxed);
            self.changed.send_modify(|v| *v += 1);
        }
        if wake < next { wake } else { next }
    }

    async fn refresh_loop(self: Arc<Self>, name: String, mut at: Instant) {
        loop {
            tokio::time::sleep_until(at).await;
            let due = self.table.read().expect("table lock").get(&name).and_then(|e| e.next_refresh).unwrap_or(at);
            if Instant::now() < due {
                // Woke only to expire graced addresses.
                self.expire_graced(&name);
                let next_wake = self.table.read().expect("table lock").get(&name).map(|e| {
                    e.previous
                        .iter()
                        .map(|(_, u)| *u)
                        .chain(e.keep_until.filter(|_| e.last_error.is_some()))
                        .filter(|u| *u > Instant::now())
                        .fold(due, |a, b| a.min(b))
                });
                at = next_wake.unwrap_or(due);
                continue;
            }
            at = self.resolve_once(&name).await;
        }
    }

    fn expire_graced(&self, name: &str) {
        let now = Instant::now();
        let mut table = self.table.write().expect("table lock");
        let Some(e) = table.get_mut(name) else { return };
        let before = e.listed();
        e.previous.retain(|(_, u)| now < *u);
        if e.keep_until.is_some_and(|k| now >= k) && e.last_error.is_some() {
            e.keep_until = None;
        }
        let changed = before != e.listed();
        drop(table);
        if changed {
            self.changed.send_modify(|v| *v += 1);
        }
    }
}

/// One-shot resolution (kept for callers that need no refresh).
pub struct HostResolver {
    inner: HickoryLookup,
}

impl HostResolver {
    pub fn from_system() -> Result<Self, ResolveError> {
        Ok(Self { inner: HickoryLookup::new(&[], Duration::from_secs(5))? })
    }

    pub async fn resolve_all(
        &self,
        names: impl IntoIterator<Item = String>,
    ) -> (std::collections::HashMap<String, Vec<IpAddr>>, Vec<String>) {
        let mut out = std::collections::HashMap::new();
        let mut errors = Vec::new();
        for name in names {
            match self.inner.lookup(&name).await {
                Ok((ips, _)) => {
                    out.insert(name, ips);
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        (out, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted lookup: each name answers from a queue; the last answer repeats.
    struct Scripted {
        answers: Mutex<HashMap<String, Vec<LookupResult>>>,
    }

    impl Lookup for Scripted {
        fn lookup<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = LookupResult> + Send + 'a>> {
            let mut m = self.answers.lock().unwrap();
            let q = m.get_mut(name).expect("scripted name");
            let a = if q.len() > 1 { q.remove(0) } else { q[0].clone() };
            Box::pin(async move { a })
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg() -> RefreshConfig {
        RefreshConfig {
            floor: Duration::from_secs(2),
            ceiling: Duration::from_secs(60),
            change_grace: Duration::from_secs(3),
            failure_grace: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
        }
    }

    fn usable(r: &Refresher, name: &str) -> BTreeSet<IpAddr> {
        r.snapshot()[name].usable(Instant::now()).into_iter().map(|(a, _)| a).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn follows_changed_records_with_grace_for_old_addresses() {
        let s = Scripted {
            answers: Mutex::new(HashMap::from([(
                "a.test".to_string(),
                vec![
                    Ok((vec![ip("192.0.2.1")], Duration::from_secs(10))),
                    Ok((vec![ip("192.0.2.2")], Duration::from_secs(10))),
                ],
            )])),
        };
        let r = Refresher::new(cfg(), Arc::new(s));
        r.set_names(&BTreeSet::from(["a.test".to_string()])).await;
        let mut changes = r.subscribe();
        changes.borrow_and_update();
        assert_eq!(usable(&r, "a.test"), BTreeSet::from([ip("192.0.2.1")]));
        // The refresh happens at the TTL (10 s): both usable during the change grace (3 s).
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert!(changes.has_changed().unwrap(), "the new address is signalled");
        changes.borrow_and_update();
        assert_eq!(usable(&r, "a.test"), BTreeSet::from([ip("192.0.2.1"), ip("192.0.2.2")]));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(usable(&r, "a.test"), BTreeSet::from([ip("192.0.2.2")]));
        // The old address leaving must be signalled too, or the maps would keep it.
        assert!(changes.has_changed().unwrap(), "the expiry of the old address is signalled");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_keep_last_good_for_the_grace() {
        let s = Scripted {
            answers: Mutex::new(HashMap::from([(
                "b.test".to_string(),
                vec![Ok((vec![ip("198.51.100.7")], Duration::from_secs(0))), Err("SERVFAIL".to_string())],
            )])),
        };
        let r = Refresher::new(cfg(), Arc::new(s));
        r.set_names(&BTreeSet::from(["b.test".to_string()])).await;
        // TTL 0 is floored to 2 s: no hot loop.
        assert_eq!(r.stats().lookups.load(Ordering::Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(1_900)).await;
        assert_eq!(r.stats().lookups.load(Ordering::Relaxed), 1);
        // After the first failure (t=2) the address is kept for failure_grace (10 s past expiry).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let snap = r.snapshot();
        assert!(snap["b.test"].last_error.is_some());
        assert!(snap["b.test"].stale(Instant::now()));
        assert_eq!(usable(&r, "b.test"), BTreeSet::from([ip("198.51.100.7")]));
        // Backoff 1, 2, 4, 4...: a handful of lookups in 7 s, not hundreds.
        let n = r.stats().lookups.load(Ordering::Relaxed);
        assert!((3..=5).contains(&n), "lookups {n}");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(usable(&r, "b.test").is_empty(), "grace over");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_floor_still_asks_at_most_once_a_second() {
        let s = Scripted {
            answers: Mutex::new(HashMap::from([(
                "z.test".to_string(),
                vec![Ok((vec![ip("198.51.100.9")], Duration::ZERO))],
            )])),
        };
        let cfg = RefreshConfig { floor: Duration::ZERO, ceiling: Duration::ZERO, ..cfg() };
        let r = Refresher::new(cfg, Arc::new(s));
        r.set_names(&BTreeSet::from(["z.test".to_string()])).await;
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        let n = r.stats().lookups.load(Ordering::Relaxed);
        assert!((10..=12).contains(&n), "TTL 0 with floor 0: {n} lookups in 10.5 s (bounded by the 1 s minimum)");
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_names_stop() {
        let s = Scripted {
            answers: Mutex::new(HashMap::from([(
                "c.test".to_string(),
                vec![Ok((vec![ip("203.0.113.5")], Duration::from_secs(5)))],
            )])),
        };
        let r = Refresher::new(cfg(), Arc::new(s));
        r.set_names(&BTreeSet::from(["c.test".to_string()])).await;
        r.set_names(&BTreeSet::new()).await;
        assert!(r.snapshot().is_empty());
        let n = r.stats().lookups.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(r.stats().lookups.load(Ordering::Relaxed), n);
    }
}
