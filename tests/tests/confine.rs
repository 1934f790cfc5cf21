//! `enforcer run` confines a root command: it cannot leave its cgroup, see or signal enforcer,
//! change nft rules or regain the dropped capabilities; `--user` runs it unprivileged; a killed
//! agent leaves it confined until it is killed and cleaned up; bad command lines exit 125.
//!
//! Real kernel, real cgroups, peers in a private netns that record every connection that reaches
//! them. Helpers specific to these tests live here.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::*;
use serde_json::Value;

/// `enforcer ARGS...` without the sudo variables of the test's environment (so the command's
/// identity is what the test says), 60 s deadline.
fn enforcer_clean(args: &[String]) -> Outcome {
    let mut c = Command::new(enforcer_bin());
    c.args(args).env("NO_COLOR", "1").env_remove("SUDO_UID").env_remove("SUDO_GID").env_remove("SUDO_USER");
    output_with_timeout(&mut c, Duration::from_secs(60))
}

/// A python3 any user may execute (the tests' own may live under /root, e.g. pyenv).
fn system_python() -> PathBuf {
    let p = PathBuf::from("/usr/bin/python3");
    if p.exists() { p } else { python() }
}

fn run_args(policy: &[String], cmd: &[String]) -> Vec<String> {
    let mut v = vec!["run".to_string()];
    v.extend(policy.iter().cloned());
    v.push("--".into());
    v.extend(cmd.iter().cloned());
    v
}

/// A TCP listener on `::` (every address of the netns) that appends one line per connection,
/// `LOCAL_ADDR DATA`, to a log file, and answers like the shared test server.
const RECORDER_PY: &str = r#"
import socket, sys, threading
log, port = sys.argv[1], int(sys.argv[2])
lock = threading.Lock()
def handle(c):
    try:
        c.settimeout(2)
        a = c.getsockname()[0]
        a = a[7:] if a.startswith('::ffff:') else a
        data = b''
        try:
            while b'\r\n\r\n' not in data and len(data) < 4096:
                d = c.recv(4096)
                if not d:
                    break
                data += d
        except OSError:
            pass
        with lock, open(log, 'a') as f:
            f.write('%s %r\n' % (a, data))
        c.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n')
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', port))
s.listen(128)
print('ready', flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

struct Recorder {
    _server: Server,
    log: PathBuf,
}

impl Recorder {
    fn start(ns: &Netns, dir: &TempDir, port: u16) -> Self {
        let log = dir.join(&format!("arrivals-{port}.log"));
        std::fs::write(&log, "").unwrap();
        let mut c = ns.command(python());
        c.arg("-c").arg(RECORDER_PY).arg(&log).arg(port.to_string());
        let server = Server::start(c, &format!("recorder on port {port} in netns {}", ns.name));
        Self { _server: server, log }
    }

    /// Lines `ADDR DATA` for connections that reached `addr`.
    fn arrivals(&self, addr: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(addr))
            .map(str::to_string)
            .collect()
    }
}

/// Probes run as the command: every way out it should not have, then one connect to an
/// unregistered and one to a registered address. Prints one JSON object.
/// argv: ENFORCER_PID BAD_ADDR GOOD_ADDR PORT CGROUP_PROCS_PATHS...
const PROBE_PY: &str = r#"
import errno, json, os, signal, socket, subprocess, sys
epid, bad, good, port = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
res = {'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(), 'pid': os.getpid(),
       'home': os.environ.get('HOME'), 'user': os.environ.get('USER')}
def attempt(name, f):
    try:
        f()
        res[name] = 'ok'
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
def write_pid(path):
    def f():
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    return f
for i, p in enumerate(sys.argv[5:]):
    attempt('escape%d' % i, write_pid(p))
