//! How `enforcer run` confines its command so that a root command cannot undo the enforcement.
//!
//! The command runs below a tiny init (this binary, re-executed; see [`init`]) that is PID 1 of a
//! new PID namespace, in the run's child cgroup, with its own cgroup and mount namespaces:
//!
//! - **PID namespace**: enforcer, its supervisor and every other host process are invisible, so
//!   `kill`, `ptrace` and `pidfd_open` cannot name them. The command (and init) are in their own
//!   process group, so `kill(0, ...)` reaches no process outside either.
//! - **cgroup + mount namespaces**: the cgroup2 filesystem is mounted again inside, rooted at the
//!   run's cgroup, so no `cgroup.procs` outside it can be named (the kernel's cgroup namespace
//!   alone does not stop a root process from migrating unless cgroup2 is mounted `nsdelegate`).
//!   bpffs mounts are removed (a root command could otherwise open pinned links and maps by path),
//!   `/proc` is a fresh procfs of the new PID namespace, and `/sys`, `/proc/sys`,
//!   `/proc/sysrq-trigger` are read-only (no `core_pattern`, `uevent_helper` or sysrq). The
//!   resolver view of `dns::isolate` (nsswitch `hosts: files dns`, nscd and systemd-resolved's
//!   varlink socket hidden) is mounted there too, so every lookup ends in a steered port-53 query.
//! - **privileges**: `no_new_privs`, and [`DROPPED_CAPS`] removed from the bounding, permitted,
//!   effective, inheritable and ambient sets, so a root command keeps uid 0 (and e.g.
//!   CAP_DAC_OVERRIDE, CAP_CHOWN: `make install` works) but cannot load BPF, change nft rules or
//!   routes, open raw sockets, mount, trace or load modules. With a [`Identity`] (`--user`, or the
//!   invoking user under sudo) it runs as that user instead, with no capabilities at all.

pub mod init;
mod mounts;
mod privs;

use std::{
    ffi::OsString,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
};

use caps::Capability;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt as _;

use crate::exit;

/// Capabilities a confined command never has, in any set. The first seven are what would let a
/// root command undo the enforcement directly (BPF, nft/routes, raw sockets, mounts, ptrace of
/// enforcer, kernel modules, perf); the others reach around the namespaces: open_by_handle_at
/// (DAC_READ_SEARCH) opens files outside the mount namespace's view, SYS_RAWIO gives /dev/mem and
/// ioperm, SYS_BOOT gives kexec_load, MAC_ADMIN/MAC_OVERRIDE change or bypass the LSM policy.
pub const DROPPED_CAPS: [Capability; 12] = [
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_RAW,
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_SYS_MODULE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_SYS_RAWIO,
    Capability::CAP_SYS_BOOT,
    Capability::CAP_MAC_ADMIN,
    Capability::CAP_MAC_OVERRIDE,
];

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("--user {0}: no such user in the passwd database; give a user name or a numeric uid")]
    NoSuchUser(String),
    #[error("{var}={value} is not a numeric id")]
    BadSudoId { var: &'static str, value: String },
    #[error("looking up {what}: {source}")]
    Lookup {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Who the command runs as, when it is not enforcer's own identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (getgrouplist), including `gid`.
    pub groups: Vec<u32>,
    pub name: String,
    pub home: PathBuf,
}

/// How the command is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// `--privileged`: spawned directly, with enforcer's identity, capabilities and namespaces.
    Privileged,
    /// Confined (the default); `None` keeps enforcer's own identity (uid 0 under plain root).
    Confined { identity: Option<Identity> },
}

impl Plan {
    /// From the flags and the environment (`SUDO_UID`/`SUDO_GID` when no `--user`/`--as-root`).
    pub fn resolve(
        user: Option<&str>,
        as_root: bool,
        privileged: bool,
        sudo: Option<(String, Option<String>)>,
    ) -> Result<Self, ConfineError> {
        if privileged {
            return Ok(Self::Privileged);
        }
        let identity = match (user, as_root, sudo) {
            (Some(u), _, _) => Some(lookup_user(u)?),
            (None, true, _) => None,
            (None, false, Some((uid, gid))) => {
                let uid: u32 =
                    uid.trim().parse().map_err(|_| ConfineError::BadSudoId { var: "SUDO_UID", value: uid.clone() })?;
                let mut id = identity_for_uid(uid)?;
                if let Some(g) = gid {
                    let gid: u32 =
                        g.trim().parse().map_err(|_| ConfineError::BadSudoId { var: "SUDO_GID", value: g.clone() })?;
                    if gid != id.gid {
                        id.groups.retain(|x| *x != id.gid);
                        id.groups.insert(0, gid);
                        id.gid = gid;
                    }
                }
                Some(id)
            }
            (None, false, None) => None,
        };
        // SAFETY: plain syscall.
        let euid = unsafe { libc::geteuid() };
        Ok(Self::Confined { identity: identity.filter(|i| !(i.uid == euid && i.uid == 0 && i.gid == 0)) })
    }

