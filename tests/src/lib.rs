//! Shared guards and helpers for the enforcer integration tests.
//!
//! Everything that touches the kernel is wrapped in an RAII guard that cleans up on every path,
//! panics included:
//! - [`Netns`]: a network namespace with a veth pair, a private /24 (198.18.0.0/15) and /64
//!   (fd00::/8) per test, allocated under a cross-process lock so parallel tests (and parallel
//!   test binaries) never collide;
//! - [`Server`]: a real listener process (python3) inside a netns, killed on drop;
//! - [`Cgroup`]: a child cgroup of this process's own cgroup, emptied (cgroup.kill) and removed on
//!   drop;
//! - [`PinDir`] / [`Daemon`]: an `enforcer daemon` process and its bpffs pin directory; dropping
//!   stops the daemon (SIGTERM) and runs `enforcer unpin`;
//! - [`TempDir`].
//!
//! The tests need root, cgroup v2 and bpffs. Without them they FAIL with a message saying what is
//! missing (they never pass vacuously).

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::{
        fd::AsRawFd as _,
        unix::{fs::PermissionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// `<pid>-<n>`: unique across processes on this machine (for names of cgroups, dirs, netns).
pub fn unique_tag() -> String {
    format!("{}-{}", std::process::id(), unique())
}

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

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
                && let Some(m) = left.split_whitespace().nth(4) {
                    return PathBuf::from(m.replace("\\040", " "));
                }
        }
        panic!("no cgroup2 filesystem is mounted (checked /proc/self/mountinfo); the enforcer integration tests need cgroup v2")
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

fn sh(prog: &str, args: &[&str]) -> String {
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

fn sh_quiet(prog: &str, args: &[&str]) {
    let _ = Command::new(prog).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

// ---------------------------------------------------------------------------------------------
// Processes with deadlines
// ---------------------------------------------------------------------------------------------

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

/// `enforcer ARGS...` with a 60 s deadline.
pub fn enforcer<I, S>(args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(enforcer_bin());
    c.args(args).env("NO_COLOR", "1");
    output_with_timeout(&mut c, Duration::from_secs(60))
}

/// `enforcer run POLICY_ARGS... -- CMD...`.
pub fn enforcer_run<P: AsRef<OsStr>, S: AsRef<OsStr>>(policy: &[P], cmd: &[S]) -> Outcome {
    let mut args: Vec<&OsStr> = vec![OsStr::new("run")];
    args.extend(policy.iter().map(|s| s.as_ref()));
    args.push(OsStr::new("--"));
    args.extend(cmd.iter().map(|s| s.as_ref()));
    enforcer(args)
}

// ---------------------------------------------------------------------------------------------
// Python clients
// ---------------------------------------------------------------------------------------------

/// Client: each argument is `PROTO|ADDR|PORT` (PROTO: tcp, udp = sendto without connect,
/// udpconnect = connect then send). Prints one JSON line `{pid, results: [{op, ok, errno, error,
/// reply}]}`; `reply` is the HTTP body (tcp) or datagram (udp).
pub const CLIENT_PY: &str = r#"
import json, os, socket, sys
res = []
for op in sys.argv[1:]:
    proto, addr, port = op.split('|')
    port = int(port)
    fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
    r = {'op': op, 'ok': False, 'errno': None, 'error': None, 'reply': None}
    try:
        if proto == 'tcp':
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect((addr, port))
            s.sendall(b'GET / HTTP/1.0\r\n\r\n')
            data = b''
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            r['reply'] = data.split(b'\r\n\r\n', 1)[-1].decode()
        elif proto in ('udp', 'udpconnect'):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(3)
            if proto == 'udp':
                s.sendto(b'ping', (addr, port))
            else:
                s.connect((addr, port))
                s.send(b'ping')
            data, _ = s.recvfrom(4096)
            r['reply'] = data.decode()
        else:
            raise ValueError('bad proto ' + proto)
        s.close()
        r['ok'] = True
    except OSError as e:
        r['errno'] = e.errno
        r['error'] = str(e)
    res.append(r)
print(json.dumps({'pid': os.getpid(), 'results': res}))
sys.stdout.flush()
"#;

/// Server: each argument is `tcp:PORT` or `udp:PORT`, bound dual-stack on `::` (so every address
/// of the namespace answers). TCP answers one HTTP/1.0 response whose body is
/// `hello from ADDR:PORT` (the local address that was reached); UDP echoes `echo ADDR:PORT`.
/// Prints `ready` once everything is bound.
pub const SERVER_PY: &str = r#"
import socket, sys, threading
def local(sock):
    a, p = sock.getsockname()[:2]
    if a.startswith('::ffff:'):
        a = a[7:]
    elif ':' in a:
        a = '[' + a + ']'
    return '%s:%d' % (a, p)
def handle(c):
    try:
        c.settimeout(2)
        try:
            buf = b''
            while b'\r\n\r\n' not in buf:
                d = c.recv(4096)
                if not d:
                    break
                buf += d
        except OSError:
            pass
        body = ('hello from %s\n' % local(c)).encode()
        c.sendall(b'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
    except OSError:
        pass
    finally:
        c.close()
def tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(('::', port))
    s.listen(128)
    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    return loop
def udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    s.bind(('::', port))
    def loop():
        while True:
            data, anc, _, peer = s.recvmsg(4096, 1024)
            dst = None
            for level, typ, d in anc:
                if level == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO:
                    dst = socket.inet_ntop(socket.AF_INET6, d[:16])
            if dst is None:
                dst = '?'
            elif dst.startswith('::ffff:'):
                dst = dst[7:]
            else:
                dst = '[' + dst + ']'
            s.sendto(('echo %s:%d' % (dst, port)).encode(), peer)
    return loop
loops = []
for spec in sys.argv[1:]:
    kind, port = spec.split(':')
    loops.append((tcp if kind == 'tcp' else udp)(int(port)))
for l in loops:
    threading.Thread(target=l, daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
"#;

/// One result of [`CLIENT_PY`].
#[derive(Debug, Clone)]
pub struct ConnResult {
    pub op: String,
    pub ok: bool,
    pub errno: Option<i64>,
    pub error: Option<String>,
    pub reply: Option<String>,
}

impl ConnResult {
    pub fn assert_ok(&self, reply_contains: &str) {
        assert!(self.ok, "{} should have succeeded: {:?}", self.op, self);
        let reply = self.reply.as_deref().unwrap_or("");
        assert!(reply.contains(reply_contains), "{}: reply {reply:?} should contain {reply_contains:?}", self.op);
    }

    pub fn assert_eperm(&self) {
        assert!(!self.ok, "{} should have been denied with EPERM but succeeded: {:?}", self.op, self);
        assert_eq!(self.errno, Some(libc::EPERM as i64), "{} should fail with EPERM (1): {:?}", self.op, self);
    }
}

/// `tcp|ADDR|PORT` etc.
pub fn op(proto: &str, addr: impl std::fmt::Display, port: u16) -> String {
    format!("{proto}|{addr}|{port}")
}

/// The python client command line: `python3 -c CLIENT_PY OPS...`.
pub fn client_cmd(ops: &[String]) -> Vec<String> {
    let mut v = vec![python().display().to_string(), "-c".into(), CLIENT_PY.into()];
    v.extend(ops.iter().cloned());
    v
}

/// Parse the client's JSON output (the last line of stdout): (client pid, results).
pub fn parse_client(out: &Outcome) -> (u32, Vec<ConnResult>) {
    let line = out.stdout.lines().last().unwrap_or_else(|| panic!("client printed nothing\n{out}"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("client output is not JSON ({e})\n{out}"));
    let res = v["results"]
        .as_array()
        .expect("results list")
        .iter()
        .map(|r| ConnResult {
            op: r["op"].as_str().unwrap().to_string(),
            ok: r["ok"].as_bool().unwrap(),
            errno: r["errno"].as_i64(),
            error: r["error"].as_str().map(str::to_string),
            reply: r["reply"].as_str().map(str::to_string),
        })
        .collect();
    (v["pid"].as_u64().expect("pid") as u32, res)
}

/// A client run: the outcome, the client's pid and one result per op.
pub struct ClientRun {
    pub out: Outcome,
    pub pid: u32,
    pub res: Vec<ConnResult>,
}

impl ClientRun {
    fn from(out: Outcome, n: usize) -> Self {
        assert_eq!(out.status, 0, "the client failed\n{out}");
        let (pid, res) = parse_client(&out);
        assert_eq!(res.len(), n, "one result per op\n{out}");
        Self { out, pid, res }
    }

    /// Lines `enforcer: denied ...` / `enforcer: audit: ...` on stderr.
    pub fn verdict_lines(&self) -> Vec<&str> {
        self.out
            .stderr
            .lines()
            .filter(|l| l.starts_with("enforcer: denied") || l.starts_with("enforcer: audit"))
            .collect()
    }
}

/// Run the python client under `enforcer run POLICY...` (expects enforcer and client to exit 0).
pub fn run_client(policy: &[String], ops: &[String]) -> ClientRun {
    ClientRun::from(enforcer_run(policy, &client_cmd(ops)), ops.len())
}

// ---------------------------------------------------------------------------------------------
// Temp dirs and files
// ---------------------------------------------------------------------------------------------

pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("enforcer-tests-{tag}-{}", unique_tag()));
        fs::create_dir_all(&path).expect("creating temp dir");
        Self { path }
    }

    /// Write `name` (creating parents) and return its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path.join(name);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap();
        }
        // Write-then-rename, so a daemon reading concurrently never sees half a file.
        let tmp = p.with_file_name(format!(".{}.tmp", p.file_name().unwrap().to_string_lossy()));
        fs::write(&tmp, content).unwrap();
        fs::rename(&tmp, &p).unwrap();
        p
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A ServiceEntry with STATIC endpoints (and optional `addresses`).
/// `ports`: (number, protocol).
pub fn service_entry(name: &str, addresses: &[&str], endpoints: &[String], ports: &[(u16, &str)]) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts:\n  - {name}.enforcer.test\n  location: MESH_EXTERNAL\n"
    );
    if !addresses.is_empty() {
        s.push_str("  addresses:\n");
        for a in addresses {
            s.push_str(&format!("  - \"{a}\"\n"));
        }
    }
    s.push_str("  ports:\n");
    for (n, proto) in ports {
        s.push_str(&format!("  - number: {n}\n    name: {}-{n}\n    protocol: {proto}\n", proto.to_ascii_lowercase()));
    }
    s.push_str("  resolution: STATIC\n");
    if !endpoints.is_empty() {
        s.push_str("  endpoints:\n");
        for e in endpoints {
            s.push_str(&format!("  - address: \"{e}\"\n"));
        }
    }
    s
}

pub fn mesh_config(mode: &str) -> String {
    format!("outboundTrafficPolicy:\n  mode: {mode}\n")
}

// ---------------------------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------------------------

const LOCK_DIR: &str = "/run/enforcer-tests";

/// A network namespace joined to the host namespace by a veth pair.
///
/// Host side: `198.18.S.1/24`, `fd00:198:18:S::1/64`. Namespace side: `198.18.S.{2..=7}` and
/// `fd00:198:18:S::{2,3}` (all `nodad`). `S` is allocated under a file lock in /run so that
/// concurrent tests and test processes get distinct subnets, and only if the host has no address
/// or route in it yet.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub subnet: u8,
    _lock: fs::File,
}

