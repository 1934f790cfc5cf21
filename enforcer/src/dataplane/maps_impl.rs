//! [`Maps`] on the real kernel maps.

use aya::maps::lpm_trie::Key;
use enforcer_common::{AllowValue, DestKey, Mode, PolicyId, Settings, WorkloadValue, map_names};

use super::{BootNs, Dataplane, DataplaneError, MapContents, Maps, map_err, read_trie};
use crate::policy::{AllowEntry, DestEntry};

impl Maps for Dataplane {
    fn upsert_allow(&mut self, e: &AllowEntry, v: AllowValue, _expires: Option<BootNs>) -> Result<(), DataplaneError> {
        let (plen, k) = e.key();
        self.allow.insert(&Key::new(plen, k), v, 0).map_err(map_err(map_names::ALLOW, format!("insert {e}")))
    }

    fn remove_allow(&mut self, e: &AllowEntry) -> Result<(), DataplaneError> {
        let (plen, k) = e.key();
        match self.allow.remove(&Key::new(plen, k)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(map_err(map_names::ALLOW, format!("remove {e}"))(err)),
        }
    }

    fn upsert_dest(&mut self, e: &DestEntry, v: AllowValue) -> Result<(), DataplaneError> {
        let (plen, k) = e.key();
        self.dests.insert(&Key::new(plen, k), v, 0).map_err(map_err(map_names::DESTS, format!("insert {}", e.net)))
    }

    fn remove_dest(&mut self, e: &DestEntry) -> Result<(), DataplaneError> {
        let (plen, k) = e.key();
        match self.dests.remove(&Key::new(plen, k)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(map_err(map_names::DESTS, format!("remove {}", e.net))(err)),
        }
    }

    fn set_mode(&mut self, policy: PolicyId, mode: Mode) -> Result<(), DataplaneError> {
        self.modes.set(policy.get(), mode.raw(), 0).map_err(map_err(map_names::MODES, format!("set {policy}")))
    }

    fn set_workload(&mut self, cgroup: u64, policy: PolicyId) -> Result<(), DataplaneError> {
        self.workloads
            .insert(cgroup, WorkloadValue { policy_id: policy, flags: 0 }, 0)
            .map_err(map_err(map_names::WORKLOADS, format!("insert cgroup {cgroup}")))
    }

    fn remove_workload(&mut self, cgroup: u64) -> Result<(), DataplaneError> {
        match self.workloads.remove(&cgroup) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(map_names::WORKLOADS, format!("remove cgroup {cgroup}"))(e)),
        }
    }

    fn set_settings(&mut self, s: &Settings) -> Result<(), DataplaneError> {
        self.settings.set(0, s, 0).map_err(map_err(map_names::SETTINGS, "set"))
    }

    fn read(&self) -> Result<MapContents, DataplaneError> {
        let mut c = MapContents {
            allow: read_trie(&self.allow, map_names::ALLOW, AllowEntry::from_key)?,
            dests: read_trie(&self.dests, map_names::DESTS, |p, k: &DestKey| DestEntry::from_key(p, k))?,
            ..MapContents::default()
        };
        c.workloads = self.workloads.iter().filter_map(|r| r.ok()).map(|(k, v)| (k, v.policy_id)).collect();
        for i in 0..enforcer_common::MAX_POLICIES {
            if let Ok(raw) = self.modes.get(&i, 0)
                && let (Ok(m), Some(p)) = (Mode::try_from(raw), PolicyId::new(i))
                && m != Mode::Unset
            {
                c.modes.insert(p, m);
            }
        }
        Ok(c)
    }

    fn allow_capacity(&self) -> usize {
        enforcer_common::ALLOW_MAX_ENTRIES as usize
    }
}
