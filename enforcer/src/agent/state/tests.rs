//! The apply path against an in-memory kernel that is judged after every single write.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use enforcer_common::{AllowValue, Mode, PROTO_TCP, PolicyId, ServiceId, Settings};

use super::{MapState, Plan};
use crate::{
    dataplane::{BootNs, DataplaneError, MapContents, Maps, MemoryMaps},
    policy::{AllowEntry, DestEntry},
};

/// A MemoryMaps that runs `check` after every write (the verdict loop of the property test).
struct Judged {
    inner: MemoryMaps,
    check: Box<dyn FnMut(&MemoryMaps) + Send>,
}

impl Judged {
    fn after(&mut self, r: Result<(), DataplaneError>) -> Result<(), DataplaneError> {
        (self.check)(&self.inner);
        r
    }
}

impl Maps for Judged {
    fn upsert_allow(&mut self, e: &AllowEntry, v: AllowValue, t: Option<BootNs>) -> Result<(), DataplaneError> {
        let r = self.inner.upsert_allow(e, v, t);
        self.after(r)
    }
    fn remove_allow(&mut self, e: &AllowEntry) -> Result<(), DataplaneError> {
        let r = self.inner.remove_allow(e);
        self.after(r)
    }
    fn upsert_dest(&mut self, e: &DestEntry, v: AllowValue) -> Result<(), DataplaneError> {
        self.inner.upsert_dest(e, v)
    }
    fn remove_dest(&mut self, e: &DestEntry) -> Result<(), DataplaneError> {
        self.inner.remove_dest(e)
    }
    fn set_mode(&mut self, p: PolicyId, m: Mode) -> Result<(), DataplaneError> {
        let r = self.inner.set_mode(p, m);
        self.after(r)
    }
    fn set_workload(&mut self, cg: u64, p: PolicyId) -> Result<(), DataplaneError> {
        let r = self.inner.set_workload(cg, p);
        self.after(r)
    }
    fn remove_workload(&mut self, cg: u64) -> Result<(), DataplaneError> {
        let r = self.inner.remove_workload(cg);
        self.after(r)
    }
    fn set_policy_flags(&mut self, p: PolicyId, f: u32) -> Result<(), DataplaneError> {
        let r = self.inner.set_policy_flags(p, f);
        self.after(r)
    }
    fn set_settings(&mut self, s: &Settings) -> Result<(), DataplaneError> {
        self.inner.set_settings(s)
    }
    fn read(&self) -> Result<MapContents, DataplaneError> {
        self.inner.read()
    }
    fn allow_capacity(&self) -> usize {
        self.inner.allow_capacity()
    }
}

/// xorshift: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CGROUPS: [u64; 4] = [101, 102, 103, 104];
const PORTS: [u16; 2] = [80, 443];

fn addr(i: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, i])
}

fn pid(n: u32) -> PolicyId {
    PolicyId::new(n).unwrap()
}

fn sid(n: u32) -> ServiceId {
    ServiceId::new(n).unwrap()
}

fn random_entries(rng: &mut Rng, plan: &mut Plan, p: PolicyId) {
    plan.allow.retain(|e, _| e.policy_id != p);
    for a in 1..=6u8 {
        for port in PORTS {
            if rng.below(2) == 0 {
                let e = AllowEntry { policy_id: p, net: addr(a).into(), port, proto: PROTO_TCP };
                plan.allow.insert(e, AllowValue::new(sid(u32::from(a)), 0));
            }
        }
    }
}