res['cgroup'] = open('/proc/self/cgroup').read()
attempt('mkdir_cgroup', lambda: os.mkdir('/sys/fs/cgroup/unified/sub' if os.path.isdir('/sys/fs/cgroup/unified') else '/sys/fs/cgroup/sub'))
attempt('kill_enforcer', lambda: os.kill(epid, signal.SIGKILL))
attempt('pidfd_enforcer', lambda: os.close(os.pidfd_open(epid)))
res['proc_enforcer'] = os.path.exists('/proc/%d' % epid)
# kill(0) reaches the caller's process group: make sure that is not enforcer's.
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
attempt('kill_group', lambda: os.kill(0, signal.SIGUSR1))
try:
    n = subprocess.run(['nft', 'add', 'table', 'inet', os.environ['ENFT_TABLE']], capture_output=True, text=True)
    res['nft'] = [n.returncode, n.stderr.strip()]
except FileNotFoundError:
    res['nft'] = None
attempt('raw_socket', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close())
def core_pattern():
    fd = os.open('/proc/sys/kernel/core_pattern', os.O_WRONLY)  # opened, never written
    os.close(fd)
attempt('core_pattern', core_pattern)
res['bpffs_pins'] = os.path.exists('/sys/fs/bpf/enforcer')
res['run_records'] = os.path.exists('/run/enforcer/run')
st = {}
for l in open('/proc/self/status'):
    k, _, v = l.partition(':')
    if k.startswith('Cap') or k == 'NoNewPrivs':
        st[k] = v.strip()
res['status'] = st
def connect(addr):
    def f():
        s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
        s.settimeout(5)
        s.connect((addr, port))
        s.sendall(b'probe\r\n\r\n')
        s.recv(100)
        s.close()
    return f
attempt('connect_bad', connect(bad))
attempt('connect_good', connect(good))
print(json.dumps(res), flush=True)
"#;

/// Capability numbers the command must not have.
const DROPPED: [(u32, &str); 7] = [
    (21, "CAP_SYS_ADMIN"),
    (12, "CAP_NET_ADMIN"),
    (13, "CAP_NET_RAW"),
    (39, "CAP_BPF"),
    (38, "CAP_PERFMON"),
    (19, "CAP_SYS_PTRACE"),
    (16, "CAP_SYS_MODULE"),
];

struct Probe {
    out: Outcome,
    res: Value,
}

impl Probe {
    fn cap_set(&self, set: &str) -> u64 {
        u64::from_str_radix(self.res["status"][set].as_str().unwrap_or_else(|| panic!("{set}: {}", self.res)), 16)
            .unwrap()
    }

    fn assert_no_dropped_caps(&self) {
        for set in ["CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"] {
            let v = self.cap_set(set);
            for (bit, name) in DROPPED {
                assert_eq!(v & (1 << bit), 0, "{name} is in {set} ({v:x})\n{}", self.out);
            }
        }
        assert_eq!(self.res["status"]["NoNewPrivs"], "1", "no_new_privs\n{}", self.out);
    }
}

/// Removes the nft table a probe tried to create, should confinement ever fail.
struct NftTable(String);

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.0]).stderr(Stdio::null()).status();
    }
}

fn nft_table_exists(name: &str) -> bool {
    Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(name))
        .unwrap_or(false)
}

/// Run [`PROBE_PY`] under `enforcer run EXTRA...` with a registry allowing `good:port`, the
/// command's cgroup under `parent`. The probe also tries the parent's and the root's cgroup.procs.
fn probe(ns: &Netns, parent: &Cgroup, dir: &TempDir, extra: &[&str], table: &str) -> Probe {
    let (bad, good) = (ns.v4(3), ns.v4(2));
    let reg = dir.write("registry.yaml", &service_entry("good", &[], std::slice::from_ref(&good), &[(8080, "HTTP")]));
    let mut policy = vec![
        "--registry".to_string(),
        reg.display().to_string(),
        "--no-host-dns".into(),
        "--cgroup-parent".into(),
        parent.path.display().to_string(),
    ];
    policy.extend(extra.iter().map(|s| s.to_string()));
    // The probe learns enforcer's pid (only known once it runs) on its stdin.
    let script = format!(
        "import sys\nsys.argv = ['probe', sys.stdin.readline().strip()] + sys.argv[1:]\nexec(compile({PROBE_PY:?}, 'probe', 'exec'))\n"
    );
    let mut cmd = vec![system_python().display().to_string(), "-c".into(), script, bad, good, "8080".into()];
    cmd.push(parent.path.join("cgroup.procs").display().to_string());
    cmd.push(cgroup2_mount().join("cgroup.procs").display().to_string());
    cmd.push(own_cgroup_dir().join("cgroup.procs").display().to_string());

    let mut c = Command::new(enforcer_bin());
    c.args(run_args(&policy, &cmd))
        .env("NO_COLOR", "1")
        .env("ENFT_TABLE", table)
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .env_remove("SUDO_USER");
    let out = output_feeding_pid(&mut c, Duration::from_secs(60));
    let line = out.stdout.lines().last().unwrap_or_else(|| panic!("the probe printed nothing\n{out}"));
    let res: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}\n{out}"));
    Probe { out, res }
}

