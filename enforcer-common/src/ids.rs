//! Typed ids shared by the kernel maps and the agent.
//!
//! An id means the same thing for its whole life: the agent allocates them by *name* (a policy's
//! workload or scope name, a service's `namespace/name`), keeps them across reloads and
//! recomputes, and reuses one only after every kernel entry that referenced it is gone. Nothing
//! outside this module encodes or decodes ids by arithmetic: use the constructors and accessors.

/// A policy: one registry + mode, judging the cgroups mapped to it in `WORKLOADS` (or every cgroup
/// without an entry, for [`PolicyId::DEFAULT`]). Indexes `MODES`, so it is below
/// [`crate::MAX_POLICIES`].
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(u32);

impl PolicyId {
    /// The node default policy: cgroups with no `WORKLOADS` entry are judged by it.
    pub const DEFAULT: Self = Self(0);

    /// The id with this raw value, if it fits `MODES` (below `MAX_POLICIES`).
    pub const fn new(raw: u32) -> Option<Self> {
        if raw < crate::MAX_POLICIES { Some(Self(raw)) } else { None }
    }

    /// The raw value, as stored in keys and used as the `MODES` index.
    pub const fn get(self) -> u32 {
        self.0
    }

    pub const fn is_default(self) -> bool {
        self.0 == 0
    }
}

/// A registry service (one ServiceEntry, one command-line allow, or the host's DNS resolvers)
/// that map entries, flows, counters and events are attributed to.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(u32);

impl ServiceId {
    /// No registry service: PassthroughCluster / not in the registry.
    pub const NONE: Self = Self(0);

    /// Any raw value but 0 (which is [`ServiceId::NONE`]).
    pub const fn new(raw: u32) -> Option<Self> {
        if raw == 0 { None } else { Some(Self(raw)) }
    }

    /// The raw value as stored in map keys and values (0 for `NONE`).
    pub const fn get(self) -> u32 {
        self.0
    }

    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(transparent)] over u32; every bit pattern is a valid value.
    unsafe impl aya::Pod for super::PolicyId {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceId {}
}

impl core::fmt::Display for PolicyId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "policy {}", self.0)
    }
}

impl core::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "service {}", self.0)
    }
}
