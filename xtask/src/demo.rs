//! `cargo xtask demo`: enforcer against two HTTP servers in a private network namespace.
//!
//! Host side of a veth pair: 198.18.0.1/24 (and fd00:198:18::1); namespace side: 198.18.0.2
//! (api.demo.test, registered) and 198.18.0.3 (other.demo.test, not registered), each serving
//! HTTP on port 8080. curl runs on the host under `enforcer run`; names are pinned with
//! `--resolve`, so no DNS is involved.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    netns::{self, Netns, Proc},
    setup, util,
};

#[derive(clap::Args)]
pub struct Args {
    /// Use this enforcer binary instead of building one.
    #[arg(long, value_name = "PATH")]
    enforcer: Option<PathBuf>,
    /// Build and run the shipped binary (the `dist` profile: release with fat LTO).
    #[arg(long)]
    release: bool,
}

const REGISTRY: &str = "examples/demo/registry.yaml";
const MESH: &str = "examples/demo/mesh.yaml";
const REGISTRY_TEXT: &str = include_str!("../../examples/demo/registry.yaml");
const MESH_TEXT: &str = include_str!("../../examples/demo/mesh.yaml");

const HOST_V4: &str = "198.18.0.1";
const API_V4: &str = "198.18.0.2";
const OTHER_V4: &str = "198.18.0.3";
const HOST_V6: &str = "fd00:198:18::1";
const NS_V6: &str = "fd00:198:18::2";
const PORT: u16 = 8080;

/// The shell script every run executes: one curl per server, each followed by its exit code.
fn script() -> String {
    let curl = |host: &str, addr: &str| {
        format!(
            "curl -sS --max-time 5 --resolve {host}:{PORT}:{addr} http://{host}:{PORT}/; echo \"[curl {host} exit $?]\""
        )
    };
    format!("{}; {}", curl("api.demo.test", API_V4), curl("other.demo.test", OTHER_V4))
}

