//! Stable policy ids, allocated by policy name.
//!
//! A workload (or scope) keeps its id for as long as it exists, so adding one in the middle of a
//! sorted list never moves another's cgroups onto foreign entries. An id is handed out again only
//! after the apply that removed every kernel entry referencing it has succeeded.

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::{MAX_POLICIES, PolicyId};

#[derive(Debug, Default)]
pub struct PolicyIds {
    by_name: BTreeMap<String, PolicyId>,
    /// Removed, waiting for the apply that clears their kernel entries.
    quarantine: BTreeSet<PolicyId>,
}

#[derive(Debug, thiserror::Error)]
#[error("{wanted} workload policies exceed the {max} the kernel's MODES map holds (MAX_POLICIES - 1)")]
pub struct TooManyPolicies {
    pub wanted: usize,
    pub max: u32,
}

impl PolicyIds {
    /// Keep the ids of `names` (allocating for new ones, the lowest free id first) and drop the
    /// rest into quarantine. Returns name -> id.
    pub fn assign<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, PolicyId>, TooManyPolicies> {
        let names: BTreeSet<&str> = names.into_iter().collect();
        if names.len() >= MAX_POLICIES as usize {
            return Err(TooManyPolicies { wanted: names.len(), max: MAX_POLICIES - 1 });
        }
        let gone: Vec<String> = self.by_name.keys().filter(|n| !names.contains(n.as_str())).cloned().collect();
        for n in gone {
            if let Some(id) = self.by_name.remove(&n) {
                self.quarantine.insert(id);
            }
        }
        let mut used: BTreeSet<PolicyId> = self.by_name.values().copied().collect();
        used.extend(self.quarantine.iter().copied());
        let mut next = 1;
        for n in names {
            if self.by_name.contains_key(n) {
                continue;
            }
            let id = loop {
                let id =
                    PolicyId::new(next).ok_or(TooManyPolicies { wanted: used.len() + 1, max: MAX_POLICIES - 1 })?;
                next += 1;
                if !used.contains(&id) {
                    break id;
                }
            };
            used.insert(id);
            self.by_name.insert(n.to_string(), id);
        }
        Ok(self.by_name.clone())
    }

    /// A new name that should get `id` if it is free (the id a previous daemon gave it, as the
    /// kernel's WORKLOADS map shows: a restart then keeps every cgroup on its policy).
    pub fn prefer(&mut self, name: &str, id: PolicyId) {
        if id.is_default() || self.by_name.contains_key(name) || self.quarantine.contains(&id) {
            return;
        }
        if self.by_name.values().all(|v| *v != id) {
            self.by_name.insert(name.to_string(), id);
        }
    }

    /// The apply that dropped the quarantined ids' entries succeeded: they may be reused.
    pub fn released(&mut self) {
        self.quarantine.clear();
    }

    pub fn get(&self, name: &str) -> Option<PolicyId> {
        self.by_name.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_with_their_names_and_are_reused_only_after_release() {
        let mut ids = PolicyIds::default();
        let a = ids.assign(["b", "d"]).unwrap();
        // "a" and "c" sort before and between: b and d keep theirs.
        let b = ids.assign(["a", "b", "c", "d"]).unwrap();
        assert_eq!(a["b"], b["b"]);
        assert_eq!(a["d"], b["d"]);
        assert_ne!(b["a"], b["c"]);
        // d goes; a newcomer does not get d's id until the removal was applied.
        let c = ids.assign(["a", "b", "c", "e"]).unwrap();
        assert_ne!(c["e"], b["d"]);
        ids.released();
        ids.assign(["a", "b", "c"]).unwrap();
        ids.released();
        let d = ids.assign(["a", "b", "c", "f"]).unwrap();
        assert!(d.values().all(|id| !id.is_default()));
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn too_many_policies_is_an_error_not_a_wrap() {
        let mut ids = PolicyIds::default();
        let names: Vec<String> = (0..MAX_POLICIES).map(|i| format!("w{i}")).collect();
        assert!(ids.assign(names.iter().map(String::as_str)).is_err());
    }
}