/// Run `cmd` with piped output, writing its pid (one line) to its stdin; SIGKILL and fail after
/// `timeout`.
fn output_feeding_pid(cmd: &mut Command, timeout: Duration) -> Outcome {
    use std::io::Write as _;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning enforcer");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", child.id()).unwrap();
    drop(stdin);
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome { status: shell_status(status), stdout: t1.join().unwrap(), stderr: t2.join().unwrap() }
}

#[test]
fn root_command_cannot_leave_its_cgroup_see_enforcer_or_change_the_network() {
    let ns = Netns::new();
    let dir = TempDir::new("confroot");
    let rec = Recorder::start(&ns, &dir, 8080);
    let parent = Cgroup::new("confroot");
    let table = format!("enft_probe_{}", unique_tag().replace('-', "_"));
    let _t = NftTable(table.clone());
    let p = probe(&ns, &parent, &dir, &["--as-root"], &table);
    p.out.assert_status(0);
    let r = &p.res;
    assert_eq!(r["uid"], 0, "--as-root keeps uid 0\n{}", p.out);
    // Its cgroup namespace is rooted at its cgroup; no cgroup.procs outside it can be written.
    assert!(r["cgroup"].as_str().unwrap().lines().any(|l| l == "0::/"), "{r}");
    for i in 0..3 {
        assert_ne!(r[format!("escape{i}")], "ok", "the command moved itself out of its cgroup\n{}", p.out);
    }
    assert_ne!(r["mkdir_cgroup"], "ok", "{r}");
    // PID namespace: enforcer does not exist for it; its process group is not enforcer's.
    assert_eq!(r["pid"], 2, "the command is PID 2 under its init\n{r}");
    assert_eq!(r["kill_enforcer"], "ESRCH", "{r}");
    assert_eq!(r["pidfd_enforcer"], "ESRCH", "{r}");
    assert_eq!(r["proc_enforcer"], false, "{r}");
    assert_eq!(r["kill_group"], "ok", "{r}");
    // No nft, no raw sockets, no kernel knobs, no pins.
    let nft = &r["nft"];
    assert!(!nft.is_null(), "nft is needed by this test");
    assert_ne!(nft[0], 0, "nft add table succeeded inside the run\n{}", p.out);
    assert!(nft[1].as_str().unwrap().contains("Operation not permitted"), "{nft}");
    assert!(!nft_table_exists(&table), "the table reached the host's nft ruleset");
    assert_eq!(r["raw_socket"], "EPERM", "{r}");
    assert_eq!(r["core_pattern"], "EROFS", "{r}");
    assert_eq!(r["bpffs_pins"], false, "{r}");
    assert_eq!(r["run_records"], false, "the runs' records are hidden\n{r}");
    p.assert_no_dropped_caps();
    // Root keeps what `make install` needs.
    let eff = p.cap_set("CapEff");
    for (bit, name) in [(0, "CAP_CHOWN"), (1, "CAP_DAC_OVERRIDE"), (3, "CAP_FOWNER")] {
        assert_ne!(eff & (1 << bit), 0, "root keeps {name} ({eff:x})");
    }
    // Its connects are still judged, and enforcer (not killable by it) reports them.
    assert_eq!(r["connect_bad"], "EPERM", "{r}");
    assert_eq!(r["connect_good"], "ok", "{r}");
    assert!(rec.arrivals(&ns.v4(3)).is_empty(), "the unregistered peer got a connection");
    assert_eq!(rec.arrivals(&ns.v4(2)).len(), 1, "the registered peer got the probe");
    let deny = format!("enforcer: denied connect python3[2] -> {}:8080/tcp", ns.v4(3));
    assert!(p.out.stderr.contains(&deny), "deny line with the command's own pid\n{}", p.out);
    assert!(p.out.stderr.contains("enforcer: summary"), "enforcer survived to print its summary\n{}", p.out);
}

