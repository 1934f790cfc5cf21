//! The resolver paths of a real host, rebuilt per test: a private mount namespace (the test's own
//! /etc/resolv.conf, /etc/nsswitch.conf, nscd socket directory) in the test's netns, with the
//! real resolver daemons from Debian's packages running in it (nscd, unbound) and clients built
//! with musl and Go. Plus raw DNS messages (several questions, EDNS options) and a recording
//! upstream (tests/helpers/dns_capture.py).
//!
//! Nothing here touches the host's files: the holder process (`unshare --mount --propagation
//! private`) owns the mount namespace, and every process of the test enters it with `nsenter`.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Netns, Outcome, Server, TempDir, enforcer_bin, output_with_timeout, python};

/// tests/helpers/dns_capture.py: a DNS upstream that records the bytes of every query.
pub const DNS_CAPTURE_PY: &str = include_str!("../helpers/dns_capture.py");

/// The first program of `names` found in /usr/sbin, /usr/bin, /sbin, /bin.
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    for n in names {
        for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/lib/go/bin"] {
            let p = Path::new(d).join(n);
            if p.exists() {
                return Some(p);
            }
        }
    }
    None
}

/// Skip a test cleanly (a line on stderr, the test returns) when a package is not installed.
#[macro_export]
macro_rules! require_program {
    ($what:expr, $pkg:expr) => {
        match $crate::find_program(&[$what]) {
            Some(p) => p,
            None => {
                eprintln!("SKIP: `{}` not found (Debian package {}; `cargo xtask setup` installs it)", $what, $pkg);
                return;
            }
        }
    };
}

/// A private mount namespace (in `ns`'s network namespace) standing in for a host's resolver
/// setup. Dropping it kills the holder and every daemon started in it.
pub struct ResolverHost {
    holder: Child,
    daemons: Vec<(String, Child)>,
    pub dir: TempDir,
    netns: PathBuf,
}

impl ResolverHost {
    /// `resolv_conf` and `nsswitch` become /etc/resolv.conf and /etc/nsswitch.conf inside;
    /// /run/nscd and /var/cache/nscd are private tmpfs mounts.
    pub fn new(ns: &Netns, resolv_conf: &str, nsswitch: &str) -> Self {
        let dir = TempDir::new("resolver-host");
        let resolv = dir.write("resolv.conf", resolv_conf);
        let nss = dir.write("nsswitch.conf", nsswitch);
        // nscd's directories must exist to be mounted over (the package makes them anyway).
        for d in ["/run/nscd", "/var/cache/nscd"] {
            let _ = fs::create_dir_all(d);
        }
        let script = format!(
            "set -e; mount --bind {r} /etc/resolv.conf; mount --bind {n} /etc/nsswitch.conf; \
             mount -t tmpfs tmpfs /run/nscd; mount -t tmpfs tmpfs /var/cache/nscd; echo ready; exec sleep 3600",
            r = resolv.display(),
            n = nss.display()
        );
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", ns.path().display()))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut holder = c.spawn().expect("starting the mount-namespace holder (nsenter, unshare)");
        let mut out = holder.stdout.take().unwrap();
        let mut buf = [0u8; 6];
        use std::io::Read as _;
        let ok = out.read_exact(&mut buf).is_ok() && &buf == b"ready\n";
        assert!(ok, "the mount-namespace holder did not set up ({:?})", holder.try_wait());
        Self { holder, daemons: Vec::new(), dir, netns: ns.path() }
    }

