//! `cargo xtask bench proxy`: enforcer's L7 proxy (HTTP in, TLS out per DestinationRule SIMPLE)
//! against nginx doing the same job.
//!
//! Two network namespaces joined by a veth pair (no loopback shortcut to the upstream):
//! - server netns: nginx serving a small static file over TLS (certificate for `api.test` from
//!   a CA made with openssl for this run) on `SERVER:8443`;
//! - client netns: `wrk` (Debian), `--threads` threads / `--connections` connections,
//!   `--duration` s per run, `--latency`, in rounds (each round's order rotated by one, so no
//!   side always runs first or right after another):
//!   - (a) wrk -> nginx on 127.0.0.1:18080 as a TLS-originating reverse proxy (`proxy_pass
//!     https://`, `proxy_ssl_verify on`, `proxy_ssl_trusted_certificate`, `proxy_ssl_server_name
//!     on`, `proxy_ssl_name api.test`, an upstream block with `keepalive`), wrk in a plain cgroup;
//!   - (b) `enforcer run -- wrk http://SERVER:80/`: a ServiceEntry `api.test` port 80 (targetPort
//!     8443) with a DestinationRule `tls.mode: SIMPLE` (caCertificates = the run's CA), so the
//!     connect hook steers every wrk connection to the agent's proxy, which originates TLS. The
//!     measured wrk follows a 2 s wrk in the same agent, so both proxies start it warm (upstream
//!     connections idle in their pools); `--cold` measures from the agent's start instead.
//!
//! Both proxies run in the client netns, both verify the upstream certificate, both reuse
//! upstream connections.
//!
//! Reported: requests/s and p99 latency (medians, b/a against the target >= 1.0x and <= 1.0x;
//! the medians of the per-round ratios), the agent's VmRSS under load (sampled from /proc every
//! 100 ms during each enforcer run), and what each proxy spends per request: CPU time (utime +
//! stime) and context switches (/proc stat and status of the nginx proxy's master + workers
//! around its wrk run; of the agent's threads over a window inside its measured wrk). On the
//! 2-core machine wrk, both nginx and the proxy share the CPUs, so CPU per request is the
//! efficiency figure; requests/s follows it. A sanity run first
//! checks that each path really works (status 200 and the file's content; for enforcer, that
//! `istio_requests_total{response_code="200"}` counted the request, i.e. it went through the
//! proxy). Any non-2xx/3xx response or socket error in a measured run fails the benchmark.

use std::{
    fmt::Write as _,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    netns::{self, BenchClient, Cgroup, Netns, Proc},
    setup, util,
};

#[derive(clap::Args, Clone)]
pub struct ProxyArgs {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// Rounds (each: one nginx run, one enforcer run, and one compare run with `--compare`, in an
    /// order rotated by one each round). Medians over 5 keep one slow round on this shared
    /// machine from deciding the result.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// Use this enforcer binary instead of building one.
    #[arg(long, value_name = "PATH")]
    pub enforcer: Option<PathBuf>,
    /// Build and use the debug binary (default: the shipped `dist` build, as nginx is an optimized build).
    #[arg(long)]
    pub debug: bool,
    /// Skip the profiled run (`perf record -g` on the agent during one more enforcer run, whose
    /// top entries are printed). It runs when `perf` (Debian's linux-perf) is installed.
    #[arg(long)]
    pub no_profile: bool,
    /// Compare with this other enforcer binary too (e.g. the previous build), in the same
    /// rounds: (c) is its proxy.
    #[arg(long, value_name = "PATH")]
    pub compare: Option<PathBuf>,
    /// Measure each enforcer run from its agent's start (cold upstream pool: a TLS handshake per
    /// wrk connection in the measured run) instead of after a 2 s warm-up inside the same agent
    /// (nginx's long-running proxy is warm).
    #[arg(long)]
    pub cold: bool,
    /// Extra `enforcer run` arguments for (b) only, e.g. `--enforcer-arg=--proxy-threads=1`
    /// (repeatable; with --compare, the same binary without them is an A/B of the flag).
    #[arg(long = "enforcer-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub enforcer_args: Vec<String>,
}

const CLIENT_ADDR: &str = "100.127.253.1";
const SERVER_ADDR: &str = "100.127.253.2";
const UPSTREAM_PORT: u16 = 8443;
const SE_PORT: u16 = 80;
const NGINX_PROXY: &str = "127.0.0.1:18080";
const ADMIN: &str = "127.0.0.1:15997";
const HOST: &str = "api.test";

/// One measured run of a round: nginx, enforcer, or the `--compare` binary (its client).
#[derive(Clone, Copy)]
enum Slot<'a> {
    Nginx,
    Enforcer,
    Compare(&'a BenchClient<'a>),
}

/// `order` started `round` places further on.
fn rotated<'a>(order: &[Slot<'a>], round: usize) -> Vec<Slot<'a>> {
    let mut v = order.to_vec();
    let n = v.len().max(1);
    v.rotate_left(round % n);
    v
}

/// What one wrk run printed, parsed.
#[derive(Debug, Clone, PartialEq)]
struct Wrk {
    rps: f64,
    /// The median latency (wrk's `50%`): with p99, how wide the distribution is.
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: Option<String>,
}