    /// `SUDO_UID`/`SUDO_GID` of this process, when it runs as root under sudo.
    pub fn sudo_env() -> Option<(String, Option<String>)> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let uid = std::env::var("SUDO_UID").ok().filter(|s| !s.is_empty())?;
        Some((uid, std::env::var("SUDO_GID").ok().filter(|s| !s.is_empty())))
    }

    /// One line for the user: who the command runs as and how.
    pub fn describe(&self) -> String {
        match self {
            Self::Privileged => "unconfined (--privileged)".into(),
            Self::Confined { identity: Some(i) } => format!("confined, as {} (uid {}, gid {})", i.name, i.uid, i.gid),
            Self::Confined { identity: None } => "confined, as root without the dropped capabilities".into(),
        }
    }
}

fn lookup_user(user: &str) -> Result<Identity, ConfineError> {
    let lookup = |r: nix::Result<Option<nix::unistd::User>>| {
        r.map_err(|source| ConfineError::Lookup { what: format!("user {user}"), source })
    };
    if let Some(u) = lookup(nix::unistd::User::from_name(user))? {
        return identity_of(u);
    }
    match user.parse::<u32>() {
        Ok(uid) => identity_for_uid(uid),
        Err(_) => Err(ConfineError::NoSuchUser(user.into())),
    }
}

/// The identity of `uid`: its passwd entry if it has one, else that uid with gid = uid, no
/// supplementary groups and HOME=/ (like `docker run --user UID`).
fn identity_for_uid(uid: u32) -> Result<Identity, ConfineError> {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .map_err(|source| ConfineError::Lookup { what: format!("uid {uid}"), source })?
    {
        Some(u) => identity_of(u),
        None => Ok(Identity { uid, gid: uid, groups: vec![uid], name: uid.to_string(), home: PathBuf::from("/") }),
    }
}

fn identity_of(u: nix::unistd::User) -> Result<Identity, ConfineError> {
    let groups = match std::ffi::CString::new(u.name.clone()) {
        Ok(name) => nix::unistd::getgrouplist(&name, u.gid)
            .map_err(|source| ConfineError::Lookup { what: format!("the groups of {}", u.name), source })?,
        Err(_) => vec![u.gid],
    };
    Ok(Identity {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        name: u.name,
        home: u.dir,
    })
}

/// What `run` hands to the init it starts (one JSON argument).
#[derive(Debug, Serialize, Deserialize)]
pub struct InitConfig {
    /// Write end of the status pipe to enforcer (see [`InitMessage`]).
    pub status_fd: i32,
    pub identity: Option<Identity>,
    /// Enforcer is the terminal's foreground job: give the terminal to the command's process group.
    pub take_tty: bool,
    /// The resolver view (`dns::isolate`), mounted in the command's mount namespace.
    #[serde(default)]
    pub resolver_view: Vec<crate::dns::isolate::ViewMount>,
}

/// What init tells enforcer, one line each on the status pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitMessage {
    /// The command was executed.
    Running,
    /// The command could not be started: the exit status to use and why.
    Failed { code: i32, message: String },
    /// The command was stopped by signal N (job control).
    Stopped(i32),
}

impl InitMessage {
    pub fn encode(&self) -> String {
        let one_line = |s: &str| s.replace(['\n', '\t'], " ");
        match self {
            Self::Running => "running\n".into(),
            Self::Failed { code, message } => format!("failed\t{code}\t{}\n", one_line(message)),
            Self::Stopped(sig) => format!("stopped\t{sig}\n"),
        }
    }

    pub fn decode(line: &str) -> Option<Self> {
        let mut f = line.trim_end_matches('\n').splitn(3, '\t');
        match (f.next()?, f.next(), f.next()) {
            ("running", None, None) => Some(Self::Running),
            ("failed", Some(code), Some(message)) => {
                Some(Self::Failed { code: code.parse().ok()?, message: message.to_string() })
            }
            ("stopped", Some(sig), None) => Some(Self::Stopped(sig.parse().ok()?)),
            _ => None,
        }
    }
}

