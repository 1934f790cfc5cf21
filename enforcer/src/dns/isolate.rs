//! The command's view of the resolver configuration under `enforcer run`.
//!
//! The kernel hooks steer every port-53 query of the confined cgroup to the forwarder, whatever
//! address it was sent to (loopback stubs such as 127.0.0.53 or an unbound on 127.0.0.1
//! included), so glibc with `hosts: dns`, musl and Go's pure resolver are learned as they are.
//! What the hooks cannot see are lookups handed to a daemon *outside* the cgroup over a UNIX
//! socket: nscd (glibc asks it first whenever its socket answers) and systemd-resolved through
//! nss-resolve (varlink). Those daemons resolve with their own sockets, so nothing is learned
//! and the first connect fails.
//!
//! [`Isolation::prepare`] (in `run`, before the command is spawned) finds what the host has and
//! plans the mounts; a confined command's init applies them ([`apply_view`]) in the mount
//! namespace it made for the command, before the command drops CAP_SYS_ADMIN; a `--privileged`
//! command gets a namespace of its own for them ([`Isolation::enter`], between fork and exec,
//! async-signal-safe syscalls only):
//! - `/etc/nsswitch.conf`: a copy whose `hosts:` line is `files dns` (other lines untouched),
//!   when the host's uses other sources (`resolve`, `mdns*`, `nis`, ...);
//! - nscd's socket directories (`/run/nscd`, `/var/run/nscd`): an empty read-only tmpfs over
//!   each, so glibc finds no nscd and resolves itself (also for an nscd started later);
//! - systemd-resolved's varlink socket (`/run/systemd/resolve/io.systemd.Resolve`): `/dev/null`
//!   over it (its directory stays: /etc/resolv.conf often points into it).
//!
//! Mount propagation is made slave first, so nothing leaks back to the host. When the host needs
//! none of this, a `--privileged` command keeps the host's mount namespace. Not covered: a program that talks to
//! systemd-resolved over D-Bus itself (`resolvectl`, sd-bus clients) — its lookups are not
//! learned, and its connects are denied.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

/// `hosts:` sources the command keeps.
const HOSTS_LINE: &str = "hosts:          files dns";
const NSSWITCH: &str = "/etc/nsswitch.conf";
const NSCD_DIRS: [&str; 2] = ["/run/nscd", "/var/run/nscd"];
const RESOLVED_VARLINK: &str = "/run/systemd/resolve/io.systemd.Resolve";

/// One mount of the resolver view, as the confined command's init receives it (JSON, see
/// `confine::InitConfig`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ViewMount {
    /// Bind `src` over `dst`, then make it read-only.
    Bind { src: PathBuf, dst: PathBuf },
    /// An empty read-only tmpfs over `dst`.
    Tmpfs { dst: PathBuf },
}

/// A [`ViewMount`] with its paths ready for the syscalls (no allocation between fork and exec).
#[derive(Debug)]
enum Op {
    Bind { src: CString, dst: CString },
    Tmpfs { dst: CString },
}

impl Op {
    fn of(m: &ViewMount) -> io::Result<Self> {
        Ok(match m {
            ViewMount::Bind { src, dst } => Op::Bind { src: cstr(src)?, dst: cstr(dst)? },
            ViewMount::Tmpfs { dst } => Op::Tmpfs { dst: cstr(dst)? },
        })
    }
}

/// The planned mount namespace of the command (see the module docs).
#[derive(Debug)]
pub struct Isolation {
    mounts: Vec<ViewMount>,
    ops: Vec<Op>,
    /// What is changed, in words (for the agent log).
    pub changes: Vec<String>,
    dir: Option<PathBuf>,
}

/// The sources of an nsswitch `hosts:` line (actions such as `[NOTFOUND=return]` dropped).
fn hosts_sources(nsswitch: &str) -> Option<Vec<String>> {
    let line = nsswitch.lines().find(|l| l.trim_start().starts_with("hosts:"))?;
    let rest = line.trim_start().trim_start_matches("hosts:");
    let rest = rest.split('#').next().unwrap_or("");
    let mut out = Vec::new();
    let mut in_action = false;
    for w in rest.split_whitespace() {
        if w.starts_with('[') {
            in_action = !w.ends_with(']');
            continue;
        }
        if in_action {
            in_action = !w.ends_with(']');
            continue;
        }
        out.push(w.to_string());
    }
    Some(out)
}

