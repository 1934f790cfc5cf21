//! Network namespaces joined to the host by a veth pair, each with its own subnet.

use std::{
    ffi::OsStr,
    fs,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::{SERVER_PY, Server, preflight, python, sh, sh_quiet, unique};

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
