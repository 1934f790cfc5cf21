//! `cargo xtask bench connect`: what enforcer adds to connect(). (`bench sync` and `bench dns`
//! are in `bench_sync.rs` / `bench_dns.rs`; `bench all` runs the three.)
//!
//! A client in one network namespace connects to a TCP listener in another (over a veth pair, not
//! loopback) and closes at once (SO_LINGER 0: RST, no TIME_WAIT), in a loop. Three ways, in
//! alternating rounds, for each registry size N:
//! - baseline: the client in a fresh child cgroup with no programs;
//! - enforcer: the client under `enforcer run` with a generated ServiceEntry of N addresses;
//! - nftables: the client in the baseline cgroup, with an nftables set of the same N addresses
//!   filtering its namespace's output.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cleanup::{self, Resource},
    netns::{self, Cgroup, Netns, Proc},
    setup, util,
};

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// connect()+close() latency: no enforcement vs `enforcer run` vs an nftables set (root).
    Connect(ConnectArgs),
    /// A registry of N hosts from YAML into the kernel maps: parse, compile, load, full /
    /// incremental / no-op apply, against raw bpf() inserts (root).
    Sync(crate::bench_sync::SyncArgs),
    /// DNS forwarder vs a real dnsmasq: latency direct vs forwarded, open-loop load, and the
    /// delay of learning answers into the kernel map (root).
    Dns(crate::bench_dns::DnsArgs),
    /// iperf3 throughput across a veth with and without the TC traffic counters, and the cost of
    /// the sock_ops connection accounting on a connect() loop (root).
    Tc(crate::bench_tc::TcArgs),
    /// wrk through enforcer's L7 proxy (HTTP in, TLS out per DestinationRule SIMPLE) vs nginx as
    /// the same TLS-originating proxy: requests/s, p99 latency, the agent's RSS under load (root).
    Proxy(crate::bench_proxy::ProxyArgs),
    /// The L7 proxy's instructions per request under callgrind (user space, repeatable), for A/B
    /// of proxy changes that `proxy`'s wall-clock figures are too noisy to show.
    ProxyInstructions(crate::bench_proxy_instr::ProxyInstrArgs),
    /// What an ungoverned pod pays in connect4 (BPF ns per call) in Kubernetes mode with 0 / 100
    /// / 1,000 governed pods (root).
    KubeCost(crate::bench_kube::KubeCostArgs),
    /// connect, sync and dns, one after the other (each with its own options).
    All(AllArgs),
}

#[derive(clap::Args)]
pub struct AllArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    sync: crate::bench_sync::SyncArgs,
    #[command(flatten)]
    dns: crate::bench_dns::DnsArgs,
}

#[derive(clap::Args)]
pub struct ConnectArgs {
    /// Registry sizes (number of allowed addresses) to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,10000,100000")]
    sizes: Vec<usize>,
    /// connect()+close() calls per measurement.
    #[arg(long, default_value_t = 20_000)]
    iterations: u32,
    /// Measured rounds per size (each runs all three configurations, in rotating order).
    #[arg(long, default_value_t = 7)]
    rounds: u32,
    /// Use this enforcer binary instead of building one.
    #[arg(long, value_name = "PATH")]
    enforcer: Option<PathBuf>,
    /// Build and use the shipped binary (the `dist` profile: release with fat LTO).
    #[arg(long)]
    release: bool,
}

#[derive(clap::Args)]
pub struct ClientArgs {
    addr: Ipv4Addr,
    port: u16,
    iterations: u32,
    /// Untimed calls before the timed loop.
    #[arg(long, default_value_t = 1000)]
    warmup: u32,
    /// Also print the run time of the BPF programs attached to this process's cgroup over the
    /// timed loop (needs statistics enabled: `kernel.bpf_stats_enabled` or a BPF_ENABLE_STATS fd).
    #[arg(long)]
    bpf_stats: bool,
    /// Let the caller take BPF statistics around the timed loop: print `{"ready":true}` and wait
    /// for a line on stdin before it, `{"done":true}` and wait again after it. For a client
    /// confined by `enforcer run`, which can read no BPF statistics itself.
    #[arg(long)]
    handshake: bool,
}

#[derive(clap::Args)]
pub struct ServerArgs {
    addr: Ipv4Addr,
    port: u16,
}

