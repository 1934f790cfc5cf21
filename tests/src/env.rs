//! The machine under test: unique names, the enforcer binary, root/cgroup2/python checks, and
//! small command runners the other modules share.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// `<pid>-<n>`: unique across processes on this machine (for names of cgroups, dirs, netns).
pub fn unique_tag() -> String {
    format!("{}-{}", std::process::id(), unique())
}

/// The enforcer binary: `$ENFORCER_BIN`, else `<workspace>/target/debug/enforcer`.
pub fn enforcer_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let p = match std::env::var_os("ENFORCER_BIN") {
            Some(p) => PathBuf::from(p),
            None => workspace().join("target/debug/enforcer"),
        };
        assert!(
            p.is_file(),
            "enforcer binary not found at {} — build it first with `cargo build -p enforcer` (from the workspace root) or set ENFORCER_BIN",
            p.display()
        );
        p
    })
    .clone()
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Fail (not skip) with a clear message unless the machine can run the kernel tests: root,
/// cgroup2, bpffs, `ip`, `python3`, and the enforcer binary.
pub fn preflight() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: plain syscall.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the enforcer integration tests need root (they load BPF programs, create cgroups and network namespaces); run them with sudo -E cargo test -p enforcer-tests"
        );
        let _ = cgroup2_mount();
        let _ = enforcer_bin();
        let _ = python();
        assert!(
            Command::new("ip").arg("-V").output().map(|o| o.status.success()).unwrap_or(false),
            "iproute2 (`ip`) is required by the integration tests"
        );
        warn_if_stale();
    });
}

/// Warn (stderr) if enforcer sources are newer than the binary being tested.
fn warn_if_stale() {
    if std::env::var_os("ENFORCER_BIN").is_some() {
        return;
    }
    let Ok(bin_mtime) = fs::metadata(enforcer_bin()).and_then(|m| m.modified()) else { return };
    let mut newest = None;
    for dir in ["enforcer/src", "enforcer-ebpf/src", "enforcer-common/src"] {
        let mut stack = vec![workspace().join(dir)];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(m) = e.metadata().and_then(|m| m.modified())
                    && newest.as_ref().is_none_or(|(t, _)| m > *t)
                {
                    newest = Some((m, p));
                }
            }
        }
    }
    if let Some((t, p)) = newest
        && t > bin_mtime
    {
        eprintln!(
            "warning: {} is newer than {}; run `cargo build -p enforcer` to test the current sources",
            p.display(),
            enforcer_bin().display()
        );
    }
}

/// Where cgroup2 is mounted (from /proc/self/mountinfo).
pub fn cgroup2_mount() -> PathBuf {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let info = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            if right.split_whitespace().next() == Some("cgroup2")
                && let Some(m) = left.split_whitespace().nth(4)
            {
                return PathBuf::from(m.replace("\\040", " "));
            }
        }
        panic!(
            "no cgroup2 filesystem is mounted (checked /proc/self/mountinfo); the enforcer integration tests need cgroup v2"
        )
    })
    .clone()
}

/// This process's own cgroup directory (the parent of every cgroup the tests create).
pub fn own_cgroup_dir() -> PathBuf {
    let text = fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim();
    cgroup2_mount().join(rel.trim_start_matches('/'))
}

/// The real python3 executable (not a pyenv shim: faster, and its comm is `python3`).
pub fn python() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is required by the integration tests (clients and servers are python scripts)");
        assert!(out.status.success(), "python3 does not run: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

pub(crate) fn sh(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().unwrap_or_else(|e| panic!("running {prog}: {e}"));
    assert!(
        out.status.success(),
        "`{prog} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn sh_quiet(prog: &str, args: &[&str]) {
    let _ = Command::new(prog).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}