#[test]
fn user_nobody_runs_as_nobody_and_is_judged() {
    let ns = Netns::new();
    let dir = TempDir::new("confnobody");
    let rec = Recorder::start(&ns, &dir, 8080);
    let parent = Cgroup::new("confnobody");
    let table = format!("enft_probe_{}", unique_tag().replace('-', "_"));
    let _t = NftTable(table.clone());
    let p = probe(&ns, &parent, &dir, &["--user", "nobody"], &table);
    p.out.assert_status(0);
    let r = &p.res;
    assert_eq!((r["uid"].as_u64(), r["gid"].as_u64()), (Some(65534), Some(65534)), "{r}");
    assert_eq!(r["user"], "nobody");
    assert_eq!(r["home"], "/nonexistent");
    assert!(!r["groups"].as_array().unwrap().iter().any(|g| g == 0), "no root group: {r}");
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(p.cap_set(set), 0, "nobody has no capabilities in {set}\n{r}");
    }
    p.assert_no_dropped_caps();
    for i in 0..3 {
        assert_ne!(r[format!("escape{i}")], "ok", "{r}");
    }
    assert_eq!(r["kill_enforcer"], "ESRCH", "{r}");
    assert_ne!(r["nft"][0], 0, "{r}");
    assert!(!nft_table_exists(&table));
    assert_eq!(r["connect_bad"], "EPERM", "{r}");
    assert_eq!(r["connect_good"], "ok", "{r}");
    assert!(rec.arrivals(&ns.v4(3)).is_empty());
}

#[test]
fn sudo_user_is_the_default_and_as_root_keeps_root() {
    preflight();
    let id = system_python().display().to_string();
    let script = "import os; print(os.getuid(), os.getgid(), os.environ.get('USER'))".to_string();
    let cmd = [id.clone(), "-c".into(), script];
    let mut c = Command::new(enforcer_bin());
    c.args(run_args(&["--no-host-dns".into()], &cmd))
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .env("SUDO_USER", "nobody");
    let out = output_with_timeout(&mut c, Duration::from_secs(60));
    out.assert_status(0);
    assert_eq!(out.stdout.trim(), "65534 65534 nobody", "under sudo the command runs as the invoking user\n{out}");
    let mut c = Command::new(enforcer_bin());
    c.args(run_args(&["--no-host-dns".into(), "--as-root".into()], &cmd)).env("SUDO_UID", "65534");
    let out = output_with_timeout(&mut c, Duration::from_secs(60));
    out.assert_status(0);
    assert!(out.stdout.starts_with("0 0 "), "--as-root keeps root\n{out}");
}

#[test]
fn privileged_keeps_the_old_behaviour_with_a_warning() {
    let parent = Cgroup::new("confpriv");
    let script = "import os\nprint(os.getpid())\nprint(open('/proc/self/cgroup').read().strip().splitlines()[-1])\nprint([l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])";
    let cmd = [python().display().to_string(), "-c".into(), script.into()];
    let out = enforcer_clean(&run_args(
        &["--no-host-dns".into(), "--privileged".into(), "--cgroup-parent".into(), parent.path.display().to_string()],
        &cmd,
    ));
    out.assert_status(0);
    assert!(out.stderr.contains("warning: --privileged"), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].parse::<u32>().unwrap() > 2, "no PID namespace\n{out}");
    assert!(lines[1].starts_with(&format!("0::{}/enforcer-run-", parent.rel())), "no cgroup namespace\n{out}");
    let eff = u64::from_str_radix(lines[2], 16).unwrap();
    assert_ne!(eff & (1 << 21), 0, "CAP_SYS_ADMIN is kept\n{out}");
}

