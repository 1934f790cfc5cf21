//! The Python client (tests/helpers/client.py): one connect/send per `PROTO|ADDR|PORT` op, run
//! confined (`enforcer run`, a [`Cgroup`](crate::Cgroup)) or not, and its JSON results.

use serde_json::Value;

use crate::{Outcome, enforcer_run, python};

/// The client script, tests/helpers/client.py: each argument is `PROTO|ADDR|PORT` (PROTO: tcp,
/// udp = sendto without connect, udpconnect = connect then send). Prints one JSON line `{pid,
/// results: [{op, ok, errno, error, reply}]}`; `reply` is the HTTP body (tcp) or datagram (udp).
pub const CLIENT_PY: &str = include_str!("../helpers/client.py");

/// One result of [`CLIENT_PY`].
#[derive(Debug, Clone)]
pub struct ConnResult {
    pub op: String,
    pub ok: bool,
    pub errno: Option<i64>,
    pub error: Option<String>,
    pub reply: Option<String>,
}

impl ConnResult {
    pub fn assert_ok(&self, reply_contains: &str) {
        assert!(self.ok, "{} should have succeeded: {:?}", self.op, self);
        let reply = self.reply.as_deref().unwrap_or("");
        assert!(reply.contains(reply_contains), "{}: reply {reply:?} should contain {reply_contains:?}", self.op);
    }

    pub fn assert_eperm(&self) {
        assert!(!self.ok, "{} should have been denied with EPERM but succeeded: {:?}", self.op, self);
        assert_eq!(self.errno, Some(libc::EPERM as i64), "{} should fail with EPERM (1): {:?}", self.op, self);
    }
}

/// `tcp|ADDR|PORT` etc.
pub fn op(proto: &str, addr: impl std::fmt::Display, port: u16) -> String {
    format!("{proto}|{addr}|{port}")
}

/// The python client command line: `python3 -c CLIENT_PY OPS...`.
pub fn client_cmd(ops: &[String]) -> Vec<String> {
    let mut v = vec![python().display().to_string(), "-c".into(), CLIENT_PY.into()];
    v.extend(ops.iter().cloned());
    v
}

/// Parse the client's JSON output (the last line of stdout): (client pid, results).
pub fn parse_client(out: &Outcome) -> (u32, Vec<ConnResult>) {
    let line = out.stdout.lines().last().unwrap_or_else(|| panic!("client printed nothing\n{out}"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("client output is not JSON ({e})\n{out}"));
    let res = v["results"]
        .as_array()
        .expect("results list")
        .iter()
        .map(|r| ConnResult {
            op: r["op"].as_str().unwrap().to_string(),
            ok: r["ok"].as_bool().unwrap(),
            errno: r["errno"].as_i64(),
            error: r["error"].as_str().map(str::to_string),
            reply: r["reply"].as_str().map(str::to_string),
        })
        .collect();
    (v["pid"].as_u64().expect("pid") as u32, res)
}

/// A client run: the outcome, the client's pid and one result per op.
pub struct ClientRun {
    pub out: Outcome,
    pub pid: u32,
    pub res: Vec<ConnResult>,
}

impl ClientRun {
    pub(crate) fn from(out: Outcome, n: usize) -> Self {
        assert_eq!(out.status, 0, "the client failed\n{out}");
        let (pid, res) = parse_client(&out);
        assert_eq!(res.len(), n, "one result per op\n{out}");
        Self { out, pid, res }
    }

    /// Lines `enforcer: denied ...` / `enforcer: audit: ...` on stderr.
    pub fn verdict_lines(&self) -> Vec<&str> {
        self.out
            .stderr
            .lines()
            .filter(|l| l.starts_with("enforcer: denied") || l.starts_with("enforcer: audit"))
            .collect()
    }
}

/// Run the python client under `enforcer run POLICY...` (expects enforcer and client to exit 0).
pub fn run_client(policy: &[String], ops: &[String]) -> ClientRun {
    ClientRun::from(enforcer_run(policy, &client_cmd(ops)), ops.len())
}