/// `nsswitch` with its `hosts:` line replaced by `hosts: files dns` (None: already so, or no
/// such line — glibc's default then is `dns files`, which needs nothing).
pub fn rewrite_nsswitch(nsswitch: &str) -> Option<String> {
    let sources = hosts_sources(nsswitch)?;
    if sources == ["files", "dns"] || sources == ["dns", "files"] || sources == ["dns"] {
        return None;
    }
    let mut out = String::with_capacity(nsswitch.len() + 64);
    for l in nsswitch.lines() {
        if l.trim_start().starts_with("hosts:") {
            out.push_str(&format!("# enforcer run: was `{}`\n{HOSTS_LINE}\n", l.trim()));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    Some(out)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

impl Isolation {
    /// Plan the namespace from the host's files; generated files go into `dir` (created, mode
    /// 0755, removed on drop). `root` is "/" except in tests.
    pub fn prepare(root: &Path, dir: &Path) -> io::Result<Self> {
        let mut iso = Isolation { mounts: Vec::new(), ops: Vec::new(), changes: Vec::new(), dir: None };
        let at = |p: &str| root.join(p.trim_start_matches('/'));
        let nss_path = at(NSSWITCH);
        if let Ok(text) = std::fs::read_to_string(&nss_path)
            && let Some(new) = rewrite_nsswitch(&text)
        {
            std::fs::create_dir_all(dir)?;
            iso.dir = Some(dir.to_path_buf());
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            let file = dir.join("nsswitch.conf");
            std::fs::write(&file, new)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
            let was = hosts_sources(&text).unwrap_or_default().join(" ");
            iso.changes.push(format!("{NSSWITCH}: `hosts: files dns` (host: `{was}`)"));
            iso.mounts.push(ViewMount::Bind { src: file, dst: nss_path });
        }
        let mut seen: Vec<PathBuf> = Vec::new();
        for d in NSCD_DIRS {
            let p = at(d);
            let Ok(real) = std::fs::canonicalize(&p) else { continue };
            if !real.is_dir() || seen.contains(&real) {
                continue;
            }
            seen.push(real.clone());
            iso.changes.push(format!("{}: hidden (nscd)", real.display()));
            iso.mounts.push(ViewMount::Tmpfs { dst: real });
        }
        let varlink = at(RESOLVED_VARLINK);
        if std::fs::symlink_metadata(&varlink).is_ok() {
            iso.changes.push(format!("{RESOLVED_VARLINK}: hidden (systemd-resolved)"));
            iso.mounts.push(ViewMount::Bind { src: PathBuf::from("/dev/null"), dst: varlink });
        }
        iso.ops = iso.mounts.iter().map(Op::of).collect::<io::Result<_>>()?;
        Ok(iso)
    }

    /// Nothing to change: the command keeps the host's mount namespace.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The mounts, for the confined command's init ([`apply_view`]).
    pub fn mounts(&self) -> &[ViewMount] {
        &self.mounts
    }

    /// Enter a new mount namespace and apply the plan (`--privileged` runs; confined runs apply
    /// [`Self::mounts`] in their init's namespace instead). Called in the child between fork and
    /// exec (before capabilities are dropped): only async-signal-safe syscalls, no allocation.
    ///
    /// # Safety
    /// Call only in a single-threaded child (e.g. from `Command::pre_exec`).
    pub unsafe fn enter(&self) -> io::Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: plain syscalls with valid NUL-terminated strings.
        unsafe {
            ok(libc::unshare(libc::CLONE_NEWNS))?;
            ok(libc::mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_SLAVE, std::ptr::null()))?;
            apply_ops(&self.ops)
        }
    }
}

fn ok(r: libc::c_int) -> io::Result<()> {
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Apply `ops` in the current mount namespace (which must be one of the command's own, with
/// slave propagation).
///
/// # Safety
/// Plain syscalls; async-signal-safe.
unsafe fn apply_ops(ops: &[Op]) -> io::Result<()> {
    let null = std::ptr::null::<libc::c_char>();
    for op in ops {
        // SAFETY: valid NUL-terminated strings owned by `ops`.
        unsafe {
            match op {
                Op::Bind { src, dst } => {
                    ok(libc::mount(src.as_ptr(), dst.as_ptr(), null, libc::MS_BIND, std::ptr::null()))?;
                    ok(libc::mount(
                        null,
                        dst.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
                Op::Tmpfs { dst } => {
                    ok(libc::mount(
                        c"tmpfs".as_ptr(),
                        dst.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        c"size=4k,mode=755".as_ptr().cast(),
                    ))?;
                }
            }
        }
    }
    Ok(())
}

/// The confined command's init: apply the resolver view in its mount namespace (already its own,
/// propagation slave: see `confine::mounts`), before the command drops CAP_SYS_ADMIN. An error
/// names the mount that failed.
pub fn apply_view(mounts: &[ViewMount]) -> io::Result<()> {
    for m in mounts {
        let op = Op::of(m)?;
        // SAFETY: plain syscalls on strings we own; init is single-threaded.
        unsafe { apply_ops(std::slice::from_ref(&op)) }.map_err(|e| {
            let what = match m {
                ViewMount::Bind { src, dst } => format!("binding {} over {}", src.display(), dst.display()),
                ViewMount::Tmpfs { dst } => format!("hiding {} (tmpfs)", dst.display()),
            };
            io::Error::new(e.kind(), format!("{what}: {e}"))
        })?;
    }
    Ok(())
}

/// The isolation `enforcer run` gives its command (None: `enabled` is false, or the host needs
/// none). Generated files go to `$TMPDIR/enforcer-run-<id>-dns`.
pub fn for_run(enabled: bool, id: u32) -> io::Result<Option<std::sync::Arc<Isolation>>> {
    if !enabled {
        return Ok(None);
    }
    let dir = std::env::temp_dir().join(format!("enforcer-run-{id}-dns"));
    let iso = Isolation::prepare(Path::new("/"), &dir)?;
    if iso.is_empty() {
        return Ok(None);
    }
    if !has_cap_sys_admin() {
        tracing::warn!(
            "dns: no CAP_SYS_ADMIN for the command's mount namespace; names it resolves through nscd or nss-resolve are not learned ({})",
            iso.changes.join("; ")
        );
        return Ok(None);
    }
    for c in &iso.changes {
        tracing::info!("dns: the command's resolver view: {c}");
    }
    Ok(Some(std::sync::Arc::new(iso)))
}

/// CAP_SYS_ADMIN (bit 21) in this process's effective set (needed for the mount namespace).
fn has_cap_sys_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

impl Drop for Isolation {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_line_rewritten_only_when_it_needs_to_be() {
        let debian = "passwd: files\nhosts:          files dns\nnetworks: files\n";
        assert_eq!(rewrite_nsswitch(debian), None);
        assert_eq!(rewrite_nsswitch("passwd: files\n"), None, "no hosts line: glibc's default is dns files");
        let fedora = "passwd: files systemd\nhosts: files myhostname resolve [!UNAVAIL=return] dns\n";
        let out = rewrite_nsswitch(fedora).unwrap();
        assert!(out.contains("\nhosts:          files dns\n"), "{out}");
        assert!(out.starts_with("passwd: files systemd\n"), "other lines kept: {out}");
        assert!(out.contains("# enforcer run: was `hosts: files myhostname resolve [!UNAVAIL=return] dns`"), "{out}");
        assert_eq!(
            hosts_sources("hosts: files mdns4_minimal [NOTFOUND=return] dns # comment").unwrap(),
            ["files", "mdns4_minimal", "dns"]
        );
        assert_eq!(hosts_sources("hosts: files [ NOTFOUND=return ] dns").unwrap(), ["files", "dns"]);
    }

    #[test]
    fn plan_from_a_fake_root() {
        let root = std::env::temp_dir().join(format!("enforcer-iso-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("run/nscd")).unwrap();
        std::fs::create_dir_all(root.join("run/systemd/resolve")).unwrap();
        std::fs::write(root.join("run/systemd/resolve/io.systemd.Resolve"), "").unwrap();
        std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files resolve dns\n").unwrap();
        let generated = root.join("gen");
        let iso = Isolation::prepare(&root, &generated).unwrap();
        assert_eq!(iso.ops.len(), 3, "{iso:?}");
        assert_eq!(iso.mounts().len(), 3);
        assert!(
            std::fs::read_to_string(generated.join("nsswitch.conf")).unwrap().contains("hosts:          files dns")
        );
        drop(iso);
        assert!(!generated.exists(), "the generated files go with the plan");

        std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n").unwrap();
        std::fs::remove_dir_all(root.join("run")).unwrap();
        let iso = Isolation::prepare(&root, &generated).unwrap();
        assert!(iso.is_empty(), "nothing to change: no namespace: {iso:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