/// A wrk latency like `812.00us`, `1.23ms`, `2.00s`, `1.00m` -> milliseconds.
fn parse_latency_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut requests = None;
    let mut non_2xx = 0;
    let mut socket_errors = None;
    for l in out.lines().map(str::trim) {
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = l.strip_prefix("50%") {
            p50 = parse_latency_ms(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            p99 = parse_latency_ms(v);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(u64::MAX);
        } else if l.starts_with("Socket errors:") {
            socket_errors = Some(l.to_string());
        } else if l.contains(" requests in ") {
            requests = l.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    Ok(Wrk {
        rps: rps.with_context(|| format!("no `Requests/sec:` in wrk output:\n{out}"))?,
        p50_ms: p50.with_context(|| format!("no 50% latency in wrk output (run with --latency):\n{out}"))?,
        p99_ms: p99.with_context(|| format!("no 99% latency in wrk output (run with --latency):\n{out}"))?,
        requests: requests.with_context(|| format!("no `N requests in` line in wrk output:\n{out}"))?,
        non_2xx,
        socket_errors,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Runs `cmd` to completion; fails with its output if it fails.
fn run_out(cmd: &mut Command, what: &str) -> Result<String> {
    cmd.stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("could not start the {what} run"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): `{}`\n{stdout}{}",
            out.status,
            util::display_cmd(cmd),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
}

/// (CPU time in clock ticks, user + system, of every thread; context switches, voluntary +
/// involuntary, summed over the threads) of `pid`, plus those of its children with `children`.
fn cpu_and_switches(pid: u32, children: bool) -> (u64, u64) {
    let one = |pid: u32| -> (u64, u64) {
        let cpu =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| stat_cpu_ticks(&s)).unwrap_or(0);
        let mut cs = 0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                cs += st
                    .lines()
                    .filter(|l| {
                        l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:")
                    })
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        (cpu, cs)
    };
    let (mut cpu, mut cs) = one(pid);
    if children {
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for k in kids.split_whitespace().filter_map(|p| p.parse().ok()) {
            let (c, s) = one(k);
            cpu += c;
            cs += s;
        }
    }
    (cpu, cs)
}

/// utime + stime (clock ticks) from a `/proc/PID/stat` line. The fields are counted by position
/// after the comm: some are not numbers (state) or negative (tpgid -1 without a terminal), so
/// none may be skipped.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // f[0] is field 3 (state): utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy CPU time of the whole machine in clock ticks (/proc/stat's `cpu` line: everything but
/// idle and iowait), so a run's total cost per request (wrk, proxy, upstream, softirq) shows.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0 };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; Linux: 100).
const CLK_TCK: f64 = 100.0;

/// What a proxy spent per request: CPU (µs) and context switches; and what the whole machine
/// and the upstream nginx spent per request over the same window.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    cpu_us: f64,
    switches: f64,
    machine_us: f64,
    upstream_us: f64,
}

/// Counter readings at one moment: (proxy CPU ticks, proxy switches, machine busy ticks,
/// upstream CPU ticks).
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    cpu: u64,
    switches: u64,
    machine: u64,
    upstream: u64,
}

impl Reading {
    fn take(proxy: u32, proxy_children: bool, upstream: u32) -> Self {
        let (cpu, switches) = cpu_and_switches(proxy, proxy_children);
        Reading { cpu, switches, machine: machine_busy_ticks(), upstream: cpu_and_switches(upstream, true).0 }
    }
}

impl Cost {
    /// From the readings before and after `requests` requests.
    fn per_request(a: Reading, b: Reading, requests: f64) -> Self {
        let us = |d: u64| d as f64 / CLK_TCK * 1e6 / requests;
        Cost {
            cpu_us: us(b.cpu.saturating_sub(a.cpu)),
            switches: b.switches.saturating_sub(a.switches) as f64 / requests,
            machine_us: us(b.machine.saturating_sub(a.machine)),
            upstream_us: us(b.upstream.saturating_sub(a.upstream)),
        }
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// The kernel's name (comm) of a process running `bin`: its file name, at most 15 bytes.
fn comm_of(bin: &Path) -> String {
    let name = bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.bytes().take(15).map(char::from).collect()
}

/// The enforcer process (running `bin`) of a spawned `nsenter ... enforcer` (nsenter execs it
/// when only the network namespace changes; else it is a child).
fn enforcer_pid(spawned: u32, bin: &Path) -> Option<u32> {
    let want = comm_of(bin);
    if comm(spawned) == want {
        return Some(spawned);
    }
    let children = std::fs::read_to_string(format!("/proc/{spawned}/task/{spawned}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse().ok()).find(|p| comm(*p) == want)
}

/// Runs `cmd` (an `enforcer run`), sampling the enforcer process's VmRSS every 100 ms, and its
/// CPU time and context switches (with the machine's and the `upstream` process's CPU) over
/// `window` (from its start to its end after the spawn): inside the measured wrk, so that its
/// rate gives the requests in it (not the agent's start or its shutdown after wrk).
/// Returns (stdout, max VmRSS KiB, (seconds, first reading, last reading) between those samples).
fn run_sampling_rss(
    cmd: &mut Command,
    bin: &Path,
    what: &str,
    upstream: u32,
    window: (Duration, Duration),
) -> Result<(String, u64, (f64, Reading, Reading))> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("could not start the {what} run"))?;
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
    let mut max = 0;
    let mut pid = None;
    let spawned = Instant::now();
    type Sample = (Instant, Reading);
    let (mut first, mut last): (Option<Sample>, Option<Sample>) = (None, None);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if pid.is_none() {
            pid = enforcer_pid(child.id(), bin);
        }
        if let Some(p) = pid
            && let Some(r) = vm_rss_kib(p)
        {
            max = max.max(r);
            let t = spawned.elapsed();
            if t >= window.0 && t <= window.1 {
                let sample = (Instant::now(), Reading::take(p, false, upstream));
                if first.is_none() {
                    first = Some(sample);
                } else {
                    last = Some(sample);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let window = match (first, last) {
        (Some(a), Some(b)) => ((b.0 - a.0).as_secs_f64(), a.1, b.1),
        _ => (0.0, Reading::default(), Reading::default()),
    };
    let (stdout, stderr) = (t1.join().unwrap_or_default(), t2.join().unwrap_or_default());
    if !status.success() {
        bail!("{what} failed ({status}): `{}`\n{stdout}{stderr}", util::display_cmd(cmd));
    }
    if pid.is_none() || max == 0 {
        bail!("{what}: could not find the enforcer process to sample its VmRSS");
    }
    Ok((stdout, max, window))
}

/// One more enforcer run with `perf record -g` attached to the agent for most of it; returns
/// the top entries of `perf report` (self time, by symbol).
fn profile_run(cmd: &mut Command, bin: &Path, dir: &Path, duration: u32, skip: Duration) -> Result<String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().context("could not start the profiled enforcer run")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(p) = enforcer_pid(child.id(), bin) {
            break p;
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!("profile: the enforcer process did not show up");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the proxy warm up (connections, pools), then record most of the measured wrk.
    std::thread::sleep(skip);
    let data = dir.join("perf.data");
    let secs = duration.saturating_sub(2).max(1).to_string();
    let rec = Command::new("perf")
        .args(["record", "-F", "997", "-g", "-p", &pid.to_string(), "-o"])
        .arg(&data)
        .args(["--", "sleep", &secs])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running perf record")?;
    let _ = child.wait();
    if !rec.status.success() {
        bail!("perf record failed: {}", String::from_utf8_lossy(&rec.stderr));
    }
    let report = |sort: &str, limit: &str, n: usize| -> Result<String> {
        let rep = Command::new("perf")
            .args(["report", "--stdio", "--no-children", "--sort", sort, "--percent-limit", limit, "-g", "none", "-i"])
            .arg(&data)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .context("running perf report")?;
        let text = String::from_utf8_lossy(&rep.stdout);
        let top: Vec<String> = text
            .lines()
            .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
            .take(n)
            .map(|l| {
                let mut w: Vec<&str> = l.split_whitespace().collect();
                // perf's trailing "-  -" columns.
                while w.last().is_some_and(|x| *x == "-") {
                    w.pop();
                }
                format!("  {}", w.join(" "))
            })
            .collect();
        Ok(top.join("\n"))
    };
    let (threads, objects, symbols) = (report("comm", "1", 8)?, report("dso", "1", 8)?, report("symbol", "0.7", 30)?);
    if threads.is_empty() {
        bail!(
            "perf report shows no samples for the agent (pid {pid}; perf record said: {})",
            String::from_utf8_lossy(&rec.stderr).trim()
        );
    }
    Ok(format!("by thread:\n{threads}\nby object:\n{objects}\ntop symbols:\n{symbols}"))
}

/// CA + server certificate for `api.test` (ECDSA P-256), with the openssl CLI.
fn make_pki(dir: &Path) -> Result<()> {
    let p = |n: &str| dir.join(n).display().to_string();
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:{HOST}\n"
        ),
    )?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    util::run_quiet(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-keyout", &p("ca.key"), "-out", &p("ca.pem"), "-days", "1", "-subj", "/CN=enforcer bench proxy CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
    )
    .context("openssl: making the CA")?;
    util::run_quiet(Command::new("openssl").arg("req").args(ec).args([
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
        "-subj",
        &format!("/CN={HOST}"),
    ]))
    .context("openssl: making the server key")?;
    util::run_quiet(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("server.pem"),
        "-days",
        "1",
        "-extfile",
        &p("server.ext"),
    ]))
    .context("openssl: signing the server certificate")?;
    Ok(())
}

fn nginx_common(dir: &Path, name: &str) -> String {
    format!(
        "user root;\nworker_processes auto;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\nevents {{ worker_connections 4096; }}\n",
        d = dir.display()
    )
}

/// The upstream: a static file over TLS.
fn upstream_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "{}http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  server {{\n    listen {SERVER_ADDR}:{UPSTREAM_PORT} ssl;\n    \
         server_name {HOST};\n    ssl_certificate {d}/server.pem;\n    ssl_certificate_key {d}/server.key;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
         root {d}/www;\n    location / {{ }}\n  }}\n}}\n",
        nginx_common(dir, "upstream")
    )
}

