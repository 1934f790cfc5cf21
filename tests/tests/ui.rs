//! The live view (`/ui`) in a real browser: Debian's chromium, headless, driven by playwright-core
//! (tests/helpers/ui/browser.mjs; `cargo xtask setup` installs chromium and runs `npm ci` there),
//! against an `enforcer daemon` with traffic the test generates in its own netns.
//!
//! - the graph shows the right nodes and numbers (one workload, the registry service with its
//!   connections and Istio-direction bytes, BlackHoleCluster after a refused connect);
//! - a refusal appears within 2 s, with its fix (`--allow`, the drafted ServiceEntry);
//! - the page survives an agent restart: it says "reconnecting", then shows the new agent's data;
//! - AUDIT: would-be refusals are listed the same way, the edge is drawn as audit;
//! - `enforcer run --ui` prints the URL of a page it serves.
//!
//! A screenshot of the first test's page is saved as target/ui-screenshot.png (README's picture
//! is a copy). Without /usr/bin/chromium (or $CHROMIUM) the browser tests say so and skip.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use enforcer_tests::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The browser

/// chromium under playwright-core, one page, driven over stdin/stdout of browser.mjs.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<String>,
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn helper_dir() -> PathBuf {
    workspace().join("tests/helpers/ui")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"))
}

