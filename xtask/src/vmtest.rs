//! `cargo xtask vm-test`: the real integration tests inside QEMU guests running Debian's 6.1 and
//! 6.12 kernels (shared/VMTEST.md; software emulation, TCG: KVM does not work on these machines).
//!
//! The guest boots a tiny initramfs (busybox-static + the virtio/9p modules) whose `/init`
//! mounts the host's root filesystem read-only over 9p and chroots into it, so the host-built
//! test binaries, `target/debug/enforcer`, python3, curl, ip and dnsmasq are all there at their
//! usual paths. Writable scratch space is fresh tmpfs (/tmp, /run, /var/tmp, /dev/shm); cgroup2
//! and bpffs are mounted fresh; the guest's modprobe reads the unpacked kernel package's modules.
//! The checkout (and the target dir, if it lies outside the checkout) is its own read-only 9p
//! share, mounted at its host path after the scratch mounts, so a checkout under /tmp or /run is
//! not hidden by them. A writable share (`target/vm-tests/<series>/out`) receives each test
//! binary's log and exit status. The guest has no network device: the tests build their own
//! network namespaces.
//!
//! Pass/fail is judged by the sentinel line `VMTEST-SENTINEL status=N` that `/init` prints on
//! the serial console, never by QEMU's exit status (QEMU exits 0 even when the guest panics);
//! QEMU runs under `timeout`.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cleanup, setup, util,
    vmtest_kernel::{self, Kernel},
};

/// The CI smoke subset: one test each for the TCP connect hook (allowed and denied, curl), the
/// UDP sendmsg hook, IPv6, the daemon's pinned links surviving a restart, and the per-packet
/// backstop (the guests' kernels take its `backstop_compat` variant).
pub const SMOKE: &[&str] = &[
    "registered_destination_connects_and_curl_gets_the_body",
    "unregistered_address_is_denied_with_eperm_and_a_deny_line",
    "udp_sendto_registered_port_ok_unregistered_eperm",
    "ipv6_registered_allowed_unregistered_denied",
    "enforcement_survives_daemon_restart_and_unpin_detaches",
    "packets_the_socket_address_does_not_show_are_dropped_and_reported",
];

const SENTINEL: &str = "VMTEST-SENTINEL status=";

#[derive(clap::Args)]
pub struct Args {
    /// Guest kernel: 6.1, 6.12 or all.
    #[arg(long, default_value = "all")]
    kernel: String,
    /// Run only tests whose name contains this (repeatable: any of them).
    #[arg(long)]
    filter: Vec<String>,
    /// The CI smoke subset (a few representative tests; adds to --filter).
    #[arg(long)]
    smoke: bool,
    /// Seconds one guest (boot + all its tests) may take before it is killed.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Run this shell command in the guest (as root, in the checkout, with `$ENFORCER_BIN` set)
    /// instead of the tests; its exit status is the guest's. For looking into one kernel's
    /// behaviour, e.g. `--exec '$ENFORCER_BIN run --privileged -- true'`.
    #[arg(long, value_name = "SHELL")]
    exec: Option<String>,
    /// Extra arguments for every test binary (e.g. `-- --test-threads=1`).
    #[arg(last = true)]
    test_args: Vec<String>,
}

/// One test binary of `enforcer-tests` and how many of its tests the filters select.
struct TestBin {
    name: String,
    path: PathBuf,
    selected: usize,
}

#[derive(Default)]
struct Counts {
    passed: usize,
    failed: usize,
    skipped: usize,
}

struct KernelResult {
    label: String,
    counts: Counts,
    seconds: f64,
    ok: bool,
    notes: Vec<String>,
}