/// The terminal enforcer runs in, when it has one and one of its standard streams is it.
#[derive(Debug)]
struct Tty {
    fd: OwnedFd,
    /// enforcer's own process group.
    pgrp: nix::unistd::Pid,
    /// enforcer was the foreground job when the command started.
    foreground: bool,
}

impl Tty {
    fn open() -> Option<Self> {
        use std::os::fd::AsFd as _;
        let on_tty = [0, 1, 2].iter().any(|fd| {
            // SAFETY: plain syscall on a possibly closed descriptor.
            unsafe { libc::isatty(*fd) == 1 }
        });
        if !on_tty {
            return None;
        }
        let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").ok()?;
        let fd = OwnedFd::from(f);
        let pgrp = nix::unistd::getpgrp();
        let foreground = nix::unistd::tcgetpgrp(fd.as_fd()).is_ok_and(|p| p == pgrp);
        // enforcer writes deny lines while the command owns the terminal: never stop for that
        // (TOSTOP), nor when handing the terminal back and forth.
        // SAFETY: setting a disposition to SIG_IGN.
        unsafe { libc::signal(libc::SIGTTOU, libc::SIG_IGN) };
        Some(Self { fd, pgrp, foreground })
    }

    fn foreground_is(&self, pgrp: nix::unistd::Pid) -> bool {
        use std::os::fd::AsFd as _;
        nix::unistd::tcgetpgrp(self.fd.as_fd()).is_ok_and(|p| p == pgrp)
    }

    fn give(&self, pgrp: nix::unistd::Pid) {
        use std::os::fd::AsFd as _;
        let _ = nix::unistd::tcsetpgrp(self.fd.as_fd(), pgrp);
    }
}

/// enforcer's side of a confined command's init: the status pipe from it and the terminal.
pub struct InitLink {
    status: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::pipe::Receiver>>,
    status_open: bool,
    tty: Option<Tty>,
    /// init's pid in enforcer's namespace; also the process group of init and the command.
    init_pid: Option<i32>,
}

impl InitLink {
    /// The next message from init; `None` (for ever) once init is gone.
    pub async fn message(&mut self) -> Option<InitMessage> {
        while self.status_open {
            match self.status.next_line().await {
                Ok(Some(line)) => match InitMessage::decode(&line) {
                    Some(m) => return Some(m),
                    None => tracing::warn!("unexpected line from the command's init: {line:?}"),
                },
                Ok(None) | Err(_) => self.status_open = false,
            }
        }
        None
    }

    /// Whether [`Self::message`] can still return something.
    pub fn status_open(&self) -> bool {
        self.status_open
    }

    /// The command stopped (job control): stop enforcer's own job the same way, so the shell sees
    /// it stopped and takes the terminal back; once continued (`fg`/`bg`), give the terminal back to
    /// the command if we are in the foreground again, and continue it. Without a terminal nothing
    /// is done (the command stays stopped until someone continues it, as before confinement).
    pub fn stopped(&self, sig: i32) {
        let (Some(tty), Some(init)) = (&self.tty, self.init_pid) else { return };
        let group = nix::unistd::Pid::from_raw(init);
        if tty.foreground_is(group) {
            tty.give(tty.pgrp);
        }
        tracing::debug!(sig, "the command stopped; stopping enforcer's job too");
        // SIGTSTP (default action: stop) for the whole job, like the terminal's ^Z would.
        // SAFETY: plain syscall; the process stops here until SIGCONT.
        unsafe { libc::kill(0, libc::SIGTSTP) };
        if tty.foreground_is(tty.pgrp) {
            tty.give(group);
        }
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGCONT);
    }

    /// Give the terminal back to enforcer's job after the command is gone.
    pub fn restore_tty(&self) {
        if let (Some(tty), Some(init)) = (&self.tty, self.init_pid)
            && tty.foreground_is(nix::unistd::Pid::from_raw(init))
        {
            tty.give(tty.pgrp);
        }
    }
}

