//! The outbound traffic policy of a policy id, as stored in `MODES[policy_id]`.

/// A policy's mode. The kernel reads the raw `u32`; anything it does not know (0 included: a
/// slot never written) is judged as REGISTRY_ONLY, so an unset policy fails closed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Never written: treated as `RegistryOnly` by the kernel.
    Unset = 0,
    /// Everything passes; unknown destinations are PassthroughCluster.
    AllowAny = 1,
    /// Only registry destinations connect; others get EPERM (BlackHoleCluster).
    RegistryOnly = 2,
    /// Nothing is blocked; what REGISTRY_ONLY would refuse is reported.
    Audit = 3,
}

impl Mode {
    pub const fn raw(self) -> u32 {
        self as u32
    }

    /// How permissive the mode is in the kernel: AllowAny > Audit > RegistryOnly = Unset. The
    /// agent sets a more permissive mode before it changes a policy's entries and a stricter one
    /// after, so no verdict flips twice during a change.
    pub const fn permissiveness(self) -> u8 {
        match self {
            Mode::AllowAny => 2,
            Mode::Audit => 1,
            Mode::RegistryOnly | Mode::Unset => 0,
        }
    }
}

/// A raw `MODES` value that is not a known mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownMode(pub u32);

impl TryFrom<u32> for Mode {
    type Error = UnknownMode;

    fn try_from(v: u32) -> Result<Self, UnknownMode> {
        match v {
            0 => Ok(Mode::Unset),
            1 => Ok(Mode::AllowAny),
            2 => Ok(Mode::RegistryOnly),
            3 => Ok(Mode::Audit),
            other => Err(UnknownMode(other)),
        }
    }
}
