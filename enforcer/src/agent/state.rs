//! The agent's kernel-side state and THE apply path.
//!
//! [`MapState`] owns the [`Maps`] handle and the bookkeeping of what the kernel maps hold. Every
//! change — a reload, a workload added or removed, pod churn, resolved addresses changing — is a
//! [`Plan`] (every live policy's mode, every entry, every cgroup mapping) handed to
//! [`MapState::apply`], which orders the writes so that no verdict flips twice:
//!
//! 1. modes of new policies and modes that become more permissive, and each policy's
//!    `POLICY_F_*` word (DNS steering, ungoverned) unless it loses `POLICY_F_UNGOVERNED`;
//! 2. ALLOW / DESTS upserts;
//! 3. WORKLOADS upserts, then removals (a cgroup only ever points at a policy that is complete);
//! 4. ALLOW / DESTS removals (learned entries of services or policies that are gone included);
//! 5. modes that become stricter, flags that lose `POLICY_F_UNGOVERNED`; removed policies' slots
//!    are reset (Unset fails closed, flags 0).
//!
//! Property (tested below with [`MemoryMaps`] judging after every single write): a destination
//! allowed before and after a change is never denied in between, and one denied before and after
//! is never allowed in between.
//!
//! DNS learning during a big apply: a learn that finds the maps held by an apply hands its entries
//! to the [`LearnQueue`]; the apply serves them between two of its writes (so the answer waits for
//! one write, not for the whole apply) and skips any of its own later writes that a served learn
//! made obsolete (a planned removal of a key that is now learned, an upsert whose value changed).
//! Learns of policies or services the plan removes are dropped, as the apply drops theirs. The
//! order of the apply's own writes, and so the property above, is unchanged.
//!
//! Lock order in the agent: the control lock (`tokio::sync::Mutex<Control>`, held for a whole
//! reload/recompute) -> `Mutex<MapState>` (held per apply, learn, sweep, counter read) -> the
//! view's `RwLock` (write only to swap in a new snapshot). Nothing takes an earlier lock while
//! holding a later one. The [`LearnQueue`]'s own lock is taken under `Mutex<MapState>` (by the
//! apply) or alone (by a learner), never the other way round.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use enforcer_common::{AllowValue, Mode, PolicyId, ServiceId, Settings};

use crate::{
    dataplane::{BootNs, DataplaneError, Maps},
    policy::{AllowEntry, DestEntry},
};

/// Everything that should be in the policy maps after a change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every live policy (the default one included) and its mode.
    pub modes: BTreeMap<PolicyId, Mode>,
    /// `POLICY_F_*` of the live policies (absent: 0).
    pub flags: BTreeMap<PolicyId, u32>,
    pub allow: BTreeMap<AllowEntry, AllowValue>,
    pub dests: BTreeMap<DestEntry, AllowValue>,
    /// cgroup id -> policy.
    pub workloads: BTreeMap<u64, PolicyId>,
    /// Every (policy, service) that exists after the change, whether or not it has registry
    /// entries (a wildcard service is only learned): learned entries of others are revoked.
    pub services: BTreeSet<(PolicyId, ServiceId)>,
}