pub fn main(a: Args) -> Result<ExitCode> {
    util::require_root("vm-test (the guest reads the host's root filesystem through QEMU, and apt fetches kernels)")?;
    let series: Vec<&str> = match a.kernel.as_str() {
        "all" => vmtest_kernel::SERIES.to_vec(),
        k if vmtest_kernel::SERIES.contains(&k) => vec![k],
        other => bail!("--kernel {other}: expected one of 6.1, 6.12, all"),
    };
    setup::ensure()?;
    let mut filters = a.filter.clone();
    if a.smoke {
        filters.extend(SMOKE.iter().map(|s| s.to_string()));
    }
    let enforcer = util::build_enforcer(false)?;
    let mut bins = if a.exec.is_some() { Vec::new() } else { build_test_bins(&filters)? };
    // The guests read binaries over 9p with caching on: a concurrent `cargo build` replacing
    // target/debug/enforcer under a running guest crashes it (SIGSEGV) at random. So the guests
    // run private copies.
    let snap = util::target_dir().join("vm-tests/bin");
    let _ = std::fs::remove_dir_all(&snap);
    std::fs::create_dir_all(&snap).with_context(|| format!("creating {}", snap.display()))?;
    let enforcer = snapshot(&enforcer, &snap.join("enforcer"))?;
    for b in &mut bins {
        b.path = snapshot(&b.path, &snap.join(&b.name))?;
    }
    let total: usize = bins.iter().map(|b| b.selected).sum();
    if total == 0 && a.exec.is_none() {
        bail!("no integration test matches the filters {filters:?}");
    }
    println!(
        "vm-test: {total} test(s) from {} binar{} on kernel(s) {}",
        bins.len(),
        if bins.len() == 1 { "y" } else { "ies" },
        series.join(", ")
    );

    let mut results = Vec::new();
    for s in &series {
        let k = vmtest_kernel::ensure(s)?;
        results.push(run_guest(&a, &k, &bins, &filters, &enforcer)?);
    }

    println!();
    println!("{:<28} {:>6} {:>6} {:>7} {:>8}  result", "kernel", "passed", "failed", "skipped", "seconds");
    for r in &results {
        println!(
            "{:<28} {:>6} {:>6} {:>7} {:>8.0}  {}",
            r.label,
            r.counts.passed,
            r.counts.failed,
            r.counts.skipped,
            r.seconds,
            if r.ok { "ok" } else { "FAILED" }
        );
    }
    for r in &results {
        for n in &r.notes {
            println!("  {}: {n}", r.label);
        }
    }
    Ok(if results.iter().all(|r| r.ok) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `cargo test -p enforcer-tests --no-run`, the executables from cargo's JSON messages, and
/// how many tests of each the filters select (`--list` on the host).
fn build_test_bins(filters: &[String]) -> Result<Vec<TestBin>> {
    let mut cmd = util::cargo_cmd();
    cmd.args(["test", "-p", "enforcer-tests", "--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(util::workspace_root())
        .stderr(Stdio::inherit());
    util::show(&cmd);
    let out = cmd.output().context("could not start cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed ({})", out.status);
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let name = v["target"]["name"].as_str().unwrap_or("?").to_string();
        let list = util::run_quiet(&mut util::cmd(exe, ["--list", "--format", "terse"]))?;
        let selected = list
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .filter(|t| filters.is_empty() || filters.iter().any(|f| t.contains(f.as_str())))
            .count();
        if selected > 0 {
            bins.push(TestBin { name, path: exe.into(), selected });
        }
    }
    bins.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(bins)
}

fn snapshot(from: &Path, to: &Path) -> Result<PathBuf> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(to.to_path_buf())
}

fn sh_quote(p: impl AsRef<std::ffi::OsStr>) -> String {
    format!("'{}'", p.as_ref().to_string_lossy().replace('\'', r"'\''"))
}

/// The guest's fresh scratch mounts: (path, tmpfs mode). Mounted before the [`Share`]s, so a
/// share under one of them is not hidden.
const SCRATCH: &[(&str, &str)] = &[("/tmp", "1777"), ("/run", "755"), ("/var/tmp", "1777"), ("/dev/shm", "1777")];

/// A host directory the guest sees at the same path through its own 9p share.
struct Share {
    tag: &'static str,
    host: PathBuf,
    writable: bool,
}

impl Share {
    /// QEMU's `-virtfs` value (a comma in the path is written `,,`).
    fn virtfs(&self) -> String {
        let path = self.host.to_string_lossy().replace(',', ",,");
        let ro = if self.writable { "" } else { ",readonly=on" };
        format!("local,path={path},mount_tag={},security_model=none{ro},multidevs=remap", self.tag)
    }
}

/// The checkout, the target dir when it is not inside the checkout, and the guest's output dir.
fn shares(out_dir: &Path) -> Vec<Share> {
    let ws = util::workspace_root().to_path_buf();
    let target = util::target_dir();
    let mut v = Vec::new();
    if !target.starts_with(&ws) {
        v.push(Share { tag: "target", host: target, writable: false });
    }
    // The checkout first: the target share and the output dir may lie inside it.
    v.insert(0, Share { tag: "checkout", host: ws, writable: false });
    v.push(Share { tag: "vmout", host: out_dir.to_path_buf(), writable: true });
    v
}

/// Boots one guest, runs the selected tests in it, and collects the results.
fn run_guest(a: &Args, k: &Kernel, bins: &[TestBin], filters: &[String], enforcer: &Path) -> Result<KernelResult> {
    let label = format!("{} ({})", k.series, k.release);
    let dir = util::target_dir().join("vm-tests").join(&k.series);
    let out_dir = dir.join("out");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    // The guest's modprobe: the host's, reading the unpacked package's module tree.
    let modprobe = dir.join("modprobe");
    std::fs::write(&modprobe, format!("#!/bin/sh\nexec /sbin/modprobe -d {} \"$@\"\n", sh_quote(&k.root)))?;
    std::fs::set_permissions(&modprobe, std::fs::Permissions::from_mode(0o755))?;

    // Stage 2 runs chrooted into the host's root (read-only 9p), as the guest's PID 1 child.
    let stage2 = dir.join("stage2.sh");
    std::fs::write(&stage2, stage2_script(a, bins, filters, enforcer, &modprobe, &out_dir))?;

    let shares = shares(&out_dir);
    let initrd = dir.join("initrd.cpio");
    build_initramfs(k, &dir, &initrd, &stage2, &shares)?;

    let mut qemu = Command::new("timeout");
    qemu.args(["--kill-after=10", &a.timeout.to_string(), "qemu-system-x86_64"]);
    qemu.args(["-accel", "tcg", "-cpu", "max"]);
    qemu.args(["-smp", &a.cpus.to_string(), "-m", &a.memory.to_string()]);
    qemu.args(["-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio"]);
    qemu.arg("-kernel").arg(k.vmlinuz());
    qemu.arg("-initrd").arg(&initrd);
    qemu.arg("-virtfs").arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap");
    for sh in &shares {
        qemu.arg("-virtfs").arg(sh.virtfs());
    }
    qemu.args(["-append", "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off"]);
    qemu.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    println!("\nvm-test: booting {} ({}) under QEMU/TCG", k.package, k.series);
    util::show(&qemu);
    let started = Instant::now();
    let mut child = qemu.spawn().context("could not start qemu (under timeout)")?;
    let _guard = cleanup::register(cleanup::Resource::Process(child.id() as i32));
    let console = child.stdout.take().unwrap();
    let mut log = String::new();
    let mut status: Option<i32> = None;
    for line in BufReader::new(console).lines() {
        let Ok(line) = line else { break };
        let line = line.trim_end_matches('\r').to_string();
        println!("[{}] {line}", k.series);
        if let Some(rest) = line.trim_start().strip_prefix(SENTINEL) {
            status = rest.split_whitespace().next().and_then(|s| s.parse().ok());
        }
        log.push_str(&line);
        log.push('\n');
    }
    let qemu_status = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(dir.join("console.log"), &log)?;

    let mut notes = Vec::new();
    let mut counts = Counts::default();
    for b in bins {
        let blog = std::fs::read_to_string(out_dir.join(format!("{}.log", b.name))).unwrap_or_default();
        let rc = std::fs::read_to_string(out_dir.join(format!("{}.rc", b.name)))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let (c, failures, summarized) = parse_libtest(&blog);
        counts.passed += c.passed;
        counts.failed += c.failed;
        counts.skipped += c.skipped;
        for f in failures {
            notes.push(format!("FAILED {}::{f}", b.name));
        }
        match rc {
            Some(0) => {}
            Some(rc) if !summarized => {
                counts.failed += 1;
                notes.push(format!(
                    "{} exited {rc} without a test summary (see {})",
                    b.name,
                    out_dir.join(format!("{}.log", b.name)).display()
                ));
            }
            None if status.is_some() => {
                notes.push(format!("{} did not run", b.name));
                counts.failed += 1;
            }
            _ => {}
        }
    }
    let ok = match status {
        Some(0) => counts.failed == 0,
        Some(n) => {
            notes.push(format!("guest reported status {n}"));
            false
        }
        None => {
            notes.push(format!(
                "no sentinel line from the guest (qemu: {qemu_status}; timeout {}s); console in {}",
                a.timeout,
                dir.join("console.log").display()
            ));
            false
        }
    };
    Ok(KernelResult { label, counts, seconds, ok, notes })
}

/// Totals of libtest's `test result:` lines, the names of failed tests, and whether any summary
/// was printed.
fn parse_libtest(log: &str) -> (Counts, Vec<String>, bool) {
    let mut c = Counts::default();
    let mut failures = Vec::new();
    let mut summarized = false;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("test result: ") {
            summarized = true;
            for part in rest.split(['.', ';']) {
                let mut w = part.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<usize>() else { continue };
                match what {
                    "passed" => c.passed += n,
                    "failed" => c.failed += n,
                    "ignored" => c.skipped += n,
                    _ => {}
                }
            }
        } else if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED")) {
            failures.push(name.to_string());
        }
    }
    (c, failures, summarized)
}