    /// `nsenter` into the holder's mount namespace (and its netns) running `prog`.
    pub fn command(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.holder.id().to_string()).args(["-m", "-n", "--"]).arg(prog);
        c
    }

    /// Start a daemon inside; wait (≤ 15 s) until `ready()` is true.
    pub fn daemon(&mut self, what: &str, mut cmd: Command, mut ready: impl FnMut() -> bool) {
        let log = self.dir.join(&format!("{what}.log"));
        let f = fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ready() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("{what} exited ({st})\n{}", fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "{what} not ready in 15 s\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        self.daemons.push((what.to_string(), child));
    }

    /// A daemon's log so far.
    pub fn daemon_log(&self, what: &str) -> String {
        fs::read_to_string(self.dir.join(&format!("{what}.log"))).unwrap_or_default()
    }

    /// nscd (Debian's), caching hosts only, its socket in the private /run/nscd.
    pub fn start_nscd(&mut self, nscd: &Path) {
        let conf = self.dir.write(
            "nscd.conf",
            "debug-level 0\nparanoia no\nenable-cache passwd no\nenable-cache group no\nenable-cache services no\n\
             enable-cache netgroup no\nenable-cache hosts yes\npositive-time-to-live hosts 600\n\
             negative-time-to-live hosts 5\npersistent hosts no\nshared hosts yes\ncheck-files hosts yes\n",
        );
        let mut c = self.command(nscd);
        c.arg("-F").arg("-f").arg(&conf);
        let holder = self.holder.id();
        self.daemon("nscd", c, move || {
            Command::new("nsenter")
                .args(["-t", &holder.to_string(), "-m", "--", "test", "-S", "/run/nscd/socket"])
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// unbound on `listen` (port 53) inside, forwarding everything to `upstream`.
    pub fn start_unbound(&mut self, unbound: &Path, listen: &[&str], upstream: &str) {
        let mut conf = String::from(
            "server:\n  verbosity: 1\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"/\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  port: 53\n  do-ip6: no\n  module-config: \"iterator\"\n  access-control: 0.0.0.0/0 allow\n  cache-max-ttl: 0\n  cache-max-negative-ttl: 0\n  qname-minimisation: no\n  harden-referral-path: no\n  local-zone: \"test.\" nodefault\n  domain-insecure: \"test.\"\n  auto-trust-anchor-file: \"\"\n  trust-anchor-file: \"\"\n",
        );
        for l in listen {
            conf.push_str(&format!("  interface: {l}\n"));
        }
        conf.push_str(&format!("forward-zone:\n  name: \".\"\n  forward-addr: {upstream}\n"));
        let conf = self.dir.write("unbound.conf", &conf);
        let mut c = self.command(unbound);
        c.arg("-d").arg("-c").arg(&conf);
        let probe = listen[0].to_string();
        let netns = self.netns.clone();
        self.daemon("unbound", c, move || {
            // Ready when it answers from inside the netns.
            Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["--", "python3", "-c"])
                .arg(format!(
                    "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.3);\
                     s.sendto(bytes.fromhex('12340100000100000000000005726561647905746573740000010001'),('{probe}',53));s.recv(512)"
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// systemd-resolved (Debian's, unpacked by `cargo xtask setup` under `root`; see
    /// [`resolved_root`]) inside: its own /run/systemd (tmpfs), a `systemd-resolve` user in a
    /// private /etc/passwd, upstreams from the namespace's resolv.conf. Ready once its varlink
    /// socket exists. Returns false (after logging why) if it does not start.
    pub fn start_resolved(&mut self, root: &Path) -> bool {
        let passwd = fs::read_to_string("/etc/passwd").unwrap() + "systemd-resolve:x:990:990::/:/usr/sbin/nologin\n";
        let group = fs::read_to_string("/etc/group").unwrap() + "systemd-resolve:x:990:\n";
        let (p, g) = (self.dir.write("passwd", &passwd), self.dir.write("group", &group));
        let _ = fs::create_dir_all("/run/systemd");
        let st = self
            .command("sh")
            .arg("-c")
            .arg(format!(
                "set -e; mount -t tmpfs tmpfs /run/systemd; mount --bind {} /etc/passwd; mount --bind {} /etc/group",
                p.display(),
                g.display()
            ))
            .status()
            .unwrap();
        assert!(st.success(), "preparing the namespace for systemd-resolved");
        let log = self.dir.join("systemd-resolved.log");
        let f = fs::File::create(&log).unwrap();
        let mut c = self.command(root.join("lib/systemd/systemd-resolved"));
        c.env("SYSTEMD_LOG_LEVEL", "info").stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f);
        let mut child = c.spawn().expect("starting systemd-resolved");
        let holder = self.holder.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = Command::new("nsenter")
                .args(["-t", &holder, "-m", "--", "test", "-S", "/run/systemd/resolve/io.systemd.Resolve"])
                .status()
                .is_ok_and(|s| s.success());
            if up {
                self.daemons.push(("systemd-resolved".into(), child));
                return true;
            }
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("systemd-resolved did not start:\n{}", fs::read_to_string(&log).unwrap_or_default());
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `enforcer run POLICY... -- CMD...` inside (60 s deadline).
    pub fn enforcer_run<P: AsRef<OsStr>, S: AsRef<OsStr>>(&self, policy: &[P], cmd: &[S]) -> Outcome {
        let mut c = self.command(enforcer_bin());
        c.arg("run").args(policy).arg("--").args(cmd).env("NO_COLOR", "1");
        output_with_timeout(&mut c, Duration::from_secs(60))
    }
}

impl Drop for ResolverHost {
    fn drop(&mut self) {
        for (what, c) in &mut self.daemons {
            let _ = c.kill();
            let _ = c.wait();
            if thread::panicking() {
                eprintln!(
                    "--- {what} log\n{}",
                    fs::read_to_string(self.dir.join(&format!("{what}.log"))).unwrap_or_default()
                );
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Where `cargo xtask setup` unpacks systemd-resolved and libnss-resolve
/// (`target/debs/systemd-resolved`; `ENFORCER_TESTS_RESOLVED_ROOT` overrides). None: not there.
pub fn resolved_root() -> Option<PathBuf> {
    let root = std::env::var_os("ENFORCER_TESTS_RESOLVED_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debs/systemd-resolved"));
    root.join("lib/systemd/systemd-resolved").exists().then_some(root)
}

/// A static musl client (built with `musl-gcc -static` from tests/helpers/gai_connect.c):
/// `client NAME PORT` resolves NAME (AF_UNSPEC), connects to every address, prints one line per
/// address: `ok ADDR` or `errno N ADDR`; exit 2 if getaddrinfo failed.
pub fn build_musl_client(dir: &TempDir) -> Option<PathBuf> {
    let gcc = find_program(&["musl-gcc"])?;
    let src = dir.write("gai_connect.c", GAI_CONNECT_C);
    let out = dir.join("gai_connect_musl");
    let st = Command::new(gcc).arg("-static").arg("-O1").arg("-o").arg(&out).arg(&src).status().ok()?;
    assert!(st.success(), "musl-gcc failed to build the client");
    Some(out)
}

/// The same client in Go (pure-Go resolver: `CGO_ENABLED=0`, run with `GODEBUG=netdns=go`).
pub fn build_go_client(dir: &TempDir) -> Option<PathBuf> {
    let go = find_program(&["go"])?;
    let src = dir.write("gai_connect.go", GAI_CONNECT_GO);
    let out = dir.join("gai_connect_go");
    let cache = dir.join("gocache");
    let st = Command::new(go)
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", &cache)
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOTOOLCHAIN", "local")
        .status()
        .ok()?;
    assert!(st.success(), "go build failed");
    Some(out)
}

pub const GAI_CONNECT_C: &str = include_str!("../helpers/gai_connect.c");
pub const GAI_CONNECT_GO: &str = include_str!("../helpers/gai_connect.go");

/// `ok ADDR` lines of a client's output.
pub fn connected(out: &Outcome) -> Vec<String> {
    out.stdout.lines().filter_map(|l| l.strip_prefix("ok ").map(str::to_string)).collect()
}

/// The recording upstream ([`DNS_CAPTURE_PY`]) on `addr`:53 in `ns`, answering `a`/`aaaa`.
pub struct CaptureDns {
    _srv: Server,
    pub log: PathBuf,
    pub addr: std::net::SocketAddr,
}

impl CaptureDns {
    pub fn start(ns: &Netns, dir: &TempDir, addr: &str, a: &str, aaaa: &str) -> Self {
        let log = dir.join("capture.log");
        fs::write(&log, "").unwrap();
        let mut c = ns.command(python());
        c.arg("-c").arg(DNS_CAPTURE_PY).args([addr, "53"]).arg(&log).args([a, aaaa]);
        let srv = Server::start(c, "dns_capture.py");
        Self { _srv: srv, log, addr: std::net::SocketAddr::new(addr.parse().unwrap(), 53) }
    }

    /// Every query received so far (raw bytes).
    pub fn queries(&self) -> Vec<Vec<u8>> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| (0..l.len()).step_by(2).map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap()).collect())
            .collect()
    }
}

/// A raw query: `questions` (name, qtype), RD set, and an OPT record with `options` (code,
/// data) when given; `smuggle` adds an A record to the additional section.
pub fn raw_query(id: u16, questions: &[(&str, u16)], options: Option<&[(u16, Vec<u8>)]>, smuggle: bool) -> Vec<u8> {
    let mut q = Vec::new();
    let arcount = u16::from(options.is_some()) + u16::from(smuggle);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes());
    q.extend_from_slice(&(questions.len() as u16).to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0]);
    q.extend_from_slice(&arcount.to_be_bytes());
    for (name, qtype) in questions {
        for label in name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
    }
    if smuggle {
        // data.evil. A 1.2.3.4
        q.extend_from_slice(b"\x04data\x04evil\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04\x01\x02\x03\x04");
    }
    if let Some(opts) = options {
        let rdata: Vec<u8> = opts
            .iter()
            .flat_map(|(code, data)| {
                let mut v = code.to_be_bytes().to_vec();
                v.extend_from_slice(&(data.len() as u16).to_be_bytes());
                v.extend_from_slice(data);
                v
            })
            .collect();
        q.push(0); // root
        q.extend_from_slice(&41u16.to_be_bytes());
        q.extend_from_slice(&1232u16.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0]);
        q.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        q.extend_from_slice(&rdata);
    }
    q
}

/// The EDNS option codes (and data) of a message's OPT record, and its ARCOUNT.
pub fn opt_options(m: &[u8]) -> (u16, Vec<(u16, Vec<u8>)>) {
    let u16_at = |i: usize| u16::from_be_bytes([m[i], m[i + 1]]);
    let (qd, an, ns, ar) = (u16_at(4), u16_at(6), u16_at(8), u16_at(10));
    let skip = |mut i: usize| loop {
        let l = m[i] as usize;
        if l == 0 {
            return i + 1;
        }
        if l & 0xc0 == 0xc0 {
            return i + 2;
        }
        i += 1 + l;
    };
    let mut i = 12;
    for _ in 0..qd {
        i = skip(i) + 4;
    }
    let mut out = Vec::new();
    for _ in 0..(an + ns + ar) {
        i = skip(i);
        let t = u16_at(i);
        let len = u16_at(i + 8) as usize;
        let rd = &m[i + 10..i + 10 + len];
        if t == 41 {
            let mut j = 0;
            while j + 4 <= rd.len() {
                let (c, l) =
                    (u16::from_be_bytes([rd[j], rd[j + 1]]), u16::from_be_bytes([rd[j + 2], rd[j + 3]]) as usize);
                out.push((c, rd[j + 4..j + 4 + l].to_vec()));
                j += 4 + l;
            }
        }
        i += 10 + len;
    }
    (ar, out)
}

/// One raw UDP exchange with `server` from this (unconfined) process.
pub fn raw_exchange(server: std::net::SocketAddr, q: &[u8]) -> Vec<u8> {
    let s = std::net::UdpSocket::bind(if server.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(q, server).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = s.recv_from(&mut buf).unwrap_or_else(|e| panic!("no answer from {server}: {e}"));
    buf[..n].to_vec()
}

/// A free port on 127.0.0.1 for both UDP and TCP (for `--dns-port`).
pub fn free_dns_port() -> u16 {
    for _ in 0..50 {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port")
}

/// The rcode of a raw answer.
pub fn rcode(m: &[u8]) -> u8 {
    m[3] & 0x0f
}