/// The next change, of the kinds users make: a reload (every policy's entries and modes may
/// change), plus possibly a workload added (unmapped cgroups move to it), a workload removed (its
/// cgroups fall back to the default policy) and a pod started in an existing workload.
fn next_plan(rng: &mut Rng, cur: &Plan) -> Plan {
    let modes = [Mode::AllowAny, Mode::RegistryOnly, Mode::Audit, Mode::RegistryOnly];
    let mut plan = cur.clone();
    plan.modes.entry(PolicyId::DEFAULT).or_insert(Mode::RegistryOnly);
    let live: Vec<PolicyId> = plan.modes.keys().copied().collect();
    for p in &live {
        if rng.below(2) == 0 {
            plan.modes.insert(*p, modes[rng.below(4) as usize]);
        }
        if rng.below(2) == 0 {
            random_entries(rng, &mut plan, *p);
        }
    }
    let unmapped: Vec<u64> = CGROUPS.iter().copied().filter(|cg| !plan.workloads.contains_key(cg)).collect();
    let removed = if rng.below(3) == 0 {
        live.iter().copied().filter(|p| !p.is_default()).nth(rng.below(3) as usize)
    } else {
        None
    };
    if let Some(q) = removed {
        plan.modes.remove(&q);
        plan.allow.retain(|e, _| e.policy_id != q);
        plan.workloads.retain(|_, p| *p != q);
    }
    let free: Vec<PolicyId> = (1..=3).map(pid).filter(|p| !plan.modes.contains_key(p) && Some(*p) != removed).collect();
    if let (Some(p), false) = (free.first().copied(), unmapped.is_empty())
        && rng.below(2) == 0
    {
        plan.modes.insert(p, modes[rng.below(4) as usize]);
        random_entries(rng, &mut plan, p);
        plan.workloads.insert(unmapped[rng.below(unmapped.len() as u64) as usize], p);
    }
    let unmapped: Vec<u64> = CGROUPS.iter().copied().filter(|cg| !plan.workloads.contains_key(cg)).collect();
    let existing: Vec<PolicyId> =
        plan.modes.keys().copied().filter(|p| !p.is_default() && cur.modes.contains_key(p)).collect();
    if !unmapped.is_empty() && !existing.is_empty() && rng.below(2) == 0 {
        let p = existing[rng.below(existing.len() as u64) as usize];
        plan.workloads.insert(unmapped[rng.below(unmapped.len() as u64) as usize], p);
    }
    plan
}

type Verdicts = BTreeMap<(u64, u8, u16), bool>;

fn verdicts(m: &MemoryMaps) -> Verdicts {
    let mut out = BTreeMap::new();
    for cg in CGROUPS.into_iter().chain([999]) {
        for a in 1..=7u8 {
            for port in PORTS {
                out.insert((cg, a, port), m.verdict(&[cg], addr(a), port, PROTO_TCP).0);
            }
        }
    }
    out
}

#[test]
fn no_verdict_flips_twice_across_100_random_changes() {
    use std::sync::{Arc, Mutex};
    // (before, after) of the change in progress; the check compares every intermediate state.
    let window: Arc<Mutex<Option<(Verdicts, Verdicts)>>> = Arc::default();
    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let (w, bad) = (window.clone(), wrong.clone());
    let judged = Judged {
        inner: MemoryMaps::new(10_000),
        check: Box::new(move |m| {
            if let Some((before, after)) = w.lock().unwrap().as_ref() {
                for (k, now) in verdicts(m) {
                    if before[&k] == after[&k] && now != before[&k] {
                        bad.lock().unwrap().push(format!(
                            "{k:?}: {} in between; cgroup policy now {:?}, modes {:?}, last write {:?}",
                            if now { "allowed" } else { "denied" },
                            m.contents.workloads.get(&k.0),
                            m.contents.modes,
                            m.log.last()
                        ));
                    }
                }
            }
        }),
    };
    let mut st = MapState::adopt(judged).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    let mut plan = Plan::default();
    for _ in 0..100 {
        plan = next_plan(&mut rng, &plan);
        // What the kernel would say after: apply to a scratch copy first.
        let mut scratch = MapState::adopt(st.maps().inner.clone()).unwrap();
        scratch.apply(&plan).unwrap();
        let before = verdicts(&st.maps().inner);
        let after = verdicts(scratch.maps());
        checked += before.iter().filter(|(k, v)| after[k] == **v).count();
        *window.lock().unwrap() = Some((before, after.clone()));
        st.apply(&plan).unwrap();
        *window.lock().unwrap() = None;
        assert_eq!(verdicts(&st.maps().inner), after);
    }
    assert!(checked > 1000, "the loop judged too little to mean anything: {checked}");
    let wrong = wrong.lock().unwrap();
    assert!(wrong.is_empty(), "{} wrong verdicts, first: {:?}", wrong.len(), wrong.first());
}

