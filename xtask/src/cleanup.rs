//! Everything xtask creates (network namespaces, veth links, processes, cgroups, temp dirs) is
//! registered here. A [`Guard`] removes its resource on drop; on SIGINT/SIGTERM/SIGHUP a signal
//! thread removes everything still registered, newest first, and exits 130.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

#[derive(Debug)]
pub enum Resource {
    /// A process we started (killed with SIGTERM, then SIGKILL).
    Process(i32),
    /// A named network namespace (its processes are killed, then it is deleted).
    Netns(String),
    /// A network link in the host namespace.
    Link(String),
    /// A cgroup directory (its processes are killed, then it is removed).
    Cgroup(PathBuf),
    /// A temporary directory.
    Dir(PathBuf),
    /// An nftables table inside a network namespace: (netns, "family name").
    NftTable(String, String),
}

static REGISTRY: Mutex<Vec<(u64, Resource)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Removes its resource when dropped.
#[must_use = "the resource is removed when the guard is dropped"]
pub struct Guard(u64);

pub fn register(r: Resource) -> Guard {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).push((id, r));
    Guard(id)
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Hold the lock while removing, so a concurrent signal cleanup cannot exit the process
        // half-way through.
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = reg.iter().position(|(id, _)| *id == self.0) {
            let (_, r) = reg.remove(pos);
            remove(&r);
        }
    }
}

/// Handles SIGINT/SIGTERM/SIGHUP: the handler only writes the signal number to a pipe; a thread
/// reading it removes everything still registered and exits 130. (A handler, not a blocked
/// signal mask: exec resets handlers, but children would inherit a mask and never see
/// SIGTERM/SIGHUP.)
pub fn install_signal_handler() {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("xtask: warning: no Ctrl-C cleanup: pipe2: {}", std::io::Error::last_os_error());
        return;
    }
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    let read_fd = fds[0];
    std::thread::spawn(move || {
        let mut sig = 0u8;
        loop {
            // SAFETY: reads one byte into a local.
            let n = unsafe { libc::read(read_fd, (&raw mut sig).cast(), 1) };
            if n == 1 {
                break;
            }
            if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return;
            }
        }
        eprintln!("\nxtask: interrupted (signal {sig}); cleaning up");
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((_, r)) = reg.pop() {
            remove(&r);
        }
        std::process::exit(130);
    });
    // SAFETY: installs an async-signal-safe handler (it only calls write(2)).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
    }
}

static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; errno is saved and restored around it.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(fd, (&raw const b).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

fn remove(r: &Resource) {
    match r {
        Resource::Process(pid) => kill_and_reap(&[*pid]),
        Resource::Netns(name) => {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
                let pids: Vec<i32> =
                    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect();
                kill_and_reap(&pids);
            }
            quiet(Command::new("ip").args(["netns", "del", name]));
        }
        Resource::Link(name) => {
            // Usually gone already (deleting a netns deletes its veth pairs).
            if std::path::Path::new("/sys/class/net").join(name).exists() {
                quiet(Command::new("ip").args(["link", "del", name]));
            }
        }
        Resource::Cgroup(path) => remove_cgroup(path),
        Resource::Dir(path) => {
            let _ = std::fs::remove_dir_all(path);
        }
        Resource::NftTable(ns, table) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft", "delete", "table"]);
            c.args(table.split_whitespace());
            quiet(&mut c);
        }
    }
}

/// Removes a cgroup and every cgroup below it (depth first), killing their processes.
fn remove_cgroup(path: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let procs: Vec<i32> = std::fs::read_to_string(path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        kill_and_reap(&procs);
        match std::fs::remove_dir(path) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) if Instant::now() > deadline => {
                eprintln!("xtask: warning: could not remove cgroup {}: {e}", path.display());
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn quiet(cmd: &mut Command) {
    let _ = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// SIGTERM, up to 2 s grace, then SIGKILL. Reaps the ones that are our children.
fn kill_and_reap(pids: &[i32]) {
    let alive = |pid: i32| {
        // Reap it if it is our zombie child; then check it exists.
        // SAFETY: waitpid/kill on a pid value; no memory is involved.
        unsafe {
            let mut st = 0;
            libc::waitpid(pid, &mut st, libc::WNOHANG);
            libc::kill(pid, 0) == 0
        }
    };
    for &p in pids {
        // SAFETY: see above.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in pids {
        if alive(p) {
            // SAFETY: see above.
            unsafe { libc::kill(p, libc::SIGKILL) };
            let mut st = 0;
            unsafe { libc::waitpid(p, &mut st, 0) };
        }
    }
}