/// nginx as the same TLS-originating proxy as enforcer's.
fn proxy_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "{}http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  upstream api {{\n    server {SERVER_ADDR}:{UPSTREAM_PORT};\n    \
         keepalive 128;\n    keepalive_requests 1000000;\n    keepalive_timeout 300s;\n  }}\n  server {{\n    listen {NGINX_PROXY};\n    location / {{\n      \
         proxy_pass https://api;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host {HOST};\n      \
         proxy_ssl_verify on;\n      proxy_ssl_trusted_certificate {d}/ca.pem;\n      proxy_ssl_server_name on;\n      proxy_ssl_name {HOST};\n      \
         proxy_ssl_session_reuse on;\n    }}\n  }}\n}}\n",
        nginx_common(dir, "proxy")
    )
}

fn write_registry(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("registry.yaml");
    let s = format!(
        "# Generated by `cargo xtask bench proxy`.\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: api, namespace: default}}\n\
         spec:\n  hosts: [{HOST}]\n  ports: [{{number: {SE_PORT}, name: http, protocol: HTTP, targetPort: {UPSTREAM_PORT}}}]\n  resolution: STATIC\n  \
         endpoints: [{{address: {SERVER_ADDR}}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: default}}\n\
         spec:\n  host: {HOST}\n  trafficPolicy:\n    portLevelSettings:\n    - port: {{number: {SE_PORT}}}\n      tls: {{mode: SIMPLE, caCertificates: {}}}\n",
        dir.join("ca.pem").display()
    );
    std::fs::write(&path, s).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Waits (≤ 10 s) until something listens on `addr:port` in `ns`.
fn wait_listening(ns: &Netns, port: u16, server: &mut Proc, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        server.check_running(what)?;
        let out = util::run_quiet(ns.command("ss").args(["-Hltn", &format!("sport = :{port}")]))?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_nginx(ns: &Netns, conf: &Path, what: &str) -> Result<Proc> {
    Proc::spawn(
        ns.command("nginx")
            .args(["-c"])
            .arg(conf)
            .args(["-g", "daemon off; master_process on;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
    .with_context(|| format!("starting {what}"))
}

fn wrk_args(a: &ProxyArgs, duration: u32, url: &str) -> Vec<String> {
    vec![
        "wrk".into(),
        "-t".into(),
        a.threads.to_string(),
        "-c".into(),
        a.connections.to_string(),
        "-d".into(),
        format!("{duration}s"),
        "--latency".into(),
        "-H".into(),
        format!("Host: {HOST}"),
        url.into(),
    ]
}

/// Seconds of wrk inside each measured `enforcer run` before the measured wrk (see `--cold`).
const AGENT_WARM_UP: u32 = 2;

/// What a measured `enforcer run` runs: the measured wrk, after a warm-up wrk in the same agent
/// (its upstream connections are then idle in the pool, as nginx's are between its runs) unless
/// `--cold`.
fn enforcer_prog(a: &ProxyArgs, url: &str) -> Vec<String> {
    let measured = wrk_args(a, a.duration, url);
    if a.cold {
        return measured;
    }
    let join = |v: Vec<String>| v.iter().map(|s| util::shell_quote(s)).collect::<Vec<_>>().join(" ");
    let script = format!("{} > /dev/null && exec {}", join(wrk_args(a, AGENT_WARM_UP, url)), join(measured));
    vec!["sh".into(), "-c".into(), script]
}

/// When to start sampling an enforcer run's CPU: after the agent's start and the warm-up.
fn sampling_skip(a: &ProxyArgs) -> Duration {
    Duration::from_secs(1 + if a.cold { 0 } else { u64::from(AGENT_WARM_UP) })
}

/// The CPU sampling window of an enforcer run (from, to after its spawn): from `sampling_skip`
/// for the measured run's duration less 1.5 s, so it ends before wrk does even when the agent
/// took up to 0.5 s to start (the rest of the run is not at the measured rate).
fn sampling_window(a: &ProxyArgs) -> (Duration, Duration) {
    let from = sampling_skip(a);
    let len = Duration::from_secs_f64((f64::from(a.duration) - 1.5).max(0.5));
    (from, from + len)
}

/// The target on the medians' ratios (enforcer / nginx).
fn target_verdict(rps_ratio: f64, p99_ratio: f64) -> &'static str {
    match (rps_ratio >= 1.0, p99_ratio <= 1.0) {
        (true, true) => "met",
        (true, false) => "NOT met: p99",
        (false, true) => "NOT met: requests/s",
        (false, false) => "NOT met: requests/s and p99",
    }
}

/// Per-round ratios (enforcer / nginx, the two runs of the same round): medians and how many
/// rounds enforcer was ahead in.
#[derive(Debug, PartialEq)]
struct Paired {
    rps: f64,
    p99: f64,
    rps_ahead: usize,
    p99_ahead: usize,
    rounds: usize,
}

impl Paired {
    fn of(nginx: &[Wrk], enforcer: &[Wrk]) -> Paired {
        let pairs: Vec<(&Wrk, &Wrk)> = nginx.iter().zip(enforcer).collect();
        Paired {
            rps: median(pairs.iter().map(|(n, e)| e.rps / n.rps).collect()),
            p99: median(pairs.iter().map(|(n, e)| e.p99_ms / n.p99_ms).collect()),
            rps_ahead: pairs.iter().filter(|(n, e)| e.rps >= n.rps).count(),
            p99_ahead: pairs.iter().filter(|(n, e)| e.p99_ms <= n.p99_ms).count(),
            rounds: pairs.len(),
        }
    }
}

/// One measured `enforcer run` of `client`'s binary (with `extra` arguments): what wrk saw, the
/// agent's max VmRSS (KiB) and its cost per request over the sampled window (the requests in it
/// at the run's average rate).
fn measure_enforcer(
    client: &BenchClient,
    extra: &[&str],
    args: &ProxyArgs,
    url: &str,
    what: &str,
    upstream: u32,
) -> Result<(Wrk, u64, Cost)> {
    let (out, rss, (secs, a, b)) = run_sampling_rss(
        &mut client.enforcer_cmd(extra, &enforcer_prog(args, url)),
        client.enforcer,
        &format!("{what} wrk"),
        upstream,
        sampling_window(args),
    )?;
    let w = parse_wrk(&out)?;
    check_clean(&w, what, &out)?;
    let cost = Cost::per_request(a, b, (w.rps * secs).max(1.0));
    Ok((w, rss, cost))
}

fn check_clean(w: &Wrk, what: &str, out: &str) -> Result<()> {
    if w.non_2xx > 0 || w.requests == 0 {
        bail!("{what}: {} non-2xx/3xx responses of {} requests:\n{out}", w.non_2xx, w.requests);
    }
    if let Some(e) = &w.socket_errors {
        bail!("{what}: wrk reported {e}\n{out}");
    }
    Ok(())
}

pub fn main(args: ProxyArgs) -> Result<ExitCode> {
    util::require_root("the benchmark")?;
    if args.rounds == 0 || args.duration == 0 || args.threads == 0 || args.connections == 0 {
        bail!("--rounds, --duration, --threads and --connections must be positive");
    }
    setup::ensure()?;
    for tool in ["wrk", "nginx", "openssl", "curl"] {
        if which::which(tool).is_err() {
            bail!("{tool} is not installed (`cargo xtask setup` installs it)");
        }
    }
    let enforcer = match &args.enforcer {
        Some(p) => std::path::absolute(p)?,
        None => util::build_enforcer(!args.debug)?,
    };
    let pid = std::process::id();
    let started = Instant::now();

    let client_ns = Netns::create(&format!("enf-pxc-{pid}"))?;
    let server_ns = Netns::create(&format!("enf-pxs-{pid}"))?;
    let (cl, sl) = (format!("epx{}c", pid % 10000), format!("epx{}s", pid % 10000));
    let _veth = netns::veth(&cl, Some(&client_ns), &sl, &server_ns)?;
    client_ns.ip(["addr", "add", &format!("{CLIENT_ADDR}/30"), "dev", &cl])?;
    client_ns.ip(["link", "set", &cl, "up"])?;
    server_ns.ip(["addr", "add", &format!("{SERVER_ADDR}/30"), "dev", &sl])?;
    server_ns.ip(["link", "set", &sl, "up"])?;

    let dir = util::TempDir::new("enforcer-bench-proxy")?;
    make_pki(&dir.path)?;
    std::fs::create_dir_all(dir.path.join("www"))?;
    // A small page (nginx's default index.html is 615 bytes).
    let page: String = format!(
        "<!DOCTYPE html>\n<html><body><h1>{HOST}</h1>\n{}</body></html>\n",
        "<p>enforcer bench proxy</p>\n".repeat(20)
    );
    std::fs::write(dir.path.join("www/index.html"), &page)?;
    let up_conf = dir.path.join("upstream.conf");
    std::fs::write(&up_conf, upstream_conf(&dir.path))?;
    let px_conf = dir.path.join("proxy.conf");
    std::fs::write(&px_conf, proxy_conf(&dir.path))?;
    let registry = write_registry(&dir.path)?;

    let mut upstream = start_nginx(&server_ns, &up_conf, "the upstream nginx")?;
    wait_listening(&server_ns, UPSTREAM_PORT, &mut upstream, "the upstream nginx")?;
    let mut nginx_proxy = start_nginx(&client_ns, &px_conf, "the nginx proxy")?;
    let proxy_port: u16 = NGINX_PROXY.rsplit_once(':').unwrap().1.parse()?;
    wait_listening(&client_ns, proxy_port, &mut nginx_proxy, "the nginx proxy")?;

    let top = Cgroup::create(&format!("enforcer-bench-proxy-{pid}"))?;
    let baseline = Cgroup::create_in(&top.path, "baseline")?;
    let enforced = Cgroup::create_in(&top.path, "enforced")?;
    let env = BenchClient {
        enforcer: &enforcer,
        ns: &client_ns,
        baseline: &baseline,
        enforced: &enforced,
        registry: &registry,
    };

    println!(
        "wrk -t{} -c{} -d{}s --latency in netns {}: (a) -> nginx proxy {NGINX_PROXY} vs (b) -> enforcer's proxy (enforcer run, \
         {SERVER_ADDR}:{SE_PORT} steered); both originate TLS (verified, SNI {HOST}) to nginx at {SERVER_ADDR}:{UPSTREAM_PORT} in netns {} \
         over veth; {} page; {} rounds; enforcer: {}; {}",
        args.threads,
        args.connections,
        args.duration,
        client_ns.name,
        server_ns.name,
        page.len(),
        args.rounds,
        enforcer.display(),
        if args.cold {
            "each enforcer run measured from its agent's start (--cold)".to_string()
        } else {
            format!("each enforcer run measured after a {AGENT_WARM_UP} s wrk in the same agent (nginx stays up, warm)")
        }
    );

    // Sanity: both paths serve the page; enforcer's goes through its proxy.
    let curl = |url: &str| format!("curl -sS --noproxy '*' --max-time 10 -H 'Host: {HOST}' {url}");
    let body = run_out(
        &mut env.baseline_cmd(&["sh".into(), "-c".into(), curl(&format!("http://{NGINX_PROXY}/"))]),
        "sanity (nginx proxy)",
    )?;
    if body != page {
        bail!("sanity: the nginx proxy did not return the page:\n{body}");
    }
    let script = format!(
        "{} && echo '#--metrics' && {}",
        curl(&format!("http://{SERVER_ADDR}:{SE_PORT}/")),
        curl(&format!("http://{ADMIN}/metrics"))
    );
    let out =
        run_out(&mut env.enforcer_cmd(&["--admin", ADMIN], &["sh".into(), "-c".into(), script]), "sanity (enforcer)")?;
    let (body, metrics) = out.split_once("#--metrics\n").unwrap_or((&out, ""));
    if body != page {
        bail!("sanity: enforcer's proxy did not return the page:\n{out}");
    }
    let proxied: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("response_code=\"200\"")
                && l.contains(&format!("destination_service=\"{HOST}\""))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum();
    if proxied != 1.0 {
        bail!(
            "sanity: istio_requests_total{{response_code=\"200\"}} is {proxied}, not 1: did the request go through the proxy?\n{metrics}"
        );
    }
    println!(
        "sanity: both paths return the {}-byte page; enforcer counted it in istio_requests_total{{response_code=\"200\"}}",
        page.len()
    );

    // Warm-up (not measured).
    let nginx_url = format!("http://{NGINX_PROXY}/");
    let enf_url = format!("http://{SERVER_ADDR}:{SE_PORT}/");
    run_out(&mut env.baseline_cmd(&wrk_args(&args, 2, &nginx_url)), "warm-up (nginx)")?;
    run_out(&mut env.enforcer_cmd(&[], &wrk_args(&args, 2, &enf_url)), "warm-up (enforcer)")?;

    let other = match &args.compare {
        Some(p) => Some(std::path::absolute(p)?),
        None => None,
    };
    let env_other = other.as_ref().map(|bin| BenchClient {
        enforcer: bin,
        ns: &client_ns,
        baseline: &baseline,
        enforced: &enforced,
        registry: &registry,
    });
    println!("\nrounds:");
    let (mut ng, mut en, mut rss) = (Vec::<Wrk>::new(), Vec::<Wrk>::new(), Vec::<u64>::new());
    let (mut ng_cost, mut en_cost) = (Vec::<Cost>::new(), Vec::<Cost>::new());
    let nginx_pid = nginx_proxy.child.id();
    let upstream_pid = upstream.child.id();
    let (mut ot, mut ot_rss, mut ot_cost) = (Vec::<Wrk>::new(), Vec::<u64>::new(), Vec::<Cost>::new());
    // Each round runs nginx, enforcer (and the compare binary) in an order rotated by one each
    // round, so no side always runs first or last (a run right after another one differs).
    let mut order = vec![Slot::Nginx, Slot::Enforcer];
    order.extend(env_other.as_ref().map(Slot::Compare));
    for round in 0..args.rounds {
        for slot in rotated(&order, round as usize) {
            match slot {
                Slot::Nginx => {
                    let before = Reading::take(nginx_pid, true, upstream_pid);
                    let out = run_out(&mut env.baseline_cmd(&wrk_args(&args, args.duration, &nginx_url)), "nginx wrk")?;
                    let after = Reading::take(nginx_pid, true, upstream_pid);
                    let w = parse_wrk(&out)?;
                    check_clean(&w, "nginx", &out)?;
                    ng_cost.push(Cost::per_request(before, after, w.requests as f64));
                    ng.push(w);
                }
                Slot::Enforcer => {
                    let extra: Vec<&str> = args.enforcer_args.iter().map(String::as_str).collect();
                    let (w, r, c) = measure_enforcer(&env, &extra, &args, &enf_url, "enforcer", upstream_pid)?;
                    en_cost.push(c);
                    en.push(w);
                    rss.push(r);
                }
                Slot::Compare(e2) => {
                    let (w, r, c) = measure_enforcer(e2, &[], &args, &enf_url, "compare", upstream_pid)?;
                    ot_cost.push(c);
                    ot.push(w);
                    ot_rss.push(r);
                }
            }
        }
        let (n, e) = (ng.last().unwrap(), en.last().unwrap());
        let extra = match (ot.last(), ot_rss.last(), ot_cost.last()) {
            (Some(o), Some(r), Some(c)) => format!(
                " | compare {:.0} req/s p50 {:.2} p99 {:.2} ms ({:.1} µs CPU /req), VmRSS {:.1} MiB",
                o.rps,
                o.p50_ms,
                o.p99_ms,
                c.cpu_us,
                *r as f64 / 1024.0
            ),
            _ => String::new(),
        };
        let (nc, ec) = (ng_cost.last().unwrap(), en_cost.last().unwrap());
        println!(
            "  round {}: nginx {:.0} req/s p50 {:.2} p99 {:.2} ms ({:.1} µs CPU, {:.2} switches /req; machine {:.1}, upstream {:.1} µs/req) | enforcer {:.0} req/s p50 {:.2} p99 {:.2} ms ({:.1} µs CPU, {:.2} switches /req; machine {:.1}, upstream {:.1} µs/req), agent VmRSS max {:.1} MiB{extra}",
            round + 1,
            n.rps,
            n.p50_ms,
            n.p99_ms,
            nc.cpu_us,
            nc.switches,
            nc.machine_us,
            nc.upstream_us,
            e.rps,
            e.p50_ms,
            e.p99_ms,
            ec.cpu_us,
            ec.switches,
            ec.machine_us,
            ec.upstream_us,
            *rss.last().unwrap() as f64 / 1024.0
        );
        upstream.check_running("the upstream nginx")?;
        nginx_proxy.check_running("the nginx proxy")?;
    }

    let (n_rps, e_rps) = (median(ng.iter().map(|w| w.rps).collect()), median(en.iter().map(|w| w.rps).collect()));
    let (n_p99, e_p99) = (median(ng.iter().map(|w| w.p99_ms).collect()), median(en.iter().map(|w| w.p99_ms).collect()));
    let (n_p50, e_p50) = (median(ng.iter().map(|w| w.p50_ms).collect()), median(en.iter().map(|w| w.p50_ms).collect()));
    let rss_max = rss.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    let rss_med = median(rss.iter().map(|r| *r as f64 / 1024.0).collect());
    let mut out = String::new();
    let _ = writeln!(out, "\n{:<46} {:>14} {:>14}   p50 latency", "medians", "requests/s", "p99 latency");
    let _ =
        writeln!(out, "{:<46} {:>14.0} {:>11.2} ms   {n_p50:.2} ms", "(a) wrk -> nginx proxy_pass https", n_rps, n_p99);
    let _ = writeln!(
        out,
        "{:<46} {:>14.0} {:>11.2} ms   {e_p50:.2} ms ({:.3}x)",
        "(b) wrk -> enforcer proxy (enforcer run)",
        e_rps,
        e_p99,
        e_p50 / n_p50
    );
    let (rps_ratio, p99_ratio) = (e_rps / n_rps, e_p99 / n_p99);
    let _ = writeln!(
        out,
        "{:<46} {:>13.3}x {:>13.3}x   (target >= 1.0x requests/s and <= 1.0x p99: {})",
        "b/a",
        rps_ratio,
        p99_ratio,
        target_verdict(rps_ratio, p99_ratio)
    );
    // Each round's two runs are next to each other in time: their ratio pairs out the drift of
    // this shared machine between rounds.
    let paired = Paired::of(&ng, &en);
    let _ = writeln!(
        out,
        "{:<46} {:>13.3}x {:>13.3}x   (enforcer ahead in requests/s in {} and in p99 in {} of {} rounds)",
        "b/a per round (median)", paired.rps, paired.p99, paired.rps_ahead, paired.p99_ahead, paired.rounds
    );
    let _ = writeln!(out, "agent VmRSS under load: max {rss_max:.1} MiB (median of per-run maxima {rss_med:.1} MiB)");
    let med = |v: &[Cost], f: fn(&Cost) -> f64| median(v.iter().map(f).collect());
    let _ = writeln!(
        out,
        "per request (medians): nginx proxy {:.1} µs CPU, {:.2} context switches; enforcer agent {:.1} µs CPU, {:.2} context switches (min..max requests/s: nginx {:.0}..{:.0}, enforcer {:.0}..{:.0})\n\
         whole machine busy per request: {:.1} µs with nginx, {:.1} µs with enforcer (upstream nginx {:.1} / {:.1} µs; the rest is wrk, softirq and everything else)",
        med(&ng_cost, |c| c.cpu_us),
        med(&ng_cost, |c| c.switches),
        med(&en_cost, |c| c.cpu_us),
        med(&en_cost, |c| c.switches),
        ng.iter().map(|w| w.rps).fold(f64::INFINITY, f64::min),
        ng.iter().map(|w| w.rps).fold(0.0, f64::max),
        en.iter().map(|w| w.rps).fold(f64::INFINITY, f64::min),
        en.iter().map(|w| w.rps).fold(0.0, f64::max),
        med(&ng_cost, |c| c.machine_us),
        med(&en_cost, |c| c.machine_us),
        med(&ng_cost, |c| c.upstream_us),
        med(&en_cost, |c| c.upstream_us),
    );
    if !ot.is_empty() {
        let o_rps = median(ot.iter().map(|w| w.rps).collect());
        let o_p99 = median(ot.iter().map(|w| w.p99_ms).collect());
        let o_rss = ot_rss.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
        let _ = writeln!(
            out,
            "{:<46} {:>14.0} {:>11.2} ms   ({:.3}x / {:.3}x nginx; {:.1} µs CPU per request against (b)'s {:.1}; VmRSS max {o_rss:.1} MiB)",
            "(c) --compare binary",
            o_rps,
            o_p99,
            o_rps / n_rps,
            o_p99 / n_p99,
            med(&ot_cost, |c| c.cpu_us),
            med(&en_cost, |c| c.cpu_us)
        );
    }
    print!("{out}");
    if !args.no_profile && which::which("perf").is_ok() {
        match profile_run(
            &mut env.enforcer_cmd(&[], &enforcer_prog(&args, &enf_url)),
            env.enforcer,
            &dir.path,
            args.duration,
            sampling_skip(&args),
        ) {
            Ok(top) => {
                println!("\nprofile of the agent under the same load (perf record -g; self time by symbol):\n{top}")
            }
            Err(e) => println!("\nprofile skipped: {e:#}"),
        }
    }
    println!("(total {:.0} s)", started.elapsed().as_secs_f64());

    drop((upstream, nginx_proxy));
    drop((baseline, enforced, top));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:18080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  690.42us  21.34ms   88.41%
    Req/Sec    12.01k     1.01k   14.33k    71.50%
  Latency Distribution
     50%    1.98ms
     75%    2.31ms
     90%    2.79ms
     99%  812.00us
  239014 requests in 10.00s, 186.59MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  23897.42
Transfer/sec:     18.66MB
";

    #[test]
    fn parses_wrk_output() {
        let w = parse_wrk(WRK).unwrap();
        assert_eq!(w.rps, 23897.42);
        assert!((w.p99_ms - 0.812).abs() < 1e-9);
        assert!((w.p50_ms - 1.98).abs() < 1e-9);
        assert_eq!(w.requests, 239014);
        assert_eq!(w.non_2xx, 3);
        assert_eq!(w.socket_errors, None);
        assert!(check_clean(&w, "t", WRK).is_err());
        assert!(parse_wrk("nothing").is_err());
        assert_eq!(parse_latency_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_latency_ms("1.50m"), Some(90_000.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }

    fn wrk(rps: f64, p99_ms: f64) -> Wrk {
        Wrk { rps, p50_ms: p99_ms / 2.0, p99_ms, requests: 1, non_2xx: 0, socket_errors: None }
    }

    #[test]
    fn rounds_are_paired_and_the_target_names_what_it_misses() {
        let nginx = [wrk(100.0, 2.0), wrk(50.0, 4.0), wrk(80.0, 3.0)];
        let enforcer = [wrk(90.0, 1.0), wrk(60.0, 5.0), wrk(88.0, 3.0)];
        let p = Paired::of(&nginx, &enforcer);
        assert_eq!(p.rounds, 3);
        assert_eq!(p.rps_ahead, 2);
        assert_eq!(p.p99_ahead, 2);
        assert!((p.rps - 1.1).abs() < 1e-9, "{p:?}");
        assert!((p.p99 - 1.0).abs() < 1e-9, "{p:?}");
        assert_eq!(target_verdict(1.0, 1.0), "met");
        assert_eq!(target_verdict(1.2, 1.01), "NOT met: p99");
        assert_eq!(target_verdict(0.9, 0.8), "NOT met: requests/s");
        assert_eq!(target_verdict(0.9, 1.3), "NOT met: requests/s and p99");
    }

    fn args(cold: bool) -> ProxyArgs {
        ProxyArgs {
            duration: 7,
            rounds: 1,
            threads: 2,
            connections: 50,
            enforcer: None,
            debug: false,
            no_profile: true,
            compare: None,
            cold,
            enforcer_args: vec![],
        }
    }

    /// The warm-up script, run by a real shell against a `wrk` that prints its arguments: only
    /// the measured run's output comes out, with every argument intact (the Host header's space).
    #[test]
    fn warm_enforcer_run_outputs_only_the_measured_wrk() {
        let tmp = util::TempDir::new("xtask-bench-proxy-test").unwrap();
        let dir = &tmp.path;
        let fake = dir.join("wrk");
        std::fs::write(&fake, "#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let url = "http://100.127.253.2:80/";
        let prog = enforcer_prog(&args(false), url);
        assert_eq!(prog[..2], ["sh".to_string(), "-c".to_string()]);
        let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new(&prog[0]).args(&prog[1..]).env("PATH", path).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let expected: String = wrk_args(&args(false), 7, url)[1..].iter().map(|a| format!("[{a}]\n")).collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
        assert!(prog[2].contains("-d 2s"), "{}", prog[2]);
        assert_eq!(enforcer_prog(&args(true), url), wrk_args(&args(true), 7, url));
        assert_eq!(sampling_skip(&args(true)), Duration::from_secs(1));
        assert_eq!(sampling_skip(&args(false)), Duration::from_secs(3));
        assert_eq!(sampling_window(&args(false)), (Duration::from_secs(3), Duration::from_millis(8500)));
    }

    #[test]
    fn the_process_is_found_by_its_binary_s_name() {
        assert_eq!(comm_of(Path::new("/x/target/dist/enforcer")), "enforcer");
        assert_eq!(comm_of(Path::new("/tmp/enforcer-previous-build")), "enforcer-previo");
    }

    /// A daemon's stat line: tpgid is -1 and the comm has a space and a parenthesis.
    #[test]
    fn stat_cpu_is_utime_plus_stime() {
        let line = "7553 (nginx (x) y) S 7550 7550 7550 0 -1 4194624 4470 0 0 0 321 654 5 7 20 0 1 0 2222 1 2 3";
        assert_eq!(stat_cpu_ticks(line), Some(321 + 654));
        assert_eq!(stat_cpu_ticks("1 (short) S 0"), None);
    }
}