/// Start `argv` confined: init is forked into a new PID namespace (PID 1), joins `cgroup_procs`'s
/// cgroup before it runs anything, and sets up the rest itself before it executes the command.
pub fn spawn(
    argv: &[OsString],
    cgroup_procs: &Path,
    identity: Option<&Identity>,
    resolver_view: &[crate::dns::isolate::ViewMount],
) -> anyhow::Result<(tokio::process::Child, InitLink)> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup_procs)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", cgroup_procs.display()))?;
    let (status_rd, status_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| anyhow::anyhow!("creating the status pipe: {e}"))?;
    let tty = Tty::open();
    let cfg = InitConfig {
        status_fd: status_wr.as_raw_fd(),
        identity: identity.cloned(),
        take_tty: tty.as_ref().is_some_and(|t| t.foreground),
        resolver_view: resolver_view.to_vec(),
    };
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0("enforcer").arg(init::INIT_ARG).arg(serde_json::to_string(&cfg)?).arg("--").args(argv);
    if let Some(id) = identity {
        cmd.env("HOME", &id.home).env("USER", &id.name).env("LOGNAME", &id.name);
    }
    let (procs_fd, wr_fd) = (procs.as_raw_fd(), status_wr.as_raw_fd());
    // SAFETY: only async-signal-safe calls (write, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // "0" moves the writing process: init, and so everything it starts, is in the cgroup
            // before it executes anything.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            // init inherits the status pipe's write end (it is close-on-exec in enforcer).
            if libc::fcntl(wr_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    // A new PID namespace applies to the children of the thread that unshares it, so a throwaway
    // thread does it and forks init, which becomes PID 1 there.
    let handle = tokio::runtime::Handle::current();
    let init = std::thread::scope(|s| {
        s.spawn(|| {
            let _rt = handle.enter();
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(|e| anyhow::anyhow!("creating the command's PID namespace: {e}"))?;
            cmd.spawn().map_err(|e| anyhow::anyhow!("starting the command's init (/proc/self/exe): {e}"))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread starting the command panicked"))?
    })
    .map_err(|e| anyhow::Error::new(exit::CodedError { code: exit::ENFORCER_FAILED, message: format!("{e:#}") }))?;
    drop(status_wr);
    drop(procs);
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(status_rd)
        .map_err(|e| anyhow::anyhow!("reading the status pipe: {e}"))?;
    let init_pid = init.id().map(|p| p as i32);
    Ok((init, InitLink { status: tokio::io::BufReader::new(rx).lines(), status_open: true, tty, init_pid }))
}

/// The pid of a host process as the command sees it (its PID namespace), from `NSpid:` in
/// /proc/PID/status; `None` once the process is gone.
pub fn pid_in_namespace(host_pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            InitMessage::Running,
            InitMessage::Stopped(20),
            InitMessage::Failed { code: 127, message: "nope: No such file or directory (os error 2)".into() },
        ] {
            assert_eq!(InitMessage::decode(&m.encode()), Some(m.clone()), "{m:?}");
        }
        let m = InitMessage::Failed { code: 125, message: "two\nlines\tand tab".into() };
        assert_eq!(
            InitMessage::decode(&m.encode()),
            Some(InitMessage::Failed { code: 125, message: "two lines and tab".into() })
        );
        assert_eq!(InitMessage::decode("what\n"), None);
    }

    #[test]
    fn plans() {
        assert_eq!(Plan::resolve(None, false, true, Some(("1000".into(), None))).unwrap(), Plan::Privileged);
        assert_eq!(
            Plan::resolve(None, true, false, Some(("0".into(), None))).unwrap(),
            Plan::Confined { identity: None }
        );
        let Plan::Confined { identity: Some(id) } = Plan::resolve(Some("nobody"), false, false, None).unwrap() else {
            panic!("--user nobody switches")
        };
        assert_eq!((id.name.as_str(), id.uid), ("nobody", 65534));
        let Plan::Confined { identity: Some(id) } =
            Plan::resolve(None, false, false, Some(("65534".into(), Some("4242".into())))).unwrap()
        else {
            panic!("SUDO_UID switches")
        };
        assert_eq!((id.uid, id.gid, id.groups[0]), (65534, 4242, 4242));
        let Plan::Confined { identity: Some(id) } = Plan::resolve(Some("4000000"), false, false, None).unwrap() else {
            panic!("a numeric uid without a passwd entry")
        };
        assert_eq!((id.uid, id.gid, id.home.as_path()), (4000000, 4000000, Path::new("/")));
        assert!(matches!(
            Plan::resolve(Some("no-such-user-enforcer"), false, false, None),
            Err(ConfineError::NoSuchUser(_))
        ));
        assert!(matches!(
            Plan::resolve(None, false, false, Some(("x".into(), None))),
            Err(ConfineError::BadSudoId { .. })
        ));
    }

    #[test]
    fn own_pid_in_namespace() {
        assert_eq!(pid_in_namespace(std::process::id()), Some(std::process::id()), "no PID namespace here");
    }
}
