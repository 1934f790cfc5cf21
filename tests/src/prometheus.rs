//! A real Prometheus server (Debian's `prometheus` package) scraping the agent, and the known
//! traffic the metrics tests drive (tests/helpers/traffic.py).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Netns, Server, TempDir, free_tcp_port, http_get, python};

/// tests/helpers/traffic.py: `echo ADDR PORT` (UDP echo bound to ADDR) or `run SPEC` (TCP, UDP and
/// curl operations, one JSON result line).
pub const TRAFFIC_PY: &str = include_str!("../helpers/traffic.py");

/// A UDP echo bound to exactly `addr:port` in `ns` (its echoes leave from that address).
pub fn udp_echo_at(ns: &Netns, addr: &str, port: u16) -> Server {
    let mut c = ns.command(python());
    c.arg("-c").arg(TRAFFIC_PY).args(["echo", addr, &port.to_string()]);
    Server::start(c, &format!("udp echo {addr}:{port} in netns {}", ns.name))
}

/// One series of a PromQL answer: its labels and value.
pub type PromSeries = (BTreeMap<String, String>, f64);

/// `prometheus` on a free loopback port with a temporary config and data directory, scraping
/// `targets` every second. Killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
    log: std::path::PathBuf,
}

impl Prometheus {
    pub fn start(targets: &[SocketAddr]) -> Self {
        let dir = TempDir::new("prometheus");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let cfg = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: enforcer\n  static_configs:\n  - targets: [{}]\n",
                targets.join(", ")
            ),
        );
        let addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting prometheus (apt-get install prometheus; cargo xtask setup does): {e}")
            });
        let p = Prometheus { child, addr, _dir: dir, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(p.addr).is_ok() && http_get(p.addr, "/-/ready").0 == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "prometheus not ready within 30 s\n{}", p.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query (`/api/v1/query`): the series of a vector (or the one scalar) answer.
    /// Panics if Prometheus rejects the query.
    pub fn query(&self, promql: &str) -> Vec<PromSeries> {
        let q: String = form_urlencoded::Serializer::new(String::new()).append_pair("query", promql).finish();
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?{q}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{promql}: {e}: {body}"));
        assert!(status == 200 && v["status"] == "success", "{promql}: HTTP {status}: {body}");
        let num = |x: &Value| x.as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
        match v["data"]["resultType"].as_str() {
            Some("vector") => v["data"]["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect();
                    (labels, num(&s["value"][1]))
                })
                .collect(),
            Some("scalar") => vec![(BTreeMap::new(), num(&v["data"]["result"][1]))],
            other => panic!("{promql}: unexpected result type {other:?}: {body}"),
        }
    }

    /// The value of a query answering one series (panics otherwise).
    pub fn value(&self, promql: &str) -> f64 {
        let r = self.query(promql);
        assert_eq!(r.len(), 1, "{promql}: expected one series, got {r:?}");
        r[0].1
    }

    /// `label` -> value over the series of the answer (each label value once).
    pub fn by(&self, promql: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (l, v) in self.query(promql) {
            let k = l.get(label).cloned().unwrap_or_default();
            assert!(out.insert(k.clone(), v).is_none(), "{promql}: two series with {label}={k}");
        }
        out
    }

    /// Poll `promql` until `done` holds on its answer (≤ `within`).
    pub fn wait_for(&self, promql: &str, within: Duration, done: impl Fn(&[PromSeries]) -> bool) -> Vec<PromSeries> {
        let deadline = Instant::now() + within;
        loop {
            let r = self.query(promql);
            if done(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "{promql}: not reached within {within:?}: {r:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