const CLIENT_ADDR: &str = "100.127.255.1";
const SERVER_ADDR: &str = "100.127.255.2";
const PORT: u16 = 9000;
const NFT_TABLE: &str = "enfbench";

// ---------------------------------------------------------------------------------------------
// The helper processes.

/// `bench-server ADDR PORT`: accept and close, forever.
pub fn server(a: ServerArgs) -> ExitCode {
    use std::os::fd::AsRawFd as _;
    let l = match std::net::TcpListener::bind((a.addr, a.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-server: bind {}:{}: {e}", a.addr, a.port);
            return ExitCode::FAILURE;
        }
    };
    // A deep accept queue, so a slow accept() never drops SYNs.
    // SAFETY: listen() on a socket we own.
    unsafe { libc::listen(l.as_raw_fd(), 4096) };
    loop {
        let _ = l.accept(); // dropped (closed) at once
    }
}

/// `bench-client ADDR PORT N`: N × (socket, connect, close); prints {"ns_per_op":..} as JSON.
pub fn client(a: ClientArgs) -> ExitCode {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(a.addr).to_be() },
        sin_zero: [0; 8],
    };
    let once = || -> std::io::Result<()> {
        // SAFETY: plain socket syscalls on a local fd and a local sockaddr.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            );
            let r = libc::connect(fd, (&raw const sa).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 0 {
                return Err(err);
            }
        }
        Ok(())
    };
    for _ in 0..a.warmup {
        if let Err(e) = once() {
            eprintln!("bench-client: connect to {}:{}: {e}", a.addr, a.port);
            return ExitCode::from(3);
        }
    }
    let before = if a.bpf_stats { crate::bpf_stats::snapshot().ok() } else { None };
    if a.handshake && !crate::bpf_stats::handshake("ready") {
        return ExitCode::from(4);
    }
    let t = Instant::now();
    for i in 0..a.iterations {
        if let Err(e) = once() {
            eprintln!("bench-client: connect to {}:{} (call {i}): {e}", a.addr, a.port);
            return ExitCode::from(3);
        }
    }
    let ns = t.elapsed().as_nanos() as f64;
    if a.handshake && !crate::bpf_stats::handshake("done") {
        return ExitCode::from(4);
    }
    let bpf: Vec<serde_json::Value> = match (before, a.bpf_stats.then(crate::bpf_stats::snapshot)) {
        (Some(b), Some(Ok(after))) => crate::bpf_stats::delta(&b, &after)
            .into_iter()
            .map(|p| serde_json::json!({"name": p.name, "hook": p.hook, "run_time_ns": p.run_time_ns, "run_cnt": p.run_cnt}))
            .collect(),
        _ => Vec::new(),
    };
    println!(
        "{}",
        serde_json::json!({
            "iterations": a.iterations,
            "total_ns": ns,
            "ns_per_op": ns / a.iterations.max(1) as f64,
            "bpf": bpf,
        })
    );
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// The orchestration.

pub fn main(cmd: BenchCmd) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Connect(args) => connect(args),
        BenchCmd::Sync(args) => crate::bench_sync::main(args),
        BenchCmd::Dns(args) => crate::bench_dns::main(args),
        BenchCmd::Tc(args) => crate::bench_tc::main(args),
        BenchCmd::Proxy(args) => crate::bench_proxy::main(args),
        BenchCmd::ProxyInstructions(args) => crate::bench_proxy_instr::main(args),
        BenchCmd::KubeCost(args) => crate::bench_kube::main(args),
        BenchCmd::All(a) => {
            let mut failed = Vec::new();
            type Step = Box<dyn FnOnce() -> Result<ExitCode>>;
            let steps: [(&str, Step); 3] = [
                ("connect", Box::new(|| connect(a.connect))),
                ("sync", Box::new(|| crate::bench_sync::main(a.sync))),
                ("dns", Box::new(|| crate::bench_dns::main(a.dns))),
            ];
            for (name, f) in steps {
                println!("\n===== cargo xtask bench {name} =====");
                match f() {
                    Ok(c) if c == ExitCode::SUCCESS => {}
                    Ok(_) => failed.push(name.to_string()),
                    Err(e) => {
                        eprintln!("xtask: bench {name} failed: {e:#}");
                        failed.push(name.to_string());
                    }
                }
            }
            if failed.is_empty() { Ok(ExitCode::SUCCESS) } else { bail!("bench all: {} failed", failed.join(", ")) }
        }
    }
}

