//! The narrow handle between the agent's logic and the kernel maps.
//!
//! Everything the agent writes goes through [`Maps`]: the aya-backed [`super::Dataplane`] in
//! production, [`MemoryMaps`] in unit tests, so reload ordering, DNS learning, workload sync and id
//! allocation are tested without root. The trait is deliberately raw (one entry per call); the
//! ordering rules (more permissive mode before entries change, stricter after; add before remove)
//! live above it, in the agent's single apply path.

use std::collections::BTreeMap;

use enforcer_common::{AllowValue, Mode, PolicyId, Settings};

use super::DataplaneError;
use crate::policy::{AllowEntry, DestEntry};

/// A point on `CLOCK_BOOTTIME` in nanoseconds (what `bpf_ktime_get_boot_ns()` returns): the
/// expiry of a learned entry, meaningful to the kernel and across agent restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootNs(pub u64);

impl BootNs {
    /// Now, on `CLOCK_BOOTTIME`.
    pub fn now() -> Self {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid pointer to a timespec; CLOCK_BOOTTIME always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        Self(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// The boot-clock time of a monotonic `Instant` (both clocks advance together while running).
    pub fn from_instant(t: std::time::Instant) -> Self {
        let now_i = std::time::Instant::now();
        let now_b = Self::now().0;
        if t >= now_i {
            Self(now_b.saturating_add(t.duration_since(now_i).as_nanos() as u64))
        } else {
            Self(now_b.saturating_sub(now_i.duration_since(t).as_nanos() as u64))
        }
    }

    /// The monotonic `Instant` of this boot-clock time.
    pub fn to_instant(self) -> std::time::Instant {
        let now_i = std::time::Instant::now();
        let now_b = Self::now().0;
        if self.0 >= now_b {
            now_i + std::time::Duration::from_nanos(self.0 - now_b)
        } else {
            now_i.checked_sub(std::time::Duration::from_nanos(now_b - self.0)).unwrap_or(now_i)
        }
    }
}

/// What the kernel maps hold, read back (at start, to adopt a previous daemon's state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// Registry (base) entries.
    pub allow: BTreeMap<AllowEntry, AllowValue>,
    /// Learned (DNS) entries with their expiry.
    pub learned: BTreeMap<AllowEntry, (AllowValue, BootNs)>,
    pub dests: BTreeMap<DestEntry, AllowValue>,
    pub workloads: BTreeMap<u64, PolicyId>,
    /// Modes of the policy ids whose slot is set.
    pub modes: BTreeMap<PolicyId, Mode>,
    /// `POLICY_F_*` of the policy ids whose flags are not 0.
    pub policy_flags: BTreeMap<PolicyId, u32>,
}

/// Raw writes to the policy maps. Removing an entry that is not there is not an error.
pub trait Maps: Send {
    /// Insert or replace one ALLOW entry (an exact address or a CIDR: the implementation picks
    /// the kernel map). `expires`: a learned entry's end of life (`None`: a registry entry).
    fn upsert_allow(&mut self, e: &AllowEntry, v: AllowValue, expires: Option<BootNs>) -> Result<(), DataplaneError>;
    fn remove_allow(&mut self, e: &AllowEntry) -> Result<(), DataplaneError>;
    fn upsert_dest(&mut self, e: &DestEntry, v: AllowValue) -> Result<(), DataplaneError>;
    fn remove_dest(&mut self, e: &DestEntry) -> Result<(), DataplaneError>;
    fn set_mode(&mut self, policy: PolicyId, mode: Mode) -> Result<(), DataplaneError>;
    /// Map a cgroup (id) to a policy in WORKLOADS.
    fn set_workload(&mut self, cgroup: u64, policy: PolicyId) -> Result<(), DataplaneError>;
    fn remove_workload(&mut self, cgroup: u64) -> Result<(), DataplaneError>;
    /// A policy's `POLICY_F_*` word (DNS steering, ungoverned).
    fn set_policy_flags(&mut self, policy: PolicyId, flags: u32) -> Result<(), DataplaneError>;
    fn set_settings(&mut self, s: &Settings) -> Result<(), DataplaneError>;
    /// Everything the maps hold now.
    fn read(&self) -> Result<MapContents, DataplaneError>;
    /// Capacity of ALLOW entries (exact and CIDR together), for the capacity check before apply.
    fn allow_capacity(&self) -> usize;
}

/// An in-memory [`Maps`] that judges like the kernel programs do, for unit tests: a verdict
/// loop can run between every single write of a change.
#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    pub contents: MapContents,
    pub settings: Settings,
    /// Every write, in order (for tests asserting the ordering).
    pub log: Vec<String>,
    /// Fail the Nth next ALLOW insert (for partial-failure tests); `None`: never.
    pub fail_allow_insert_after: Option<usize>,
    pub capacity: usize,
}

