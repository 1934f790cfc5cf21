//! The L7 proxy under `enforcer run`: the confined client script ([`PROXY_CLIENT_PY`],
//! tests/helpers/proxy_client.py), what one run produced ([`ProxyRun`]), and registry YAML for
//! proxied services (ServiceEntries at a netns address, DestinationRules).

use std::{collections::BTreeMap, path::Path};

use serde_json::{Value, json};

use crate::{Outcome, TempDir, enforcer_run, free_tcp_port, metric_samples, python};

/// tests/helpers/proxy_client.py: runs the spec's ops (curl, python HTTP/raw TCP clients, any
/// command), then scrapes the agent's `/metrics` and `/debug/events` until they settle and
/// prints one JSON line `{ppid, results, metrics, events}` (see the file for the ops).
pub const PROXY_CLIENT_PY: &str = include_str!("../helpers/proxy_client.py");

/// The workload name `enforcer run` gives the client script: python's argv[0] basename.
pub fn py_name() -> String {
    python().file_name().unwrap().to_string_lossy().into_owned()
}

/// What one [`PROXY_CLIENT_PY`] run under `enforcer run` produced.
pub struct ProxyRun {
    pub out: Outcome,
    pub ppid: u32,
    pub results: Vec<Value>,
    pub metrics: String,
    pub events: Vec<Value>,
}

impl ProxyRun {
    /// `enforcer run --registry REG --no-host-dns --admin 127.0.0.1:PORT EXTRA... -- python3 -c
    /// PROXY_CLIENT_PY SPEC`; the command must exit 0.
    pub fn go(dir: &TempDir, docs: &[String], extra: &[&str], mut spec: Value) -> ProxyRun {
        let reg = dir.write(&format!("registry-{}.yaml", crate::unique()), &docs.join("---\n"));
        let admin = format!("127.0.0.1:{}", free_tcp_port());
        spec["admin"] = json!(admin);
        let mut policy =
            vec!["--registry".to_string(), reg.display().to_string(), "--no-host-dns".into(), "--admin".into(), admin];
        policy.extend(extra.iter().map(|s| s.to_string()));
        let cmd = vec![python().display().to_string(), "-c".into(), PROXY_CLIENT_PY.into(), spec.to_string()];
        let out = enforcer_run(&policy, &cmd);
        assert_eq!(out.status, 0, "enforcer run of the client script failed\n{out}");
        let line = out.stdout.lines().last().unwrap_or_else(|| panic!("the script printed nothing\n{out}"));
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("script output is not JSON ({e})\n{out}"));
        let events = v["events"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line is not JSON ({e}): {l}")))
            .collect();
        ProxyRun {
            ppid: v["ppid"].as_u64().unwrap() as u32,
            results: v["results"].as_array().unwrap().clone(),
            metrics: v["metrics"].as_str().unwrap().to_string(),
            events,
            out,
        }
    }

    /// Sum of the samples `name` whose labels include all of `want`.
    pub fn metric(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.series(name, want).iter().map(|(_, v)| v).sum()
    }

