//! BPF run-time statistics (`kernel.bpf_stats_enabled`): the time the kernel spent in *our*
//! programs, per program, which is stable on a noisy machine where wall-clock ratios are not.
//!
//! Snapshots cover the programs effectively attached to one cgroup (`BPF_PROG_QUERY` with
//! `BPF_F_QUERY_EFFECTIVE`, so only the programs that judge *that* client, never another test's).
//! An unconfined client (`bench-client --bpf-stats`) snapshots its own cgroup before and after its
//! timed loop. A client confined by `enforcer run` can do neither (its cgroup namespace shows "/",
//! its capabilities exclude BPF), so the orchestrator snapshots the run's cgroup from outside,
//! around the timed loop, on the client's `--handshake` (see `bench.rs`). The orchestrator keeps
//! statistics enabled with a `BPF_ENABLE_STATS` fd for the length of the benchmark.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;

/// (attach type number, what it is) of the cgroup hooks enforcer can attach.
const ATTACH_TYPES: [(u32, &str); 13] = [
    (0, "cgroup_skb/ingress"),
    (1, "cgroup_skb/egress"),
    (2, "sock_create"),
    (3, "sock_ops"),
    (10, "connect4"),
    (11, "connect6"),
    (14, "sendmsg4"),
    (15, "sendmsg6"),
    (19, "recvmsg4"),
    (20, "recvmsg6"),
    (29, "getpeername4"),
    (30, "getpeername6"),
    (34, "sock_release"),
];

fn sys_bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> io::Result<i64> {
    // SAFETY: `attr` points to `size` writable bytes laid out as the command's union member.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as libc::c_uint) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Turn statistics on for as long as the returned fd is open.
pub fn enable() -> io::Result<OwnedFd> {
    let mut attr = [0u8; 8]; // enable_stats.type = BPF_STATS_RUN_TIME (0)
    let fd = sys_bpf(BPF_ENABLE_STATS, attr.as_mut_ptr(), attr.len())?;
    // SAFETY: the syscall returned a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One program's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub name: String,
    pub hook: &'static str,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The leading fields of `struct bpf_prog_info` up to `run_cnt` (uapi/linux/bpf.h).
#[repr(C, align(8))]
#[derive(Default)]
struct ProgInfo {
    type_: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
}

fn prog_info(id: u32) -> io::Result<ProgInfo> {
    let mut attr = [0u32; 4]; // prog_id, next_id, open_flags
    attr[0] = id;
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, attr.as_mut_ptr().cast(), 16)?;
    // SAFETY: a new fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = ProgInfo::default();
    // info: bpf_fd u32, info_len u32, info u64
    let mut a = [0u64; 2];
    a[0] = u64::from(fd.as_raw_fd() as u32) | ((size_of::<ProgInfo>() as u64) << 32);
    a[1] = (&raw mut info) as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, a.as_mut_ptr().cast(), 16)?;
    Ok(info)
}

/// Ids of the programs that run for sockets of `cgroup` on `attach_type` (its own and its
/// ancestors').
fn query(cgroup: &std::fs::File, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    // query: target_fd u32, attach_type u32, query_flags u32, attach_flags u32, prog_ids u64,
    // prog_cnt u32 (+ more we leave zero).
    #[repr(C, align(8))]
    struct Q {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _rest: [u32; 9],
    }
    let mut q = Q {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        query_flags: BPF_F_QUERY_EFFECTIVE,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _rest: [0; 9],
    };
    sys_bpf(BPF_PROG_QUERY, (&raw mut q).cast(), size_of::<Q>())?;
    Ok(ids[..q.prog_cnt as usize].to_vec())
}

/// The calling process's cgroup directory (cgroup v2).
fn own_cgroup() -> io::Result<std::path::PathBuf> {
    let s = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = s
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::other("no cgroup v2 line in /proc/self/cgroup"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = mounts
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next() == Some("cgroup2")).then(|| pre.split_whitespace().nth(4))?
        })
        .ok_or_else(|| io::Error::other("no cgroup2 mount"))?;
    Ok(Path::new(mount).join(rel.trim_start_matches('/')))
}

/// Counters of every program effectively attached to this process's cgroup, by program id.
pub fn snapshot() -> io::Result<BTreeMap<u32, ProgStats>> {
    snapshot_at(&own_cgroup()?)
}

/// Counters of every program effectively attached to each cgroup directly below `parent` (an
/// `enforcer run --cgroup-parent` directory: the run's own cgroup), by program id.
pub fn snapshot_children(parent: &Path) -> io::Result<BTreeMap<u32, ProgStats>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(parent)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.extend(snapshot_at(&e.path())?);
        }
    }
    Ok(out)
}

/// Counters of every program effectively attached to the cgroup at `dir`, by program id.
pub fn snapshot_at(dir: &Path) -> io::Result<BTreeMap<u32, ProgStats>> {
    let cg = std::fs::File::open(dir)?;
    let mut out = BTreeMap::new();
    for (at, hook) in ATTACH_TYPES {
        let Ok(ids) = query(&cg, at) else { continue };
        for id in ids {
            let Ok(info) = prog_info(id) else { continue };
            let end = info.name.iter().position(|b| *b == 0).unwrap_or(16);
            let name = String::from_utf8_lossy(&info.name[..end]).into_owned();
            out.insert(id, ProgStats { name, hook, run_time_ns: info.run_time_ns, run_cnt: info.run_cnt });
        }
    }
    Ok(out)
}