fn stage2_script(
    a: &Args,
    bins: &[TestBin],
    filters: &[String],
    enforcer: &Path,
    modprobe: &Path,
    out_dir: &Path,
) -> String {
    let mut s = String::new();
    let ws = util::workspace_root();
    let _ = write!(
        s,
        r#"# vm-test stage 2: chrooted into the host's root (read-only 9p) inside the guest; /init mounted
# the scratch tmpfs and the checkout's own share.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8 NO_COLOR=1 RUST_BACKTRACE=1
export ENFORCER_BIN={enforcer}
OUT={out}
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /run/netns /run/enforcer-tests
{modprobe} veth
ip link set lo up
echo "vm-test: guest $(uname -r), $(nproc) cpu(s), $(awk '/MemTotal/{{print $2/1024 " MiB"}}' /proc/meminfo)"
cd {ws}
status=0
"#,
        enforcer = sh_quote(enforcer),
        out = sh_quote(out_dir),
        modprobe = sh_quote(modprobe),
        ws = sh_quote(ws),
    );
    let mut args: Vec<String> = filters.iter().map(sh_quote).collect();
    args.extend(a.test_args.iter().map(sh_quote));
    let args = args.join(" ");
    for b in bins {
        let _ = write!(
            s,
            r#"echo "vm-test: running {name} ({n} test(s))"
t0=$(date +%s)
{{ {path} {args} 2>&1; echo $? > "$OUT/{name}.rc"; }} | tee "$OUT/{name}.log"
rc=$(cat "$OUT/{name}.rc")
echo "vm-test: {name} exited $rc after $(( $(date +%s) - t0 ))s"
[ "$rc" = 0 ] || status=1
"#,
            name = b.name,
            n = b.selected,
            path = sh_quote(&b.path),
        );
    }
    if let Some(cmd) = &a.exec {
        let _ = write!(
            s,
            "echo \"vm-test: running --exec\"\n{{ sh -c {} 2>&1; echo $? > \"$OUT/exec.rc\"; }} | tee \"$OUT/exec.log\"\n\
             status=$(cat \"$OUT/exec.rc\")\necho \"vm-test: --exec exited $status\"\n",
            sh_quote(cmd)
        );
    }
    s.push_str("sync\nexit $status\n");
    s
}