impl Browser {
    /// The browser, or `None` (with a message saying why the test is skipped) when chromium is not
    /// installed. Anything else missing (node, `npm ci` not run) fails the test.
    fn launch() -> Option<Self> {
        if !chromium().exists() {
            eprintln!(
                "SKIPPED: {} is not installed (`cargo xtask setup` installs Debian's chromium); the browser tests of the live view did not run",
                chromium().display()
            );
            return None;
        }
        let modules = helper_dir().join("node_modules/playwright-core");
        assert!(
            modules.exists(),
            "{} is missing: run `cargo xtask setup` (it runs `npm ci` in tests/helpers/ui)",
            modules.display()
        );
        let mut child = Command::new("node")
            .arg(helper_dir().join("browser.mjs"))
            .current_dir(helper_dir())
            .env("CHROMIUM", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning node (apt package nodejs) for tests/helpers/ui/browser.mjs");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Some(Self { child, stdin, rx })
    }

    /// Send one command, return its reply (panics if the driver dies or takes > 60 s).
    fn call(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").expect("writing to the browser driver");
        let line =
            self.rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|e| panic!("browser driver: {e} ({cmd})"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("browser driver said {line:?}: {e}"));
        let errors = v["page_errors"].as_array().cloned().unwrap_or_default();
        assert!(errors.is_empty(), "the page threw: {errors:#?}");
        v
    }

    fn open(&mut self, url: &str) {
        let v = self.call(json!({"cmd": "open", "url": url}));
        assert_eq!(v["ok"], true, "opening {url}: {v}");
    }

    /// Wait until `js` is truthy in the page: Ok(its value, time taken) or Err(what the page shows).
    fn wait(&mut self, js: &str, timeout: Duration) -> Result<(Value, Duration), String> {
        let v = self.call(json!({"cmd": "wait", "js": js, "timeout_ms": timeout.as_millis() as u64}));
        match v["ok"].as_bool() {
            Some(true) => Ok((v["value"].clone(), Duration::from_millis(v["elapsed_ms"].as_u64().unwrap_or(0)))),
            _ => Err(format!("{}\n--- page text\n{}", v["error"], v["dom"].as_str().unwrap_or(""))),
        }
    }

    fn must(&mut self, what: &str, js: &str, timeout: Duration) -> Value {
        self.wait(js, timeout).unwrap_or_else(|e| panic!("{what}: not within {timeout:?}: {e}")).0
    }

    fn eval(&mut self, js: &str) -> Value {
        let v = self.call(json!({"cmd": "eval", "js": js}));
        assert_eq!(v["ok"], true, "{js}: {v}");
        v["value"].clone()
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        let v = self.call(json!({"cmd": "screenshot", "path": path}));
        assert_eq!(v["ok"], true, "screenshot: {v}");
        eprintln!("screenshot of the live view: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// What the page shows, read from its DOM

/// `{status, mode, pid, nodes: [{id, kind}], edges: [{source, target, state, opened, closed,
/// denied, audited, request_bytes, response_bytes}], svg_edges: [{target, state}], refusals:
/// [{verdict, destination, workload, process, host, allow, service_entry}]}`.
const READ_PAGE: &str = r#"(() => {
  const num = (r, k, a) => Number(r.querySelector(`[data-k="${k}"]`).dataset[a]);
  return {
    status: document.getElementById('status').dataset.state,
    mode: document.getElementById('mode').textContent,
    agent: document.getElementById('agent').textContent,
    banner: document.getElementById('banner').hidden ? '' : document.getElementById('banner').textContent,
    audit_hint: !document.getElementById('audit-hint').hidden,
    nodes: [...document.querySelectorAll('#graph g.node')].map((g) => ({ id: g.dataset.id, kind: g.dataset.kind })),
    svg_edges: [...document.querySelectorAll('#graph path.edge')].map((p) => ({ source: p.dataset.source, target: p.dataset.target, state: p.dataset.state })),
    edges: [...document.querySelectorAll('#edges tbody tr')].map((r) => ({
      source: r.dataset.source, target: r.dataset.target, state: r.dataset.state,
      opened: num(r, 'connections', 'opened'), closed: num(r, 'connections', 'closed'),
      denied: num(r, 'refused', 'denied'), audited: num(r, 'refused', 'audited'),
      request_bytes: num(r, 'request_bytes', 'value'), response_bytes: num(r, 'response_bytes', 'value'),
    })),
    refusals: [...document.querySelectorAll('#refusals tbody tr.refusal')].map((r) => ({
      verdict: r.dataset.verdict, destination: r.dataset.destination,
      workload: r.querySelector('.workload').textContent, process: r.querySelector('.process').textContent,
      host: r.querySelector('.host').textContent, reason: r.querySelector('.reason').textContent,
      allow: (r.querySelector('.fix code.allow') || {}).textContent || null,
      service_entry: (r.querySelector('.fix pre') || {}).textContent || null,
    })),
    registry: [...document.querySelectorAll('#registry tbody tr')].map((r) => r.dataset.service),
  };
})()"#;

/// JS: the page lists a refusal for `dest` (`ADDR:PORT`).
fn has_refusal(dest: &str) -> String {
    format!("[...document.querySelectorAll('#refusals tr.refusal')].some((r) => r.dataset.destination === '{dest}')")
}

/// JS: the edge table has a row `source -> target` with `denied` refusals.
fn edge_denied(source: &str, target: &str, denied: u64) -> String {
    format!(
        "[...document.querySelectorAll('#edges tbody tr')].some((r) => r.dataset.source === '{source}' && r.dataset.target === '{target}' \
         && Number(r.querySelector('[data-k=\"refused\"]').dataset.denied) === {denied})"
    )
}

/// JS: the edge table row `source -> target` has `opened` connections, all closed, and bytes.
fn edge_opened(source: &str, target: &str, opened: u64) -> String {
    format!(
        "[...document.querySelectorAll('#edges tbody tr')].some((r) => r.dataset.source === '{source}' && r.dataset.target === '{target}' \
         && Number(r.querySelector('[data-k=\"connections\"]').dataset.opened) === {opened} \
         && Number(r.querySelector('[data-k=\"connections\"]').dataset.closed) === {opened} \
         && Number(r.querySelector('[data-k=\"request_bytes\"]').dataset.value) > 0)"
    )
}

fn status_is(s: &str) -> String {
    format!("document.getElementById('status').dataset.state === '{s}'")
}

/// `count` TCP connections to ADDR:PORT from inside `cg`, each sending exactly `payload` bytes (an
/// HTTP/1.0 request padded with a header) and reading the reply to EOF. Returns the client's pid.
fn tcp_traffic(cg: &Cgroup, addr: &str, port: u16, count: u32, payload: u32) -> u32 {
    let script = format!(
        "import json, os, socket\nhead, tail = b'GET / HTTP/1.0\\r\\nX-Pad: ', b'\\r\\n\\r\\n'\n\
         p = head + b'a' * ({payload} - len(head) - len(tail)) + tail\nok = 0\n\
         for _ in range({count}):\n    s = socket.create_connection(('{addr}', {port}), timeout=5)\n    s.sendall(p)\n\
         \x20   while s.recv(65536):\n        pass\n    s.close()\n    ok += 1\n\
         print(json.dumps({{'pid': os.getpid(), 'ok': ok}}))\n"
    );
    let out = cg.run(&[python().display().to_string(), "-c".into(), script]);
    assert_eq!(out.status, 0, "{out}");
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["ok"], count, "{out}");
    v["pid"].as_u64().unwrap() as u32
}

/// The daemon's flags for these tests: its registry, its own admin address, TC on the netns' veth.
fn daemon_flags(registry: &std::path::Path, admin: SocketAddr, ns: &Netns, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--registry",
        registry.to_str().unwrap(),
        "--no-host-dns",
        "--dns-port",
        "0",
        "--interface",
        &ns.host_if,
        "--admin",
        &admin.to_string(),
    ]
    .map(String::from)
    .to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn graph_json(admin: SocketAddr) -> Value {
    let (st, body) = http_get(admin, "/debug/graph");
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn live_view_shows_traffic_refusals_and_survives_a_restart() {
    const N: u64 = 3;
    const PAYLOAD: u64 = 20_000;
    let Some(mut b) = Browser::launch() else { return };
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080", "tcp:9090"]);
    let dir = TempDir::new("ui");
    let (a, x) = (ns.v4(2), ns.v4(3));
    let reg = dir.write("reg/services.yaml", &service_entry("ui-a", &[], std::slice::from_ref(&a), &[(8080, "TCP")]));
    let cg = Cgroup::new("ui");
    let web = cg.child("web");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let flags = daemon_flags(&reg, admin, &ns, &[]);
    let d = Daemon::start(&cg, PinDir::new(), &flags);
    let wl = web.rel().trim_start_matches('/').to_string();
    let w_id = format!("workload:{wl}");
    let svc_id = "service:default/ui-a/ui-a.enforcer.test";

    b.open(&format!("http://{admin}/ui"));
    b.must("the page goes live", &status_is("live"), Duration::from_secs(10));

    // Known traffic: N allowed connections with PAYLOAD request bytes each, one refused connect.
    tcp_traffic(&web, &a, 8080, N as u32, PAYLOAD as u32);
    // The client exits right after its connect is refused: from then on the page has 2 s.
    let refused = web.client(&[op("tcp", &x, 8080)]);
    refused.res[0].assert_eperm();
    let (_, waited) = b
        .wait(&has_refusal(&format!("{x}:8080")), Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("the refusal did not appear within 2 s of the connect: {e}"));
    eprintln!("refusal listed {waited:?} after the refused client exited");

    let counted = format!("{} && {}", edge_opened(&w_id, svc_id, N), edge_denied(&w_id, "BlackHoleCluster", 1));
    if let Err(e) = b.wait(&counted, Duration::from_secs(10)) {
        panic!(
            "the graph did not count the closed connections: {e}\n--- /debug/graph\n{:#}\n--- /metrics\n{}",
            graph_json(admin),
            http_get(admin, "/metrics").1
        );
    }
    let p = b.eval(READ_PAGE);
    eprintln!("page: {p:#}");
    assert_eq!(p["status"], "live");
    assert_eq!(p["mode"], "REGISTRY_ONLY");
    let nodes: Vec<(String, String)> = p["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n["kind"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        nodes,
        vec![
            (w_id.clone(), "workload".to_string()),
            (svc_id.to_string(), "service".to_string()),
            ("BlackHoleCluster".to_string(), "blackhole".to_string()),
        ],
        "one workload, the registry service, BlackHoleCluster\n{p:#}"
    );
    let edge = |t: &str| p["edges"].as_array().unwrap().iter().find(|e| e["target"] == t).cloned().unwrap();
    let e = edge(svc_id);
    assert_eq!((e["source"].as_str(), e["state"].as_str()), (Some(w_id.as_str()), Some("allowed")), "{e}");
    assert_eq!((e["opened"].as_u64(), e["closed"].as_u64()), (Some(N), Some(N)), "{e}");
    // Istio's direction: request bytes are the big uploads (L3: + headers), response bytes the
    // short replies.
    let (req, resp) = (e["request_bytes"].as_u64().unwrap(), e["response_bytes"].as_u64().unwrap());
    assert!((N * PAYLOAD..=N * PAYLOAD + N * 4000).contains(&req), "request bytes {req}\n{e}");
    assert!(resp > N * 100 && resp < N * 4000, "response bytes {resp}\n{e}");
    let bh = edge("BlackHoleCluster");
    assert_eq!((bh["state"].as_str(), bh["denied"].as_u64()), (Some("denied"), Some(1)), "{bh}");
    // Drawn as such: a green (allowed) curve and a red (denied) one.
    let drawn: Vec<(String, String)> = p["svg_edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["target"].as_str().unwrap().to_string(), e["state"].as_str().unwrap().to_string()))
        .collect();
    assert!(drawn.contains(&(svc_id.to_string(), "allowed".to_string())), "{drawn:?}");
    assert!(drawn.contains(&("BlackHoleCluster".to_string(), "denied".to_string())), "{drawn:?}");
    // The same numbers as /debug/graph.
    let g = graph_json(admin);
    let ge = g["edges"].as_array().unwrap().iter().find(|e| e["target"] == svc_id).unwrap();
    assert_eq!(ge["connections_opened"].as_u64(), Some(N), "{g:#}");
    assert_eq!(ge["request_bytes"].as_u64(), Some(req), "{g:#}");

    let r = p["refusals"].as_array().unwrap().iter().find(|r| r["destination"] == format!("{x}:8080")).unwrap();
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(r["workload"], wl.as_str(), "{r}");
    assert_eq!(r["process"], format!("python3[{}]", refused.pid), "{r}");
    assert!(r["reason"].as_str().unwrap().starts_with("not in registry"), "{r}");
    assert_eq!(r["allow"], format!("--allow {x}:8080"), "{r}");
    let se = r["service_entry"].as_str().unwrap();
    assert!(se.contains("kind: ServiceEntry") && se.contains(&format!("- address: \"{x}\"")), "{se}");
    assert!(se.contains("number: 8080"), "{se}");
    assert_eq!(p["registry"], json!(["default/ui-a"]), "{p:#}");

    b.screenshot(&target_dir().join("ui-screenshot.png"));

    // Restart: the page says so, then reconnects to the new agent (same pins, same admin port).
    let old_pid = d.pid();
    let (st, log, pins) = d.stop();
    assert_eq!(st, 0, "{log}");
    b.must("the page notices the agent is gone", &status_is("reconnecting"), Duration::from_secs(5));
    let d = Daemon::start(&cg, pins, &flags);
    assert_ne!(d.pid(), old_pid);
    b.must("the page reconnects", &status_is("live"), Duration::from_secs(15));
    b.must(
        "the page shows the new agent",
        &format!("document.getElementById('agent').textContent.includes('pid {} ')", d.pid()),
        Duration::from_secs(5),
    );
    // The counters live in the pinned maps: they carry over (or start at 0 if they did not).
    let base = graph_json(admin)["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == svc_id)
        .map(|e| e["connections_opened"].as_u64().unwrap())
        .unwrap_or(0);
    tcp_traffic(&web, &a, 8080, 2, 1000);
    web.client(&[op("tcp", &x, 9090)]).res[0].assert_eperm();
    let (_, waited) = b
        .wait(&has_refusal(&format!("{x}:9090")), Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("after the restart, the refusal did not appear within 2 s: {e}"));
    eprintln!("after the restart: refusal listed {waited:?} after the refused client exited");
    b.must("new connections are counted", &edge_opened(&w_id, svc_id, base + 2), Duration::from_secs(10));
    let p = b.eval(READ_PAGE);
    assert!(p["banner"].as_str().unwrap().contains("restarted"), "{p:#}");
    let dests: Vec<&str> =
        p["refusals"].as_array().unwrap().iter().map(|r| r["destination"].as_str().unwrap()).collect();
    assert!(dests.contains(&format!("{x}:8080").as_str()), "the old agent's refusal stays listed: {dests:?}");
    assert_eq!(dests[0], format!("{x}:9090"), "newest first: {dests:?}");
}

#[test]
fn audit_mode_lists_would_be_refusals_with_their_fix() {
    let Some(mut b) = Browser::launch() else { return };
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("ui-audit");
    let (a, x) = (ns.v4(2), ns.v4(4));
    let reg = dir.write("reg/services.yaml", &service_entry("ui-b", &[], std::slice::from_ref(&a), &[(8080, "TCP")]));
    let cg = Cgroup::new("ui-audit");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let _d = Daemon::start(&cg, PinDir::new(), &daemon_flags(&reg, admin, &ns, &["--mode", "AUDIT"]));
    b.open(&format!("http://{admin}/ui"));
    b.must("the page goes live", &status_is("live"), Duration::from_secs(10));

    // Goes through (AUDIT), reported as a would-be refusal.
    let run = cg.client(&[op("tcp", &x, 8080)]);
    run.res[0].assert_ok("hello from");
    b.wait(&has_refusal(&format!("{x}:8080")), Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("the audited connection was not listed within 2 s: {e}"));
    let w_id = format!("workload:{}", cg.rel().trim_start_matches('/'));
    b.must(
        "the passthrough edge is drawn as audit",
        &format!(
            "[...document.querySelectorAll('#graph path.edge')].some((p) => p.dataset.source === '{w_id}' && p.dataset.target === 'PassthroughCluster' && p.dataset.state === 'audit')"
        ),
        Duration::from_secs(10),
    );
    let p = b.eval(READ_PAGE);
    assert_eq!(p["mode"], "AUDIT", "{p:#}");
    assert_eq!(p["audit_hint"], true, "{p:#}");
    let r = &p["refusals"][0];
    assert_eq!((r["verdict"].as_str(), r["destination"].as_str()), (Some("audit"), Some(format!("{x}:8080").as_str())));
    assert_eq!(r["allow"], format!("--allow {x}:8080"), "{r}");
    assert!(r["service_entry"].as_str().unwrap().contains("kind: ServiceEntry"), "{r}");
    let e = p["edges"].as_array().unwrap().iter().find(|e| e["target"] == "PassthroughCluster").unwrap();
    assert_eq!((e["audited"].as_u64(), e["opened"].as_u64()), (Some(1), Some(1)), "{e}");
    assert!(!p["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "BlackHoleCluster"), "nothing refused: {p:#}");

    // Memory stays bounded: 250 more would-be refusals (ports nothing listens on: RST at once);
    // the page keeps the newest 200.
    let script = format!(
        "import socket\nfor port in range(10000, 10250):\n    s = socket.socket()\n    s.settimeout(2)\n\
         \x20   try:\n        s.connect(('{x}', port))\n    except OSError:\n        pass\n    s.close()\n"
    );
    let out = cg.run(&[python().display().to_string(), "-c".into(), script]);
    assert_eq!(out.status, 0, "{out}");
    b.must("the newest refusal is listed", &has_refusal(&format!("{x}:10249")), Duration::from_secs(10));
    let kept = b.eval(
        "({ rows: document.querySelectorAll('#refusals tbody tr').length, kept: state.refusals.length, keys: state.seen.size, \
         first: document.querySelector('#refusals tbody tr').dataset.destination, \
         last: document.querySelector('#refusals tbody tr:last-child').dataset.destination })",
    );
    assert_eq!(
        kept,
        json!({"rows": 200, "kept": 200, "keys": 200, "first": format!("{x}:10249"), "last": format!("{x}:10050")}),
        "the last 200 of 251, newest first"
    );
}

#[test]
fn run_ui_prints_the_url_of_the_page_it_serves() {
    preflight();
    let mut child = Command::new(enforcer_bin())
        .args(["run", "--ui", "--no-host-dns", "--quiet", "--"])
        .arg(python())
        .args(["-c", "import time; time.sleep(30)"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning enforcer run --ui");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let line = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l.starts_with("enforcer: UI at ") => break l,
            Ok(l) => seen.push(l),
            Err(e) => panic!("no `enforcer: UI at` line within 20 s ({e}); stderr:\n{}", seen.join("\n")),
        }
    };
    let check = || {
        let url = line.trim_start_matches("enforcer: UI at ");
        let addr: SocketAddr = url
            .strip_prefix("http://")
            .and_then(|r| r.strip_suffix("/ui"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not http://ADDR/ui: {line}"));
        assert!(addr.ip().is_loopback(), "{addr}");
        let (st, page) = http_get(addr, "/ui");
        assert_eq!(st, 200);
        assert!(page.contains("<svg") && page.contains("/ui/app.js"), "{page}");
        for asset in ["/ui/app.js", "/ui/style.css", "/ui/favicon.svg"] {
            assert_eq!(http_get(addr, asset).0, 200, "{asset}");
        }
        let g: Value = serde_json::from_str(&http_get(addr, "/debug/graph").1).unwrap();
        assert_eq!(g["agent"]["mode"], "REGISTRY_ONLY", "{g}");
    };
    let result = std::panic::catch_unwind(check);
    // SIGTERM: enforcer forwards it to the command, then cleans up its cgroup and programs.
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert_ne!(status.code(), Some(125), "enforcer itself failed: {status:?}");
}

/// A service behind the L7 proxy (plain HTTP from the app, TLS originated by a DestinationRule):
/// its edge carries the proxy's request count and error share.
#[test]
fn proxied_http_service_shows_requests_and_errors() {
    let Some(mut b) = Browser::launch() else { return };
    let ns = Netns::new();
    let dir = TempDir::new("ui-http");
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 8443, &pki);
    let reg = dir.write(
        "reg/services.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: api, namespace: default}}\n\
             spec:\n  hosts: [api.test]\n  ports: [{{number: 80, name: http-80, protocol: HTTP, targetPort: 8443}}]\n\
             \x20 resolution: STATIC\n  endpoints: [{{address: \"{addr}\"}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: default}}\n\
             spec:\n  host: api.test\n  trafficPolicy:\n    portLevelSettings:\n    - port: {{number: 80}}\n\
             \x20     tls: {{mode: SIMPLE, caCertificates: \"{}\"}}\n",
            pki.ca.display()
        ),
    );
    let cg = Cgroup::new("ui-http");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let _d = Daemon::start(&cg, PinDir::new(), &daemon_flags(&reg, admin, &ns, &[]));
    b.open(&format!("http://{admin}/ui"));
    b.must("the page goes live", &status_is("live"), Duration::from_secs(10));

    // 3 answered 200, 1 answered 503, one request per connection.
    let script = format!(
        "import http.client\nfor path in ['/status/200'] * 3 + ['/status/503']:\n    c = http.client.HTTPConnection('{addr}', 80, timeout=10)\n\
         \x20   c.request('GET', path, headers={{'Host': 'api.test'}})\n    r = c.getresponse()\n    r.read()\n\
         \x20   print(r.status)\n    c.close()\n"
    );
    let out = cg.run(&[python().display().to_string(), "-c".into(), script]);
    assert_eq!(out.status, 0, "{out}");
    assert_eq!(out.stdout.split_whitespace().collect::<Vec<_>>(), ["200", "200", "200", "503"], "{out}");

    let w_id = format!("workload:{}", cg.rel().trim_start_matches('/'));
    let svc_id = "service:default/api/api.test";
    let js = format!(
        "[...document.querySelectorAll('#edges tbody tr')].some((r) => r.dataset.source === '{w_id}' && r.dataset.target === '{svc_id}' \
         && Number(r.querySelector('[data-k=\"http_rate\"]').dataset.requests) === 4 \
         && Number(r.querySelector('[data-k=\"http_errors\"]').dataset.errors) === 1)"
    );
    if let Err(e) = b.wait(&js, Duration::from_secs(10)) {
        panic!("the edge does not show 4 requests, 1 error: {e}\n--- /debug/graph\n{:#}", graph_json(admin));
    }
    let row = b.eval(&format!(
        "(() => {{ const r = [...document.querySelectorAll('#edges tbody tr')].find((r) => r.dataset.target === '{svc_id}'); \
         return {{ state: r.dataset.state, errors: r.querySelector('[data-k=\"http_errors\"]').textContent, \
         label: [...document.querySelectorAll('#graph g.edge-label')].find((g) => g.dataset.target === '{svc_id}').textContent }}; }})()"
    ));
    assert_eq!(row["state"], "allowed", "{row}");
    assert_eq!(row["errors"], "25.0%", "{row}");
    assert!(
        row["label"].as_str().unwrap().contains("4 req") && row["label"].as_str().unwrap().contains("25% err"),
        "{row}"
    );
}