impl Netns {
    /// Namespace-side host numbers that get addresses.
    pub const V4_HOSTS: [u8; 6] = [2, 3, 4, 5, 6, 7];
    pub const V6_HOSTS: [u16; 2] = [2, 3];

    pub fn new() -> Self {
        preflight();
        let n = unique();
        let pid = std::process::id();
        let (subnet, lock) = allocate_subnet(pid, n);
        let name = format!("enft-{pid}-{n}");
        // ≤ 15 chars: "et" + up to 7 digits of pid + "h" + counter.
        let host_if = format!("et{}h{}", pid % 10_000_000, n % 10_000);
        assert!(host_if.len() <= 15);
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name, host_if, subnet, _lock: lock };
        // From here on, Drop cleans up whatever was created.
        let h = &ns.host_if;
        sh("ip", &["link", "add", h, "type", "veth", "peer", "name", "veth0", "netns", &ns.name]);
        sh("ip", &["addr", "add", &format!("{}/24", ns.v4(1)), "dev", h]);
        sh("ip", &["-6", "addr", "add", &format!("{}/64", ns.v6(1)), "dev", h, "nodad"]);
        sh("ip", &["link", "set", h, "up"]);
        let mut batch = String::from("link set lo up\n");
        for x in Self::V4_HOSTS {
            batch.push_str(&format!("addr add {}/24 dev veth0\n", ns.v4(x)));
        }
        for x in Self::V6_HOSTS {
            batch.push_str(&format!("addr add {}/64 dev veth0 nodad\n", ns.v6(x)));
        }
        batch.push_str("link set veth0 up\n");
        ip_batch(&ns.name, &batch);
        ns
    }

    /// `198.18.S.host`.
    pub fn v4(&self, host: u8) -> String {
        format!("198.18.{}.{host}", self.subnet)
    }

    /// `fd00:198:18:S::host`.
    pub fn v6(&self, host: u16) -> String {
        format!("fd00:198:18:{}::{host:x}", self.subnet)
    }

    /// `198.18.S.0/len`-style CIDR within the subnet.
    pub fn v4_cidr(&self, first: u8, len: u8) -> String {
        format!("198.18.{}.{first}/{len}", self.subnet)
    }

    pub fn v6_net(&self) -> String {
        format!("fd00:198:18:{}::/64", self.subnet)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `nsenter --net=NS PROG`: only the network namespace changes.
    pub fn command(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(prog);
        c
    }

    /// Start [`SERVER_PY`] in the namespace for `specs` (`tcp:PORT`, `udp:PORT`).
    pub fn serve(&self, specs: &[&str]) -> Server {
        let mut c = self.command(python());
        c.arg("-c").arg(SERVER_PY).args(specs);
        Server::start(c, &format!("server {specs:?} in netns {}", self.name))
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

/// `ip -n NS -batch -` with `batch` on stdin.
fn ip_batch(ns: &str, batch: &str) {
    use std::io::Write as _;
    let mut c = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ip -batch");
    c.stdin.take().unwrap().write_all(batch.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "ip -n {ns} -batch failed: {}\n{batch}", String::from_utf8_lossy(&out.stderr));
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still in the namespace (servers whose guard was leaked) would keep it alive.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain syscall; these are processes the test started in its netns.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        // Deleting the host end removes the pair (and the host addresses/routes) at once.
        sh_quiet("ip", &["link", "del", &self.host_if]);
        sh_quiet("ip", &["netns", "del", &self.name]);
    }
}

/// Pick a /24 in 198.18.32.0–198.18.250.0 nobody on this host uses, holding a lock file for it.
fn allocate_subnet(pid: u32, n: u32) -> (u8, fs::File) {
    fs::create_dir_all(LOCK_DIR).expect("creating lock dir");
    let used = format!("{}\n{}", sh("ip", &["-o", "addr", "show"]), sh("ip", &["route", "show", "table", "all"]));
    const FIRST: u32 = 32;
    const COUNT: u32 = 219; // 32..=250
    let start = (pid.wrapping_mul(31).wrapping_add(n.wrapping_mul(7))) % COUNT;
    for i in 0..COUNT {
        let s = (FIRST + (start + i) % COUNT) as u8;
        if used.contains(&format!("198.18.{s}.")) || used.contains(&format!("fd00:198:18:{s}:")) {
            continue;
        }
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("{LOCK_DIR}/subnet-198.18.{s}.lock"))
            .expect("opening lock file");
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return (s, f);
        }
    }
    panic!("no free 198.18.x.0/24 subnet for a test network namespace");
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// A listener process; killed (and reaped) on drop.
pub struct Server {
    child: Child,
}

