//! Child processes with deadlines and guards: [`Outcome`], [`output_with_timeout`],
//! [`LineFollower`] (a process whose output is collected as it comes), [`Frozen`] (SIGSTOP for a
//! guard's lifetime), and /proc readings.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

/// What a finished command did. `status` is the exit code, or 128+N for signal N (like a shell).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn assert_status(&self, want: i32) -> &Self {
        assert_eq!(self.status, want, "unexpected exit status\n{self}");
        self
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--- status {}\n--- stdout\n{}\n--- stderr\n{}", self.status, self.stdout, self.stderr)
    }
}

pub fn shell_status(st: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => -1,
    }
}

/// Run `cmd` to completion with piped output; after `timeout` it gets SIGTERM, then SIGKILL, and
/// the test fails.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Outcome {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {desc}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let t2 = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline && !timed_out {
            timed_out = true;
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
        }
        thread::sleep(Duration::from_millis(5));
    };
    let out = Outcome {
        status: shell_status(status),
        stdout: String::from_utf8_lossy(&t1.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t2.join().unwrap()).into_owned(),
    };
    assert!(!timed_out, "timed out after {timeout:?}: {desc}\n{out}");
    out
}

/// A long-running process whose stdout lines are collected as they come (e.g.
/// `enforcer events --follow`). Killed (SIGKILL) and reaped on drop.
pub struct LineFollower {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    what: String,
}

impl LineFollower {
    pub fn spawn(cmd: &mut Command) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let what = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let lines: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let l = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    l.lock().unwrap().push(line);
                }
            });
        }
        Self { child, lines, what }
    }

    /// Every line so far (stdout and stderr, in arrival order).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Wait (≤ `timeout`) for a line matching `pred`; panics with everything seen otherwise.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            let exited = self.child.try_wait().ok().flatten();
            assert!(
                Instant::now() < deadline && exited.is_none(),
                "{}: no matching line within {timeout:?} (exited: {exited:?}); lines so far:\n{}",
                self.what,
                self.lines().join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for LineFollower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGSTOP a process (our own child, e.g. a daemon) for as long as the guard lives; SIGCONT on
/// drop, so a failing assertion never leaves it frozen.
pub struct Frozen(i32);

impl Frozen {
    pub fn new(pid: u32) -> Self {
        // SAFETY: plain syscall on a process the test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0, "SIGSTOP {pid}");
        Self(pid as i32)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: plain syscall on a process the test started.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// VmRSS of `pid` in KiB (from /proc/PID/status), None if gone.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
}
