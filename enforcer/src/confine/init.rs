//! The init of a confined command: this binary re-executed by `run` as PID 1 of the command's new
//! PID namespace (already in the run's cgroup). It is single-threaded, so it may do anything
//! between its forks.
//!
//! It sets up the cgroup and mount namespaces, takes its own process group (and the terminal, if
//! enforcer had it), forks the command (PID 2) which drops its privileges and executes, then
//! forwards signals to the command, reaps every orphan in the namespace, reports job-control stops
//! to enforcer and exits with the command's status (128+N for signal N). When init exits the
//! kernel kills whatever is left in the namespace.

use std::{
    ffi::{CString, OsString},
    fs::File,
    io::{Read as _, Write as _},
    os::{
        fd::{AsFd as _, FromRawFd as _},
        unix::ffi::OsStrExt as _,
    },
};

use nix::{
    sched::CloneFlags,
    sys::{
        signal::{SigSet, SigmaskHow, Signal},
        signalfd::{SfdFlags, SignalFd},
        wait::{WaitPidFlag, WaitStatus},
    },
    unistd::{ForkResult, Pid},
};

use super::{InitConfig, InitMessage, mounts, privs};
use crate::exit;

/// argv[1] that makes this binary the init of a confined command.
pub const INIT_ARG: &str = "__enforcer-run-init";

/// Signals init passes on to the command. The terminal's own signals (^C, ^\, window changes)
/// reach the command directly: it is in the terminal's foreground process group.
const FORWARDED: [Signal; 8] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGALRM,
];

/// `si_code` of a signal the kernel sent (e.g. the terminal's), not a process.
const SI_KERNEL: i32 = 0x80;

/// If this process was started as a command's init, run it; never returns then.
pub fn main_if_init() {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() != Some(std::ffi::OsStr::new(INIT_ARG)) {
        return;
    }
    let Some(cfg) = args.next().and_then(|a| serde_json::from_slice::<InitConfig>(a.as_bytes()).ok()) else {
        eprintln!("enforcer: {INIT_ARG} is internal to `enforcer run`");
        std::process::exit(exit::ENFORCER_FAILED);
    };
    // SAFETY: the descriptor was made for us by `run` (see `confine::spawn`) and is ours alone.
    let mut status = unsafe { File::from_raw_fd(cfg.status_fd) };
    set_cloexec(&status);
    let argv: Vec<OsString> = args.skip_while(|a| a != "--").skip(1).collect();
    let code = match Init::start(&cfg, &argv, &mut status) {
        Ok(init) => init.supervise(&mut status),
        Err(message) => {
            let message = format!("{message} (`enforcer run --privileged` runs the command without confinement)");
            send(&mut status, &InitMessage::Failed { code: exit::ENFORCER_FAILED, message });
            exit::ENFORCER_FAILED
        }
    };
    std::process::exit(code);
}

struct Init {
    command: Pid,
    signals: SignalFd,
}

impl Init {
    /// Everything up to the command's exec; `Err` is a message for enforcer.
    fn start(cfg: &InitConfig, argv: &[OsString], status: &mut File) -> Result<Self, String> {
        if argv.is_empty() {
            return Err("no command given".into());
        }
        if nix::unistd::getpid().as_raw() != 1 {
            return Err("the command's init is not PID 1 of a new PID namespace".into());
        }
        // Every signal is taken through a signalfd; the command gets a clean mask back.
        let all = SigSet::all();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None)
            .map_err(|e| format!("blocking signals: {e}"))?;
        let signals = SignalFd::with_flags(&all, SfdFlags::SFD_CLOEXEC).map_err(|e| format!("signalfd: {e}"))?;