impl Server {
    /// Start `cmd` and wait (≤ 15 s) for it to print `ready` on stdout.
    pub fn start(mut cmd: Command, what: &str) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut srv = Self { child };
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the server never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) if l.trim() == "ready" => srv,
            Ok(l) => {
                let st = srv.child.try_wait().ok().flatten();
                panic!("{what} did not start (printed {l:?}, status {st:?})")
            }
            Err(_) => panic!("{what} did not print `ready` within 15 s"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Cgroups
// ---------------------------------------------------------------------------------------------

/// A child cgroup of this process's own cgroup. Drop kills everything inside and removes it.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(tag: &str) -> Self {
        preflight();
        let path = own_cgroup_dir().join(format!("enft-{tag}-{}", unique_tag()));
        assert_ne!(path, cgroup2_mount(), "refusing to use the root cgroup");
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }

    /// A child cgroup of this one (dropped before its parent when declared after it).
    pub fn child(&self, name: &str) -> Cgroup {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    /// Path relative to the cgroup2 mount, with a leading `/`.
    pub fn rel(&self) -> String {
        format!("/{}", self.path.strip_prefix(cgroup2_mount()).unwrap().display())
    }

    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Move a running process into this cgroup.
    pub fn move_in(&self, pid: u32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path.display()));
    }

    /// Make `cmd` join this cgroup before it execs (so its first connect is already judged).
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("opening {}/cgroup.procs: {e}", self.path.display()));
        let fd = procs.as_raw_fd();
        // The File must outlive the fork: keep it in the closure (it is CLOEXEC, so the exec'd
        // program does not inherit it).
        let procs = std::sync::Arc::new(procs);
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &procs;
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Run `argv` inside this cgroup to completion (30 s deadline).
    pub fn run(&self, argv: &[String]) -> Outcome {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        self.enter_on_exec(&mut c);
        output_with_timeout(&mut c, Duration::from_secs(30))
    }

    /// Run the python client in this cgroup.
    pub fn client(&self, ops: &[String]) -> ClientRun {
        ClientRun::from(self.run(&client_cmd(ops)), ops.len())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.pids().is_empty() && fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            for p in self.pids() {
                // SAFETY: plain syscall; processes in our own test cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        for _ in 0..250 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------------------------

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
            .args(daemon_isolation_args())
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

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

/// `--report-file` JSON, indexed: (list, destination, protocol) -> (service, count).
pub fn report_rows(report: &Value) -> HashMap<(String, String, String), (String, u64)> {
    let mut m = HashMap::new();
    for list in ["allowed", "denied", "audited"] {
        for r in report[list].as_array().unwrap_or_else(|| panic!("report has no {list} list: {report}")) {
            m.insert(
                (list.to_string(), r["destination"].as_str().unwrap().into(), r["protocol"].as_str().unwrap().into()),
                (r["service"].as_str().unwrap().into(), r["count"].as_u64().unwrap()),
            );
        }
    }
    m
}

/// Make `path` non-executable / executable.
pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// DNS: a real DNS server (dnsmasq) in a netns, a tiny DNS client, an interactive workload under
// `enforcer run`, and the admin API (helpers for tests/dns.rs)
// ---------------------------------------------------------------------------------------------

/// Give the namespace side of `ns` more addresses in its own /24: `198.18.S.{hosts}` (the
/// host side already routes the whole /24 over the veth). Listeners bound to `::` answer on them.
pub fn netns_add_v4_hosts(ns: &Netns, hosts: std::ops::RangeInclusive<u8>) {
    let mut batch = String::new();
    for x in hosts {
        if Netns::V4_HOSTS.contains(&x) || x <= 1 || x == 255 {
            continue;
        }
        batch.push_str(&format!("addr add {}/24 dev veth0\n", ns.v4(x)));
    }
    ip_batch(&ns.name, &batch);
}

/// A DNS reply, as seen by [`dns_query`].
#[derive(Debug, Clone)]
pub struct DnsReply {
    pub id: u16,
    pub rcode: u8,
    /// A and AAAA records of the answer section: (address, TTL).
    pub addrs: Vec<(std::net::IpAddr, u32)>,
    /// Number of records in the answer section (any type).
    pub answer_count: u16,
}

/// Encode a standard query (RD set) for `name`/`qtype`.
pub fn dns_encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

fn dns_skip_name(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let l = *b.get(i)? as usize;
        if l == 0 {
            return Some(i + 1);
        }
        if l & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        i += 1 + l;
    }
}

/// Parse a response (enough for the tests: header, A/AAAA answers).
pub fn dns_parse_reply(b: &[u8]) -> Option<DnsReply> {
    let u16_at = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let id = u16_at(0)?;
    let flags = u16_at(2)?;
    let qd = u16_at(4)?;
    let an = u16_at(6)?;
    let mut i = 12;
    for _ in 0..qd {
        i = dns_skip_name(b, i)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        i = dns_skip_name(b, i)?;
        let t = u16_at(i)?;
        let ttl = u32::from_be_bytes([*b.get(i + 4)?, *b.get(i + 5)?, *b.get(i + 6)?, *b.get(i + 7)?]);
        let len = u16_at(i + 8)? as usize;
        let rd = b.get(i + 10..i + 10 + len)?;
        match (t, len) {
            (1, 4) => addrs.push((std::net::IpAddr::from(<[u8; 4]>::try_from(rd).ok()?), ttl)),
            (28, 16) => addrs.push((std::net::IpAddr::from(<[u8; 16]>::try_from(rd).ok()?), ttl)),
            _ => {}
        }
        i += 10 + len;
    }
    Some(DnsReply { id, rcode: (flags & 0x0f) as u8, addrs, answer_count: an })
}

/// One UDP query from this (unconfined) process. Err on timeout or an unparseable reply.
pub fn dns_query(server: std::net::SocketAddr, name: &str, qtype: u16, timeout: Duration) -> std::io::Result<DnsReply> {
    let bind = if server.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let s = std::net::UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    let id = (unique() as u16).wrapping_mul(7919) ^ (std::process::id() as u16);
    s.send_to(&dns_encode_query(id, name, qtype), server)?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, from) = s.recv_from(&mut buf)?;
        if from != server {
            continue;
        }
        match dns_parse_reply(&buf[..n]) {
            Some(r) if r.id == id => return Ok(r),
            Some(_) => continue,
            None => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "unparseable DNS reply")),
        }
    }
}

