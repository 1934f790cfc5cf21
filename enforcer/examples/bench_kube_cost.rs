//! `cargo xtask bench kube-cost`: what an ungoverned pod pays in the connect4 hook on a node in
//! Kubernetes mode, with 0 / 100 / 1,000 governed pods.
//!
//! The kernel state is the one `enforcer daemon --kubernetes` writes, through the agent's one
//! apply path (`MapState::apply`): the node default policy in ALLOW_ANY with
//! `POLICY_F_UNGOVERNED`, one governed scope policy (REGISTRY_ONLY, DNS-steered), and one
//! `WORKLOADS` entry per governed pod's cgroup. The cgroups are kubelet-shaped
//! (`kubepods/burstable/pod<UID>/<container>`) below a cgroup this program creates, where the
//! hooks are attached as the daemon attaches them (sock_addr, sock_ops with accounting, backstop).
//!
//! A client process in the ungoverned pod's container cgroup makes N UDP connect()+close() calls
//! to 198.18.255.1:9 (a UDP connect sends nothing; the hook runs on every call). The connect4
//! program's run time and count (`BPF_ENABLE_STATS`) over its run give ns per call. Compared in
//! the same run: the same pod judged as ALLOW_ANY without the ungoverned exit (the policy flags
//! word 0: lookup and flow count), and a governed pod (REGISTRY_ONLY, a denied destination).
//!
//! Needs root. A benchmark, never a test.
//!
//! Usage: bench_kube_cost [--governed 0,100,1000] [--iterations N] [--rounds R]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use enforcer::{
    agent::state::{MapState, Plan},
    dataplane::{Dataplane, Hooks, LoadOptions},
};
use enforcer_common::{Mode, POLICY_F_DNS_STEER, POLICY_F_UNGOVERNED, PolicyId, SETTINGS_F_WORKLOADS};

struct Args {
    governed: Vec<usize>,
    iterations: u64,
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { governed: vec![0, 100, 1000], iterations: 200_000, rounds: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--governed" => {
                a.governed = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().with_context(|| format!("--governed: {s:?} is not a count")))
                    .collect::<Result<_>>()?
            }
            "--iterations" => a.iterations = val()?.parse().context("--iterations")?,
            "--rounds" => a.rounds = val()?.parse().context("--rounds")?,
            other => bail!("unknown argument {other:?} (--governed LIST, --iterations N, --rounds R)"),
        }
    }
    Ok(a)
}

/// The client: join `cgroup`, then `n` × (UDP socket, connect, close).
fn client(cgroup: &Path, n: u64) -> Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("joining {}", cgroup.display()))?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 9u16.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::new(198, 18, 255, 1)).to_be() },
        sin_zero: [0; 8],
    };
    for _ in 0..n {
        // SAFETY: plain socket syscalls on a local fd and a local sockaddr.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            // The verdict does not matter here (a denied governed connect is EPERM).
            libc::connect(fd, (&raw const sa).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t);
            libc::close(fd);
        }
    }
    Ok(())
}