impl MemoryMaps {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, ..Self::default() }
    }

    /// The verdict the kernel would give a connect from `cgroup_chain` (the cgroup and its
    /// ancestors, deepest first) to `addr:port/proto`: (allowed, service id).
    pub fn verdict(
        &self,
        cgroup_chain: &[u64],
        addr: std::net::IpAddr,
        port: u16,
        proto: u8,
    ) -> (bool, enforcer_common::ServiceId) {
        let policy =
            cgroup_chain.iter().find_map(|cg| self.contents.workloads.get(cg).copied()).unwrap_or(PolicyId::DEFAULT);
        let mode = self.contents.modes.get(&policy).copied().unwrap_or(Mode::Unset);
        if self.contents.policy_flags.get(&policy).is_some_and(|f| f & enforcer_common::POLICY_F_UNGOVERNED != 0) {
            return (true, enforcer_common::ServiceId::NONE);
        }
        let now = BootNs::now();
        let hit = |e: &AllowEntry| e.policy_id == policy && e.proto == proto && e.net.contains(&addr);
        let mut best: Option<(u8, AllowValue)> = None;
        for want_port in [port, enforcer_common::ANY_PORT] {
            for (e, v) in &self.contents.allow {
                if e.port == want_port && hit(e) && best.is_none_or(|(l, _)| e.net.prefix_len() > l) {
                    best = Some((e.net.prefix_len(), *v));
                }
            }
            for (e, (v, exp)) in &self.contents.learned {
                if e.port == want_port && hit(e) && *exp > now && best.is_none_or(|(l, _)| e.net.prefix_len() > l) {
                    best = Some((e.net.prefix_len(), *v));
                }
            }
            if best.is_some() {
                break;
            }
        }
        match best {
            Some((_, v)) => (true, v.service_id),
            None => (matches!(mode, Mode::AllowAny | Mode::Audit), enforcer_common::ServiceId::NONE),
        }
    }
}

impl Maps for MemoryMaps {
    fn upsert_allow(&mut self, e: &AllowEntry, v: AllowValue, expires: Option<BootNs>) -> Result<(), DataplaneError> {
        if let Some(n) = self.fail_allow_insert_after.as_mut() {
            if *n == 0 {
                return Err(DataplaneError::Capacity { map: "ALLOW", wanted: self.capacity + 1, capacity: 0 });
            }
            *n -= 1;
        }
        let present = self.contents.allow.contains_key(e) || self.contents.learned.contains_key(e);
        if !present && self.contents.allow.len() + self.contents.learned.len() >= self.capacity {
            return Err(DataplaneError::Capacity {
                map: "ALLOW",
                wanted: self.capacity + 1,
                capacity: self.capacity as u32,
            });
        }
        self.log.push(format!("allow+ {e}"));
        match expires {
            None => {
                self.contents.learned.remove(e);
                self.contents.allow.insert(*e, v);
            }
            Some(t) => {
                self.contents.allow.remove(e);
                self.contents.learned.insert(*e, (v, t));
            }
        }
        Ok(())
    }

    fn remove_allow(&mut self, e: &AllowEntry) -> Result<(), DataplaneError> {
        self.log.push(format!("allow- {e}"));
        self.contents.allow.remove(e);
        self.contents.learned.remove(e);
        Ok(())
    }

    fn upsert_dest(&mut self, e: &DestEntry, v: AllowValue) -> Result<(), DataplaneError> {
        self.contents.dests.insert(*e, v);
        Ok(())
    }

    fn remove_dest(&mut self, e: &DestEntry) -> Result<(), DataplaneError> {
        self.contents.dests.remove(e);
        Ok(())
    }

    fn set_mode(&mut self, policy: PolicyId, mode: Mode) -> Result<(), DataplaneError> {
        self.log.push(format!("mode {policy} {mode:?}"));
        if mode == Mode::Unset {
            self.contents.modes.remove(&policy);
        } else {
            self.contents.modes.insert(policy, mode);
        }
        Ok(())
    }

    fn set_workload(&mut self, cgroup: u64, policy: PolicyId) -> Result<(), DataplaneError> {
        self.log.push(format!("workload {cgroup} -> {policy}"));
        self.contents.workloads.insert(cgroup, policy);
        Ok(())
    }

    fn remove_workload(&mut self, cgroup: u64) -> Result<(), DataplaneError> {
        self.log.push(format!("workload {cgroup} removed"));
        self.contents.workloads.remove(&cgroup);
        Ok(())
    }

    fn set_policy_flags(&mut self, policy: PolicyId, flags: u32) -> Result<(), DataplaneError> {
        self.log.push(format!("flags {policy} {flags:#x}"));
        if flags == 0 {
            self.contents.policy_flags.remove(&policy);
        } else {
            self.contents.policy_flags.insert(policy, flags);
        }
        Ok(())
    }

    fn set_settings(&mut self, s: &Settings) -> Result<(), DataplaneError> {
        self.settings = *s;
        Ok(())
    }

    fn read(&self) -> Result<MapContents, DataplaneError> {
        Ok(self.contents.clone())
    }

    fn allow_capacity(&self) -> usize {
        self.capacity
    }
}
