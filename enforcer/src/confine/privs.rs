//! In the command's process, just before it executes: capabilities, identity, no_new_privs.

use caps::{CapSet, CapsHashSet};

use super::{DROPPED_CAPS, Identity};

#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("{what}: {source}")]
    Caps {
        what: String,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("{what}: {source}")]
    Id {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0} is still in the command's capabilities after dropping it")]
    Kept(String),
}

fn caps_err(what: impl Into<String>) -> impl FnOnce(caps::errors::CapsError) -> PrivError {
    let what = what.into();
    move |source| PrivError::Caps { what, source }
}

/// Drop [`DROPPED_CAPS`] from every set (the bounding set first: after exec, root's permitted set
/// is recomputed from it and the inheritable set), switch to `identity` if given (which clears
/// every capability), then set no_new_privs so no setuid or file-capability program gains any.
pub fn drop_privileges(identity: Option<&Identity>) -> Result<(), PrivError> {
    for cap in DROPPED_CAPS {
        // EINVAL: this kernel does not know the capability, so nobody can have it.
        match caps::drop(None, CapSet::Bounding, cap) {
            Ok(()) => {}
            Err(_) if !caps::runtime::thread_all_supported().contains(&cap) => {}
            Err(e) => return Err(caps_err(format!("dropping {cap} from the bounding set"))(e)),
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing the ambient set"))?;
    if let Some(id) = identity {
        use nix::unistd::{Gid, Uid};
        let groups: Vec<Gid> = id.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        let id_err = |what: String| move |source| PrivError::Id { what, source };
        nix::unistd::setgroups(&groups).map_err(id_err(format!("setgroups({:?})", id.groups)))?;
        let gid = Gid::from_raw(id.gid);
        nix::unistd::setresgid(gid, gid, gid).map_err(id_err(format!("setresgid({})", id.gid)))?;
        let uid = Uid::from_raw(id.uid);
        nix::unistd::setresuid(uid, uid, uid).map_err(id_err(format!("setresuid({})", id.uid)))?;
        if id.uid != 0 {
            caps::clear(None, CapSet::Inheritable).map_err(caps_err("clearing the inheritable set"))?;
        }
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let have = caps::read(None, set).map_err(caps_err(format!("reading the {set:?} set")))?;
        let keep: CapsHashSet = have.iter().filter(|c| !DROPPED_CAPS.contains(c)).copied().collect();
        if keep != have {
            caps::set(None, set, &keep).map_err(caps_err(format!("setting the {set:?} set")))?;
        }
    }
    nix::sys::prctl::set_no_new_privs()
        .map_err(|source| PrivError::Id { what: "PR_SET_NO_NEW_PRIVS".into(), source })?;
    for set in [CapSet::Bounding, CapSet::Effective, CapSet::Permitted, CapSet::Inheritable, CapSet::Ambient] {
        let have = caps::read(None, set).map_err(caps_err(format!("reading the {set:?} set")))?;
        if let Some(c) = DROPPED_CAPS.iter().find(|c| have.contains(c)) {
            return Err(PrivError::Kept(format!("{c} ({set:?})")));
        }
    }
    Ok(())
}
