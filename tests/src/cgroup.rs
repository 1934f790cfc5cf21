//! Child cgroups of this process's own cgroup: created per test, emptied and removed on drop.

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::Command,
    thread,
    time::Duration,
};

use crate::{
    ClientRun, Outcome, cgroup2_mount, client_cmd, output_with_timeout, own_cgroup_dir, preflight, unique_tag,
};

/// A child cgroup of this process's own cgroup. Drop kills everything inside and removes it.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(tag: &str) -> Self {
        preflight();
        let path = own_cgroup_dir().join(format!("enft-{tag}-{}", unique_tag()));
        assert_ne!(path, cgroup2_mount(), "refusing to use the root cgroup");
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }

    /// A child cgroup of this one (dropped before its parent when declared after it).
    pub fn child(&self, name: &str) -> Cgroup {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    /// Path relative to the cgroup2 mount, with a leading `/`.
    pub fn rel(&self) -> String {
        format!("/{}", self.path.strip_prefix(cgroup2_mount()).unwrap().display())
    }

    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Move a running process into this cgroup.
    pub fn move_in(&self, pid: u32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path.display()));
    }

    /// Make `cmd` join this cgroup before it execs (so its first connect is already judged).
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("opening {}/cgroup.procs: {e}", self.path.display()));
        let fd = procs.as_raw_fd();
        // The File must outlive the fork: keep it in the closure (it is CLOEXEC, so the exec'd
        // program does not inherit it).
        let procs = std::sync::Arc::new(procs);
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &procs;
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Run `argv` inside this cgroup to completion (30 s deadline).
    pub fn run(&self, argv: &[String]) -> Outcome {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        self.enter_on_exec(&mut c);
        output_with_timeout(&mut c, Duration::from_secs(30))
    }

    /// Run the python client in this cgroup.
    pub fn client(&self, ops: &[String]) -> ClientRun {
        ClientRun::from(self.run(&client_cmd(ops)), ops.len())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.pids().is_empty() && fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            for p in self.pids() {
                // SAFETY: plain syscall; processes in our own test cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        for _ in 0..250 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// A `daemon --workloads` file's text: one workload per (name, cgroup, registry path), all in
/// `mode`.
pub fn workloads_yaml(workloads: &[(&str, &Cgroup, &std::path::Path)], mode: &str) -> String {
    let mut s = String::from("workloads:\n");
    for (name, cg, reg) in workloads {
        s.push_str(&format!(
            "- name: {name}\n  cgroups: [\"{}\"]\n  registry: [\"{}\"]\n  mode: {mode}\n",
            cg.rel().trim_start_matches('/'),
            reg.display()
        ));
    }
    s
}