/// The command of a killed agent: keeps trying an unregistered and a registered address and says
/// what happened, one line per attempt.
const LOOP_PY: &str = r#"
import socket, sys, time
bad, good, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
n = 0
while True:
    for addr in (bad, good):
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect((addr, port))
            s.sendall(b'marker-%d\r\n\r\n' % n)
            r = 'ok'
        except OSError as e:
            r = 'errno%d' % e.errno
        s.close()
        try:
            print(addr, r, flush=True)
        except OSError:
            pass
    n += 1
    time.sleep(0.02)
"#;

/// A run of [`LOOP_PY`] with its cgroup under a test cgroup, and readers of its output.
struct LoopRun {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    cgroup: PathBuf,
    epid: u32,
}

impl LoopRun {
    fn start(ns: &Netns, dir: &TempDir, parent: &Cgroup) -> Self {
        let reg = dir.write("registry.yaml", &service_entry("good", &[], &[ns.v4(2)], &[(8080, "HTTP")]));
        let policy = [
            "--registry".to_string(),
            reg.display().to_string(),
            "--no-host-dns".into(),
            "--quiet".into(),
            "--as-root".into(),
            "--cgroup-parent".into(),
            parent.path.display().to_string(),
        ];
        let cmd = [python().display().to_string(), "-c".into(), LOOP_PY.into(), ns.v4(3), ns.v4(2), "8080".into()];
        let mut c = Command::new(enforcer_bin());
        c.args(run_args(&policy, &cmd))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let epid = child.id();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let cgroup = parent.path.join(format!("enforcer-run-{epid}"));
        Self { child, lines, stderr: Some(stderr), cgroup, epid }
    }

    /// Wait until the loop has tried both addresses `n` times (the bad one denied).
    fn wait_attempts(&self, bad: &str, n: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.iter().filter(|l: &&String| l.starts_with(&format!("{bad} "))).count() < n {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("the command did not make {n} attempts; saw {seen:?}"),
            }
        }
        seen
    }

    fn pin_dir(&self) -> Option<PathBuf> {
        std::fs::read_dir("/sys/fs/bpf/enforcer")
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("run-{}-", self.epid))))
    }

    fn record(&self) -> Option<PathBuf> {
        std::fs::read_dir("/run/enforcer/run")
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}-", self.epid))))
    }

    fn command_pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.cgroup.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The supervisor: enforcer's child running `__enforcer-run-supervisor`.
    fn supervisor_pid(&self) -> Option<i32> {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            (ppid == self.epid && String::from_utf8_lossy(&cmdline).contains("__enforcer-run-supervisor"))
                .then_some(pid)
        })
    }

    fn kill_enforcer(&mut self) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.epid as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Wait (≤ `within`) until the cgroup, the pins and the record are gone; how long it took.
    fn wait_cleaned(&self, within: Duration) -> Duration {
        let t0 = Instant::now();
        while self.cgroup.exists() || self.pin_dir().is_some() || self.record().is_some() {
            assert!(
                t0.elapsed() < within,
                "not cleaned up after {within:?}: cgroup {} exists: {}, pins: {:?}, record: {:?}",
                self.cgroup.display(),
                self.cgroup.exists(),
                self.pin_dir(),
                self.record()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t0.elapsed()
    }

    fn stderr(&mut self) -> String {
        self.stderr.take().map(|h| h.join().unwrap()).unwrap_or_default()
    }
}

impl Drop for LoopRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("Z"),
    }
}