/// The A records `server` gives for `name` right now (empty on error/none).
pub fn dns_a(server: std::net::SocketAddr, name: &str) -> Vec<std::net::IpAddr> {
    dns_query(server, name, 1, Duration::from_secs(2))
        .map(|r| r.addrs.into_iter().map(|(a, _)| a).collect())
        .unwrap_or_default()
}

/// `dnsmasq` serving a hosts file inside a netns on one address, port 53. Killed on drop.
///
/// Names come from an `--addn-hosts` file (answered with `--local-ttl`); `.test` is local
/// (`--local=/test/`), so any other `.test` name is NXDOMAIN and nothing is forwarded.
pub struct Dnsmasq {
    child: Child,
    pub addr: std::net::SocketAddr,
    pub hosts_path: PathBuf,
    pub log_path: PathBuf,
    _dir: TempDir,
}

impl Dnsmasq {
    /// `hosts`: (name, IP) lines; `local_ttl`: TTL of the answers; `extra`: more dnsmasq flags.
    /// Waits (≤ 15 s) until it answers.
    pub fn start(ns: &Netns, listen: &str, hosts: &[(&str, &str)], local_ttl: u32, extra: &[&str]) -> Self {
        let dir = TempDir::new("dnsmasq");
        let hosts_path = dir.write("hosts", &Self::hosts_text(hosts));
        let log_path = dir.join("dnsmasq.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut c = ns.command("dnsmasq");
        c.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            "--port=53",
            "--local=/test/",
            "--log-queries",
            "--log-facility=-",
        ])
        .arg(format!("--listen-address={listen}"))
        .arg(format!("--addn-hosts={}", hosts_path.display()))
        .arg(format!("--local-ttl={local_ttl}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        let child = c.spawn().expect("starting dnsmasq (apt-get install dnsmasq)");
        let addr = std::net::SocketAddr::new(listen.parse().expect("listen address"), 53);
        let mut d = Self { child, addr, hosts_path, log_path, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("dnsmasq exited during start-up ({st})\n--- log\n{}", d.log());
            }
            if dns_query(d.addr, "ready.probe.test", 1, Duration::from_millis(200)).is_ok() {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer on {} within 15 s\n--- log\n{}",
                d.addr,
                d.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn hosts_text(hosts: &[(&str, &str)]) -> String {
        hosts.iter().map(|(name, ip)| format!("{ip} {name}\n")).collect()
    }

    /// Replace the hosts file and SIGHUP dnsmasq; waits (≤ 10 s) until `probe` answers `want`.
    pub fn set_hosts(&self, hosts: &[(&str, &str)], probe: &str, want: &str) {
        fs::write(&self.hosts_path, Self::hosts_text(hosts)).unwrap();
        // SAFETY: plain syscall on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) }, 0);
        let want: std::net::IpAddr = want.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while dns_a(self.addr, probe) != vec![want] {
            assert!(
                Instant::now() < deadline,
                "dnsmasq never answered {probe} -> {want} after SIGHUP\n--- log\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("ENFORCER_TESTS_VERBOSE").is_some() || thread::panicking() {
            eprintln!("--- dnsmasq log ({})\n{}", self.log_path.display(), self.log());
        }
    }
}

/// A UDP "resolver" in a netns that reads queries and never answers (an upstream that times
/// out). Killed on drop.
pub fn udp_blackhole(ns: &Netns, addr: &str, port: u16) -> Server {
    let script = "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind((sys.argv[1], int(sys.argv[2])))\nprint('ready', flush=True)\nwhile True:\n    s.recvfrom(4096)\n";
    let mut c = ns.command(python());
    c.arg("-c").arg(script).arg(addr).arg(port.to_string());
    Server::start(c, &format!("udp blackhole {addr}:{port} in netns {}", ns.name))
}

/// Workload script for [`Workload`] / [`worker_cmd`]. Requests are JSON objects, one per line on
/// stdin (or one per argv argument: then it answers them and exits); each gets one JSON line on
/// stdout. Interactive mode prints `ready` first.
///
/// - `{"op":"resolve","name":N,"port":P}` -> `{ok, addrs, gai_errno, error}` (getaddrinfo,
///   AF_INET, SOCK_STREAM: the system resolver, i.e. the host's resolv.conf)
/// - `{"op":"connect","addr":A,"port":P}` -> `{ok, errno, error, reply}` (TCP + HTTP GET)
/// - `{"op":"resolve_connect","name":N,"port":P}` -> resolve, then connect to the first address
/// - `{"op":"query","server":S,"port":53,"name":N,"qtype":1,"transport":"udp|udpconnect|tcp"}`
///   -> `{ok, rcode, addrs:[[ip, ttl]...], ancount, elapsed, peer, recv_from, error}`: a hand-made
///   DNS query; `peer` is getpeername() (connected sockets), `recv_from` the datagram's source.
/// - `{"op":"race","names":[...],"ips":[...],"port":P}`: for each i: connect(ips[i]) without a
///   lookup first (`fresh` counts EPERMs = address not allowed before the lookup), then
///   getaddrinfo(names[i]) and connect to its answer at once -> `{n, fresh, eperm, other,
///   failures:[...], elapsed}`; optional `"pace": SECS` starts iteration i no earlier than
///   i * SECS after the first
pub const WORKER_PY: &str = r#"
import errno, json, os, random, socket, struct, sys, time

def enc(tid, name, qtype):
    q = struct.pack('>HHHHHH', tid, 0x0100, 1, 0, 0, 0)
    for l in name.rstrip('.').split('.'):
        q += bytes([len(l)]) + l.encode()
    return q + b'\0' + struct.pack('>HH', qtype, 1)

def skip(b, i):
    while True:
        l = b[i]
        if l == 0:
            return i + 1
        if l & 0xc0 == 0xc0:
            return i + 2
        i += 1 + l

def parse(b):
    tid, flags, qd, an, ns, ar = struct.unpack('>HHHHHH', b[:12])
    i = 12
    for _ in range(qd):
        i = skip(b, i) + 4
    addrs = []
    for _ in range(an):
        i = skip(b, i)
        t, c, ttl, ln = struct.unpack('>HHIH', b[i:i + 10])
        i += 10
        rd = b[i:i + ln]
        i += ln
        if t == 1 and ln == 4:
            addrs.append([socket.inet_ntop(socket.AF_INET, rd), ttl])
        elif t == 28 and ln == 16:
            addrs.append([socket.inet_ntop(socket.AF_INET6, rd), ttl])
    return tid, flags & 0xf, an, addrs

def addr_of(a):
    return [a[0], a[1]] if a else None

def resolve(name, port):
    r = {'ok': False, 'addrs': [], 'gai_errno': None, 'error': None}
    try:
        infos = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)
        seen = []
        for i in infos:
            if i[4][0] not in seen:
                seen.append(i[4][0])
        r['addrs'] = seen
        r['ok'] = True
    except socket.gaierror as e:
        r['gai_errno'] = e.errno
        r['error'] = str(e)
    return r

def connect(addr, port):
    r = {'ok': False, 'errno': None, 'error': None, 'reply': None}
    fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        s.connect((addr, port))
        s.sendall(b'GET / HTTP/1.0\r\n\r\n')
        data = b''
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        r['reply'] = data.split(b'\r\n\r\n', 1)[-1].decode()
        r['ok'] = True
    except OSError as e:
        r['errno'] = e.errno
        r['error'] = str(e)
    finally:
        s.close()
    return r

def query(req):
    server, port = req['server'], req.get('port', 53)
    name, qtype, tr = req['name'], req.get('qtype', 1), req.get('transport', 'udp')
    fam = socket.AF_INET6 if ':' in server else socket.AF_INET
    tid = random.randrange(65536)
    q = enc(tid, name, qtype)
    r = {'ok': False, 'rcode': None, 'addrs': [], 'ancount': None, 'elapsed': None, 'peer': None,
         'recv_from': None, 'error': None, 'errno': None}
    t0 = time.monotonic()
    s = socket.socket(fam, socket.SOCK_STREAM if tr == 'tcp' else socket.SOCK_DGRAM)
    try:
        s.settimeout(req.get('timeout', 6))
        if tr == 'udp':
            s.sendto(q, (server, port))
            data, frm = s.recvfrom(4096)
            r['recv_from'] = addr_of(frm)
        elif tr == 'udpconnect':
            s.connect((server, port))
            r['peer'] = addr_of(s.getpeername())
            s.send(q)
            data, frm = s.recvfrom(4096)
            r['recv_from'] = addr_of(frm)
        else:
            s.connect((server, port))
            r['peer'] = addr_of(s.getpeername())
            s.sendall(struct.pack('>H', len(q)) + q)
            buf = b''
            while len(buf) < 2 or len(buf) < 2 + struct.unpack('>H', buf[:2])[0]:
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError(errno.ECONNRESET, 'connection closed before a full answer')
                buf += chunk
            data = buf[2:2 + struct.unpack('>H', buf[:2])[0]]
        rid, rcode, an, addrs = parse(data)
        if rid != tid:
            raise OSError(errno.EPROTO, 'answer id %d != query id %d' % (rid, tid))
        r.update(ok=True, rcode=rcode, ancount=an, addrs=addrs)
    except OSError as e:
        r['errno'] = e.errno
        r['error'] = str(e)
    finally:
        r['elapsed'] = time.monotonic() - t0
        s.close()
    return r

def race(req):
    names, ips, port = req['names'], req['ips'], req['port']
    out = {'n': len(names), 'fresh': 0, 'eperm': 0, 'other': 0, 'failures': [], 'elapsed': None}
    pace = req.get('pace', 0)
    t0 = time.monotonic()
    for i, name in enumerate(names):
        if pace:
            d = t0 + i * pace - time.monotonic()
            if d > 0:
                time.sleep(d)
        pre = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            pre.settimeout(5)
            pre.connect((ips[i], port))
        except OSError as e:
            if e.errno == errno.EPERM:
                out['fresh'] += 1
        finally:
            pre.close()
        try:
            infos = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)
            addr = infos[0][4][0]
        except socket.gaierror as e:
            out['other'] += 1
            if len(out['failures']) < 20:
                out['failures'].append({'i': i, 'name': name, 'gai_errno': e.errno, 'error': str(e)})
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect((addr, port))
        except OSError as e:
            if e.errno == errno.EPERM:
                out['eperm'] += 1
            else:
                out['other'] += 1
            if len(out['failures']) < 20:
                out['failures'].append({'i': i, 'name': name, 'addr': addr, 'errno': e.errno, 'error': str(e)})
        finally:
            s.close()
    out['elapsed'] = time.monotonic() - t0
    return out

def handle(req):
    op = req['op']
    if op == 'resolve':
        return resolve(req['name'], req['port'])
    if op == 'connect':
        return connect(req['addr'], req['port'])
    if op == 'resolve_connect':
        r = resolve(req['name'], req['port'])
        r['connect'] = connect(r['addrs'][0], req['port']) if r['ok'] and r['addrs'] else None
        return r
    if op == 'query':
        return query(req)
    if op == 'race':
        return race(req)
    return {'error': 'unknown op ' + op}

def reply(obj):
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()

if len(sys.argv) > 1:
    for a in sys.argv[1:]:
        reply(handle(json.loads(a)))
    sys.exit(0)
reply('ready')
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    req = json.loads(line)
    if req.get('op') == 'exit':
        break
    reply(handle(req))
"#;

/// `python3 -c WORKER_PY REQ...` (one-shot: one JSON line per request).
pub fn worker_cmd(reqs: &[Value]) -> Vec<String> {
    let mut v = vec![python().display().to_string(), "-c".into(), WORKER_PY.into()];
    v.extend(reqs.iter().map(|r| r.to_string()));
    v
}

/// Parse the one-shot worker's output: one JSON value per request.
pub fn parse_worker(out: &Outcome, n: usize) -> Vec<Value> {
    let v: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("worker output line is not JSON ({e}): {l}\n{out}")))
        .collect();
    assert_eq!(v.len(), n, "one result per request\n{out}");
    v
}

