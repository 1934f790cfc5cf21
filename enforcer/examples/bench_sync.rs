//! `cargo xtask bench sync`: how long a registry of N hosts takes from YAML to the kernel maps.
//!
//! For each registry shape (N STATIC ServiceEntries with one endpoint each; N NONE entries with
//! one `addresses:` /32 each; one TCP port per entry, addresses in 100.64.0.0/10), times
//! separately: YAML parse + validate (`load::load_config`, i.e. `config::load_paths`), compile
//! (`load::compile`), BPF load (`Dataplane::load`, default options, nothing attached), the first
//! full `Dataplane::apply` ("sync into the maps"), a reload with 1% of the hosts moved to new
//! addresses (parse, compile, incremental apply), and a no-op apply.
//!
//! Baseline, measured in the same run: the same keys written with raw `bpf(BPF_MAP_UPDATE_ELEM)`
//! syscalls into fresh LPM tries of the same shape. BPF load, full apply and baseline are
//! repeated `--rounds` times (alternating order; medians).
//!
//! Needs root (loads BPF programs and creates maps). A benchmark, never a test.
//!
//! Usage: bench_sync [--hosts N] [--rounds R] [--shape static|addresses|both]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use enforcer::{
    dataplane::{Dataplane, LoadOptions},
    load::{self, LoadedConfig},
    policy::Desired,
};
use enforcer_common::{ALLOW_MAX_ENTRIES, AllowKey, AllowValue, DESTS_MAX_ENTRIES, DestKey};

const PORT: u16 = 8443;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Static,
    Addresses,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::Static => "STATIC, 1 endpoint",
            Shape::Addresses => "NONE, 1 address",
        }
    }
}

struct Args {
    hosts: usize,
    rounds: usize,
    shapes: Vec<Shape>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { hosts: 100_000, rounds: 3, shapes: vec![Shape::Static, Shape::Addresses] };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (k, v) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut val = || v.clone().or_else(|| it.next()).with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--hosts" => a.hosts = val()?.parse().context("--hosts")?,
            "--rounds" => a.rounds = val()?.parse().context("--rounds")?,
            "--shape" => {
                a.shapes = match val()?.as_str() {
                    "static" => vec![Shape::Static],
                    "addresses" => vec![Shape::Addresses],
                    "both" => vec![Shape::Static, Shape::Addresses],
                    s => bail!("--shape: unknown {s:?} (static, addresses, both)"),
                }
            }
            "-h" | "--help" => {
                println!("bench_sync [--hosts N] [--rounds R] [--shape static|addresses|both]");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {arg:?}"),
        }
    }
    if a.hosts == 0 || a.rounds == 0 {
        bail!("--hosts and --rounds must be positive");
    }
    // One ALLOW and one DESTS entry per host.
    if a.hosts > ALLOW_MAX_ENTRIES as usize {
        bail!("--hosts {} exceeds the ALLOW map capacity ({ALLOW_MAX_ENTRIES})", a.hosts);
    }
    Ok(a)
}

/// Address of host `i`; `moved` gives every 100th host (1% of them) a new address.
fn host_addr(i: usize, n: usize, moved: bool) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 1));
    let idx = if moved && i.is_multiple_of(100) { n + i / 100 } else { i };
    Ipv4Addr::from(base + idx as u32)
}

fn write_registry(dir: &Path, shape: Shape, n: usize, moved: bool) -> Result<PathBuf> {
    let path = dir.join(format!(
        "registry-{}-{n}{}.yaml",
        if shape == Shape::Static { "static" } else { "addresses" },
        if moved { "-moved" } else { "" }
    ));
    let mut s = String::with_capacity(n * 300);
    for i in 0..n {
        let a = host_addr(i, n, moved);
        let _ = write!(
            s,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: svc-{i}\n  namespace: bench\nspec:\n  hosts:\n  - svc-{i}.bench.example\n"
        );
        match shape {
            Shape::Static => {
                let _ = write!(
                    s,
                    "  location: MESH_EXTERNAL\n  ports:\n  - number: {PORT}\n    name: tcp\n    protocol: TCP\n  resolution: STATIC\n  endpoints:\n  - address: {a}\n"
                );
            }
            Shape::Addresses => {
                let _ = write!(
                    s,
                    "  addresses:\n  - {a}/32\n  location: MESH_EXTERNAL\n  ports:\n  - number: {PORT}\n    name: tcp\n    protocol: TCP\n  resolution: NONE\n"
                );
            }
        }
    }
    std::fs::write(&path, s).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The agent's own path: `enforcer run --registry PATH --mode REGISTRY_ONLY --no-host-dns`
/// through `load::load_config` (which validates with `config::load_paths`).
fn parse(path: &Path) -> Result<LoadedConfig> {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        policy: enforcer::cli::PolicyArgs,
    }
    let w = <Wrap as clap::Parser>::try_parse_from([
        std::ffi::OsStr::new("bench_sync"),
        "--registry".as_ref(),
        path.as_os_str(),
        "--mode".as_ref(),
        "REGISTRY_ONLY".as_ref(),
        "--no-host-dns".as_ref(),
    ])
    .context("building the policy arguments")?;
    load::load_config(&enforcer::agent::AgentConfig::from_args(&w.policy))
}