/// The bench's cgroup tree, removed deepest first on drop.
struct Tree {
    root: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Tree {
    fn mkdir(&mut self, p: PathBuf) -> Result<PathBuf> {
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        self.dirs.push(p.clone());
        Ok(p)
    }

    /// A pod's cgroup and its container's.
    fn pod(&mut self, qos: &Path, uid: &str) -> Result<(PathBuf, PathBuf)> {
        let pod = self.mkdir(qos.join(format!("pod{uid}")))?;
        let ctr = self.mkdir(pod.join(format!("{:0>64}", uid.replace('-', ""))))?;
        Ok((pod, ctr))
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

fn connect4_stats(prog_id: u32) -> Result<(u64, u64)> {
    for p in aya::programs::loaded_programs() {
        let p = p.context("listing BPF programs")?;
        if p.id() == prog_id {
            return Ok((p.run_time().as_nanos() as u64, p.run_count()));
        }
    }
    bail!("connect4 (program {prog_id}) is not loaded")
}

/// ns per connect4 call of `n` client calls from `cgroup`.
fn measure(cgroup: &Path, n: u64, prog_id: u32) -> Result<f64> {
    let before = connect4_stats(prog_id)?;
    let exe = std::env::current_exe()?;
    let st = Command::new(exe).arg("--client").arg(cgroup).arg(n.to_string()).status()?;
    if !st.success() {
        bail!("the client failed ({st})");
    }
    let after = connect4_stats(prog_id)?;
    let (t, c) = (after.0 - before.0, after.1 - before.1);
    if c < n {
        bail!("connect4 ran {c} times for {n} calls: not attached to {}?", cgroup.display());
    }
    Ok(t as f64 / c as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--client") {
        let cg = PathBuf::from(argv.next().context("--client CGROUP N")?);
        let n = argv.next().context("--client CGROUP N")?.parse()?;
        return client(&cg, n);
    }
    let a = parse_args()?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let mount = enforcer::cgroup::cgroup2_mount()?;
    let root = mount.join(format!("enforcer-bench-kube-{}", std::process::id()));
    std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut tree = Tree { root: root.clone(), dirs: Vec::new() };
    let kubepods = tree.mkdir(root.join("kubepods"))?;
    let burstable = tree.mkdir(kubepods.join("burstable"))?;
    let (_, ungoverned_ctr) = tree.pod(&burstable, "c0000000-0000-4000-8000-000000000000")?;
    let max = a.governed.iter().copied().max().unwrap_or(0).max(1);
    let mut governed = Vec::new();
    for i in 0..max {
        let (pod, ctr) = tree.pod(&burstable, &format!("d0000000-0000-4000-8000-{i:012}"))?;
        governed.push((enforcer::cgroup::cgroup_id(&pod)?, ctr));
    }

    let (mut dp, notes) = Dataplane::load(&LoadOptions::default()).context("loading the BPF programs")?;
    for n in notes {
        eprintln!("note: {n}");
    }
    dp.attach_hooks(&root, Hooks { dns_restore: false, sock_ops: true, accounting: true, backstop: true })
        .context("attaching")?;
    let prog_id = *dp.program_ids().get("connect4").context("no connect4 program")?;
    let mut maps = MapState::adopt(dp)?;
    let scope = PolicyId::new(1).expect("policy 1");

    println!(
        "connect4 BPF ns per call (UDP connect, median of {} rounds of {} calls), kubelet-shaped cgroups:",
        a.rounds, a.iterations
    );
    println!(
        "{:>9} | {:>22} | {:>28} | {:>22}",
        "governed", "ungoverned pod (exit)", "ungoverned judged ALLOW_ANY", "governed pod (denied)"
    );
    for &n in &a.governed {
        let mut rows: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for _ in 0..a.rounds {
            for (label, default_flags) in [("exit", POLICY_F_UNGOVERNED), ("judged", 0)] {
                let plan = Plan {
                    modes: [(PolicyId::DEFAULT, Mode::AllowAny), (scope, Mode::RegistryOnly)].into(),
                    flags: [(PolicyId::DEFAULT, default_flags), (scope, POLICY_F_DNS_STEER)].into(),
                    workloads: governed.iter().take(n).map(|(id, _)| (*id, scope)).collect(),
                    ..Plan::default()
                };
                if n > 0 {
                    maps.update_settings(|s| s.flags |= SETTINGS_F_WORKLOADS)?;
                }
                maps.apply(&plan)?;
                if n == 0 {
                    maps.update_settings(|s| s.flags &= !SETTINGS_F_WORKLOADS)?;
                }
                rows.entry(label).or_default().push(measure(&ungoverned_ctr, a.iterations, prog_id)?);
                if label == "exit" && n > 0 {
                    rows.entry("governed").or_default().push(measure(&governed[0].1, a.iterations, prog_id)?);
                }
            }
        }
        let m = |k: &str| rows.get(k).map(|v| format!("{:.1}", median(v.clone()))).unwrap_or_else(|| "-".into());
        println!("{n:>9} | {:>22} | {:>28} | {:>22}", m("exit"), m("judged"), m("governed"));
    }
    drop(maps);
    drop(tree);
    Ok(())
}