/// Print `{"<what>":true}` and wait for the caller's line on stdin.
pub fn handshake(what: &str) -> bool {
    use std::io::{BufRead as _, Write as _};
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", serde_json::json!({ what: true })).and_then(|()| out.flush()).is_err() {
        eprintln!("--handshake: stdout closed");
        return false;
    }
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(n) if n > 0 => true,
        _ => {
            eprintln!("--handshake: no reply on stdin after {what}");
            false
        }
    }
}

/// (run_time_ns, run_cnt) per program name.
pub type ByName = BTreeMap<String, (u64, u64)>;

/// Runs `cmd` (an `enforcer run --cgroup-parent parent -- ... --handshake` command) and snapshots
/// the BPF statistics of the programs effectively attached to the run's cgroup (the directory
/// below `parent`) when the confined program says `{"ready":true}` and `{"done":true}`, replying
/// to each. Returns its other stdout lines and, per program name, (run_time_ns, run_cnt) between
/// the two (empty, with a warning, when they could not be read).
pub fn run_confined(cmd: &mut std::process::Command, what: &str, parent: &Path) -> anyhow::Result<(String, ByName)> {
    use std::{
        io::{BufRead as _, Read as _, Write as _},
        process::Stdio,
    };

    use anyhow::Context as _;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("could not start the {what} run"))?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (mut before, mut after, mut lines) = (None, None, String::new());
    for line in io::BufReader::new(stdout).lines() {
        let line = line.context("reading the run's output")?;
        match line.trim() {
            r#"{"ready":true}"# => before = Some(snapshot_children(parent)),
            r#"{"done":true}"# => after = Some(snapshot_children(parent)),
            _ => {
                lines.push_str(&line);
                lines.push('\n');
                continue;
            }
        }
        let _ = stdin.write_all(b"go\n").and_then(|()| stdin.flush());
    }
    drop(stdin);
    let status = child.wait()?;
    let stderr = err_thread.join().unwrap_or_default();
    if !status.success() {
        anyhow::bail!("{what} run failed ({status}): `{}`\n{lines}{stderr}", crate::util::display_cmd(cmd));
    }
    let mut bpf = BTreeMap::new();
    match (before, after) {
        (Some(Ok(b)), Some(Ok(a))) => {
            for p in delta(&b, &a) {
                let e = bpf.entry(p.name).or_insert((0, 0));
                e.0 += p.run_time_ns;
                e.1 += p.run_cnt;
            }
        }
        (Some(Err(e)), _) | (_, Some(Err(e))) => {
            eprintln!("xtask: warning: reading BPF statistics of the run's cgroup below {}: {e}", parent.display())
        }
        _ => eprintln!("xtask: warning: the {what} run did not hand shake; no BPF figures"),
    }
    Ok((lines, bpf))
}

/// after - before, per program (programs present in both).
pub fn delta(before: &BTreeMap<u32, ProgStats>, after: &BTreeMap<u32, ProgStats>) -> Vec<ProgStats> {
    after
        .iter()
        .filter_map(|(id, a)| {
            let b = before.get(id)?;
            Some(ProgStats {
                name: a.name.clone(),
                hook: a.hook,
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
            })
        })
        .collect()
}

/// `bench-bpf-wrap --out FILE -- PROG...`: run PROG (stdio inherited) and write the BPF run
/// time of the programs attached to this process's cgroup over its run, as JSON, to FILE.
#[derive(clap::Args)]
pub struct WrapArgs {
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Instead of reading the statistics itself (a program confined by `enforcer run` cannot),
    /// hand shake around PROG's run with the caller, which reads them (`run_confined`); PROG's
    /// stdin is then /dev/null.
    #[arg(long, conflicts_with = "out")]
    handshake: bool,
    #[arg(last = true, required = true)]
    prog: Vec<String>,
}

pub fn wrap(a: WrapArgs) -> std::process::ExitCode {
    let mut prog = std::process::Command::new(&a.prog[0]);
    prog.args(&a.prog[1..]);
    let Some(out) = a.out else {
        if !a.handshake {
            eprintln!("bench-bpf-wrap: give --out FILE or --handshake");
            return std::process::ExitCode::from(2);
        }
        if !handshake("ready") {
            return std::process::ExitCode::from(4);
        }
        let status = prog.stdin(std::process::Stdio::null()).status();
        if !handshake("done") {
            return std::process::ExitCode::from(4);
        }
        return exit_of(status, &a.prog[0]);
    };
    let before = snapshot().unwrap_or_default();
    let status = prog.status();
    let after = snapshot().unwrap_or_default();
    let progs: Vec<serde_json::Value> = delta(&before, &after)
        .into_iter()
        .map(
            |p| serde_json::json!({"name": p.name, "hook": p.hook, "run_time_ns": p.run_time_ns, "run_cnt": p.run_cnt}),
        )
        .collect();
    if let Err(e) = std::fs::write(&out, serde_json::json!({ "bpf": progs }).to_string()) {
        eprintln!("bench-bpf-wrap: writing {}: {e}", out.display());
        return std::process::ExitCode::FAILURE;
    }
    exit_of(status, &a.prog[0])
}

fn exit_of(status: io::Result<std::process::ExitStatus>, prog: &str) -> std::process::ExitCode {
    match status {
        Ok(s) if s.success() => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("bench-bpf-wrap: running {prog}: {e}");
            std::process::ExitCode::from(127)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prog_info_prefix_matches_the_uapi_offsets() {
        // run_time_ns is at offset 192 of struct bpf_prog_info (uapi/linux/bpf.h, Linux >= 5.1).
        assert_eq!(core::mem::offset_of!(super::ProgInfo, run_time_ns), 192);
        assert_eq!(core::mem::offset_of!(super::ProgInfo, name), 64);
    }
}
