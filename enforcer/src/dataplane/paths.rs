//! Every bpffs path enforcer uses, from one place (bpfman's `directories`): the daemon's pin dir
//! per attached cgroup, and inside it one file per pinned map (named as in `enforcer_common::MAPS`)
//! and one per link (`link_<program>`, `link_<tc program>_<interface>`).
//!
//! ```text
//! /sys/fs/bpf/enforcer/cg<cgroup id>/   PinDir
//!   ALLOW, ALLOW_EXACT, DESTS, ...       maps (MapSpec::pinned); PIN_LAYOUT holds the layout version
//!   link_connect4, link_backstop, ...    cgroup links
//!   link_tc_egress_<iface>               tcx links
//! ```

use std::path::{Path, PathBuf};

/// The bpffs mount enforcer expects.
pub const BPFFS: &str = "/sys/fs/bpf";
/// enforcer's directory on it.
pub const ROOT: &str = "/sys/fs/bpf/enforcer";

/// The default pin dir of a daemon attached to the cgroup with this id.
pub fn default_pin_dir(cgroup_id: u64) -> PathBuf {
    Path::new(ROOT).join(format!("cg{cgroup_id}"))
}

const LINK_PREFIX: &str = "link_";
const TC_LINK_PREFIX: &str = "link_tc_";

/// One daemon's pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A pinned map, by its name in `enforcer_common::MAPS`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The link of a cgroup program.
    pub fn link(&self, program: &str) -> PathBuf {
        self.0.join(format!("{LINK_PREFIX}{program}"))
    }

    /// The tcx link of a TC program on an interface.
    pub fn tc_link(&self, program: &str, iface: &str) -> PathBuf {
        self.0.join(format!("{LINK_PREFIX}{program}_{iface}"))
    }

    /// Whether a file name in the dir is a TC link pin.
    pub fn is_tc_link(file_name: &str) -> bool {
        file_name.starts_with(TC_LINK_PREFIX)
    }

    /// Whether a file name in the dir is a link pin (cgroup or TC).
    pub fn is_link(file_name: &str) -> bool {
        file_name.starts_with(LINK_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_come_from_one_place() {
        let d = PinDir::new(default_pin_dir(42));
        assert_eq!(d.path(), Path::new("/sys/fs/bpf/enforcer/cg42"));
        assert_eq!(d.map("ALLOW"), Path::new("/sys/fs/bpf/enforcer/cg42/ALLOW"));
        assert_eq!(d.link("connect4"), Path::new("/sys/fs/bpf/enforcer/cg42/link_connect4"));
        assert_eq!(d.tc_link("tc_egress", "eth0"), Path::new("/sys/fs/bpf/enforcer/cg42/link_tc_egress_eth0"));
        assert!(PinDir::is_tc_link("link_tc_egress_eth0") && !PinDir::is_tc_link("link_connect4"));
        assert!(PinDir::is_link("link_connect4") && !PinDir::is_link("ALLOW"));
        assert!(default_pin_dir(1).starts_with(BPFFS));
    }
}
