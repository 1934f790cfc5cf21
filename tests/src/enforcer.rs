//! Running the enforcer CLI to completion (`enforcer ARGS`, `enforcer run ... -- CMD`) and reading
//! what its logs announce.

use std::{ffi::OsStr, process::Command, time::Duration};

use crate::{Outcome, enforcer_bin, output_with_timeout};

/// `enforcer ARGS...` with a 60 s deadline.
pub fn enforcer<I, S>(args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(enforcer_bin());
    c.args(args).env("NO_COLOR", "1");
    output_with_timeout(&mut c, Duration::from_secs(60))
}

/// `enforcer run POLICY_ARGS... -- CMD...`.
pub fn enforcer_run<P: AsRef<OsStr>, S: AsRef<OsStr>>(policy: &[P], cmd: &[S]) -> Outcome {
    let mut args: Vec<&OsStr> = vec![OsStr::new("run")];
    args.extend(policy.iter().map(|s| s.as_ref()));
    args.push(OsStr::new("--"));
    args.extend(cmd.iter().map(|s| s.as_ref()));
    enforcer(args)
}

/// The admin address an `enforcer daemon` log announces (`admin listener serving addr=...`).
pub fn admin_addr_from_log(log: &str) -> Option<std::net::SocketAddr> {
    log.lines().find_map(|l| {
        l.contains("admin listener serving")
            .then(|| l.split("addr=").nth(1)?.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}