/// A long-running workload: `enforcer run --log info --admin 127.0.0.1:0 POLICY... -- python3 -c
/// WORKER_PY`, driven over stdin/stdout, so one confined process can resolve, connect and query
/// on demand while the test watches the agent (registryz, metrics) and changes DNS records.
/// Drop closes stdin (the worker exits, then enforcer), SIGTERM/SIGKILL after a deadline.
pub struct Workload {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    rx: std::sync::mpsc::Receiver<String>,
    /// enforcer's stderr (agent log, deny lines, summary).
    pub log_path: PathBuf,
    /// The admin API address (from the agent's `admin listener serving addr=` log line).
    pub admin: std::net::SocketAddr,
    _dir: TempDir,
}

impl Workload {
    pub fn start(policy: &[String]) -> Self {
        preflight();
        let dir = TempDir::new("workload");
        let log_path = dir.join("enforcer.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut c = Command::new(enforcer_bin());
        // `--log info`: the admin listener's address is logged at info (`run` defaults to warn).
        c.arg("run")
            .args(["--log", "info", "--admin", "127.0.0.1:0"])
            .args(policy)
            .arg("--")
            .arg(python())
            .arg("-u")
            .arg("-c")
            .arg(WORKER_PY)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = c.spawn().expect("spawning enforcer run");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Self { child, stdin, rx, log_path, admin: "127.0.0.1:1".parse().unwrap(), _dir: dir };
        match w.rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.trim() == "\"ready\"" => {}
            other => {
                let st = w.child.try_wait().ok().flatten();
                panic!("the workload did not start ({other:?}, enforcer status {st:?})\n--- enforcer log\n{}", w.log())
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = admin_addr_from_log(&w.log()) {
                w.admin = a;
                break;
            }
            assert!(Instant::now() < deadline, "no `admin listener serving addr=` line\n{}", w.log());
            thread::sleep(Duration::from_millis(20));
        }
        w
    }

    /// One request; fails the test if no answer comes within 120 s.
    pub fn call(&mut self, req: Value) -> Value {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("workload stdin");
        writeln!(stdin, "{req}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("writing to the workload: {e}\n{}", self.log()));
        match self.rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => serde_json::from_str(&l).unwrap_or_else(|e| panic!("workload answered non-JSON ({e}): {l}")),
            Err(e) => panic!("no answer from the workload to {req} ({e})\n--- enforcer log\n{}", self.log()),
        }
    }

    /// getaddrinfo(name, port) inside the workload.
    pub fn resolve(&mut self, name: &str, port: u16) -> Value {
        self.call(serde_json::json!({"op": "resolve", "name": name, "port": port}))
    }

    /// TCP connect (+ HTTP GET) inside the workload, as a [`ConnResult`].
    pub fn connect(&mut self, addr: &str, port: u16) -> ConnResult {
        let v = self.call(serde_json::json!({"op": "connect", "addr": addr, "port": port}));
        ConnResult {
            op: format!("tcp|{addr}|{port}"),
            ok: v["ok"].as_bool().unwrap(),
            errno: v["errno"].as_i64(),
            error: v["error"].as_str().map(str::to_string),
            reply: v["reply"].as_str().map(str::to_string),
        }
    }

    /// A hand-made DNS query from inside the workload (see [`WORKER_PY`]).
    pub fn query(&mut self, server: &str, name: &str, qtype: u16, transport: &str) -> Value {
        self.call(
            serde_json::json!({"op": "query", "server": server, "name": name, "qtype": qtype, "transport": transport}),
        )
    }

    /// enforcer's stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET `path` on the admin API.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// `/debug/registryz` as JSON.
    pub fn registryz(&self) -> Value {
        let (st, body) = self.admin_get("/debug/registryz");
        assert_eq!(st, 200, "GET /debug/registryz: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("registryz is not JSON ({e}): {body}"))
    }

    /// The value of the metric sample `name` (exact sample name, labels ignored and summed).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (st, body) = self.admin_get("/metrics");
        assert_eq!(st, 200, "GET /metrics: {body}");
        metric_value(&body, name)
    }

    /// Ask the worker to exit; wait (≤ 20 s) for enforcer. Returns (status, enforcer's stderr).
    pub fn finish(mut self) -> (i32, String) {
        let st = self.shutdown();
        (st, self.log())
    }

    fn shutdown(&mut self) -> i32 {
        if let Some(mut stdin) = self.stdin.take() {
            use std::io::Write as _;
            let _ = writeln!(stdin, "{{\"op\":\"exit\"}}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return shell_status(st);
            }
            if Instant::now() > deadline {
                // SAFETY: plain syscall on our own child (enforcer forwards it and cleans up).
                unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
                thread::sleep(Duration::from_secs(3));
                let _ = self.child.kill();
                return shell_status(self.child.wait().unwrap());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.shutdown();
        }
        if std::env::var_os("ENFORCER_TESTS_VERBOSE").is_some() || thread::panicking() {
            eprintln!("--- enforcer run log ({})\n{}", self.log_path.display(), self.log());
        }
    }
}

/// Minimal HTTP/1.1 GET (Connection: close) -> (status, body). Panics on I/O errors.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| panic!("reading {path} from {addr}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sum of the samples named exactly `name` (any labels) in Prometheus/OpenMetrics text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (sample, value) = match l.rsplit_once(' ') {
            Some(v) => v,
            None => continue,
        };
        let sname = sample.split('{').next().unwrap_or("").trim();
        if sname == name
            && let Ok(v) = value.trim().parse::<f64>()
        {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// The admin address an `enforcer daemon` log announces (`admin listener serving addr=...`).
pub fn admin_addr_from_log(log: &str) -> Option<std::net::SocketAddr> {
    log.lines().find_map(|l| {
        l.contains("admin listener serving")
            .then(|| l.split("addr=").nth(1)?.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}

/// The first `nameserver` of /etc/resolv.conf, if any.
pub fn resolv_conf_nameserver() -> Option<String> {
    fs::read_to_string("/etc/resolv.conf").ok()?.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some("nameserver")).then(|| it.next().map(str::to_string)).flatten()
    })
}

// ---------------------------------------------------------------------------------------------
// Visibility (tests/visibility.rs): free ports, followed processes, a frozen agent
// ---------------------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago (bind :0, read it, close). Racy in
/// principle; fine for an admin listener started right after.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding 127.0.0.1:0").port()
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

// ---------------------------------------------------------------------------------------------
// L7 proxy (tests/proxy.rs): a test PKI made with the openssl CLI, HTTPS/HTTP servers, a silent
// listener
// ---------------------------------------------------------------------------------------------

/// A CA and one server certificate signed by it, made at test time with the `openssl` CLI
/// (ECDSA P-256, valid for one day). All paths are PEM files in the [`TempDir`] given.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// `prefix`-ca.pem (CN `<prefix> test CA`, CA:TRUE) and `prefix`-server.pem, whose SANs are
    /// `names` (DNS names; `*.x` wildcards allowed; IP addresses become IP SANs).
    pub fn new(dir: &TempDir, prefix: &str, names: &[&str]) -> Self {
        assert!(!names.is_empty());
        let ca = dir.join(&format!("{prefix}-ca.pem"));
        let ca_key = dir.join(&format!("{prefix}-ca.key"));
        let cert = dir.join(&format!("{prefix}-server.pem"));
        let key = dir.join(&format!("{prefix}-server.key"));
        let csr = dir.join(&format!("{prefix}-server.csr"));
        let ext = dir.write(
            &format!("{prefix}-server.ext"),
            &format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                names
                    .iter()
                    .map(|n| if n.parse::<std::net::IpAddr>().is_ok() { format!("IP:{n}") } else { format!("DNS:{n}") })
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        );
        let p = |p: &Path| p.display().to_string();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        let (ca_s, ca_key_s, cert_s, key_s, csr_s, ext_s) = (p(&ca), p(&ca_key), p(&cert), p(&key), p(&csr), p(&ext));
        let subj_ca = format!("/CN={prefix} test CA");
        a.extend(["-keyout", &ca_key_s, "-out", &ca_s, "-days", "1", "-subj", &subj_ca]);
        a.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        sh("openssl", &a);
        let subj = format!("/CN={}", names[0]);
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-keyout", &key_s, "-out", &csr_s, "-subj", &subj]);
        sh("openssl", &a);
        sh(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr_s,
                "-CA",
                &ca_s,
                "-CAkey",
                &ca_key_s,
                "-CAcreateserial",
                "-out",
                &cert_s,
                "-days",
                "1",
                "-extfile",
                &ext_s,
            ],
        );
        Self { ca, ca_key, cert, key }
    }
}

