//! DNS for the tests: a real server (dnsmasq) in a netns, a tiny query client, and the host's
//! resolver configuration.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Netns, TempDir, unique};

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

/// The first `nameserver` of /etc/resolv.conf, if any.
pub fn resolv_conf_nameserver() -> Option<String> {
    fs::read_to_string("/etc/resolv.conf").ok()?.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some("nameserver")).then(|| it.next().map(str::to_string)).flatten()
    })
}