fn connect(args: ConnectArgs) -> Result<ExitCode> {
    util::require_root("the benchmark")?;
    // Statistics on for as long as this fd lives (the whole benchmark).
    let _stats = crate::bpf_stats::enable()
        .map_err(|e| eprintln!("xtask: warning: BPF_ENABLE_STATS failed ({e}); no BPF ns figures"))
        .ok();
    if args.sizes.is_empty() || args.rounds == 0 || args.iterations == 0 {
        bail!("--sizes, --rounds and --iterations must be non-empty/positive");
    }
    setup::ensure()?;
    let enforcer = match &args.enforcer {
        Some(p) => std::path::absolute(p)?,
        None => util::build_enforcer(args.release)?,
    };
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let pid = std::process::id();

    // Topology: client netns <-veth-> server netns.
    let client_ns = Netns::create(&format!("enf-bc-{pid}"))?;
    let server_ns = Netns::create(&format!("enf-bs-{pid}"))?;
    let (cl, sl) = (format!("ebc{}c", pid % 10000), format!("ebs{}s", pid % 10000));
    let _veth = netns::veth(&cl, Some(&client_ns), &sl, &server_ns)?;
    client_ns.ip(["addr", "add", &format!("{CLIENT_ADDR}/30"), "dev", &cl])?;
    client_ns.ip(["link", "set", &cl, "up"])?;
    server_ns.ip(["addr", "add", &format!("{SERVER_ADDR}/30"), "dev", &sl])?;
    server_ns.ip(["link", "set", &sl, "up"])?;

    let mut srv = server_ns.command(&xtask);
    srv.args(["bench-server", SERVER_ADDR, &PORT.to_string()]).stdin(Stdio::null());
    let mut server = Proc::spawn(&mut srv)?;
    // enforcer-bench-PID/baseline: the unenforced client; enforcer-bench-PID/enforced: parent of
    // enforcer's per-run cgroups (so nothing is left behind even if enforcer is killed).
    let top = Cgroup::create(&format!("enforcer-bench-{pid}"))?;
    let cgroup = Cgroup::create_in(&top.path, "baseline")?;
    let enforced = Cgroup::create_in(&top.path, "enforced")?;
    let dir = util::TempDir::new("enforcer-bench")?;

    // Bounded wait for the listener.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        server.check_running("bench-server")?;
        let mut c = client_cmd(&client_ns, &xtask, 1, 0);
        if c.output().map(|o| o.status.success()).unwrap_or(false) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the bench listener at {SERVER_ADDR}:{PORT} did not accept within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    println!(
        "connect()+close() from netns {} to {SERVER_ADDR}:{PORT} in netns {} (veth), {} calls per \
         measurement, {} rounds per size; enforcer: {}",
        client_ns.name,
        server_ns.name,
        args.iterations,
        args.rounds,
        enforcer.display()
    );
    // Warm-up: caches, page cache for the binaries, the neighbour entry.
    let mut warm = client_cmd(&client_ns, &xtask, args.iterations, 1000);
    cgroup.enter_on_exec(&mut warm);
    measure(&mut warm, "warm-up")?;

    let mut rows = Vec::new();
    for &n in &args.sizes {
        let row = bench_size(n, &args, &enforcer, &xtask, &client_ns, &cgroup, &enforced, &dir.path)?;
        rows.push(row);
        server.check_running("bench-server")?;
    }

    println!("\nmedian ns per connect()+close(), {} calls × {} rounds:", args.iterations, args.rounds);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>9} {:>10} {:>10} {:>10} {:>10} {:>10}   {:>9} {:>9}",
        "entries", "baseline", "enforcer", "nftables", "enf/base", "enf/nft", "enf start", "nft load"
    );
    for r in &rows {
        let _ = writeln!(
            t,
            "{:>9} {:>10.0} {:>10.0} {:>10.0} {:>9.2}x {:>9.2}x   {:>8.2}s {:>8.2}s",
            r.n,
            r.base,
            r.enf,
            r.nft,
            r.enf / r.base,
            r.enf / r.nft,
            r.enf_overhead_s,
            r.nft_load_s
        );
    }
    print!("{t}");
    println!(
        "(enf start: median wall time of `enforcer run` minus the client's timed loop — loading \
         programs and the registry, and exiting; nft load: `nft -f` of the set)"
    );
    println!(
        "\nBPF ns per connect()+close() (bpf_stats run_time_ns / calls, median of rounds; runs per call; each \
         run includes bpf_stats' own clock reads, ~30 ns here):"
    );
    for r in &rows {
        for (label, bpf, wall) in [("accounting on ", &r.bpf, r.enf), ("--no-conn-accounting", &r.bpf_na, r.enf_na)] {
            let total: f64 = bpf.iter().map(|b| b.1).sum();
            let per: Vec<String> =
                bpf.iter().filter(|b| b.2 > 0.0).map(|(n, ns, runs)| format!("{n} {ns:.0} ({runs:.1}x)")).collect();
            println!(
                "{:>9} entries, {label}: {:>5.0} ns BPF = {:.2}% of baseline; wall {:.2}x base, {:.2}x nft   [{}]",
                r.n,
                total,
                100.0 * total / r.base,
                wall / r.base,
                wall / r.nft,
                if per.is_empty() { "no bpf_stats: BPF_ENABLE_STATS failed?".to_string() } else { per.join(", ") }
            );
        }
    }
    drop(server);
    drop((cgroup, enforced, top));
    Ok(ExitCode::SUCCESS)
}