fn compile(cfg: &LoadedConfig) -> Desired {
    let mut ids = enforcer::policy::ServiceIds::default();
    load::compile_policy(cfg, &cfg.registry, enforcer_common::PolicyId::DEFAULT, "", &BTreeMap::new(), &mut ids).0
}

const RO: enforcer_common::Mode = enforcer_common::Mode::RegistryOnly;

use enforcer::{
    agent::state::{MapState, Plan},
    dataplane::Maps as _,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2 }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// Baseline: raw bpf(2) on fresh LPM tries of the same shape.

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
const BPF_F_NO_PREALLOC: u32 = 1;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    rest: [u32; 27],
}

#[repr(C)]
struct UpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

struct RawMap(i32);

impl RawMap {
    fn lpm(key_size: usize, value_size: usize, max: u32) -> Result<Self> {
        let attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_LPM_TRIE,
            key_size: key_size as u32,
            value_size: value_size as u32,
            max_entries: max,
            map_flags: BPF_F_NO_PREALLOC,
            ..Default::default()
        };
        // SAFETY: bpf(BPF_MAP_CREATE) reads `attr` only.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &raw const attr, size_of::<MapCreateAttr>()) };
        if fd < 0 {
            bail!("bpf(BPF_MAP_CREATE, LPM trie): {}", std::io::Error::last_os_error());
        }
        Ok(RawMap(fd as i32))
    }

    fn update<K, V>(&self, key: &K, value: &V) -> Result<()> {
        let attr = UpdateAttr {
            map_fd: self.0 as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: value as *const V as u64,
            flags: 0,
        };
        // SAFETY: the kernel reads key_size/value_size bytes from the pointers, which point at
        // values of exactly those sizes.
        let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, &raw const attr, size_of::<UpdateAttr>()) };
        if r < 0 {
            bail!("bpf(BPF_MAP_UPDATE_ELEM): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

#[repr(C, packed)]
struct LpmKey<K> {
    prefix_len: u32,
    data: K,
}

/// Raw inserts of exactly the keys `desired` holds; returns the time of the insert loop only.
fn raw_baseline(desired: &Desired) -> Result<Duration> {
    let allow = RawMap::lpm(size_of::<LpmKey<AllowKey>>(), size_of::<AllowValue>(), ALLOW_MAX_ENTRIES)?;
    let dests = RawMap::lpm(size_of::<LpmKey<DestKey>>(), size_of::<AllowValue>(), DESTS_MAX_ENTRIES)?;
    // Keys are built outside the timed loop (enforcer builds them inside apply; that is part of
    // what the ratio shows).
    let ak: Vec<(LpmKey<AllowKey>, AllowValue)> = desired
        .allow
        .iter()
        .map(|(e, v)| {
            let (p, k) = e.key();
            (LpmKey { prefix_len: p, data: k }, *v)
        })
        .collect();
    let dk: Vec<(LpmKey<DestKey>, AllowValue)> = desired
        .dests
        .iter()
        .map(|(e, v)| {
            let (p, k) = e.key();
            (LpmKey { prefix_len: p, data: k }, *v)
        })
        .collect();
    let t = Instant::now();
    for (k, v) in &ak {
        allow.update(k, v)?;
    }
    for (k, v) in &dk {
        dests.update(k, v)?;
    }
    Ok(t.elapsed())
}

// ---------------------------------------------------------------------------------------------

struct Result1 {
    shape: Shape,
    n: usize,
    allow: usize,
    dests: usize,
    yaml_bytes: u64,
    parse: Duration,
    compile: Duration,
    bpf_load: Duration,
    full: Duration,
    full_upserts: usize,
    raw: Duration,
    readback: Duration,
    readback_ok: bool,
    re_parse: Duration,
    re_compile: Duration,
    incr: Duration,
    incr_upserts: usize,
    incr_removals: usize,
    noop: Duration,
    noop_changes: usize,
}

fn run_shape(dir: &Path, shape: Shape, n: usize, rounds: usize) -> Result<Result1> {
    println!(
        "\n[{}] {n} ServiceEntries ({}) x 1 TCP port",
        if shape == Shape::Static { "static" } else { "addresses" },
        shape.label()
    );
    let file = write_registry(dir, shape, n, false)?;
    let moved_file = write_registry(dir, shape, n, true)?;
    let yaml_bytes = std::fs::metadata(&file)?.len();

    let t = Instant::now();
    let cfg = parse(&file)?;
    let parse_t = t.elapsed();
    if cfg.registry.services.len() != n {
        bail!("parsed {} services, expected {n}", cfg.registry.services.len());
    }
    println!("  parse+validate {:>9.1} ms ({:.1} MiB of YAML)", ms(parse_t), yaml_bytes as f64 / 1048576.0);

    let t = Instant::now();
    let desired = compile(&cfg);
    let compile_t = t.elapsed();
    println!(
        "  compile        {:>9.1} ms ({} ALLOW + {} DESTS entries)",
        ms(compile_t),
        desired.allow.len(),
        desired.dests.len()
    );

    // Rounds: a fresh Dataplane (BPF load) and a full apply, then the raw bpf() baseline into
    // fresh tries, in alternating order; medians are reported. The first round also measures
    // read-back, the 1% reload and the no-op apply.
    let (mut loads, mut fulls, mut raws) = (vec![], vec![], vec![]);
    let mut full_upserts = 0;
    type FirstRound = (Duration, bool, Duration, Duration, Duration, usize, usize, Duration, usize);
    let mut first: Option<FirstRound> = None;
    for round in 0..rounds {
        if round % 2 == 1 {
            raws.push(raw_baseline(&desired)?);
            std::thread::sleep(Duration::from_millis(300));
        }
        let t = Instant::now();
        let (dp, notes) = Dataplane::load(&LoadOptions::default()).context("Dataplane::load (root needed)")?;
        let mut dp = MapState::adopt(dp).context("reading the maps")?;
        loads.push(t.elapsed());
        for n in notes {
            println!("  note: {n}");
        }
        let t = Instant::now();
        let s = dp.apply(&Plan::default_policy(&desired, RO)).context("full apply")?;
        fulls.push(t.elapsed());
        full_upserts = s.upserts;
        if s.removals != 0 || s.upserts != desired.allow.len() + desired.dests.len() {
            println!("  note: full apply did {} upserts and {} removals", s.upserts, s.removals);
        }
        if first.is_none() {
            let t = Instant::now();
            let back = dp.maps().read().context("reading ALLOW back")?.allow;
            let readback = t.elapsed();
            let readback_ok = back == desired.allow;
            drop(back);

            let t = Instant::now();
            let cfg2 = parse(&moved_file)?;
            let re_parse = t.elapsed();
            let t = Instant::now();
            let desired2 = compile(&cfg2);
            let re_compile = t.elapsed();
            let t = Instant::now();
            let s2 = dp.apply(&Plan::default_policy(&desired2, RO)).context("incremental apply")?;
            let incr_t = t.elapsed();

            let t = Instant::now();
            let s3 = dp.apply(&Plan::default_policy(&desired2, RO)).context("no-op apply")?;
            let noop_t = t.elapsed();
            first = Some((
                readback,
                readback_ok,
                re_parse,
                re_compile,
                incr_t,
                s2.upserts,
                s2.removals,
                noop_t,
                s3.upserts + s3.removals,
            ));
        }
        drop(dp);
        // Let the kernel free the previous tries before the next timed step.
        std::thread::sleep(Duration::from_millis(300));
        if round % 2 == 0 {
            raws.push(raw_baseline(&desired)?);
        }
        println!(
            "  round {}: BPF load {:.1} ms, full apply {:.1} ms, raw bpf() {:.1} ms",
            round + 1,
            ms(*loads.last().unwrap()),
            ms(*fulls.last().unwrap()),
            ms(*raws.last().unwrap())
        );
    }
    let (readback, readback_ok, re_parse, re_compile, incr_t, incr_upserts, incr_removals, noop_t, noop_changes) =
        first.expect("rounds >= 1");
    let (load_t, full_t, raw) = (median(loads), median(fulls), median(raws));
    println!("  BPF load       {:>9.1} ms (median)", ms(load_t));
    println!("  full apply     {:>9.1} ms (median; {} upserts)", ms(full_t), full_upserts);
    println!(
        "  raw bpf(MAP_UPDATE_ELEM) of the same {} keys: {:.1} ms (median)",
        desired.allow.len() + desired.dests.len(),
        ms(raw)
    );
    println!("  read ALLOW back {:>8.1} ms ({})", ms(readback), if readback_ok { "matches" } else { "MISMATCH" });
    println!(
        "  1% moved: parse {:.1} ms, compile {:.1} ms, apply {:.1} ms ({} upserts, {} removals)",
        ms(re_parse),
        ms(re_compile),
        ms(incr_t),
        incr_upserts,
        incr_removals
    );
    println!("  no-op apply    {:>9.1} ms ({} changes)", ms(noop_t), noop_changes);

    Ok(Result1 {
        shape,
        n,
        allow: desired.allow.len(),
        dests: desired.dests.len(),
        yaml_bytes,
        parse: parse_t,
        compile: compile_t,
        bpf_load: load_t,
        full: full_t,
        full_upserts,
        raw,
        readback,
        readback_ok,
        re_parse,
        re_compile,
        incr: incr_t,
        incr_upserts,
        incr_removals,
        noop: noop_t,
        noop_changes,
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench_sync loads BPF programs and creates maps: run it as root");
    }
    let dir = std::env::temp_dir().join(format!("enforcer-bench-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());

    println!("bench sync: registry of {} hosts -> kernel maps (release build, kernel {})", args.hosts, kernel());
    let mut results = Vec::new();
    for &shape in &args.shapes {
        results.push(run_shape(&dir, shape, args.hosts, args.rounds)?);
    }

    println!("\nms per step ({} hosts, 1 TCP port each; 1 ALLOW + 1 DESTS entry per host):", args.hosts);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<20} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}   (load, full apply, raw: median of {} rounds)",
        "shape",
        "parse",
        "compile",
        "bpf load",
        "full apply",
        "raw bpf()",
        "apply/raw",
        "1% apply",
        "incr/full",
        "no-op",
        args.rounds
    );
    for r in &results {
        let _ = writeln!(
            t,
            "{:<20} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>9.2}x {:>9.1} {:>8.3}x {:>9.1}",
            r.shape.label(),
            ms(r.parse),
            ms(r.compile),
            ms(r.bpf_load),
            ms(r.full),
            ms(r.raw),
            r.full.as_secs_f64() / r.raw.as_secs_f64(),
            ms(r.incr),
            r.incr.as_secs_f64() / r.full.as_secs_f64(),
            ms(r.noop),
        );
    }
    print!("{t}");
    println!();
    for r in &results {
        let entries = r.allow + r.dests;
        println!(
            "[{}] full apply: {} map writes, {:.0} entries/s (raw bpf(): {:.0} entries/s); 1% change: {} upserts + {} removals; no-op: {} changes; read-back {:.1} ms {}",
            r.shape.label(),
            r.full_upserts,
            entries as f64 / r.full.as_secs_f64(),
            entries as f64 / r.raw.as_secs_f64(),
            r.incr_upserts,
            r.incr_removals,
            r.noop_changes,
            ms(r.readback),
            if r.readback_ok { "ok" } else { "MISMATCH" }
        );
        println!(
            "[{}] reload with 1% changed end to end (parse + compile + apply): {:.1} ms; cold start (parse + compile + load + apply): {:.1} ms; YAML {:.1} MiB",
            r.shape.label(),
            ms(r.re_parse + r.re_compile + r.incr),
            ms(r.parse + r.compile + r.bpf_load + r.full),
            r.yaml_bytes as f64 / 1048576.0
        );
    }
    println!();
    for r in &results {
        println!("sync of {} hosts into the maps: {:.0} ms (target <= 1000 ms) [{}]", r.n, ms(r.full), r.shape.label());
    }
    Ok(())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}
