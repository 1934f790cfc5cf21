//! The Python workload (tests/helpers/worker.py) under `enforcer run`: one-shot ([`worker_cmd`])
//! or long-running and driven over stdin/stdout ([`Workload`]).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    ConnResult, Outcome, TempDir, admin_addr_from_log, enforcer_bin, http_get, metric_value, preflight, python,
    shell_status,
};

/// The workload script, tests/helpers/worker.py (its docstring lists the requests). Requests are
/// JSON objects, one per line on stdin (or one per argv argument: then it answers them and exits);
/// each gets one JSON line on stdout. Interactive mode prints `"ready"` first.
pub const WORKER_PY: &str = include_str!("../helpers/worker.py");

/// `python3 -c WORKER_PY REQ...` (one-shot: one JSON line per request).
pub fn worker_cmd(reqs: &[Value]) -> Vec<String> {
    let mut v = vec![python().display().to_string(), "-c".into(), WORKER_PY.into()];
    v.extend(reqs.iter().map(|r| r.to_string()));
    v
}

/// Parse the one-shot worker's output: one JSON value per request.
pub fn parse_worker(out: &Outcome, n: usize) -> Vec<Value> {
    let v: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("worker output line is not JSON ({e}): {l}\n{out}")))
        .collect();
    assert_eq!(v.len(), n, "one result per request\n{out}");
    v
}

/// A long-running workload: `enforcer run --log info --admin 127.0.0.1:0 POLICY... -- python3 -c
/// WORKER_PY`, driven over stdin/stdout, so one confined process can resolve, connect and query
/// on demand while the test watches the agent (registryz, metrics) and changes DNS records.
/// Drop closes stdin (the worker exits, then enforcer), SIGTERM/SIGKILL after a deadline.
pub struct Workload {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    rx: std::sync::mpsc::Receiver<String>,
    /// enforcer's stderr (agent log, deny lines, summary).
    pub log_path: PathBuf,
    /// The admin API address (from the agent's `admin listener serving addr=` log line).
    pub admin: std::net::SocketAddr,
    _dir: TempDir,
}

impl Workload {
    pub fn start(policy: &[String]) -> Self {
        preflight();
        let dir = TempDir::new("workload");
        let log_path = dir.join("enforcer.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut c = Command::new(enforcer_bin());
        // `--log info`: the admin listener's address is logged at info (`run` defaults to warn).
        c.arg("run")
            .args(["--log", "info", "--admin", "127.0.0.1:0"])
            .args(policy)
            .arg("--")
            .arg(python())
            .arg("-u")
            .arg("-c")
            .arg(WORKER_PY)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = c.spawn().expect("spawning enforcer run");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Self { child, stdin, rx, log_path, admin: "127.0.0.1:1".parse().unwrap(), _dir: dir };
        match w.rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.trim() == "\"ready\"" => {}
            other => {
                let st = w.child.try_wait().ok().flatten();
                panic!("the workload did not start ({other:?}, enforcer status {st:?})\n--- enforcer log\n{}", w.log())
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = admin_addr_from_log(&w.log()) {
                w.admin = a;
                break;
            }
            assert!(Instant::now() < deadline, "no `admin listener serving addr=` line\n{}", w.log());
            thread::sleep(Duration::from_millis(20));
        }
        w
    }

    /// One request; fails the test if no answer comes within 120 s.
    pub fn call(&mut self, req: Value) -> Value {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("workload stdin");
        writeln!(stdin, "{req}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("writing to the workload: {e}\n{}", self.log()));
        match self.rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => serde_json::from_str(&l).unwrap_or_else(|e| panic!("workload answered non-JSON ({e}): {l}")),
            Err(e) => panic!("no answer from the workload to {req} ({e})\n--- enforcer log\n{}", self.log()),
        }
    }

    /// getaddrinfo(name, port) inside the workload.
    pub fn resolve(&mut self, name: &str, port: u16) -> Value {
        self.call(serde_json::json!({"op": "resolve", "name": name, "port": port}))
    }

    /// TCP connect (+ HTTP GET) inside the workload, as a [`ConnResult`].
    pub fn connect(&mut self, addr: &str, port: u16) -> ConnResult {
        let v = self.call(serde_json::json!({"op": "connect", "addr": addr, "port": port}));
        ConnResult {
            op: format!("tcp|{addr}|{port}"),
            ok: v["ok"].as_bool().unwrap(),
            errno: v["errno"].as_i64(),
            error: v["error"].as_str().map(str::to_string),
            reply: v["reply"].as_str().map(str::to_string),
        }
    }

    /// A hand-made DNS query from inside the workload (see [`WORKER_PY`]).
    pub fn query(&mut self, server: &str, name: &str, qtype: u16, transport: &str) -> Value {
        self.call(
            serde_json::json!({"op": "query", "server": server, "name": name, "qtype": qtype, "transport": transport}),
        )
    }

    /// enforcer's stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET `path` on the admin API.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// `/debug/registryz` as JSON.
    pub fn registryz(&self) -> Value {
        let (st, body) = self.admin_get("/debug/registryz");
        assert_eq!(st, 200, "GET /debug/registryz: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("registryz is not JSON ({e}): {body}"))
    }

    /// The value of the metric sample `name` (exact sample name, labels ignored and summed).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (st, body) = self.admin_get("/metrics");
        assert_eq!(st, 200, "GET /metrics: {body}");
        metric_value(&body, name)
    }

    /// Ask the worker to exit; wait (≤ 20 s) for enforcer. Returns (status, enforcer's stderr).
    pub fn finish(mut self) -> (i32, String) {
        let st = self.shutdown();
        (st, self.log())
    }

    fn shutdown(&mut self) -> i32 {
        if let Some(mut stdin) = self.stdin.take() {
            use std::io::Write as _;
            let _ = writeln!(stdin, "{{\"op\":\"exit\"}}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return shell_status(st);
            }
            if Instant::now() > deadline {
                // SAFETY: plain syscall on our own child (enforcer forwards it and cleans up).
                unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
                thread::sleep(Duration::from_secs(3));
                let _ = self.child.kill();
                return shell_status(self.child.wait().unwrap());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.shutdown();
        }
        if std::env::var_os("ENFORCER_TESTS_VERBOSE").is_some() || thread::panicking() {
            eprintln!("--- enforcer run log ({})\n{}", self.log_path.display(), self.log());
        }
    }
}