struct Row {
    n: usize,
    base: f64,
    enf: f64,
    nft: f64,
    enf_overhead_s: f64,
    nft_load_s: f64,
    /// (program, median BPF ns per connection, runs per connection) from bpf_stats.
    bpf: Vec<(String, f64, f64)>,
    /// `--no-conn-accounting`: wall clock and BPF figures.
    enf_na: f64,
    bpf_na: Vec<(String, f64, f64)>,
}

fn client_cmd(ns: &Netns, xtask: &Path, iterations: u32, warmup: u32) -> Command {
    let mut c = ns.command(xtask);
    c.args(client_args(iterations, warmup));
    c
}

fn client_args(iterations: u32, warmup: u32) -> Vec<String> {
    vec![
        "bench-client".into(),
        SERVER_ADDR.into(),
        PORT.to_string(),
        iterations.to_string(),
        "--warmup".into(),
        warmup.to_string(),
    ]
}

/// What one client run measured.
struct Measured {
    per_op: f64,
    /// ns of the timed loop.
    total: f64,
    /// BPF run time (ns) and runs over the timed loop, per program name (with `--bpf-stats`).
    bpf: BTreeMap<String, (u64, u64)>,
}

/// Runs a client (possibly wrapped) and returns what it measured.
fn measure(cmd: &mut Command, what: &str) -> Result<Measured> {
    cmd.stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("could not start the {what} client"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} run failed ({}): `{}`\n{}{}",
            out.status,
            util::display_cmd(cmd),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = stdout
        .lines()
        .filter(|l| l.contains("\"ns_per_op\""))
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .with_context(|| format!("{what}: no result line from bench-client in: {stdout}"))?;
    let mut bpf = BTreeMap::new();
    for p in v["bpf"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?").to_string();
        let e = bpf.entry(name).or_insert((0, 0));
        e.0 += p["run_time_ns"].as_u64().unwrap_or(0);
        e.1 += p["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(Measured {
        per_op: v["ns_per_op"].as_f64().unwrap_or(f64::NAN),
        total: v["total_ns"].as_f64().unwrap_or(0.0),
        bpf,
    })
}