    pub fn series(&self, name: &str, want: &[(&str, &str)]) -> Vec<(BTreeMap<String, String>, f64)> {
        metric_samples(&self.metrics, name)
            .into_iter()
            .filter(|(l, _)| want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    pub fn events_with(&self, reason: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["reason"] == reason).collect()
    }

    /// Context for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "{}\n--- results\n{}\n--- metrics (istio_*/enforcer_sni_*/enforcer_proxy_*)\n{}\n--- events\n{}",
            self.out,
            serde_json::to_string_pretty(&self.results).unwrap(),
            self.metrics
                .lines()
                .filter(|l| l.starts_with("istio_requests")
                    || l.starts_with("enforcer_sni")
                    || l.starts_with("enforcer_proxy"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.events.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
        )
    }
}

/// `curl -sS --noproxy * --max-time 30 -w '\n%{http_code} %{size_download} %{time_total}' ARGS`.
pub fn curl_op(args: &[&str]) -> Value {
    let mut a: Vec<String> =
        ["-sS", "--noproxy", "*", "--max-time", "30", "-w", "\n%{http_code} %{size_download} %{time_total}"]
            .map(String::from)
            .to_vec();
    a.extend(args.iter().map(|s| s.to_string()));
    json!({"kind": "curl", "args": a})
}

/// A curl result split into (body, http_code, size_download, time_total) from the `-w` trailer.
pub fn curl_parts(r: &Value) -> (String, u16, u64, f64) {
    let out = r["stdout"].as_str().unwrap();
    let (body, trailer) = out.rsplit_once('\n').unwrap_or(("", out));
    let mut it = trailer.split_whitespace();
    let code = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let size = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let time = it.next().and_then(|s| s.parse().ok()).unwrap_or(-1.0);
    (body.to_string(), code, size, time)
}

/// `peer=ADDR:PORT` from a [`crate::HTTPS_SERVER_PY`] body.
pub fn body_peer(body: &str) -> String {
    body.split("peer=").nth(1).map(|s| s.split_whitespace().next().unwrap_or("").to_string()).unwrap_or_default()
}

/// curl's `--resolve HOST:PORT:ADDR`.
pub fn resolve(host: &str, port: u16, addr: &str) -> String {
    format!("{host}:{port}:{addr}")
}

/// A STATIC ServiceEntry `name` in `namespace` for `hosts` at `addr`; ports are (number,
/// protocol, targetPort), in the order given.
pub fn se_at(namespace: &str, name: &str, hosts: &[&str], addr: &str, ports: &[(u16, &str, Option<u16>)]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|(n, p, t)| {
            let t = t.map(|t| format!(", targetPort: {t}")).unwrap_or_default();
            format!("{{number: {n}, name: {}-{n}, protocol: {p}{t}}}", p.to_ascii_lowercase().replace('_', "-"))
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: [{}]\n  ports: [{}]\n  resolution: STATIC\n  endpoints: [{{address: \"{addr}\"}}]\n",
        hosts.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", "),
        ports.join(", ")
    )
}

/// A DestinationRule `namespace/name` for `host` with `trafficPolicy` given as YAML.
pub fn dr(namespace: &str, name: &str, host: &str, traffic_policy: &str) -> String {
    let tp: String = traffic_policy.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  host: {host}\n  trafficPolicy:\n{tp}"
    )
}

/// portLevelSettings: `port` originates TLS, verified against `ca` (SNI: the host, or `sni`).
pub fn simple_tls_on(port: u16, ca: &Path, sni: Option<&str>) -> String {
    let sni = sni.map(|s| format!(", sni: {s}")).unwrap_or_default();
    format!(
        "portLevelSettings:\n- port: {{number: {port}}}\n  tls: {{mode: SIMPLE, caCertificates: \"{}\"{sni}}}\n",
        ca.display()
    )
}

/// A `raw` op: connect to `addr:port` (from `bind` if given), send `send`, read to EOF.
pub fn raw_op(addr: &str, port: u16, send: &str, bind: Option<(&str, u16)>) -> Value {
    let mut v = json!({"kind": "raw", "addr": addr, "port": port, "send": send});
    if let Some((a, p)) = bind {
        v["bind"] = json!([a, p]);
    }
    v
}

/// tests/helpers/ws_server.py: a WebSocket echo server over TLS (`ADDR PORT CERT KEY`).
pub const WS_SERVER_PY: &str = include_str!("../helpers/ws_server.py");
/// tests/helpers/ws_client.py: a WebSocket client (`URI ADDR PORT`), prints its replies as JSON.
pub const WS_CLIENT_PY: &str = include_str!("../helpers/ws_client.py");

/// Debian's /usr/bin/python3 when it can import `module` (Debian's python3-websockets installs
/// there, not into another python3 on PATH); else a failure that says what to install.
pub fn system_python_with(module: &str, package: &str) -> std::path::PathBuf {
    let p = std::path::PathBuf::from("/usr/bin/python3");
    let ok = std::process::Command::new(&p)
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "/usr/bin/python3 cannot import {module}: apt-get install {package} (`cargo xtask setup` installs it)");
    p
}

/// [`WS_SERVER_PY`] on `addr:port` in `ns` with `pki`'s certificate.
pub fn ws_server(ns: &crate::Netns, addr: &str, port: u16, pki: &crate::Pki) -> crate::Server {
    let mut c = ns.command(system_python_with("websockets", "python3-websockets"));
    c.arg("-c").arg(WS_SERVER_PY).arg(addr).arg(port.to_string()).arg(&pki.cert).arg(&pki.key);
    crate::Server::start(c, &format!("websocket server {addr}:{port} in netns {}", ns.name))
}

/// nginx in a netns (`daemon off; master_process off;`: one process), killed on drop.
pub struct Nginx {
    child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Nginx {
    /// nginx with `http_block` (the body of `http { }`), ready once `addr:port` accepts.
    pub fn start(ns: &crate::Netns, dir: &TempDir, http_block: &str, addr: &str, port: u16) -> Self {
        let tag = crate::unique();
        let log = dir.join(&format!("nginx-{tag}-error.log"));
        let conf = dir.write(
            &format!("nginx-{tag}.conf"),
            &format!(
                "user root;\npid {d}/nginx-{tag}.pid;\nerror_log {log} info;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n{http_block}\n}}\n",
                d = dir.join("").display(),
                log = log.display()
            ),
        );
        let child = ns
            .command("nginx")
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off; master_process off;"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting nginx (apt-get install nginx-light)");
        let mut n = Nginx { child, log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let target: std::net::SocketAddr = format!("{addr}:{port}").parse().unwrap();
        while std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_millis(200)).is_err() {
            if let Ok(Some(st)) = n.child.try_wait() {
                panic!("nginx exited ({st}): {}", std::fs::read_to_string(&n.log).unwrap_or_default());
            }
            assert!(std::time::Instant::now() < deadline, "nginx did not listen on {target} within 15 s");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        n
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