/// `/init` (busybox sh), busybox, and the modules for virtio-pci and 9p, as a newc cpio.
fn build_initramfs(k: &Kernel, dir: &Path, initrd: &Path, stage2: &Path, shares: &[Share]) -> Result<()> {
    let root = dir.join("initramfs");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::create_dir_all(root.join("modules"))?;
    let busybox = which::which("busybox").context("busybox not found (apt package busybox-static)")?;
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    let order = vmtest_kernel::initramfs_modules(k, &root.join("modules"))?;
    // Fresh scratch space first, then the shares at their host paths (on top of it if needed).
    let mut mounts = String::new();
    for (path, mode) in SCRATCH {
        let _ = writeln!(
            mounts,
            "$B mkdir -p /newroot{path}; $B mount -t tmpfs -o mode={mode} tmpfs /newroot{path} || die \"cannot mount tmpfs on {path}\" 252"
        );
    }
    for sh in shares {
        let at = sh_quote(format!("/newroot{}", sh.host.display()));
        let opts = if sh.writable { "" } else { "ro,cache=loose," };
        let _ = writeln!(
            mounts,
            "$B mkdir -p {at}; $B mount -t 9p -o trans=virtio,version=9p2000.L,{opts}msize=262144 {tag} {at} || die \"cannot mount the {tag} share at {host}\" 253",
            tag = sh.tag,
            host = sh.host.display(),
        );
    }
    let init = format!(
        r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /newroot
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in {mods}; do $B insmod /modules/$m || echo "vm-test: insmod $m failed"; done
die() {{ echo "vm-test: $1"; echo "{SENTINEL}$2"; $B poweroff -f; }}
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot || die "cannot mount the host root over 9p" 254
$B mount -t proc proc /newroot/proc
$B mount -t sysfs sys /newroot/sys
$B mount -t devtmpfs dev /newroot/dev
{mounts}echo /modprobe > /proc/sys/kernel/modprobe
$B chroot /newroot /bin/sh {stage2}
rc=$?
echo "{SENTINEL}$rc"
$B sync
$B poweroff -f
"#,
        mods = order.join(" "),
        stage2 = sh_quote(stage2),
    );
    std::fs::write(root.join("init"), init)?;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))?;
    // The kernel's module autoloading (`tc qdisc add ... clsact` -> sch_ingress, ...) runs
    // /proc/sys/kernel/modprobe from kernel threads, whose root is this initramfs, not the
    // chroot: so this helper enters the chroot and runs the host's modprobe on the guest's tree.
    std::fs::write(
        root.join("modprobe"),
        format!(
            "#!/bin/busybox sh\nexec /bin/busybox chroot /newroot /sbin/modprobe -d {} \"$@\"\n",
            sh_quote(&k.root)
        ),
    )?;
    std::fs::set_permissions(root.join("modprobe"), std::fs::Permissions::from_mode(0o755))?;
    let list = "init\nmodprobe\nbin\nbin/busybox\nmodules\n".to_string()
        + &order.iter().map(|m| format!("modules/{m}\n")).collect::<String>();
    let mut cpio = Command::new(&busybox);
    cpio.args(["cpio", "-o", "-H", "newc"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(initrd)?)
        .stderr(Stdio::piped());
    let mut child = cpio.spawn().context("could not start busybox cpio")?;
    {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(list.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("busybox cpio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