fn assert_dead_within(pids: &[i32], within: Duration) {
    let t0 = Instant::now();
    while !pids.iter().all(|p| is_gone(*p)) {
        assert!(t0.elapsed() < within, "the command's processes {pids:?} are still alive after {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn killed_agent_leaves_the_command_confined_and_the_supervisor_kills_it() {
    let ns = Netns::new();
    let dir = TempDir::new("confkill");
    let rec = Recorder::start(&ns, &dir, 8080);
    let parent = Cgroup::new("confkill");
    let (bad, good) = (ns.v4(3), ns.v4(2));
    let mut run = LoopRun::start(&ns, &dir, &parent);
    let before = run.wait_attempts(&bad, 5);
    assert!(before.contains(&format!("{bad} errno1")), "denied with EPERM: {before:?}");
    assert!(before.contains(&format!("{good} ok")), "{before:?}");
    assert!(run.pin_dir().is_some() && run.record().is_some(), "the run pins its programs and records itself");
    let pids = run.command_pids();
    assert!(!pids.is_empty());

    let t0 = Instant::now();
    run.kill_enforcer();
    let cleaned = run.wait_cleaned(Duration::from_secs(5));
    assert_dead_within(&pids, Duration::from_secs(2));
    eprintln!("agent SIGKILLed: cleaned up in {cleaned:?}, command dead {:?} after the kill", t0.elapsed());
    let after: Vec<String> = run.lines.try_iter().collect();
    assert!(!after.iter().chain(&before).any(|l| l == &format!("{bad} ok")), "a connect to {bad} succeeded");
    assert!(rec.arrivals(&bad).is_empty(), "the unregistered peer received {:?}", rec.arrivals(&bad));
    assert!(!rec.arrivals(&good).is_empty());
    let stderr = run.stderr();
    assert!(
        stderr.contains(&format!("(pid {}) is gone: killed", run.epid)),
        "the supervisor says what it did\n{stderr}"
    );
}

/// Supervisor and agent both killed: the command stays confined until `enforcer unpin --stale`
/// (or the next `enforcer run`, which also cleans up) ends it.
fn orphaned_run_is_cleaned_by(cleaner: &[&str]) {
    let ns = Netns::new();
    let dir = TempDir::new("confstale");
    let rec = Recorder::start(&ns, &dir, 8080);
    let parent = Cgroup::new("confstale");
    let bad = ns.v4(3);
    let mut run = LoopRun::start(&ns, &dir, &parent);
    run.wait_attempts(&bad, 3);
    let pids = run.command_pids();
    let sup = run.supervisor_pid().expect("the run has a supervisor");
    // SAFETY: plain syscall on the supervisor of our own run.
    unsafe { libc::kill(sup, libc::SIGKILL) };
    assert_dead_within(&[sup], Duration::from_secs(2));
    run.kill_enforcer();
    // Orphaned: still confined. (Another test's `enforcer run` may clean it up meanwhile.)
    std::thread::sleep(Duration::from_millis(500));
    if run.cgroup.exists() {
        let late: Vec<String> = run.lines.try_iter().collect();
        assert!(!late.iter().any(|l| l == &format!("{bad} ok")), "a connect to {bad} succeeded: {late:?}");
    }
    let out = enforcer_clean(&cleaner.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    out.assert_status(0);
    run.wait_cleaned(Duration::from_secs(5));
    assert_dead_within(&pids, Duration::from_secs(2));
    assert!(rec.arrivals(&bad).is_empty(), "the unregistered peer received {:?}", rec.arrivals(&bad));
    let after: Vec<String> = run.lines.try_iter().collect();
    assert!(!after.iter().any(|l| l == &format!("{bad} ok")), "a connect to {bad} succeeded");
}

#[test]
fn orphaned_run_is_cleaned_by_unpin_stale() {
    orphaned_run_is_cleaned_by(&["unpin", "--stale"]);
}

#[test]
fn orphaned_run_is_cleaned_by_the_next_run() {
    orphaned_run_is_cleaned_by(&["run", "--no-host-dns", "--quiet", "--", "true"]);
}

#[test]
fn bad_allow_values_and_usage_errors_exit_125() {
    preflight();
    let dir = TempDir::new("confbad");
    let marker = dir.join("ran");
    let touch = ["touch".to_string(), marker.display().to_string()];
    for (flag, value, reason) in [
        ("--allow", "198.18.11.3:80:90", "one port per --allow"),
        ("--allow", "2001:db8::zz", "not an IPv6 address"),
        ("--allow", "bad_name!", "RFC 1123"),
        ("--allow", "api.example.com:0", "port"),
        ("--allow-cidr", "198.18.11.7/33", "CIDR"),
    ] {
        let out = enforcer_clean(&run_args(&["--no-host-dns".into(), flag.into(), value.into()], &touch));
        out.assert_status(125);
        assert!(out.stderr.contains(value) && out.stderr.contains(reason), "{flag} {value}: says why\n{out}");
        assert!(!marker.exists(), "the command ran despite {flag} {value}");
    }
    // Host bits set: allowed, with a warning naming the network it becomes.
    let out =
        enforcer_clean(&run_args(&["--no-host-dns".into(), "--allow-cidr".into(), "198.18.11.7/24".into()], &touch));
    out.assert_status(0);
    assert!(out.stderr.contains("host bits are set") && out.stderr.contains("198.18.11.0/24"), "{out}");
    std::fs::remove_file(&marker).unwrap();

    // Usage errors are enforcer's failures (125), never a status the command could have had.
    for args in [
        run_args(&["--mode".into(), "REGISTRY_ONLYX".into()], &touch),
        run_args(&["--no-such-flag".into()], &touch),
        run_args(&["--user".into(), "nobody".into(), "--as-root".into()], &touch),
        vec!["run".into()],
        vec!["no-such-subcommand".into()],
    ] {
        let out = enforcer_clean(&args);
        out.assert_status(125);
        assert!(out.stderr.contains("error:"), "{args:?}\n{out}");
        assert!(!marker.exists(), "the command ran: {args:?}");
    }
    let out = enforcer_clean(&run_args(&["--mode".into(), "REGISTRY_ONLYX".into()], &touch));
    assert!(out.stderr.contains("REGISTRY_ONLYX"), "{out}");
    let out = enforcer_clean(&run_args(&["--user".into(), "no-such-user-enforcer".into()], &touch));
    out.assert_status(125);
    assert!(out.stderr.contains("no-such-user-enforcer"), "{out}");
    for ok in [vec!["--help".to_string()], vec!["--version".into()], vec!["run".into(), "--help".into()]] {
        let out = enforcer_clean(&ok);
        out.assert_status(0);
        assert!(!out.stdout.is_empty(), "{out}");
    }
}

/// A python pty driver: `enforcer run -- CMD` in an interactive bash on a terminal. Prints what
/// it saw; exits 0 when every step matched.
const PTY_PY: &str = r#"
import os, pty, re, select, sys, time
enforcer = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.environ['PS1'] = 'PROMPT> '
    os.execvp('bash', ['bash', '--norc', '--noprofile', '-i'])
out = b''
def expect(pat, t=15):
    global out
    end = time.time() + t
    while time.time() < end:
        m = re.search(pat.encode(), out)
        if m:
            out = out[m.end():]
            return m
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    sys.stdout.write('did not see %r in %r\n' % (pat, out))
    sys.exit(1)
def send(s):
    os.write(fd, s.encode())
expect('PROMPT> ')
send(enforcer + " run --no-host-dns --as-root -- sh -c 'tty; echo pgid=$(ps -o pgid= -p $$) tpgid=$(ps -o tpgid= -p $$); exec sleep 30'\n")
expect(r'/dev/pts/\d+')
m = expect(r'pgid= *(\d+) tpgid= *(\d+)')
if m.group(1) != m.group(2):
    print('the command is not the foreground process group: %r' % m.group(0))
    sys.exit(1)
# Let sh be in `sleep` (not between its vfork and exec, where no shell job can be stopped).
time.sleep(0.5)
send('\x1a')
expect('Stopped')
expect('PROMPT> ')
send('fg\n')
time.sleep(1)
send('\x03')
expect('PROMPT> ')
send('echo status=$?\n')
expect('status=130')
send('exit\n')
print('ok')
"#;

#[test]
fn the_terminal_and_job_control_keep_working() {
    preflight();
    let out = output_with_timeout(
        Command::new(python()).args(["-c", PTY_PY]).arg(enforcer_bin()).env_remove("SUDO_UID"),
        Duration::from_secs(60),
    );
    assert_eq!(out.status, 0, "tty / ^Z / fg / ^C under enforcer run\n{out}");
}