/// An HTTP/1.1 server (keep-alive, threads). Arguments: `ADDR PORT CERT KEY` (TLS) or
/// `ADDR PORT plain`. Paths:
/// - `/status/N`: status N, body `status N\n`;
/// - `/bytes/N`: 200 with exactly N bytes (Content-Length), generated and written in 64 KiB
///   chunks (never held in memory whole);
/// - anything else: 200, body `hello path=P host=H sni=S peer=ADDR:PORT\n` (S: the ClientHello's
///   server_name as the server saw it, `-` for none or plain; ADDR:PORT: the client as seen
///   by the server).
///
/// The TLS handshake runs in the connection's thread (a silent client never blocks accepts).
/// Prints `ready` once listening.
pub const HTTPS_SERVER_PY: &str = r#"
import http.server, socket, socketserver, ssl, sys
addr, port = sys.argv[1], int(sys.argv[2])
tls = sys.argv[3] != 'plain'
CHUNK = bytes(range(256)) * 256
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a):
        pass
    def reply(self, code, body):
        self.send_response(code)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        p = self.path
        if p.startswith('/status/'):
            code = int(p[8:])
            return self.reply(code, ('status %d\n' % code).encode())
        if p.startswith('/bytes/'):
            n = int(p[7:])
            self.send_response(200)
            self.send_header('Content-Type', 'application/octet-stream')
            self.send_header('Content-Length', str(n))
            self.end_headers()
            while n > 0:
                k = min(n, len(CHUNK))
                self.wfile.write(CHUNK[:k] if k < len(CHUNK) else CHUNK)
                n -= k
            return
        sni = getattr(self.connection, 'sni_name', None) or '-'
        peer = '%s:%d' % self.client_address[:2]
        body = 'hello path=%s host=%s sni=%s peer=%s\n' % (p, self.headers.get('Host', '-'), sni, peer)
        self.reply(200, body.encode())
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    address_family = socket.AF_INET6 if ':' in addr else socket.AF_INET
    def handle_error(self, request, client_address):
        pass  # refused handshakes (wrong-CA tests) are expected