#[test]
fn mode_goes_before_entries_when_opening_and_after_when_closing() {
    let mut st = MapState::adopt(MemoryMaps::new(100)).unwrap();
    let e = AllowEntry { policy_id: PolicyId::DEFAULT, net: addr(1).into(), port: 80, proto: PROTO_TCP };
    let mut plan = Plan::default();
    plan.modes.insert(PolicyId::DEFAULT, Mode::RegistryOnly);
    plan.allow.insert(e, AllowValue::new(sid(1), 0));
    st.apply(&plan).unwrap();
    st.maps_mut().log.clear();
    // Open: ALLOW_ANY and the entry goes.
    let open = Plan { modes: [(PolicyId::DEFAULT, Mode::AllowAny)].into(), ..Plan::default() };
    st.apply(&open).unwrap();
    assert_eq!(st.maps().log.first().map(String::as_str), Some("mode policy 0 AllowAny"), "{:?}", st.maps().log);
    st.maps_mut().log.clear();
    // Close again: the entry comes back before REGISTRY_ONLY.
    st.apply(&plan).unwrap();
    assert_eq!(st.maps().log.last().map(String::as_str), Some("mode policy 0 RegistryOnly"), "{:?}", st.maps().log);
}

#[test]
fn removed_policy_is_unmapped_before_its_entries_go_and_its_slot_is_reset() {
    let mut st = MapState::adopt(MemoryMaps::new(100)).unwrap();
    let e = AllowEntry { policy_id: pid(2), net: addr(1).into(), port: 80, proto: PROTO_TCP };
    let mut plan = Plan::default();
    plan.modes.insert(PolicyId::DEFAULT, Mode::RegistryOnly);
    plan.modes.insert(pid(2), Mode::RegistryOnly);
    plan.allow.insert(e, AllowValue::new(sid(1), 0));
    plan.workloads.insert(7, pid(2));
    st.apply(&plan).unwrap();
    st.maps_mut().log.clear();
    let gone = Plan { modes: [(PolicyId::DEFAULT, Mode::RegistryOnly)].into(), ..Plan::default() };
    st.apply(&gone).unwrap();
    let log = &st.maps().log;
    let unmap = log.iter().position(|l| l == "workload 7 removed").unwrap();
    let remove = log.iter().position(|l| l.starts_with("allow- ")).unwrap();
    assert!(unmap < remove, "{log:?}");
    assert_eq!(log.last().map(String::as_str), Some("mode policy 2 Unset"));
    assert_eq!(st.mode(pid(2)), None);
}

#[test]
fn learned_entries_expire_and_go_with_their_service() {
    let mut st = MapState::adopt(MemoryMaps::new(100)).unwrap();
    let base = AllowEntry { policy_id: PolicyId::DEFAULT, net: addr(1).into(), port: 80, proto: PROTO_TCP };
    let mut plan = Plan::default();
    plan.modes.insert(PolicyId::DEFAULT, Mode::RegistryOnly);
    plan.allow.insert(base, AllowValue::new(sid(1), 0));
    st.apply(&plan).unwrap();
    let t0 = Instant::now();
    let learned = AllowEntry { net: addr(2).into(), ..base };
    st.learn(vec![(learned, AllowValue::new(sid(1), 0))], vec![], t0 + Duration::from_secs(30)).unwrap();
    assert!(st.maps().verdict(&[1], addr(2), 80, PROTO_TCP).0);
    // A reload that keeps service 1 keeps its learned address.
    st.apply(&plan).unwrap();
    assert!(st.maps().verdict(&[1], addr(2), 80, PROTO_TCP).0);
    assert_eq!(st.sweep(t0 + Duration::from_secs(10)).unwrap(), 0);
    assert_eq!(st.sweep(t0 + Duration::from_secs(31)).unwrap(), 1);
    assert!(!st.maps().verdict(&[1], addr(2), 80, PROTO_TCP).0);
    // Learned again, then service 1 leaves the registry: its learned entry leaves with it.
    st.learn(vec![(learned, AllowValue::new(sid(1), 0))], vec![], t0 + Duration::from_secs(300)).unwrap();
    let without = Plan { modes: plan.modes.clone(), ..Plan::default() };
    st.apply(&without).unwrap();
    assert!(!st.maps().verdict(&[1], addr(2), 80, PROTO_TCP).0, "a removed service's learned addresses are revoked");
}

