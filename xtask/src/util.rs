//! Small helpers: where things are, running commands, printing them.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
    sync::OnceLock,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent directory").to_path_buf()
    })
}

/// `cargo` as cargo ran us (so the same toolchain), else from PATH.
pub fn cargo_cmd() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`).
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(h).join("bin"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"))
}

/// Prepends `$CARGO_HOME/bin` to PATH when it is missing, so tools installed by `cargo install`
/// (bpf-linker) are found by us and by the builds we start. Call before any thread is spawned.
pub fn ensure_cargo_bin_on_path() {
    let Some(dir) = cargo_bin_dir() else { return };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == dir) {
        return;
    }
    let mut parts = vec![dir];
    parts.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(parts) {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("PATH", joined) };
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else what `cargo metadata` says, else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace_root();
        if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
            return root.join(d); // join keeps absolute paths as they are
        }
        let meta = cargo_cmd()
            .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
            .current_dir(root)
            .output();
        if let Ok(out) = meta
            && out.status.success()
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && let Some(d) = v["target_directory"].as_str()
        {
            return PathBuf::from(d);
        }
        root.join("target")
    })
    .clone()
}

/// `cargo build -p enforcer [--profile dist]`; returns the binary's absolute path. `release`
/// builds the shipped agent: the workspace's `dist` profile (release with fat LTO, see Cargo.toml).
pub fn build_enforcer(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo_cmd();
    cmd.args(["build", "-p", "enforcer"]);
    if release {
        cmd.args(["--profile", "dist"]);
    }
    cmd.current_dir(workspace_root());
    show(&cmd);
    let status = cmd.status().context_spawn("cargo build")?;
    if !status.success() {
        bail!("`cargo build -p enforcer` failed ({status})");
    }
    let bin = target_dir().join(if release { "dist" } else { "debug" }).join("enforcer");
    if !bin.is_file() {
        bail!("cargo built enforcer but {} does not exist", bin.display());
    }
    Ok(bin)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{what} needs root (it creates network namespaces, cgroups and loads eBPF programs); run it as root or with `sudo -E`"
        );
    }
    Ok(())
}

/// Where cgroup2 is mounted, from /proc/self/mountinfo (e.g. /sys/fs/cgroup or
/// /sys/fs/cgroup/unified on hybrid hosts).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2")
            && let Some(mp) = pre.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(unescape_mountinfo(mp)));
        }
    }
    bail!("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); enforcer needs cgroup v2")
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Quotes one word for display the way a shell would need it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command line as one might type it; paths under the workspace root are shown relative.
pub fn display_cmd(cmd: &Command) -> String {
    let prog = cmd.get_program();
    let first =
        if std::env::var_os("CARGO").is_some_and(|c| c == prog) { "cargo".to_string() } else { display_path(prog) };
    let mut words = vec![first];
    words.extend(cmd.get_args().map(display_path));
    words.join(" ")
}

fn display_path(s: &std::ffi::OsStr) -> String {
    let s = s.to_string_lossy();
    let root = workspace_root().to_string_lossy();
    let rel = s.strip_prefix(&*root).and_then(|r| r.strip_prefix('/')).unwrap_or(&s);
    shell_quote(rel)
}

/// Prints `$ command` before it runs.
pub fn show(cmd: &Command) {
    println!("$ {}", display_cmd(cmd));
}

/// Runs a command quietly; fails with its stderr if it fails.
pub fn run_quiet(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("could not start `{}`", display_cmd(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", display_cmd(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `Command::new(prog).args(args)`.
pub fn cmd<I, S>(prog: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut c = Command::new(prog);
    c.args(args.into_iter().map(Into::into));
    c
}

/// Exit code to hand on: the child's code, or 128+signal.
pub fn exit_code_of(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(s)) => ExitCode::from((128 + s).clamp(0, 255) as u8),
        _ => ExitCode::FAILURE,
    }
}

/// Adds "could not start X" context to spawn errors.
pub trait SpawnContext<T> {
    fn context_spawn(self, what: &str) -> Result<T>;
}
impl<T> SpawnContext<T> for std::io::Result<T> {
    fn context_spawn(self, what: &str) -> Result<T> {
        self.with_context(|| format!("could not start {what}"))
    }
}

/// A directory removed on drop (and on Ctrl-C).
pub struct TempDir {
    pub path: PathBuf,
    _guard: crate::cleanup::Guard,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let guard = crate::cleanup::register(crate::cleanup::Resource::Dir(path.clone()));
        Ok(Self { path, _guard: guard })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("examples/demo/registry.yaml"), "examples/demo/registry.yaml");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/sys/fs/cgroup/unified"), "/sys/fs/cgroup/unified");
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/x\04"), r"/x\04");
    }
}