        // The cgroup namespace is rooted at the cgroup init was moved into before it executed.
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("creating the command's cgroup and mount namespaces: {e}"))?;
        mounts::confine().map_err(|e| format!("setting up the command's mounts: {e}"))?;
        crate::dns::isolate::apply_view(&cfg.resolver_view).map_err(|e| {
            format!("setting up the command's resolver view: {e} (`--no-dns-isolation` keeps the host's)")
        })?;

        // An own process group: `kill(0, ...)` from the command reaches init and the namespace's
        // processes only (process groups cross PID namespaces). With the terminal when enforcer
        // had it, so job control and ^C work as in a shell.
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| format!("setpgid: {e}"))?;
        if cfg.take_tty
            && let Ok(tty) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty")
        {
            // SIGTTOU is blocked, so this background process may change the foreground group.
            let _ = nix::unistd::tcsetpgrp(tty.as_fd(), nix::unistd::getpgrp());
        }
        let _ = nix::sys::prctl::set_name(c"enforcer-init");
        // The command cannot read init's memory or open its descriptors through /proc/1.
        nix::sys::prctl::set_dumpable(false).map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;

        let c_argv: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(|_| format!("{}: argument contains a NUL byte", a.display())))
            .collect::<Result<_, _>>()?;
        let (err_rd, err_wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))?;
        // SAFETY: this process is single-threaded.
        match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                drop(err_rd);
                let (code, message) = exec_command(cfg, &c_argv, argv);
                let mut w = File::from(err_wr);
                let _ = w.write_all(format!("{code}\t{message}").as_bytes());
                // SAFETY: leave without running anything of the parent's state.
                unsafe { libc::_exit(code) };
            }
            ForkResult::Parent { child } => {
                drop(err_wr);
                let mut err = String::new();
                let _ = File::from(err_rd).read_to_string(&mut err);
                if let Some((code, message)) = err.split_once('\t') {
                    let code = code.parse().unwrap_or(exit::ENFORCER_FAILED);
                    let _ = nix::sys::wait::waitpid(child, None);
                    send(status, &InitMessage::Failed { code, message: message.to_string() });
                    std::process::exit(code);
                }
                send(status, &InitMessage::Running);
                Ok(Self { command: child, signals })
            }
        }
    }

    /// Until the command exits: forward signals, reap orphans, report stops. Returns its status.
    fn supervise(self, status: &mut File) -> i32 {
        loop {
            let info = match self.signals.read_signal() {
                Ok(Some(i)) => i,
                Ok(None) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    eprintln!("enforcer: the command's init cannot read signals: {e}");
                    return exit::ENFORCER_FAILED;
                }
            };
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
            if sig == Signal::SIGCHLD {
                if let Some(code) = self.reap(status) {
                    return code;
                }
            } else if FORWARDED.contains(&sig) && info.ssi_code != SI_KERNEL {
                let _ = nix::sys::signal::kill(self.command, sig);
            }
        }
    }

    /// Reap every child that changed state; the command's exit status once it is gone.
    fn reap(&self, status: &mut File) -> Option<i32> {
        loop {
            match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == self.command => return Some(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.command => return Some(128 + sig as i32),
                Ok(WaitStatus::Stopped(pid, sig)) if pid == self.command => {
                    send(status, &InitMessage::Stopped(sig as i32));
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return None,
                Ok(_) => {} // an orphan of the namespace, reaped
            }
        }
    }
}

/// In the command's process: drop privileges and execute it. Returns only on failure, with the
/// exit status and the message.
fn exec_command(cfg: &InitConfig, c_argv: &[CString], argv: &[OsString]) -> (i32, String) {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    if let Err(e) = privs::drop_privileges(cfg.identity.as_ref()) {
        return (exit::ENFORCER_FAILED, format!("dropping the command's privileges: {e}"));
    }
    let e = match nix::unistd::execvp(&c_argv[0], c_argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let code = match e {
        nix::Error::ENOENT | nix::Error::ENOTDIR => exit::NOT_FOUND,
        nix::Error::EACCES | nix::Error::EPERM | nix::Error::ENOEXEC | nix::Error::EISDIR => exit::NOT_EXECUTABLE,
        _ => exit::ENFORCER_FAILED,
    };
    (code, format!("{}: {}", argv[0].display(), std::io::Error::from(e)))
}

fn send(status: &mut File, m: &InitMessage) {
    // enforcer may be gone (killed): the command carries on, confined, until it is cleaned up.
    let _ = status.write_all(m.encode().as_bytes());
}

fn set_cloexec(f: &File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: plain syscall on our own descriptor.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}