#[test]
fn adopting_a_previous_daemons_maps_keeps_learned_entries_and_their_expiry() {
    let mut st = MapState::adopt(MemoryMaps::new(100)).unwrap();
    let e = AllowEntry { policy_id: PolicyId::DEFAULT, net: addr(3).into(), port: 443, proto: PROTO_TCP };
    let plan = Plan {
        modes: [(PolicyId::DEFAULT, Mode::RegistryOnly)].into(),
        allow: [(AllowEntry { port: 80, ..e }, AllowValue::new(sid(4), 0))].into(),
        ..Plan::default()
    };
    st.apply(&plan).unwrap();
    st.learn(vec![(e, AllowValue::new(sid(4), 0))], vec![], Instant::now() + Duration::from_secs(60)).unwrap();
    let kernel = st.maps().clone();
    let mut restarted = MapState::adopt(kernel).unwrap();
    restarted.apply(&plan).unwrap();
    assert!(restarted.maps().verdict(&[1], addr(3), 443, PROTO_TCP).0, "still allowed right after the restart");
    let left = restarted.allow().learned().get(&e).map(|(_, t)| t.saturating_duration_since(Instant::now()));
    assert!(left.is_some_and(|d| d > Duration::from_secs(50)), "{left:?}");
}

#[test]
fn over_capacity_is_refused_before_any_write() {
    let mut st = MapState::adopt(MemoryMaps::new(3)).unwrap();
    let mut plan = Plan { modes: [(PolicyId::DEFAULT, Mode::RegistryOnly)].into(), ..Plan::default() };
    for a in 1..=4 {
        let e = AllowEntry { policy_id: PolicyId::DEFAULT, net: addr(a).into(), port: 80, proto: PROTO_TCP };
        plan.allow.insert(e, AllowValue::new(sid(1), 0));
    }
    let err = st.apply(&plan).unwrap_err();
    assert!(err.to_string().contains("capacity"), "{err}");
    assert!(st.maps().log.is_empty(), "nothing was written: {:?}", st.maps().log);
}

#[test]
fn learned_entries_of_a_wildcard_service_survive_reloads_that_keep_it() {
    // A wildcard service has no registry entries at all: only what DNS answers add.
    let mut st = MapState::adopt(MemoryMaps::new(100)).unwrap();
    let plan = Plan {
        modes: [(PolicyId::DEFAULT, Mode::RegistryOnly)].into(),
        services: [(PolicyId::DEFAULT, sid(9))].into(),
        ..Plan::default()
    };
    st.apply(&plan).unwrap();
    let e = AllowEntry { policy_id: PolicyId::DEFAULT, net: addr(5).into(), port: 443, proto: PROTO_TCP };
    st.learn(vec![(e, AllowValue::new(sid(9), 0))], vec![], Instant::now() + Duration::from_secs(60)).unwrap();
    st.apply(&plan).unwrap();
    assert!(st.maps().verdict(&[1], addr(5), 443, PROTO_TCP).0, "kept across a reload that keeps the service");
    let without = Plan { services: Default::default(), ..plan };
    st.apply(&without).unwrap();
    assert!(!st.maps().verdict(&[1], addr(5), 443, PROTO_TCP).0, "revoked with the service");
}