pub fn main(args: Args) -> Result<ExitCode> {
    util::require_root("the demo")?;
    setup::ensure()?;
    let root = util::workspace_root();
    let enforcer = match args.enforcer {
        Some(p) => std::path::absolute(&p).with_context(|| format!("bad path {}", p.display()))?,
        None => {
            heading("Building enforcer");
            util::build_enforcer(args.release)?
        }
    };
    if !enforcer.is_file() {
        bail!("no enforcer binary at {}", enforcer.display());
    }
    for (rel, text) in [(REGISTRY, REGISTRY_TEXT), (MESH, MESH_TEXT)] {
        let p = root.join(rel);
        if !p.exists() {
            std::fs::create_dir_all(p.parent().unwrap())?;
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        }
    }

    heading("Setting up the lab (a private network namespace; nothing leaves this machine)");
    let pid = std::process::id();
    let lab = Lab::start(pid)?;
    println!(
        "namespace {ns}: api.demo.test = {API_V4}:{PORT}, other.demo.test = {OTHER_V4}:{PORT} \
         (host side {HOST_V4} on {link})",
        ns = lab.ns.name,
        link = lab.host_link
    );

    heading("The registry: one Istio ServiceEntry, and a MeshConfig that allows only registered services");
    for rel in [REGISTRY, MESH] {
        println!("$ cat {rel}");
        let text = std::fs::read_to_string(root.join(rel))?;
        print!("{}", text);
    }
    println!();
    let mut check = Command::new(&enforcer);
    check.args(["check", REGISTRY, MESH]).current_dir(root);
    util::show(&check);
    let st = check.status().context("could not start enforcer check")?;
    if !st.success() {
        eprintln!("xtask: warning: `enforcer check` failed ({st})");
    }

    let mut failures = Vec::new();

    heading("1. REGISTRY_ONLY: api.demo.test is registered, other.demo.test is not");
    println!(
        "enforcer runs the command in its own cgroup and judges every connect() it makes.\n\
         Expect: the first curl gets the page; the second fails at once: its connect() gets\n\
         EPERM (curl: \"(7) Failed to connect ...\"), and enforcer says why on stderr.\n"
    );
    let r = run_enforcer(&enforcer, root, &[])?;
    expect(&mut failures, "REGISTRY_ONLY", &r, 0, 7);
    // Exit 7 is also "connection refused": insist on a sign of EPERM or of enforcer's denial.
    if r.other == Some(7) && !r.stderr.contains("denied") && !r.stderr.contains("not permitted") {
        failures.push(
            "REGISTRY_ONLY: curl to other.demo.test could not connect, but neither curl's \
             \"Operation not permitted\" nor an enforcer \"denied\" line was printed"
                .into(),
        );
    }

    heading("2. --mode ALLOW_ANY: the same registry, but unregistered destinations are allowed");
    println!("Istio's default mode. Both curls succeed; enforcer still reports what it saw.\n");
    let r = run_enforcer(&enforcer, root, &["--mode", "ALLOW_ANY"])?;
    expect(&mut failures, "ALLOW_ANY", &r, 0, 0);

    heading("3. REGISTRY_ONLY plus --allow 198.18.0.3:8080");
    println!("An ad-hoc allowance, as the denial message suggests. Both curls succeed.\n");
    let allow = format!("{OTHER_V4}:{PORT}");
    let r = run_enforcer(&enforcer, root, &["--allow", &allow])?;
    expect(&mut failures, "--allow", &r, 0, 0);

    heading("Cleaning up");
    drop(lab);
    println!("removed the namespace, the servers and the temporary files");
    if failures.is_empty() {
        println!(
            "\ndemo OK: the registered service was reachable, the unregistered one was denied with EPERM under REGISTRY_ONLY, and allowed under ALLOW_ANY and with --allow"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("\ndemo FAILED — observed behaviour differs from the expected:");
        for f in &failures {
            eprintln!("  - {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn heading(s: &str) {
    println!("\n==> {s}\n");
}

/// The namespace, veth pair and the two HTTP servers; all removed on drop.
struct Lab {
    // Field order is drop order: servers first, then the namespace, then files.
    _servers: Vec<Proc>,
    ns: Netns,
    host_link: String,
    _link: crate::cleanup::Guard,
    _dir: util::TempDir,
}

impl Lab {
    fn start(pid: u32) -> Result<Self> {
        let ns = Netns::create(&format!("enf-demo-{pid}"))?;
        let host_link = format!("edm{}h", pid % 10000);
        let ns_link = format!("edm{}n", pid % 10000);
        let link = netns::veth(&host_link, None, &ns_link, &ns)?;
        let ip = |args: &[&str]| util::run_quiet(&mut util::cmd("ip", args));
        ip(&["addr", "add", &format!("{HOST_V4}/24"), "dev", &host_link])?;
        ip(&["addr", "add", &format!("{HOST_V6}/64"), "dev", &host_link, "nodad"])?;
        ip(&["link", "set", &host_link, "up"])?;
        ns.ip(["addr", "add", &format!("{API_V4}/24"), "dev", &ns_link])?;
        ns.ip(["addr", "add", &format!("{OTHER_V4}/24"), "dev", &ns_link])?;
        ns.ip(["addr", "add", &format!("{NS_V6}/64"), "dev", &ns_link, "nodad"])?;
        ns.ip(["link", "set", &ns_link, "up"])?;

        let dir = util::TempDir::new("enforcer-demo")?;
        let mut servers = Vec::new();
        for (name, addr) in [("api.demo.test", API_V4), ("other.demo.test", OTHER_V4)] {
            let docroot = dir.path.join(name);
            std::fs::create_dir_all(&docroot)?;
            std::fs::write(docroot.join("index.html"), format!("hello from {name}\n"))?;
            let mut c = ns.command("python3");
            c.args(["-m", "http.server", &PORT.to_string(), "--bind", addr, "--directory"])
                .arg(&docroot)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            servers.push(Proc::spawn(&mut c)?);
        }
        let lab = Self { _servers: servers, ns, host_link, _link: link, _dir: dir };
        lab.wait_ready()?;
        Ok(lab)
    }

    /// Bounded wait until both servers answer from the host.
    fn wait_ready(&self) -> Result<()> {
        for (name, addr) in [("api.demo.test", API_V4), ("other.demo.test", OTHER_V4)] {
            let url = format!("http://{addr}:{PORT}/");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let out = util::cmd("curl", ["-sS", "--max-time", "1", &url]).output()?;
                if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(name) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "the HTTP server for {name} at {url} did not answer within 10 s: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

struct RunResult {
    api: Option<i32>,
    other: Option<i32>,
    stdout: String,
    stderr: String,
    status: std::process::ExitStatus,
}

/// `enforcer run --registry .. --registry .. EXTRA -- sh -c SCRIPT`, showing its output live.
fn run_enforcer(enforcer: &Path, root: &Path, extra: &[&str]) -> Result<RunResult> {
    let mut c = Command::new(enforcer);
    c.args(["run", "--registry", REGISTRY, "--registry", MESH])
        .args(extra)
        .args(["--", "sh", "-c", &script()])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    util::show(&c);
    let mut child = Proc::spawn(&mut c)?;
    let out = child.child.stdout.take().unwrap();
    let err = child.child.stderr.take().unwrap();
    let t_out = thread::spawn(move || tee(out, false));
    let t_err = thread::spawn(move || tee(err, true));
    let status = child.child.wait().context("waiting for enforcer")?;
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    drop(child);
    let code = |host: &str| {
        let tag = format!("[curl {host} exit ");
        stdout
            .lines()
            .find_map(|l| l.find(&tag).map(|i| &l[i + tag.len()..]))
            .and_then(|rest| rest.trim_end_matches(']').parse().ok())
    };
    Ok(RunResult { api: code("api.demo.test"), other: code("other.demo.test"), stdout, stderr, status })
}

/// Copies a stream line by line to our stdout/stderr and returns what it saw.
fn tee(r: impl std::io::Read, to_stderr: bool) -> String {
    let mut seen = String::new();
    for line in BufReader::new(r).lines() {
        let Ok(line) = line else { break };
        if to_stderr {
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            let _ = writeln!(std::io::stdout(), "{line}");
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    seen
}

fn expect(failures: &mut Vec<String>, what: &str, r: &RunResult, api: i32, other: i32) {
    if !r.status.success() {
        let hint = if r.status.code() == Some(125) { " (enforcer's own failure)" } else { "" };
        failures.push(format!("{what}: enforcer exited with {}{hint}", r.status));
        if r.api.is_none() {
            println!("\n✗ {what}: enforcer failed before running the command");
            return;
        }
    }
    let describe = |c: i32| match c {
        0 => "success".to_string(),
        7 => "exit 7, could not connect".to_string(),
        28 => "exit 28, timed out".to_string(),
        c => format!("exit {c}"),
    };
    for (host, got, want, page) in [
        ("api.demo.test", r.api, api, "hello from api.demo.test"),
        ("other.demo.test", r.other, other, "hello from other.demo.test"),
    ] {
        match got {
            None => failures.push(format!("{what}: curl to {host} did not run (no exit code seen)")),
            Some(g) if g != want => {
                failures.push(format!("{what}: curl to {host}: expected {}, got {}", describe(want), describe(g)))
            }
            Some(0) if !r.stdout.contains(page) => {
                failures.push(format!("{what}: curl to {host} succeeded but did not print {page:?}"))
            }
            _ => {}
        }
    }
    let ok = failures.iter().all(|f| !f.starts_with(&format!("{what}:")));
    println!("\n{} {what}: {}", if ok { "✓" } else { "✗" }, if ok { "as expected" } else { "NOT as expected" });
}