/// Runs a client with `--handshake` under `enforcer run --cgroup-parent parent`, with the BPF
/// statistics of the run's cgroup over its timed loop (`bpf_stats::run_confined`).
fn measure_confined(cmd: &mut Command, what: &str, parent: &Path) -> Result<Measured> {
    let (lines, bpf) = crate::bpf_stats::run_confined(cmd, what, parent)?;
    let v: serde_json::Value = lines
        .lines()
        .filter(|l| l.contains("\"ns_per_op\""))
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .with_context(|| format!("{what}: no result line from bench-client in: {lines}"))?;
    Ok(Measured {
        per_op: v["ns_per_op"].as_f64().unwrap_or(f64::NAN),
        total: v["total_ns"].as_f64().unwrap_or(0.0),
        bpf,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// N distinct /32s in 100.64.0.0/10 (never the bench /30 at the top of that range).
fn addresses(n: usize) -> impl Iterator<Item = Ipv4Addr> {
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 1));
    (0..n as u32).map(move |i| Ipv4Addr::from(base + i))
}

fn write_registry(path: &Path, n: usize) -> Result<()> {
    let mut s = String::with_capacity(n * 24 + 512);
    s.push_str(&format!(
        "# Generated by `cargo xtask bench connect`: {n} addresses plus the bench listener.\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: bench-{n}\n  \
         namespace: default\nspec:\n  hosts:\n  - bench.internal\n  addresses:\n"
    ));
    for a in addresses(n) {
        let _ = writeln!(s, "  - {a}/32");
    }
    let _ = writeln!(s, "  - {SERVER_ADDR}/32");
    s.push_str(&format!(
        "  location: MESH_EXTERNAL\n  ports:\n  - number: {PORT}\n    name: tcp\n    protocol: TCP\n  \
         resolution: NONE\n"
    ));
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

fn write_nft_set(path: &Path, n: usize) -> Result<()> {
    let mut s = String::with_capacity(n * 16 + 256);
    let _ = writeln!(s, "table inet {NFT_TABLE} {{\n  set allowed {{\n    type ipv4_addr");
    s.push_str("    elements = {\n");
    for (i, a) in addresses(n).chain([SERVER_ADDR.parse().unwrap()]).enumerate() {
        if i > 0 {
            s.push_str(if i % 16 == 0 { ",\n" } else { ", " });
        }
        let _ = write!(s, "{a}");
    }
    s.push_str("\n    }\n  }\n}\n");
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

fn nft(ns: &Netns, script: &str) -> Result<()> {
    let mut c = ns.command("nft");
    c.args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = c.spawn().context("could not start nft")?;
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft failed: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Config {
    Baseline,
    Enforcer,
    EnforcerNoAccounting,
    Nftables,
}

#[allow(clippy::too_many_arguments)]
fn bench_size(
    n: usize,
    args: &ConnectArgs,
    enforcer: &Path,
    xtask: &Path,
    ns: &Netns,
    cgroup: &Cgroup,
    enforced: &Cgroup,
    dir: &Path,
) -> Result<Row> {
    print!("\n{n} entries: generating… ");
    let registry = dir.join(format!("registry-{n}.yaml"));
    write_registry(&registry, n)?;
    let nft_file = dir.join(format!("set-{n}.nft"));
    write_nft_set(&nft_file, n)?;

    // The set stays loaded for the whole size; the filtering chain exists only during nftables
    // rounds, so the other configurations pay nothing for it.
    let t = Instant::now();
    util::run_quiet(ns.command("nft").arg("-f").arg(&nft_file))
        .with_context(|| format!("loading an nftables set of {n} elements"))?;
    let nft_load_s = t.elapsed().as_secs_f64();
    let _table = cleanup::register(Resource::NftTable(ns.name.clone(), format!("inet {NFT_TABLE}")));
    println!("nft set loaded in {nft_load_s:.2}s");

    let enforcer_cmd = |iterations: u32, warmup: u32, port: u16, accounting: bool| {
        let mut c = ns.command(enforcer);
        c.args(["run", "--registry"]).arg(&registry);
        if !accounting {
            c.arg("--no-conn-accounting");
        }
        c.arg("--cgroup-parent").arg(&enforced.path);
        c.args(["--mode", "REGISTRY_ONLY", "--quiet", "--"]);
        c.arg(xtask);
        let mut a = client_args(iterations, warmup);
        a[2] = port.to_string();
        c.args(a);
        // Confined by `enforcer run`, the client cannot read BPF statistics: this process takes
        // them from the run's cgroup around its timed loop.
        c.arg("--handshake");
        c
    };

    // Sanity: under enforcer a port the registry does not list must be refused with EPERM.
    // (One warm-up call: it fails before the client's handshake.)
    let out = enforcer_cmd(1, 1, PORT + 1, true).stdin(Stdio::null()).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains("Operation not permitted") {
        eprintln!(
            "xtask: warning: under enforcer, connect to {SERVER_ADDR}:{} was not denied with EPERM \
             ({}): {}",
            PORT + 1,
            out.status,
            err.trim()
        );
    }

    let (mut base, mut enf, mut enf_na, mut nftv, mut overhead) = (vec![], vec![], vec![], vec![], vec![]);
    // Program name -> per round (BPF ns per connection, runs per connection), with and without
    // connection accounting.
    let mut bpf: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut bpf_na: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let configs = [Config::Baseline, Config::Enforcer, Config::EnforcerNoAccounting, Config::Nftables];
    for round in 0..args.rounds {
        for k in 0..configs.len() {
            let c = configs[(round as usize + k) % configs.len()];
            match c {
                Config::Baseline => {
                    let mut cmd = client_cmd(ns, xtask, args.iterations, 1000);
                    cgroup.enter_on_exec(&mut cmd);
                    base.push(measure(&mut cmd, "baseline")?.per_op);
                }
                Config::Enforcer | Config::EnforcerNoAccounting => {
                    let accounting = matches!(c, Config::Enforcer);
                    let mut cmd = enforcer_cmd(args.iterations, 1000, PORT, accounting);
                    let t = Instant::now();
                    let m = measure_confined(&mut cmd, "enforcer", &enforced.path)?;
                    let (wall, stats) = if accounting {
                        overhead.push(t.elapsed().as_secs_f64() - m.total / 1e9);
                        (&mut enf, &mut bpf)
                    } else {
                        (&mut enf_na, &mut bpf_na)
                    };
                    wall.push(m.per_op);
                    for (name, (ns, cnt)) in m.bpf {
                        let e = stats.entry(name).or_insert_with(Vec::new);
                        e.push((ns as f64 / f64::from(args.iterations), cnt as f64 / f64::from(args.iterations)));
                    }
                }
                Config::Nftables => {
                    nft(
                        ns,
                        &format!(
                            "add chain inet {NFT_TABLE} out {{ type filter hook output priority 0; policy accept; }}\n\
                             add rule inet {NFT_TABLE} out ip daddr != @allowed tcp dport {PORT} drop\n"
                        ),
                    )?;
                    let mut cmd = client_cmd(ns, xtask, args.iterations, 1000);
                    cgroup.enter_on_exec(&mut cmd);
                    let r = measure(&mut cmd, "nftables");
                    nft(ns, &format!("flush chain inet {NFT_TABLE} out\ndelete chain inet {NFT_TABLE} out\n"))?;
                    nftv.push(r?.per_op);
                }
            }
        }
        println!(
            "  round {}: baseline {:.0}  enforcer {:.0}  enforcer --no-conn-accounting {:.0}  nftables {:.0} ns/op",
            round + 1,
            base.last().unwrap(),
            enf.last().unwrap(),
            enf_na.last().unwrap(),
            nftv.last().unwrap()
        );
    }
    let medians = |m: BTreeMap<String, Vec<(f64, f64)>>| -> Vec<(String, f64, f64)> {
        m.into_iter()
            .map(|(name, v)| {
                let ns = median(v.iter().map(|x| x.0).collect());
                let runs = median(v.iter().map(|x| x.1).collect());
                (name, ns, runs)
            })
            .collect()
    };
    let (bpf, bpf_na) = (medians(bpf), medians(bpf_na));
    Ok(Row {
        n,
        base: median(base),
        enf: median(enf),
        enf_na: median(enf_na),
        nft: median(nftv),
        enf_overhead_s: median(overhead),
        nft_load_s,
        bpf,
        bpf_na,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn generated_addresses_are_distinct_and_avoid_the_bench_subnet() {
        let v: Vec<Ipv4Addr> = addresses(100_000).collect();
        let set: std::collections::HashSet<_> = v.iter().collect();
        assert_eq!(set.len(), v.len());
        let cgnat = ipv4_net(Ipv4Addr::new(100, 64, 0, 0), 10);
        let bench = ipv4_net(Ipv4Addr::new(100, 127, 255, 0), 30);
        assert!(v.iter().all(|a| cgnat(*a) && !bench(*a)));
    }

    fn ipv4_net(net: Ipv4Addr, len: u32) -> impl Fn(Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - len);
        move |a| u32::from(a) & mask == u32::from(net)
    }

    #[test]
    fn generated_files() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_registry(&dir.join("r.yaml"), 3).unwrap();
        let r = std::fs::read_to_string(dir.join("r.yaml")).unwrap();
        assert!(r.contains("  - 100.64.0.3/32\n  - 100.127.255.2/32\n"), "{r}");
        assert!(r.contains("resolution: NONE") && r.contains("number: 9000"), "{r}");
        write_nft_set(&dir.join("s.nft"), 3).unwrap();
        let n = std::fs::read_to_string(dir.join("s.nft")).unwrap();
        assert!(n.contains("100.64.0.1, 100.64.0.2, 100.64.0.3, 100.127.255.2"), "{n}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