#[test]
fn policy_flags_follow_the_plan_and_a_gone_policys_flags_are_reset() {
    use enforcer_common::{POLICY_F_DNS_STEER, POLICY_F_UNGOVERNED};
    let mut st = MapState::adopt(MemoryMaps::new(100)).unwrap();
    let plan = Plan {
        modes: [(PolicyId::DEFAULT, Mode::AllowAny), (pid(2), Mode::RegistryOnly)].into(),
        flags: [(PolicyId::DEFAULT, POLICY_F_UNGOVERNED), (pid(2), POLICY_F_DNS_STEER)].into(),
        workloads: [(7, pid(2))].into(),
        ..Plan::default()
    };
    st.apply(&plan).unwrap();
    assert_eq!(st.policy_flags(PolicyId::DEFAULT), POLICY_F_UNGOVERNED);
    assert_eq!(st.policy_flags(pid(2)), POLICY_F_DNS_STEER);
    // The ungoverned default passes whatever its entries; the governed cgroup is judged.
    assert!(st.maps().verdict(&[9], addr(1), 80, PROTO_TCP).0);
    assert!(!st.maps().verdict(&[7], addr(1), 80, PROTO_TCP).0);
    // Adopted as they are by a restarted daemon.
    let restarted = MapState::adopt(st.maps().clone()).unwrap();
    assert_eq!(restarted.policy_flags(pid(2)), POLICY_F_DNS_STEER);
    // The default becomes governed (stricter): its flags change at the end of its transition,
    // and cgroup 7 moves to it only once it is complete.
    st.maps_mut().log.clear();
    let governed = Plan {
        modes: [(PolicyId::DEFAULT, Mode::RegistryOnly)].into(),
        flags: [(PolicyId::DEFAULT, POLICY_F_DNS_STEER)].into(),
        ..Plan::default()
    };
    st.apply(&governed).unwrap();
    let log = &st.maps().log;
    let flags = log.iter().position(|l| l == "flags policy 0 0x1").unwrap_or_else(|| panic!("{log:?}"));
    let unmap = log.iter().position(|l| l == "workload 7 removed").unwrap();
    assert!(flags < unmap, "{log:?}");
    assert_eq!(st.policy_flags(pid(2)), 0, "a gone policy's flags are reset: {log:?}");
    assert!(log.contains(&"flags policy 2 0x0".to_string()), "{log:?}");
}

/// MemoryMaps whose first ALLOW upsert waits until a learner has queued its request, so the
/// learn is served in the middle of the apply.
struct WaitsForLearner {
    inner: MemoryMaps,
    queue: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<super::LearnQueue>>>,
    waited: bool,
}