impl Plan {
    /// The default policy alone, in `mode`, with `desired`'s entries (benchmarks, tools).
    pub fn default_policy(desired: &crate::policy::Desired, mode: Mode) -> Self {
        Self {
            modes: [(PolicyId::DEFAULT, mode)].into(),
            flags: [(PolicyId::DEFAULT, enforcer_common::POLICY_F_DNS_STEER)].into(),
            allow: desired.allow.clone(),
            dests: desired.dests.clone(),
            workloads: BTreeMap::new(),
            services: desired.services.iter().map(|s| (PolicyId::DEFAULT, s.id)).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyStats {
    pub upserts: usize,
    pub removals: usize,
    /// ALLOW entries in the kernel after the apply (registry + learned).
    pub total: usize,
}

/// One write the bookkeeping asks for: key, value, expiry (learned entries only).
type Upsert<K> = (K, AllowValue, Option<Instant>);

/// A map's content as two layers: `base` (what the registry compiles to, replaced wholesale) and
/// `learned` (entries from DNS answers, each with an expiry). The kernel map holds their union;
/// where both have a key the base value wins.
#[derive(Debug)]
pub struct Layered<K> {
    base: BTreeMap<K, AllowValue>,
    learned: BTreeMap<K, (AllowValue, Instant)>,
    in_map: BTreeMap<K, (AllowValue, Option<Instant>)>,
}

impl<K> Default for Layered<K> {
    fn default() -> Self {
        Self { base: BTreeMap::new(), learned: BTreeMap::new(), in_map: BTreeMap::new() }
    }
}

impl<K: Ord + Copy> Layered<K> {
    fn effective(&self, k: &K) -> Option<(AllowValue, Option<Instant>)> {
        match self.base.get(k) {
            Some(v) => Some((*v, None)),
            None => self.learned.get(k).map(|(v, t)| (*v, Some(*t))),
        }
    }

    /// Upserts and removals that make `in_map` equal to the union for `keys`.
    fn reconcile(&self, keys: impl IntoIterator<Item = K>) -> (Vec<Upsert<K>>, Vec<K>) {
        let (mut up, mut rm) = (Vec::new(), Vec::new());
        for k in keys {
            match (self.effective(&k), self.in_map.get(&k).copied()) {
                (Some((v, t)), cur) if cur != Some((v, t)) => up.push((k, v, t)),
                (None, Some(_)) => rm.push(k),
                _ => {}
            }
        }
        (up, rm)
    }

    pub fn in_map(&self) -> impl Iterator<Item = (&K, &AllowValue)> {
        self.in_map.iter().map(|(k, (v, _))| (k, v))
    }

    pub fn len(&self) -> usize {
        self.in_map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_map.is_empty()
    }

    pub fn learned(&self) -> &BTreeMap<K, (AllowValue, Instant)> {
        &self.learned
    }
}

/// Entries one DNS answer asks for (see [`LearnQueue`]).
pub struct LearnRequest {
    pub allow: Vec<(AllowEntry, AllowValue)>,
    pub dests: Vec<(DestEntry, AllowValue)>,
    /// The lifetime, counted from the moment the entries are written.
    pub life: Duration,
}

/// What a learn served by an apply returns: the expiry written, or why it failed.
pub type LearnResult = Result<Instant, DataplaneError>;

#[derive(Default)]
struct QueueState {
    applying: bool,
    next_id: u64,
    pending: Vec<(u64, LearnRequest)>,
    done: HashMap<u64, LearnResult>,
}

/// Learns waiting for the apply that holds the maps (see the module docs). Shared by the
/// [`MapState`] and the DNS bridge.
#[derive(Default)]
pub struct LearnQueue {
    state: Mutex<QueueState>,
    served: Condvar,
    /// `pending.len()`, read by the apply before each write without taking the lock.
    waiting: AtomicUsize,
}

impl LearnQueue {
    /// While an apply runs: queue `req`, wait until the apply served it and return the result.
    /// `Err(req)` when no apply runs (take the maps lock instead).
    pub fn submit(&self, req: LearnRequest) -> Result<LearnResult, LearnRequest> {
        let mut st = self.state.lock().expect("learn queue lock");
        if !st.applying {
            return Err(req);
        }
        let id = st.next_id;
        st.next_id += 1;
        st.pending.push((id, req));
        self.waiting.store(st.pending.len(), Ordering::Release);
        loop {
            if let Some(r) = st.done.remove(&id) {
                return Ok(r);
            }
            st = self.served.wait(st).expect("learn queue lock");
        }
    }

    fn set_applying(&self, on: bool) {
        self.state.lock().expect("learn queue lock").applying = on;
    }

    fn take(&self) -> Vec<(u64, LearnRequest)> {
        let mut st = self.state.lock().expect("learn queue lock");
        self.waiting.store(0, Ordering::Release);
        std::mem::take(&mut st.pending)
    }

    fn answer(&self, results: Vec<(u64, LearnResult)>) {
        if results.is_empty() {
            return;
        }
        self.state.lock().expect("learn queue lock").done.extend(results);
        self.served.notify_all();
    }
}

/// What survives the apply in progress: learns for anything else are dropped.
struct Live {
    modes: BTreeSet<PolicyId>,
    services: BTreeSet<(PolicyId, ServiceId)>,
    service_ids: BTreeSet<ServiceId>,
}

/// The agent's handle on the kernel maps, with what they hold.
pub struct MapState<M> {
    maps: M,
    allow: Layered<AllowEntry>,
    dests: Layered<DestEntry>,
    workloads: BTreeMap<u64, PolicyId>,
    modes: BTreeMap<PolicyId, Mode>,
    flags: BTreeMap<PolicyId, u32>,
    settings: Settings,
    queue: Arc<LearnQueue>,
    /// Set while an apply runs: it serves queued learns between its writes.
    live: Option<Live>,
}

impl<M: Maps> MapState<M> {
    /// Start from what the maps hold now: a previous daemon's registry entries stay as they are
    /// until the first apply (which is then a diff against reality), its learned entries keep
    /// their expiry, so a restart never denies what was allowed.
    pub fn adopt(maps: M) -> Result<Self, DataplaneError> {
        let c = maps.read()?;
        let mut allow = Layered::default();
        for (k, v) in c.allow {
            allow.base.insert(k, v);
            allow.in_map.insert(k, (v, None));
        }
        for (k, (v, exp)) in c.learned {
            let t = exp.to_instant();
            allow.learned.insert(k, (v, t));
            allow.in_map.insert(k, (v, Some(t)));
        }
        let mut dests = Layered::default();
        for (k, v) in c.dests {
            dests.base.insert(k, v);
            dests.in_map.insert(k, (v, None));
        }
        Ok(Self {
            maps,
            allow,
            dests,
            workloads: c.workloads,
            modes: c.modes,
            flags: c.policy_flags,
            settings: Settings::default(),
            queue: Arc::default(),
            live: None,
        })
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Where learners put their entries while an apply holds the maps.
    pub fn learn_queue(&self) -> Arc<LearnQueue> {
        self.queue.clone()
    }

    /// During an apply: serve the learns that are waiting (called before each write).
    fn serve_learns(&mut self) {
        if self.live.is_none() || self.queue.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        self.serve_all();
    }

    fn serve_all(&mut self) {
        let reqs = self.queue.take();
        if reqs.is_empty() {
            return;
        }
        let live = self.live.take();
        let mut results = Vec::with_capacity(reqs.len());
        for (id, mut r) in reqs {
            if let Some(l) = &live {
                r.allow.retain(|(k, v)| {
                    l.modes.contains(&k.policy_id) && l.services.contains(&(k.policy_id, v.service_id))
                });
                r.dests.retain(|(_, v)| l.service_ids.contains(&v.service_id));
            }
            let until = Instant::now() + r.life;
            results.push((id, self.learn(r.allow, r.dests, until).map(|()| until)));
        }
        self.live = live;
        self.queue.answer(results);
    }

    /// The write the apply planned for `k`, if a served learn has not made it obsolete.
    fn still_upsert<K: Ord + Copy>(layer: &Layered<K>, k: &K) -> Option<(AllowValue, Option<Instant>)> {
        let want = layer.effective(k)?;
        (layer.in_map.get(k) != Some(&want)).then_some(want)
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn allow(&self) -> &Layered<AllowEntry> {
        &self.allow
    }

    pub fn dests(&self) -> &Layered<DestEntry> {
        &self.dests
    }

    pub fn mode(&self, p: PolicyId) -> Option<Mode> {
        self.modes.get(&p).copied()
    }

    /// A policy's `POLICY_F_*` as written (0: none).
    pub fn policy_flags(&self, p: PolicyId) -> u32 {
        self.flags.get(&p).copied().unwrap_or(0)
    }

    pub fn workloads(&self) -> &BTreeMap<u64, PolicyId> {
        &self.workloads
    }

    /// Bring the maps to `plan`, in the order described at the top of this module. Learns that
    /// arrive meanwhile are served between its writes (see [`LearnQueue`]).
    pub fn apply(&mut self, plan: &Plan) -> Result<ApplyStats, DataplaneError> {
        self.queue.set_applying(true);
        let r = self.apply_plan(plan);
        // No more waiters from here on (learners take the maps lock themselves again); serve the
        // last ones.
        self.queue.set_applying(false);
        self.serve_all();
        self.live = None;
        r
    }

    /// `layer`'s reconcile of `keys`, [`PLAN_CHUNK`] keys at a time, serving the waiting learns
    /// before each chunk.
    fn reconcile_chunked<K: Ord + Copy>(
        &mut self,
        keys: &[K],
        layer: fn(&Self) -> &Layered<K>,
    ) -> (Vec<Upsert<K>>, Vec<K>) {
        let (mut up, mut rm) = (Vec::new(), Vec::new());
        for chunk in keys.chunks(PLAN_CHUNK) {
            self.serve_learns();
            let (u, r) = layer(self).reconcile(chunk.iter().copied());
            up.extend(u);
            rm.extend(r);
        }
        (up, rm)
    }

    fn apply_plan(&mut self, plan: &Plan) -> Result<ApplyStats, DataplaneError> {
        // Learned entries of services or policies that left: they go with the change.
        let mut live_services = plan.services.clone();
        live_services.extend(plan.allow.iter().map(|(e, v)| (e.policy_id, v.service_id)));
        let live_service_ids: BTreeSet<ServiceId> = live_services.iter().map(|(_, s)| *s).collect();
        self.live = Some(Live {
            modes: plan.modes.keys().copied().collect(),
            services: live_services.clone(),
            service_ids: live_service_ids.clone(),
        });
        self.allow.learned.retain(|k, (v, _)| {
            plan.modes.contains_key(&k.policy_id) && live_services.contains(&(k.policy_id, v.service_id))
        });
        self.dests.learned.retain(|_, (v, _)| live_service_ids.contains(&v.service_id));

        // Planning a big change takes a while too: waiting learns are served between its steps
        // (what they change is re-checked at each write).
        self.serve_learns();
        let allow_keys = keys_to_reconcile(&self.allow, &plan.allow);
        let wanted = plan.allow.len() + self.allow.learned.keys().filter(|k| !plan.allow.contains_key(k)).count();
        if wanted > self.maps.allow_capacity() {
            return Err(DataplaneError::Capacity {
                map: enforcer_common::map_names::ALLOW,
                wanted: plan.allow.len() + self.allow.learned.len(),
                capacity: self.maps.allow_capacity() as u32,
            });
        }
        self.serve_learns();
        self.allow.base = plan.allow.clone();
        self.serve_learns();
        self.dests.base = plan.dests.clone();
        let (allow_up, allow_rm) = self.reconcile_chunked(&allow_keys, |s| &s.allow);
        self.serve_learns();
        let dest_keys = keys_to_reconcile(&self.dests, &plan.dests);
        let (dest_up, dest_rm) = self.reconcile_chunked(&dest_keys, |s| &s.dests);
        self.serve_learns();
        let stats =
            ApplyStats { upserts: allow_up.len() + dest_up.len(), removals: allow_rm.len() + dest_rm.len(), total: 0 };

        // Per policy: its upserts and removals.
        let mut ups: BTreeMap<PolicyId, Vec<Upsert<AllowEntry>>> = BTreeMap::new();
        for u in allow_up {
            ups.entry(u.0.policy_id).or_default().push(u);
        }
        let mut rms: BTreeMap<PolicyId, Vec<AllowEntry>> = BTreeMap::new();
        for k in allow_rm {
            rms.entry(k.policy_id).or_default().push(k);
        }
        // cgroups that change policy: (cgroup, from, to, new mapping).
        let cgroups: BTreeSet<u64> = self.workloads.keys().chain(plan.workloads.keys()).copied().collect();
        let mut movers: Vec<(u64, PolicyId, PolicyId, Option<PolicyId>)> = Vec::new();
        for cg in cgroups {
            let (cur, new) = (self.workloads.get(&cg).copied(), plan.workloads.get(&cg).copied());
            if cur != new {
                movers.push((cg, cur.unwrap_or(PolicyId::DEFAULT), new.unwrap_or(PolicyId::DEFAULT), new));
            }
        }
        let policies: BTreeSet<PolicyId> = self
            .modes
            .keys()
            .chain(plan.modes.keys())
            .chain(self.flags.keys())
            .chain(ups.keys())
            .chain(rms.keys())
            .chain(movers.iter().flat_map(|(_, a, b, _)| [a, b]))
            .copied()
            .collect();
        let order = transition_order(&policies, &movers);

        let mut first_err = None;
        self.write_dest_upserts(dest_up, &mut first_err);
        for p in order {
            self.transition(
                p,
                plan.modes.get(&p).copied(),
                plan.flags.get(&p).copied().unwrap_or(0),
                ups.remove(&p).unwrap_or_default(),
                rms.remove(&p).unwrap_or_default(),
                &mut first_err,
            )?;
            // Now that `p` is complete, move the cgroups that go to it (their old policy has not
            // changed yet: they see before, then after).
            for (cg, _, to, mapping) in movers.iter().filter(|m| m.2 == p) {
                debug_assert_eq!(*to, p);
                match mapping {
                    Some(np) => {
                        self.maps.set_workload(*cg, *np)?;
                        self.workloads.insert(*cg, *np);
                    }
                    None => {
                        self.maps.remove_workload(*cg)?;
                        self.workloads.remove(cg);
                    }
                }
            }
        }
        for k in dest_rm {
            self.serve_learns();
            if self.dests.effective(&k).is_some() {
                continue; // learned meanwhile
            }
            match self.maps.remove_dest(&k) {
                Ok(()) => {
                    self.dests.in_map.remove(&k);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(ApplyStats { total: self.allow.len(), ..stats })
    }

    /// One policy from its old state to its new one (`mode`: `None` = the policy is gone): a
    /// more permissive mode first, upserts, removals, a stricter mode (or the reset slot) last.
    fn transition(
        &mut self,
        p: PolicyId,
        mode: Option<Mode>,
        flags: u32,
        ups: Vec<Upsert<AllowEntry>>,
        rms: Vec<AllowEntry>,
        first_err: &mut Option<DataplaneError>,
    ) -> Result<(), DataplaneError> {
        let cur = self.modes.get(&p).copied();
        // A gone policy's flags go to 0 with its mode, last.
        let flags = if mode.is_some() { flags } else { 0 };
        let cur_flags = self.policy_flags(p);
        let loses_ungoverned = cur_flags & !flags & enforcer_common::POLICY_F_UNGOVERNED != 0;
        if flags != cur_flags && !loses_ungoverned {
            self.set_flags(p, flags)?;
        }
        let target = mode.unwrap_or(Mode::Unset);
        let opening = cur.is_none() || target.permissiveness() > cur.unwrap_or(Mode::Unset).permissiveness();
        if mode.is_some() && opening && cur != mode {
            self.set_mode(p, target)?;
        }
        let failed = self.write_allow_upserts(ups, first_err);
        for k in rms {
            self.serve_learns();
            if self.allow.effective(&k).is_some() {
                continue; // learned meanwhile
            }
            match self.maps.remove_allow(&k) {
                Ok(()) => {
                    self.allow.in_map.remove(&k);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // Inserts that failed may fit now that removals made room.
        let still = self.write_allow_upserts(failed, &mut None);
        if !still.is_empty() && first_err.is_none() {
            *first_err = Some(DataplaneError::Capacity {
                map: enforcer_common::map_names::ALLOW,
                wanted: still.len(),
                capacity: self.maps.allow_capacity() as u32,
            });
        }
        if self.policy_flags(p) != flags {
            self.set_flags(p, flags)?;
        }
        match mode {
            Some(m) if self.modes.get(&p) != Some(&m) => self.set_mode(p, m)?,
            Some(_) => {}
            None => {
                if cur.is_some() {
                    self.maps.set_mode(p, Mode::Unset)?;
                    self.modes.remove(&p);
                }
            }
        }
        Ok(())
    }

    fn set_flags(&mut self, p: PolicyId, f: u32) -> Result<(), DataplaneError> {
        self.maps.set_policy_flags(p, f)?;
        if f == 0 {
            self.flags.remove(&p);
        } else {
            self.flags.insert(p, f);
        }
        Ok(())
    }

    fn set_mode(&mut self, p: PolicyId, m: Mode) -> Result<(), DataplaneError> {
        self.maps.set_mode(p, m)?;
        self.modes.insert(p, m);
        Ok(())
    }

    /// Writes upserts; returns those the kernel refused (their bookkeeping is left untouched, so
    /// the next apply retries them).
    fn write_allow_upserts(
        &mut self,
        ups: Vec<Upsert<AllowEntry>>,
        first_err: &mut Option<DataplaneError>,
    ) -> Vec<Upsert<AllowEntry>> {
        let mut failed = Vec::new();
        for (k, _, _) in ups {
            self.serve_learns();
            let Some((v, t)) = Self::still_upsert(&self.allow, &k) else { continue };
            match self.maps.upsert_allow(&k, v, t.map(BootNs::from_instant)) {
                Ok(()) => {
                    self.allow.in_map.insert(k, (v, t));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                    failed.push((k, v, t));
                }
            }
        }
        failed
    }

    fn write_dest_upserts(
        &mut self,
        ups: Vec<Upsert<DestEntry>>,
        first_err: &mut Option<DataplaneError>,
    ) -> Vec<Upsert<DestEntry>> {
        let mut failed = Vec::new();
        for (k, _, _) in ups {
            self.serve_learns();
            let Some((v, t)) = Self::still_upsert(&self.dests, &k) else { continue };
            match self.maps.upsert_dest(&k, v) {
                Ok(()) => {
                    self.dests.in_map.insert(k, (v, t));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                    failed.push((k, v, t));
                }
            }
        }
        failed
    }

    /// Put learned entries (from a DNS answer) into the maps until `expires` (an expiry never
    /// moves earlier); returns once the kernel holds them.
    pub fn learn(
        &mut self,
        allow: Vec<(AllowEntry, AllowValue)>,
        dests: Vec<(DestEntry, AllowValue)>,
        expires: Instant,
    ) -> Result<(), DataplaneError> {
        let mut keys = Vec::new();
        for (k, v) in allow {
            let e = self.allow.learned.entry(k).or_insert((v, expires));
            e.0 = v;
            e.1 = e.1.max(expires);
            keys.push(k);
        }
        let mut dkeys = Vec::new();
        for (k, v) in dests {
            let e = self.dests.learned.entry(k).or_insert((v, expires));
            e.1 = e.1.max(expires);
            dkeys.push(k);
        }
        if self.allow.len() + keys.len() > self.maps.allow_capacity() {
            let new = keys.iter().filter(|k| !self.allow.in_map.contains_key(k)).count();
            if self.allow.len() + new > self.maps.allow_capacity() {
                for k in &keys {
                    if !self.allow.in_map.contains_key(k) {
                        self.allow.learned.remove(k);
                    }
                }
                return Err(DataplaneError::Capacity {
                    map: enforcer_common::map_names::ALLOW,
                    wanted: self.allow.len() + new,
                    capacity: self.maps.allow_capacity() as u32,
                });
            }
        }
        let (up, _) = self.allow.reconcile(keys);
        let mut err = None;
        let failed = self.write_allow_upserts(up, &mut err);
        for (k, _, _) in &failed {
            self.allow.learned.remove(k);
        }
        let (dup, _) = self.dests.reconcile(dkeys);
        self.write_dest_upserts(dup, &mut None);
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Keep learned entries of `addrs` alive until at least `until` (connections to them are
    /// still open: Cilium's "zombies").
    pub fn extend_learned(&mut self, pred: impl Fn(&AllowEntry) -> bool, until: Instant) -> Result<(), DataplaneError> {
        let keys: Vec<AllowEntry> =
            self.allow.learned.iter_mut().filter(|(k, _)| pred(k)).map(|(k, _)| *k).collect::<Vec<_>>();
        for k in &keys {
            if let Some(e) = self.allow.learned.get_mut(k) {
                e.1 = e.1.max(until);
            }
        }
        let (up, _) = self.allow.reconcile(keys);
        let mut err = None;
        self.write_allow_upserts(up, &mut err);
        err.map_or(Ok(()), Err)
    }

    /// Remove learned entries that expired at `now`; returns how many ALLOW entries went.
    pub fn sweep(&mut self, now: Instant) -> Result<usize, DataplaneError> {
        let expired: Vec<AllowEntry> =
            self.allow.learned.iter().filter(|(_, (_, t))| *t <= now).map(|(k, _)| *k).collect();
        for k in &expired {
            self.allow.learned.remove(k);
        }
        let dexpired: Vec<DestEntry> =
            self.dests.learned.iter().filter(|(_, (_, t))| *t <= now).map(|(k, _)| *k).collect();
        for k in &dexpired {
            self.dests.learned.remove(k);
        }
        let (up, rm) = self.allow.reconcile(expired);
        let mut err = None;
        self.write_allow_upserts(up, &mut err);
        let n = rm.len();
        for k in rm {
            match self.maps.remove_allow(&k) {
                Ok(()) => {
                    self.allow.in_map.remove(&k);
                }
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        let (dup, drm) = self.dests.reconcile(dexpired);
        self.write_dest_upserts(dup, &mut None);
        for k in drm {
            if self.maps.remove_dest(&k).is_ok() {
                self.dests.in_map.remove(&k);
            }
        }
        err.map_or(Ok(n), Err)
    }

    /// Change the SETTINGS entry.
    pub fn update_settings(&mut self, f: impl FnOnce(&mut Settings)) -> Result<(), DataplaneError> {
        let mut s = self.settings;
        f(&mut s);
        self.maps.set_settings(&s)?;
        self.settings = s;
        Ok(())
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }
}

/// Keys whose planning is done between two chances for waiting learns.
const PLAN_CHUNK: usize = 1024;

/// Every key of `base`, `layer`'s map and its learned entries, once each, in order.
fn keys_to_reconcile<K: Ord + Copy>(layer: &Layered<K>, base: &BTreeMap<K, AllowValue>) -> Vec<K> {
    let mut keys: Vec<K> = base.keys().copied().collect();
    keys.extend(layer.in_map.keys().filter(|k| !base.contains_key(k)).copied());
    keys.extend(layer.learned.keys().filter(|k| !base.contains_key(k) && !layer.in_map.contains_key(k)).copied());
    keys.sort_unstable();
    keys
}

/// The order in which policies change: a policy that cgroups move *to* changes (completely)
/// before the policy they move *from*, so a moving cgroup sees its old policy as it was, then its
/// new policy as it will be. Cycles (cgroups moving both ways between two policies in one change)
/// are broken by id order; such a cgroup may see one side's other state for the duration of one
/// policy's writes.
fn transition_order(
    policies: &BTreeSet<PolicyId>,
    movers: &[(u64, PolicyId, PolicyId, Option<PolicyId>)],
) -> Vec<PolicyId> {
    // Kahn's algorithm over edges to -> from.
    let mut indegree: BTreeMap<PolicyId, usize> = policies.iter().map(|p| (*p, 0)).collect();
    let mut edges: BTreeMap<PolicyId, BTreeSet<PolicyId>> = BTreeMap::new();
    for (_, from, to, _) in movers {
        if from != to && edges.entry(*to).or_default().insert(*from) {
            *indegree.entry(*from).or_default() += 1;
        }
    }
    let mut order = Vec::with_capacity(indegree.len());
    let mut done = BTreeSet::new();
    while order.len() < indegree.len() {
        let next = indegree
            .iter()
            .find(|(p, d)| **d == 0 && !done.contains(*p))
            .or_else(|| indegree.iter().find(|(p, _)| !done.contains(*p)))
            .map(|(p, _)| *p)
            .expect("a policy is left");
        done.insert(next);
        order.push(next);
        for to in edges.get(&next).into_iter().flatten() {
            if let Some(d) = indegree.get_mut(to) {
                *d = d.saturating_sub(1);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests;
