//! `enforcer daemon` under test: its bpffs pin directory ([`PinDir`]) and the running process
//! ([`Daemon`]), both cleaned up on drop.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use crate::{Cgroup, Outcome, TempDir, enforcer, enforcer_bin, preflight, shell_status, unique_tag};

/// A bpffs pin directory. Drop runs `enforcer unpin --pin-dir` and removes the directory.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        preflight();
        let path = PathBuf::from(format!("/sys/fs/bpf/enforcer-test-{}", unique_tag()));
        assert!(!path.exists(), "{} already exists", path.display());
        Self { path }
    }

    /// Names of the pins present.
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.path)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `enforcer unpin --pin-dir DIR`.
    pub fn unpin(&self) -> Outcome {
        enforcer(["unpin".as_ref(), "--pin-dir".as_ref(), self.path.as_os_str()])
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = Command::new(enforcer_bin())
                .args(["unpin", "--pin-dir"])
                .arg(&self.path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_dir_all(&self.path);
            let _ = fs::remove_dir(&self.path);
        }
    }
}

/// Flags that keep parallel test daemons apart and make reloads happen only on SIGHUP, for the
/// daemons that have them: `--admin 127.0.0.1:0` (the default admin port is shared) and
/// `--no-watch` (a file watcher would reload before the test's SIGHUP).
pub fn daemon_isolation_args() -> Vec<String> {
    static ARGS: OnceLock<Vec<String>> = OnceLock::new();
    ARGS.get_or_init(|| {
        let help = Command::new(enforcer_bin()).args(["daemon", "--help"]).output().expect("enforcer daemon --help");
        let help = String::from_utf8_lossy(&help.stdout);
        let mut v = Vec::new();
        if help.contains("--admin") {
            v.extend(["--admin".to_string(), "127.0.0.1:0".to_string()]);
        }
        if help.contains("--no-watch") {
            v.push("--no-watch".to_string());
        }
        v
    })
    .clone()
}

/// [`daemon_isolation_args`] minus the `--admin` pair when `extra` gives its own (a test that
/// restarts a daemon on the same admin port).
fn isolation_args_for(extra: &[String]) -> Vec<String> {
    let mut v = daemon_isolation_args();
    if extra.iter().any(|a| a == "--admin")
        && let Some(i) = v.iter().position(|a| a == "--admin")
    {
        v.drain(i..i + 2);
    }
    v
}

/// A running `enforcer daemon`, logging to a file. Drop: SIGTERM (then SIGKILL), then the pin dir
/// is unpinned and removed (unless handed out by [`Daemon::stop`]).
pub struct Daemon {
    child: Option<Child>,
    pins: Option<PinDir>,
    pub log_path: PathBuf,
    _dir: TempDir,
}

impl Daemon {
    /// `enforcer daemon --cgroup CG --pin-dir PINS --pid-file F EXTRA...`; waits (≤ 30 s) until
    /// it wrote its pid file (= enforcement in place).
    pub fn start(cg: &Cgroup, pins: PinDir, extra: &[String]) -> Self {
        let dir = TempDir::new("daemon");
        let log_path = dir.join("daemon.log");
        let pid_file = dir.join("daemon.pid");
        let log = fs::File::create(&log_path).unwrap();
        let mut c = Command::new(enforcer_bin());
        c.arg("daemon")
            .arg("--cgroup")
            .arg(&cg.path)
            .arg("--pin-dir")
            .arg(&pins.path)
            .arg("--pid-file")
            .arg(&pid_file)
            .args(isolation_args_for(extra))
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = c.spawn().expect("spawning enforcer daemon");
        let mut d = Self { child: Some(child), pins: Some(pins), log_path, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = fs::read_to_string(&pid_file)
                && s.trim() == d.pid().to_string()
            {
                break;
            }
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("enforcer daemon exited during start-up ({st})\n--- log\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "enforcer daemon did not write its pid file within 30 s\n--- log\n{}",
                d.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Run `enforcer daemon` for a start that is expected to fail (returns its outcome).
    pub fn start_fails(cg: &Cgroup, pins: &PinDir, extra: &[String]) -> Outcome {
        let mut args: Vec<std::ffi::OsString> = vec!["daemon".into(), "--cgroup".into(), cg.path.clone().into()];
        args.extend(["--pin-dir".into(), pins.path.clone().into()]);
        args.extend(daemon_isolation_args().into_iter().map(Into::into));
        args.extend(extra.iter().map(Into::into));
        enforcer(args)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Send SIGHUP and wait (≤ 20 s) until the log has one more line containing `marker`
    /// (e.g. "reloaded" or "reload rejected"). Returns the new log lines.
    pub fn sighup_and_wait(&mut self, marker: &str) -> String {
        let before = self.log();
        let count = |s: &str| s.lines().filter(|l| l.contains(marker)).count();
        let n = count(&before);
        // SAFETY: plain syscall on our child.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, libc::SIGHUP) }, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.log();
            if count(&now) > n {
                return now[before.len().min(now.len())..].to_string();
            }
            assert!(self.is_running(), "daemon died after SIGHUP\n--- log\n{now}");
            assert!(Instant::now() < deadline, "no new {marker:?} line within 20 s after SIGHUP\n--- log\n{now}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (≤ 10 s) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = self.log();
            if l.contains(needle) {
                return l;
            }
            assert!(Instant::now() < deadline, "daemon log never contained {needle:?}\n--- log\n{l}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait (≤ 20 s). Hands back the pin dir, which stays pinned.
    pub fn stop(mut self) -> (i32, String, PinDir) {
        let st = self.terminate();
        (st, self.log(), self.pins.take().unwrap())
    }

    fn terminate(&mut self) -> i32 {
        let child = self.child.as_mut().unwrap();
        if let Some(st) = child.try_wait().unwrap() {
            return shell_status(st);
        }
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return shell_status(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return shell_status(child.wait().unwrap());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        if std::env::var_os("ENFORCER_TESTS_VERBOSE").is_some() || thread::panicking() {
            eprintln!("--- enforcer daemon log ({})\n{}", self.log_path.display(), self.log());
        }
        // `pins` (if still ours) drops after this: unpin + remove.
    }
}

/// `run`/`daemon` arguments for a registry (file or directory) answered through the DNS
/// forwarder: `--registry PATH --no-host-dns --dns-upstream UPSTREAM`, then `extra`.
/// (`--no-host-dns`: the host's resolver is not allowed either, so every answer the workload
/// gets went through the forwarder.)
pub fn registry_dns_args(registry: &std::path::Path, upstream: impl std::fmt::Display, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--registry".to_string(),
        registry.display().to_string(),
        "--no-host-dns".into(),
        "--dns-upstream".into(),
        upstream.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}