impl Maps for WaitsForLearner {
    fn upsert_allow(&mut self, e: &AllowEntry, v: AllowValue, t: Option<BootNs>) -> Result<(), DataplaneError> {
        if !self.waited && t.is_none() {
            self.waited = true;
            let q = self.queue.get().expect("queue set");
            let deadline = Instant::now() + Duration::from_secs(10);
            // Queued now, or already queued and served by an earlier step of this apply.
            while q.waiting.load(std::sync::atomic::Ordering::Acquire) == 0
                && q.state.lock().expect("learn queue lock").next_id == 0
            {
                assert!(Instant::now() < deadline, "the learner never queued");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.inner.upsert_allow(e, v, t)
    }
    fn remove_allow(&mut self, e: &AllowEntry) -> Result<(), DataplaneError> {
        self.inner.remove_allow(e)
    }
    fn upsert_dest(&mut self, e: &DestEntry, v: AllowValue) -> Result<(), DataplaneError> {
        self.inner.upsert_dest(e, v)
    }
    fn remove_dest(&mut self, e: &DestEntry) -> Result<(), DataplaneError> {
        self.inner.remove_dest(e)
    }
    fn set_mode(&mut self, p: PolicyId, m: Mode) -> Result<(), DataplaneError> {
        self.inner.set_mode(p, m)
    }
    fn set_workload(&mut self, cg: u64, p: PolicyId) -> Result<(), DataplaneError> {
        self.inner.set_workload(cg, p)
    }
    fn remove_workload(&mut self, cg: u64) -> Result<(), DataplaneError> {
        self.inner.remove_workload(cg)
    }
    fn set_policy_flags(&mut self, p: PolicyId, f: u32) -> Result<(), DataplaneError> {
        self.inner.set_policy_flags(p, f)
    }
    fn set_settings(&mut self, s: &Settings) -> Result<(), DataplaneError> {
        self.inner.set_settings(s)
    }
    fn read(&self) -> Result<MapContents, DataplaneError> {
        self.inner.read()
    }
    fn allow_capacity(&self) -> usize {
        self.inner.allow_capacity()
    }
}

#[test]
fn a_learn_during_an_apply_is_served_between_its_writes_and_not_undone_by_it() {
    let queue = std::sync::Arc::new(std::sync::OnceLock::new());
    let maps = WaitsForLearner { inner: MemoryMaps::new(1000), queue: queue.clone(), waited: true };
    let mut st = MapState::adopt(maps).unwrap();
    queue.set(st.learn_queue()).ok().unwrap();
    let e = |p: PolicyId, a: u8| AllowEntry { policy_id: p, net: addr(a).into(), port: 443, proto: PROTO_TCP };
    // Before: address 1 listed statically (service 1); wildcard service 2; policy 2 with service 3.
    let mut before = Plan {
        modes: [(PolicyId::DEFAULT, Mode::RegistryOnly), (pid(2), Mode::RegistryOnly)].into(),
        services: [(PolicyId::DEFAULT, sid(2)), (pid(2), sid(3))].into(),
        ..Plan::default()
    };
    before.allow.insert(e(PolicyId::DEFAULT, 1), AllowValue::new(sid(1), 0));
    st.apply(&before).unwrap();
    // After: address 1 no longer listed (a planned removal), 100 new entries, policy 2 gone.
    let mut after = Plan {
        modes: [(PolicyId::DEFAULT, Mode::RegistryOnly)].into(),
        services: [(PolicyId::DEFAULT, sid(2))].into(),
        ..Plan::default()
    };
    for a in 100..200u8 {
        after.allow.insert(e(PolicyId::DEFAULT, a), AllowValue::new(sid(1), 0));
    }
    st.maps_mut().waited = false;
    let q = st.learn_queue();
    let learner = std::thread::spawn(move || {
        // The wildcard service's name now resolves to address 1; policy 2 learns it too.
        let mut req = super::LearnRequest {
            allow: vec![
                (e(PolicyId::DEFAULT, 1), AllowValue::new(sid(2), 0)),
                (e(pid(2), 1), AllowValue::new(sid(3), 0)),
            ],
            dests: vec![],
            life: Duration::from_secs(60),
        };
        loop {
            match q.submit(req) {
                Ok(r) => return r,
                Err(back) => req = back,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let t0 = Instant::now();
    st.apply(&after).unwrap();
    let until = learner.join().unwrap().expect("served");
    assert!(until > t0 + Duration::from_secs(59), "the lifetime starts when written");
    let m = &st.maps().inner;
    assert!(m.verdict(&[1], addr(1), 443, PROTO_TCP).0, "the learned address survived the planned removal");
    assert!(!st.allow().in_map().any(|(k, _)| k.policy_id == pid(2)), "the removed policy learns nothing");
    for a in 100..200u8 {
        assert!(m.verdict(&[1], addr(a), 443, PROTO_TCP).0, "the plan is complete: {a}");
    }
    assert_eq!(st.allow().learned().len(), 1, "{:?}", st.allow().learned());
}