srv = S((addr, port), H)
if tls:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    def on_sni(sock, name, _ctx):
        try:
            sock.sni_name = name
        except Exception:
            pass
    ctx.sni_callback = on_sni
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
print('ready', flush=True)
srv.serve_forever()
"#;

/// [`HTTPS_SERVER_PY`] with TLS (`pki`'s server certificate) on `addr:port` in `ns`.
pub fn https_server(ns: &Netns, addr: &str, port: u16, pki: &Pki) -> Server {
    let mut c = ns.command(python());
    c.arg("-c").arg(HTTPS_SERVER_PY).arg(addr).arg(port.to_string()).arg(&pki.cert).arg(&pki.key);
    Server::start(c, &format!("https server {addr}:{port} in netns {}", ns.name))
}

/// [`HTTPS_SERVER_PY`] without TLS on `addr:port` in `ns`.
pub fn plain_http_server(ns: &Netns, addr: &str, port: u16) -> Server {
    let mut c = ns.command(python());
    c.arg("-c").arg(HTTPS_SERVER_PY).arg(addr).arg(port.to_string()).arg("plain");
    Server::start(c, &format!("http server {addr}:{port} in netns {}", ns.name))
}

/// A TCP listener on `addr:port` in `ns` that accepts and never sends a byte (a TLS handshake
/// to it hangs until the client gives up). Prints `ready`.
pub fn silent_listener(ns: &Netns, addr: &str, port: u16) -> Server {
    let script = r#"
import socket, sys, threading
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(128)
held = []
print('ready', flush=True)
while True:
    c, _ = s.accept()
    held.append(c)
"#;
    let mut c = ns.command(python());
    c.arg("-c").arg(script).arg(addr).arg(port.to_string());
    Server::start(c, &format!("silent listener {addr}:{port} in netns {}", ns.name))
}

/// VmRSS of `pid` in KiB (from /proc/PID/status), None if gone.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
}

/// Samples of the metric `name` (exact sample name) in Prometheus/OpenMetrics text, with their
/// labels. Label values are unescaped (`\"`, `\\`, `\n`).
pub fn metric_samples(text: &str, name: &str) -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = match l.rsplit_once(' ') {
            Some(v) => v,
            None => continue,
        };
        let (sname, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (head, ""),
        };
        if sname.trim() != name {
            continue;
        }
        let Ok(v) = value.trim().parse::<f64>() else { continue };
        let mut map = std::collections::BTreeMap::new();
        let mut rest = labels;
        while let Some((k, after)) = rest.split_once("=\"") {
            let mut val = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, c2)) => val.push(c2),
                        None => {}
                    },
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => val.push(c),
                }
            }
            map.insert(k.trim_start_matches(',').trim().to_string(), val);
            rest = after[end..].trim_start_matches(',');
        }
        out.push((map, v));
    }
    out
}
