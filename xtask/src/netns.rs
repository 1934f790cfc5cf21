//! Network namespaces, veth pairs, processes and cgroups that clean themselves up.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Child, Command},
};

use anyhow::{Context as _, Result};

use crate::{
    cleanup::{self, Guard, Resource},
    util,
};

/// A named network namespace (`ip netns add`), deleted with its processes on drop.
pub struct Netns {
    pub name: String,
    _guard: Guard,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        util::run_quiet(&mut util::cmd("ip", ["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Self { name: name.to_string(), _guard: cleanup::register(Resource::Netns(name.into())) };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS ARGS...`
    pub fn ip<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> Result<String> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        util::run_quiet(&mut c)
    }

    /// The bind-mounted namespace file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `nsenter --net=/run/netns/NS PROG`: only the network namespace changes. (`ip netns exec`
    /// also remounts /sys, which hides the cgroup2 and bpf filesystems from the command.)
    pub fn command(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(prog);
        c
    }
}

/// A veth pair: `a` ends up in `ns_a` (or stays in the host namespace when None), `b` in `ns_b`.
pub fn veth(a: &str, ns_a: Option<&Netns>, b: &str, ns_b: &Netns) -> Result<Guard> {
    util::run_quiet(&mut util::cmd("ip", ["link", "add", a, "type", "veth", "peer", "name", b]))
        .with_context(|| format!("creating veth pair {a}/{b}"))?;
    let guard = cleanup::register(Resource::Link(a.to_string()));
    util::run_quiet(&mut util::cmd("ip", ["link", "set", b, "netns", &ns_b.name]))?;
    if let Some(ns) = ns_a {
        util::run_quiet(&mut util::cmd("ip", ["link", "set", a, "netns", &ns.name]))?;
    }
    Ok(guard)
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
    _guard: Guard,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("could not start `{}`", util::display_cmd(cmd)))?;
        let guard = cleanup::register(Resource::Process(child.id() as i32));
        Ok(Self { child, _guard: guard })
    }

    /// Fails if the process has already exited.
    pub fn check_running(&mut self, what: &str) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            anyhow::bail!("{what} exited early ({st})");
        }
        Ok(())
    }
}

/// A fresh cgroup, removed (with its processes and any cgroups below it) on drop.
pub struct Cgroup {
    pub path: PathBuf,
    _guard: Guard,
}

impl Cgroup {
    /// A child of the cgroup2 root.
    pub fn create(name: &str) -> Result<Self> {
        Self::create_in(&util::cgroup2_mount()?, name)
    }

    /// A child of `parent`.
    pub fn create_in(parent: &std::path::Path, name: &str) -> Result<Self> {
        let path = parent.join(name);
        std::fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        let guard = cleanup::register(Resource::Cgroup(path.clone()));
        Ok(Self { path, _guard: guard })
    }

    /// Makes `cmd` join this cgroup before it execs.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt as _;
        let procs = std::ffi::CString::new(self.path.join("cgroup.procs").as_os_str().as_encoded_bytes())
            .expect("cgroup path has no NUL");
        // SAFETY: only async-signal-safe calls (open/write/close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if r != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
    }
}

/// A benchmark's client side: commands run in the client netns, either under `enforcer run`
/// (child cgroups of `enforced`) or plainly in the `baseline` cgroup, for same-run ratios.
pub struct BenchClient<'a> {
    pub enforcer: &'a Path,
    pub ns: &'a Netns,
    pub baseline: &'a Cgroup,
    pub enforced: &'a Cgroup,
    pub registry: &'a Path,
}

impl BenchClient<'_> {
    /// `enforcer run --registry R --no-host-dns --quiet --cgroup-parent E EXTRA... -- PROG...`
    /// in the client netns.
    pub fn enforcer_cmd(&self, extra: &[&str], prog: &[String]) -> Command {
        let mut c = self.ns.command(self.enforcer);
        c.args(["run", "--registry"]).arg(self.registry);
        c.args(["--no-host-dns", "--quiet", "--cgroup-parent"]).arg(&self.enforced.path);
        c.args(extra).arg("--").args(prog);
        c
    }

    /// `prog...` in the client netns, in the baseline cgroup.
    pub fn baseline_cmd(&self, prog: &[String]) -> Command {
        let mut c = self.ns.command(&prog[0]);
        c.args(&prog[1..]);
        self.baseline.enter_on_exec(&mut c);
        c
    }
}
