//! Exit statuses, following the convention of `env`, `timeout` and `docker run`.

use std::{os::unix::process::ExitStatusExt as _, process::ExitStatus};

/// enforcer itself failed (bad config, no privileges, BPF load/attach failure, ...).
pub const ENFORCER_FAILED: i32 = 125;
/// The command was found but could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;

/// An error that carries the exit status to use.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    pub code: i32,
    pub message: String,
}

/// The command's status as a shell reports it: its exit code, or 128+N for signal N.
pub fn from_status(st: ExitStatus) -> i32 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => ENFORCER_FAILED,
    }
}

/// The status for an error that ended enforcer.
pub fn for_error(e: &anyhow::Error) -> i32 {
    e.downcast_ref::<CodedError>().map(|c| c.code).unwrap_or(ENFORCER_FAILED)
}
