//! Visibility: TC packet/byte counters on a test veth, sock_ops TCP connection accounting, the
//! `/metrics` OpenMetrics exposition, `/debug/events`, `enforcer events`, `enforcer suggest` and
//! `--event-format json`, under `enforcer run` and `enforcer daemon`.
//!
//! Every count asserted is of traffic the test itself generates, in its own netns (see `Netns`);
//! TC is attached only to the host side of that netns' veth. Under `enforcer run` the agent lives
//! only as long as the command, so the command ([`VIS_PY`]) generates the traffic AND scrapes the
//! admin API itself, then prints everything as one JSON line.
//!
//! Tolerances: connection counts and UDP byte counts are exact. TCP byte counts are bounded (see
//! [`tcp_bounds`]): the payload is known exactly, the number of header-only segments is not.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use enforcer_tests::*;
use openmetrics_parser::{OpenMetricsType, OpenMetricsValue};
use serde_json::{Value, json};

/// Traffic generator + scraper, run as the confined command. One argument, a JSON spec:
/// `{"ops": [OP...], "admin": "127.0.0.1:PORT"?, "events": N?, "exec": [[ARGV...]...]?}`.
/// - `{"kind":"tcp","addr":A,"port":P,"count":N,"payload":M}`: N times: connect, send exactly M
///   bytes (an HTTP/1.0 request padded with a header), read the reply to EOF, close;
/// - `{"kind":"udp","addr":A,"port":P,"count":K,"size":L,"reply":true}`: K datagrams of L bytes
///   with sendto() on one unconnected socket, each followed by recvfrom() of the echo (unless
///   `reply` is false).
///
/// Each op yields `{ok, errors: {errno: count}, sent, received, replies: [len...]}`. Then, with
/// `admin`: polls `/metrics` and `/debug/events` until two scrapes 300 ms apart are identical and
/// at least `events` denied/audited events are listed (≤ 15 s), runs each `exec` argv (stdout,
/// stderr, status captured), and prints `{pid, results, metrics, metrics_content_type, events,
/// exec}`.
const VIS_PY: &str = r#"
import json, os, socket, subprocess, sys, time, urllib.request
spec = json.loads(sys.argv[1])
admin = spec.get('admin')
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(path, accept='application/openmetrics-text; version=1.0.0'):
    req = urllib.request.Request('http://%s%s' % (admin, path), headers={'Accept': accept})
    with opener.open(req, timeout=10) as r:
        return r.read().decode(), r.headers.get('Content-Type')
def fam(addr):
    return socket.AF_INET6 if ':' in addr else socket.AF_INET
def err(r, e):
    k = str(e.errno)
    r['errors'][k] = r['errors'].get(k, 0) + 1
def tcp(op):
    r = {'ok': 0, 'errors': {}, 'sent': 0, 'received': 0, 'replies': []}
    head, tail = b'GET / HTTP/1.0\r\nX-Pad: ', b'\r\n\r\n'
    payload = head + b'a' * max(0, op.get('payload', 0) - len(head) - len(tail)) + tail
    for _ in range(op['count']):
        s = socket.socket(fam(op['addr']), socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect((op['addr'], op['port']))
            s.sendall(payload)
            r['sent'] += len(payload)
            data = b''
            while True:
                c = s.recv(65536)
                if not c:
                    break
                data += c
            r['received'] += len(data)
            r['replies'].append(len(data))
            r['ok'] += 1
        except OSError as e:
            err(r, e)
        finally:
            s.close()
    return r
def udp(op):
    r = {'ok': 0, 'errors': {}, 'sent': 0, 'received': 0, 'replies': []}
    s = socket.socket(fam(op['addr']), socket.SOCK_DGRAM)
    s.settimeout(3)
    data = b'u' * op['size']
    for _ in range(op['count']):
        try:
            s.sendto(data, (op['addr'], op['port']))
            r['sent'] += len(data)
            if op.get('reply', True):
                d, _ = s.recvfrom(65536)
                r['received'] += len(d)
                r['replies'].append(len(d))
            r['ok'] += 1
        except OSError as e:
            err(r, e)
    s.close()
    return r
res = [tcp(op) if op['kind'] == 'tcp' else udp(op) for op in spec.get('ops', [])]
out = {'pid': os.getpid(), 'results': res}
if admin:
    def n_events(text):
        n = 0
        for l in text.splitlines():
            try:
                if json.loads(l).get('verdict') in ('denied', 'audit'):
                    n += 1
            except ValueError:
                pass
        return n
    deadline = time.monotonic() + 15
    prev = None
    time.sleep(0.2)
    while True:
        m, ctype = get('/metrics')
        ev, _ = get('/debug/events')
        if m == prev and n_events(ev) >= spec.get('events', 0):
            break
        if time.monotonic() > deadline:
            break
        prev = m
        time.sleep(0.3)
    text, text_ctype = get('/metrics', accept='*/*')
    out.update(metrics=m, metrics_content_type=ctype, metrics_text=text, metrics_text_content_type=text_ctype,
               events=ev, exec=[])
    for argv in spec.get('exec', []):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        out['exec'].append({'argv': argv, 'status': p.returncode, 'stdout': p.stdout, 'stderr': p.stderr})
print(json.dumps(out), flush=True)
"#;

/// UDP echo server: each argument is `ADDR|PORT`; one socket bound to exactly that address, so
/// every echo (`echo ADDR:PORT`) leaves from the address the client sent to. ([`SERVER_PY`]
/// binds `::`, so its UDP replies leave from the namespace's primary address, which TC would
/// attribute to that address's service.) Prints `ready`.
const UDP_ECHO_PY: &str = r#"
import socket, sys, threading
def serve(addr, port):
    s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    msg = ('echo %s:%d' % (addr, port)).encode()
    def loop():
        while True:
            _, peer = s.recvfrom(65536)
            s.sendto(msg, peer)
    return loop
loops = [serve(a, int(p)) for a, p in (x.split('|') for x in sys.argv[1:])]
for l in loops:
    threading.Thread(target=l, daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
"#;

fn udp_echo(ns: &Netns, addr: &str, port: u16) -> Server {
    let mut c = ns.command(python());
    c.arg("-c").arg(UDP_ECHO_PY).arg(format!("{addr}|{port}"));
    Server::start(c, &format!("udp echo {addr}:{port} in netns {}", ns.name))
}

fn tcp_op(addr: &str, port: u16, count: u32, payload: u32) -> Value {
    json!({"kind": "tcp", "addr": addr, "port": port, "count": count, "payload": payload})
}

fn udp_op(addr: &str, port: u16, count: u32, size: u32, reply: bool) -> Value {
    json!({"kind": "udp", "addr": addr, "port": port, "count": count, "size": size, "reply": reply})
}

/// The workload name `enforcer run` gives the command: its argv[0]'s basename (`python3`).
fn py_name() -> String {
    python().file_name().unwrap().to_string_lossy().into_owned()
}

/// Policy args: the registry documents (joined with `---`) written to a file, `--no-host-dns`,
/// then `extra`.
fn registry(dir: &TempDir, docs: &[String], extra: &[&str]) -> Vec<String> {
    let f = dir.write("registry.yaml", &docs.join("---\n"));
    let mut v = vec!["--registry".to_string(), f.display().to_string(), "--no-host-dns".into()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// What one [`VIS_PY`] run produced.
struct Vis {
    out: Outcome,
    pid: u32,
    results: Vec<Value>,
    metrics: Metrics,
    content_type: String,
    /// The same scrape in the default format (no Accept): Prometheus text 0.0.4.
    text: String,
    text_content_type: String,
    events: Vec<Value>,
    exec: Vec<Value>,
}

impl Vis {
    /// `enforcer run POLICY --admin 127.0.0.1:PORT -- python3 -c VIS_PY SPEC` (must exit 0).
    /// `spec["exec"]` argvs may use the placeholder `ADMIN` for the admin address.
    fn run(policy: &[String], mut spec: Value) -> Self {
        let admin = format!("127.0.0.1:{}", free_tcp_port());
        spec["admin"] = json!(admin);
        if let Some(ex) = spec.get_mut("exec").and_then(Value::as_array_mut) {
            for argv in ex {
                for a in argv.as_array_mut().unwrap() {
                    if a == "ADMIN" {
                        *a = json!(admin);
                    }
                }
            }
        }
        let mut p = policy.to_vec();
        p.extend(["--admin".to_string(), admin]);
        let cmd = vec![python().display().to_string(), "-c".into(), VIS_PY.into(), spec.to_string()];
        let out = enforcer_run(&p, &cmd);
        assert_eq!(out.status, 0, "enforcer run of the traffic script failed\n{out}");
        let line = out.stdout.lines().last().unwrap_or_else(|| panic!("the script printed nothing\n{out}"));
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("script output is not JSON ({e})\n{out}"));
        let text = v["metrics"].as_str().unwrap_or_else(|| panic!("no metrics scraped\n{out}")).to_string();
        let metrics = Metrics::parse(&text);
        let events = ndjson(v["events"].as_str().unwrap());
        Vis {
            pid: v["pid"].as_u64().unwrap() as u32,
            results: v["results"].as_array().unwrap().clone(),
            content_type: v["metrics_content_type"].as_str().unwrap_or("").to_string(),
            text: v["metrics_text"].as_str().unwrap_or("").to_string(),
            text_content_type: v["metrics_text_content_type"].as_str().unwrap_or("").to_string(),
            exec: v["exec"].as_array().cloned().unwrap_or_default(),
            metrics,
            events,
            out,
        }
    }

    /// Lines `enforcer: denied ...` / `enforcer: audit: ...` on enforcer's stderr.
    fn verdict_lines(&self) -> Vec<&str> {
        self.out
            .stderr
            .lines()
            .filter(|l| l.starts_with("enforcer: denied") || l.starts_with("enforcer: audit"))
            .collect()
    }
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line is not JSON ({e}): {l}")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// OpenMetrics: parsed by a real parser, then checked line by line

#[derive(Debug, Clone)]
struct Sample {
    /// The sample name as exposed (`…_total` for counters).
    name: String,
    family: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

struct Metrics {
    text: String,
    samples: Vec<Sample>,
    /// family -> type.
    types: BTreeMap<String, OpenMetricsType>,
}

impl Metrics {
    /// Parse and validate an exposition; panics (with the text) on any violation:
    /// - it parses with `openmetrics_parser::parse_openmetrics` (the OpenMetrics 1.0 grammar,
    ///   including the mandatory `# EOF` and `_total` on counter samples);
    /// - it ends with `# EOF` and nothing follows;
    /// - every family has one `# TYPE` and one non-empty `# HELP` line, every sample belongs to a
    ///   declared family, counter samples are named `<family>_total`;
    /// - no label value is (or contains) an IP address.
    fn parse(text: &str) -> Self {
        let exp = openmetrics_parser::openmetrics::parse_openmetrics(text)
            .unwrap_or_else(|e| panic!("/metrics is not valid OpenMetrics: {e:?}\n{text}"));
        assert!(text.ends_with("# EOF\n") || text.ends_with("# EOF"), "/metrics must end with `# EOF`\n{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "exactly one # EOF\n{text}");

        let mut types = BTreeMap::new();
        let mut helps = BTreeMap::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (f, t) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {l:?}"));
                assert!(types.insert(f.to_string(), t.to_string()).is_none(), "family {f} has two TYPE lines\n{text}");
            } else if let Some(rest) = l.strip_prefix("# HELP ") {
                let (f, h) = rest.split_once(' ').unwrap_or_else(|| panic!("bad HELP line {l:?}"));
                assert!(!h.trim().is_empty(), "family {f} has an empty HELP");
                assert!(helps.insert(f.to_string(), h.to_string()).is_none(), "family {f} has two HELP lines\n{text}");
            }
        }
        assert_eq!(
            types.keys().collect::<Vec<_>>(),
            helps.keys().collect::<Vec<_>>(),
            "every family needs both # TYPE and # HELP\n{text}"
        );
        for l in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = types
                .keys()
                .filter(|f| name == f.as_str() || name.strip_prefix(f.as_str()).is_some_and(|s| s.starts_with('_')))
                .max_by_key(|f| f.len())
                .unwrap_or_else(|| panic!("sample {name} belongs to no declared family\n{text}"));
            if types[family] == "counter" {
                assert_eq!(name, format!("{family}_total"), "counter samples must be named <family>_total: {l}");
            }
        }

        let mut samples = Vec::new();
        let mut ftypes = BTreeMap::new();
        for (fname, fam) in &exp.families {
            ftypes.insert(fname.clone(), fam.family_type);
            for s in fam.iter_samples() {
                let labels: BTreeMap<String, String> = s
                    .get_labelset()
                    .map(|ls| ls.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                for (k, v) in &labels {
                    assert!(!contains_ip(v), "label {k}={v:?} of {fname} carries an IP address\n{text}");
                }
                let (name, value) = match &s.value {
                    OpenMetricsValue::Counter(c) => (format!("{fname}_total"), c.value.as_f64()),
                    OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => (fname.clone(), n.as_f64()),
                    other => panic!("unexpected metric type in {fname}: {other:?}"),
                };
                samples.push(Sample { name, family: fname.clone(), labels, value });
            }
        }
        assert_eq!(
            samples.len(),
            text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count(),
            "the parser saw every sample line\n{text}"
        );
        Self { text: text.to_string(), samples, types: ftypes }
    }

    /// Samples named `name` whose labels include every `(k, v)` of `labels`.
    fn series(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    /// Sum of [`Metrics::series`] (0 when there is none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).iter().map(|s| s.value).sum()
    }
}

/// True if `v` is an IP address, a socket address, or contains one (a dotted quad or an IPv6
/// literal inside a longer string).
fn contains_ip(v: &str) -> bool {
    if v.parse::<IpAddr>().is_ok() || v.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let v4 = v
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|t| t.matches('.').count() == 3 && t.parse::<Ipv4Addr>().is_ok());
    let v6 = v
        .split(|c: char| !(c.is_ascii_hexdigit() || c == ':' || c == '.'))
        .any(|t| t.matches(':').count() >= 2 && t.trim_matches(':').len() > 1 && t.parse::<Ipv6Addr>().is_ok());
    v4 || v6
}

#[test]
fn ip_detector_sanity() {
    for ip in [
        "198.18.0.3",
        "fd00:198:18:5::2",
        "198.18.0.3:8080",
        "[::1]:53",
        "x-10.0.0.1-y",
        "to fd00::2 now",
        "::ffff:1.2.3.4",
    ] {
        assert!(contains_ip(ip), "{ip}");
    }
    for ok in [
        "python3",
        "PassthroughCluster",
        "vis-a.enforcer.test",
        "198-18-0-3.unknown.invalid",
        "-",
        "1.2",
        "a::b::c",
        "system.slice/x.scope",
    ] {
        assert!(!contains_ip(ok), "{ok}");
    }
}

/// Bounds on the L3 bytes TC counts for `conns` TCP connections that each carried exactly
/// `payload` bytes in the direction counted. Every connection has at least `min_pkts` packets in
/// that direction (each ≥ 40 bytes of IPv4 + TCP header); at most 12 packets, each with ≤ 60
/// bytes of headers (20 IP + 40 TCP with options) — the client's side of one short HTTP
/// exchange is SYN, ACK, data, ACK(s), FIN, ACK: about 6 (payloads here are below the MSS, so
/// there is one data segment, and a veth does not lose packets to retransmit).
fn tcp_bounds(conns: u64, payload: u64, min_pkts: u64) -> (f64, f64) {
    ((payload + conns * min_pkts * 40) as f64, (payload + conns * 12 * 60) as f64)
}

fn assert_between(what: &str, v: f64, (lo, hi): (f64, f64), m: &Metrics) {
    assert!(v >= lo && v <= hi, "{what} = {v}, expected within [{lo}, {hi}]\n{}", m.text);
}

// ---------------------------------------------------------------------------------------------
// 1. ALLOW_ANY: per-service split of connections and bytes

#[test]
fn allow_any_splits_connections_and_bytes_per_service() {
    const N_A: u32 = 5;
    const N_B: u32 = 3;
    const N_C: u32 = 4;
    const M: u32 = 1000; // TCP payload per connection (one segment, below the MSS)
    const K: u32 = 20; // UDP datagrams
    const L: u32 = 300; // UDP payload per datagram
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("vis-split");
    let (a, b, c, u) = (ns.v4(2), ns.v4(3), ns.v4(4), ns.v4(5));
    let _echo = udp_echo(&ns, &u, 5353);
    let policy = registry(
        &dir,
        &[
            service_entry("vis-a", &[], std::slice::from_ref(&a), &[(8080, "TCP")]),
            service_entry("vis-b", &[], std::slice::from_ref(&b), &[(8080, "TCP")]),
            service_entry("vis-u", &[], std::slice::from_ref(&u), &[(5353, "UDP")]),
        ],
        &["--mode", "ALLOW_ANY", "--interface", &ns.host_if],
    );
    let v = Vis::run(
        &policy,
        json!({"ops": [tcp_op(&a, 8080, N_A, M), tcp_op(&b, 8080, N_B, M), tcp_op(&c, 8080, N_C, M), udp_op(&u, 5353, K, L, true)]}),
    );
    for (r, n) in v.results.iter().zip([N_A, N_B, N_C, K]) {
        assert_eq!(r["ok"], n, "every operation succeeded: {r}\n{}", v.out);
        assert_eq!(r["errors"], json!({}), "{r}");
    }
    assert!(v.verdict_lines().is_empty(), "nothing denied in ALLOW_ANY\n{}", v.out);
    let m = &v.metrics;
    let wl = py_name();

    // Connections: exact, per destination service, with Istio's labels.
    for (svc, n) in [("vis-a.enforcer.test", N_A), ("vis-b.enforcer.test", N_B)] {
        let want = [
            ("reporter", "source"),
            ("source_workload", wl.as_str()),
            ("destination_service", svc),
            // Istio names a ServiceEntry's service after its host.
            ("destination_service_name", svc),
            ("destination_service_namespace", "default"),
            ("response_flags", "-"),
            ("request_protocol", "tcp"),
        ];
        assert_eq!(m.sum("istio_tcp_connections_opened_total", &want), f64::from(n), "opened to {svc}\n{}", m.text);
        assert_eq!(m.sum("istio_tcp_connections_closed_total", &want), f64::from(n), "closed to {svc}\n{}", m.text);
        // All of it from this one workload, in one series.
        assert_eq!(
            m.series("istio_tcp_connections_opened_total", &[("destination_service", svc), ("source_workload", &wl)])
                .len(),
            1,
            "{}",
            m.text
        );
    }
    let pt = [
        ("source_workload", wl.as_str()),
        ("destination_service", "PassthroughCluster"),
        ("destination_service_name", "PassthroughCluster"),
    ];
    assert_eq!(
        m.sum("istio_tcp_connections_opened_total", &pt),
        f64::from(N_C),
        "unregistered -> PassthroughCluster\n{}",
        m.text
    );
    assert_eq!(m.sum("istio_tcp_connections_closed_total", &pt), f64::from(N_C), "{}", m.text);
    let total_opened = m.sum("istio_tcp_connections_opened_total", &[("source_workload", &wl)]);
    assert_eq!(total_opened, f64::from(N_A + N_B + N_C), "no other connections counted\n{}", m.text);
    assert!(
        m.series("istio_tcp_connections_opened_total", &[("destination_service", "BlackHoleCluster")]).is_empty(),
        "{}",
        m.text
    );
    assert_eq!(m.sum("enforcer_denied_connections_total", &[]), 0.0, "{}", m.text);

    // UDP: never in istio_tcp_*; enforcer_udp_* exact at L3 (20 IPv4 + 8 UDP per datagram), with
    // Istio's direction (received = what the destination received: the workload's datagrams).
    let us = [
        ("source_workload", wl.as_str()),
        ("destination_service", "vis-u.enforcer.test"),
        ("destination_service_name", "vis-u.enforcer.test"),
        ("request_protocol", "udp"),
    ];
    assert_eq!(
        m.sum("enforcer_udp_received_bytes_total", &us),
        f64::from(K * (L + 28)),
        "UDP request bytes\n{}",
        m.text
    );
    assert_eq!(m.sum("enforcer_udp_received_datagrams_total", &us), f64::from(K), "{}", m.text);
    let replies: u64 = v.results[3]["replies"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap() + 28).sum();
    assert_eq!(m.sum("enforcer_udp_sent_bytes_total", &us), replies as f64, "UDP response bytes (echoes)\n{}", m.text);
    assert_eq!(m.sum("enforcer_udp_sent_datagrams_total", &us), f64::from(K), "{}", m.text);
    for f in ["istio_tcp_connections_opened_total", "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"] {
        let svc = [("destination_service", "vis-u.enforcer.test")];
        assert!(m.series(f, &svc).is_empty(), "UDP is not TCP: {f}\n{}", m.text);
    }

    // TCP bytes: bounded.
    for (svc, idx, n) in
        [("vis-a.enforcer.test", 0, N_A), ("vis-b.enforcer.test", 1, N_B), ("PassthroughCluster", 2, N_C)]
    {
        let labels = [("source_workload", wl.as_str()), ("destination_service", svc)];
        let sent = v.results[idx]["sent"].as_u64().unwrap();
        assert_eq!(sent, u64::from(n * M));
        // Client -> server (Istio: bytes the destination received during the request): SYN, ACK,
        // data, FIN at least.
        assert_between(
            &format!("request bytes to {svc}"),
            m.sum("istio_tcp_received_bytes_total", &labels),
            tcp_bounds(n.into(), sent, 4),
            m,
        );
        // Server -> client (sent during the response): SYN-ACK and the reply (FIN may ride on it).
        let recv = v.results[idx]["received"].as_u64().unwrap();
        assert_between(
            &format!("response bytes from {svc}"),
            m.sum("istio_tcp_sent_bytes_total", &labels),
            tcp_bounds(n.into(), recv, 2),
            m,
        );
        // The payload from sock_ops at close (the kernel's bytes_acked / bytes_received also count
        // the sequence numbers SYN and FIN take: up to 2 per connection).
        assert_between(
            &format!("payload to {svc}"),
            m.sum("enforcer_tcp_payload_request_bytes_total", &labels),
            (sent as f64, (sent + 2 * u64::from(n)) as f64),
            m,
        );
        assert_between(
            &format!("payload from {svc}"),
            m.sum("enforcer_tcp_payload_response_bytes_total", &labels),
            (recv as f64, (recv + 2 * u64::from(n)) as f64),
            m,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. REGISTRY_ONLY: refused connections are BlackHoleCluster / UH

#[test]
fn refused_connections_count_as_blackhole_uh() {
    const N: u32 = 7;
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("vis-bh");
    let a = ns.v4(2);
    let policy = registry(
        &dir,
        &[service_entry("vis-a", &[], std::slice::from_ref(&a), &[(8080, "TCP")])],
        &["--interface", &ns.host_if],
    );
    let v = Vis::run(&policy, json!({"ops": [tcp_op(&ns.v4(3), 8080, N, 100), tcp_op(&a, 8080, 2, 100)], "events": N}));
    assert_eq!(v.results[0]["ok"], 0, "{}", v.out);
    assert_eq!(v.results[0]["errors"], json!({"1": N}), "every refused connect fails with EPERM\n{}", v.out);
    assert_eq!(v.results[1]["ok"], 2, "{}", v.out);
    let m = &v.metrics;
    let wl = py_name();
    let bh = [
        ("source_workload", wl.as_str()),
        ("destination_service", "BlackHoleCluster"),
        ("destination_service_name", "BlackHoleCluster"),
        ("response_flags", "UH"),
    ];
    assert_eq!(m.sum("istio_tcp_connections_opened_total", &bh), f64::from(N), "{}", m.text);
    assert_eq!(m.sum("istio_tcp_connections_closed_total", &bh), f64::from(N), "{}", m.text);
    assert_eq!(m.sum("istio_tcp_sent_bytes_total", &bh), 0.0, "a refused connect sends nothing\n{}", m.text);
    assert_eq!(
        m.sum("enforcer_denied_connections_total", &[("source_workload", &wl), ("verdict", "denied")]),
        f64::from(N),
        "{}",
        m.text
    );
    assert_eq!(m.sum("enforcer_denied_connections_total", &[("verdict", "audit")]), 0.0, "{}", m.text);
    let ok = [("destination_service", "vis-a.enforcer.test"), ("response_flags", "-")];
    assert_eq!(m.sum("istio_tcp_connections_opened_total", &ok), 2.0, "{}", m.text);
    assert_eq!(
        m.sum(
            "istio_tcp_connections_opened_total",
            &[("response_flags", "UH"), ("destination_service", "vis-a.enforcer.test")]
        ),
        0.0
    );
    assert_eq!(v.events.iter().filter(|e| e["verdict"] == "denied").count(), N as usize, "{:?}", v.events);
}

// ---------------------------------------------------------------------------------------------
// 3. AUDIT: allowed, reported, and `enforcer suggest` drafts a registry that allows it

#[test]
fn audit_allows_reports_and_suggest_drafts_a_valid_registry() {
    const N1: u32 = 3; // to .3:8080
    const N2: u32 = 2; // to .4:8081
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080", "tcp:8081"]);
    let dir = TempDir::new("vis-audit");
    let (a, x, y) = (ns.v4(2), ns.v4(3), ns.v4(4));
    let policy = registry(
        &dir,
        &[service_entry("vis-a", &[], std::slice::from_ref(&a), &[(8080, "TCP")])],
        &["--mode", "AUDIT"],
    );
    let bin = enforcer_bin().display().to_string();
    let v = Vis::run(
        &policy,
        json!({
            "ops": [tcp_op(&x, 8080, N1, 100), tcp_op(&y, 8081, N2, 100), tcp_op(&a, 8080, 1, 100)],
            "events": N1 + N2,
            "exec": [[&bin, "suggest", "--admin", "ADMIN"], [&bin, "events", "--admin", "ADMIN", "--json"]],
        }),
    );
    for (r, n) in v.results.iter().zip([N1, N2, 1]) {
        assert_eq!(r["ok"], n, "AUDIT blocks nothing: {r}\n{}", v.out);
    }
    let wl = py_name();
    let line = |dst: &str| {
        format!(
            "enforcer: audit: would deny connect {wl}[{}] -> {dst}/tcp: not in registry; allow it with --allow {dst} or a ServiceEntry",
            v.pid
        )
    };
    assert_eq!(
        v.verdict_lines(),
        vec![line(&format!("{x}:8080")), line(&format!("{y}:8081"))],
        "one line per destination\n{}",
        v.out
    );

    let m = &v.metrics;
    assert_eq!(
        m.sum("enforcer_denied_connections_total", &[("source_workload", &wl), ("verdict", "audit")]),
        f64::from(N1 + N2),
        "{}",
        m.text
    );
    assert_eq!(m.sum("enforcer_denied_connections_total", &[("verdict", "denied")]), 0.0, "{}", m.text);
    // They went through, to no registry service.
    assert_eq!(
        m.sum(
            "istio_tcp_connections_opened_total",
            &[("source_workload", &wl), ("destination_service", "PassthroughCluster")]
        ),
        f64::from(N1 + N2),
        "{}",
        m.text
    );
    assert!(
        m.series("istio_tcp_connections_opened_total", &[("destination_service", "BlackHoleCluster")]).is_empty(),
        "nothing refused\n{}",
        m.text
    );

    let audits: Vec<&Value> = v.events.iter().filter(|e| e["verdict"] == "audit").collect();
    assert_eq!(audits.len(), (N1 + N2) as usize, "{:?}", v.events);
    // And one record of the mode the period started with.
    assert!(v.events.iter().all(|e| e["verdict"] == "audit" || e["verdict"] == "mode"), "{:?}", v.events);
    assert_eq!(v.events[0]["verdict"], "mode", "{:?}", v.events);
    assert_eq!(v.events[0]["mode"], "AUDIT", "{:?}", v.events);
    for e in &audits {
        assert_eq!(e["comm"], wl.as_str());
        assert_eq!(e["pid"], v.pid);
        assert_eq!(e["workload"], wl.as_str());
    }

    // `enforcer suggest --admin`: a registry `enforcer check` accepts, naming both ports.
    let sug = &v.exec[0];
    assert_eq!(sug["status"], 0, "enforcer suggest: {sug}");
    let yaml = sug["stdout"].as_str().unwrap();
    for needle in [
        "kind: ServiceEntry",
        "number: 8080",
        "number: 8081",
        &format!("address: \"{x}\""),
        &format!("address: \"{y}\""),
    ] {
        assert!(yaml.contains(needle), "suggest output lacks {needle:?}:\n{yaml}");
    }
    let doc_x = yaml.split("---").find(|d| d.contains(&format!("address: \"{x}\""))).unwrap();
    assert!(doc_x.contains("number: 8080") && !doc_x.contains("number: 8081"), "ports are per destination:\n{yaml}");
    let f = dir.write("suggested.yaml", yaml);
    let chk = enforcer(["check".as_ref(), f.as_os_str()]);
    assert_eq!(chk.status, 0, "`enforcer check` rejects the suggested registry\n{yaml}\n{chk}");
    let strict = enforcer(["check".as_ref(), "--strict".as_ref(), f.as_os_str()]);
    if strict.status != 0 {
        eprintln!("note: `enforcer check --strict` warns on the suggested registry:\n{strict}");
    }
    // And it really allows what was audited, under REGISTRY_ONLY.
    let mut pol = vec!["--registry".to_string(), f.display().to_string(), "--no-host-dns".into()];
    pol.extend(policy[..2].iter().cloned()); // the original registry too
    let run = run_client(&pol, &[op("tcp", &x, 8080), op("tcp", &y, 8081), op("tcp", &x, 8081)]);
    run.res[0].assert_ok(&format!("hello from {x}:8080"));
    run.res[1].assert_ok(&format!("hello from {y}:8081"));
    run.res[2].assert_eperm(); // only the port seen for that address

    // `enforcer events --json`: the same events.
    let evj = &v.exec[1];
    assert_eq!(evj["status"], 0, "{evj}");
    let lines = ndjson(evj["stdout"].as_str().unwrap());
    assert_eq!(
        lines.iter().filter(|e| e["verdict"] == "audit" && e["pid"] == v.pid).count(),
        (N1 + N2) as usize,
        "{evj}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. /metrics is valid OpenMetrics and carries no IP

#[test]
fn metrics_are_valid_openmetrics_without_ip_labels() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("vis-om");
    let (a, a6, u) = (ns.v4(2), ns.v6(2), ns.v4(5));
    let _echo = udp_echo(&ns, &u, 5353);
    let policy = registry(
        &dir,
        &[
            service_entry("vis-a", &[], &[a.clone(), a6.clone()], &[(8080, "TCP")]),
            service_entry("vis-u", &[], std::slice::from_ref(&u), &[(5353, "UDP")]),
        ],
        &["--interface", &ns.host_if],
    );
    // Everything that makes series: allowed v4/v6 TCP, allowed UDP, refused TCP v4/v6 and UDP,
    // a port not listed, a protocol not listed.
    let v = Vis::run(
        &policy,
        json!({"ops": [
            tcp_op(&a, 8080, 2, 200), tcp_op(&a6, 8080, 2, 200), udp_op(&u, 5353, 3, 50, true),
            tcp_op(&ns.v4(3), 8080, 1, 10), tcp_op(&ns.v6(3), 8080, 1, 10), udp_op(&ns.v4(4), 5353, 1, 10, false),
            tcp_op(&a, 9999, 1, 10), udp_op(&a, 8080, 1, 10, false),
        ], "events": 5}),
    );
    let want_ok = [2, 2, 3, 0, 0, 0, 0, 0];
    for (r, n) in v.results.iter().zip(want_ok) {
        assert_eq!(r["ok"], n, "{r}\n{}", v.out);
    }
    assert!(
        v.content_type.starts_with("application/openmetrics-text"),
        "/metrics Content-Type should be OpenMetrics when asked for, got {:?}",
        v.content_type
    );
    assert_eq!(v.text_content_type, "text/plain; version=0.0.4; charset=utf-8", "the default format");
    assert!(
        !v.text.contains("# EOF") && v.text.contains("# TYPE istio_tcp_connections_opened_total counter"),
        "{}",
        v.text
    );
    promtool_check_metrics(&v.text);
    let m = &v.metrics; // Metrics::parse already validated grammar, TYPE/HELP, _total, # EOF, IPs.
    for f in [
        "istio_tcp_connections_opened",
        "istio_tcp_connections_closed",
        "istio_tcp_sent_bytes",
        "istio_tcp_received_bytes",
        "enforcer_denied_connections",
        "enforcer_events_dropped",
        "enforcer_udp_received_bytes",
        "enforcer_flows",
    ] {
        assert_eq!(m.types.get(f), Some(&OpenMetricsType::Counter), "{f} is a counter family\n{}", m.text);
    }
    for f in ["enforcer_map_entries", "enforcer_map_capacity", "enforcer_registry_services"] {
        assert_eq!(m.types.get(f), Some(&OpenMetricsType::Gauge), "{f} is a gauge family\n{}", m.text);
    }
    // Every map of the one table (enforcer_common::MAPS) has its capacity, and every map with a
    // count (all but the ring buffer and socket storage) its entries.
    for spec in enforcer_common::MAPS {
        let map = [("map", spec.name)];
        let capacity = m.series("enforcer_map_capacity", &map);
        assert_eq!(capacity.len(), 1, "{}: no enforcer_map_capacity\n{}", spec.name, m.text);
        assert_eq!(capacity[0].value, f64::from(spec.max_entries), "{}", spec.name);
        let counted = !matches!(spec.kind, enforcer_common::MapKind::RingBuf | enforcer_common::MapKind::SkStorage);
        let entries = m.series("enforcer_map_entries", &map);
        assert_eq!(entries.len(), usize::from(counted), "{}: enforcer_map_entries\n{}", spec.name, m.text);
        assert!(entries.iter().all(|e| e.value <= f64::from(spec.max_entries)), "{}: {entries:?}", spec.name);
    }
    let allow =
        m.sum("enforcer_map_entries", &[("map", "ALLOW")]) + m.sum("enforcer_map_entries", &[("map", "ALLOW_EXACT")]);
    assert!(allow >= 3.0, "vis-a's two addresses and vis-u's: {allow}\n{}", m.text);
    let istio_labels: BTreeSet<&str> = ISTIO_LABELS.into();
    let istio: Vec<&Sample> = m
        .samples
        .iter()
        .filter(|s| s.family.starts_with("istio_tcp_") || s.family.starts_with("enforcer_udp_"))
        .collect();
    assert!(istio.len() >= 4 * 3, "series for vis-a, BlackHoleCluster (TCP) and vis-u (UDP) at least\n{}", m.text);
    for s in &istio {
        assert_eq!(s.labels.keys().map(String::as_str).collect::<BTreeSet<_>>(), istio_labels, "{s:?}");
        assert_eq!(s.labels["reporter"], "source");
        assert!(s.value >= 0.0 && s.value.fract() == 0.0, "{s:?}");
    }
    // v4 and v6 traffic to one service is one series (per workload: ICMPv6 neighbour discovery
    // with vis-a's v6 address is kernel traffic, counted under source_workload="unknown").
    let va = [("destination_service", "vis-a.enforcer.test"), ("source_workload", "python3")];
    assert_eq!(m.sum("istio_tcp_connections_opened_total", &va), 4.0, "{}", m.text);
    assert_eq!(m.series("istio_tcp_connections_opened_total", &va).len(), 1, "{}", m.text);
    // Refused: 2 TCP connects (v4 + v6) + the TCP port not listed = 3 BlackHole/UH; 5 denied calls.
    assert_eq!(m.sum("istio_tcp_connections_opened_total", &[("response_flags", "UH")]), 3.0, "{}", m.text);
    assert_eq!(m.sum("enforcer_denied_connections_total", &[("verdict", "denied")]), 5.0, "{}", m.text);
    // And the admin API's own text has no address anywhere in a label.
    for l in m.text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, labels)) = l.split_once('{') {
            assert!(!contains_ip(labels.rsplit_once('}').unwrap().0), "{l}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Events carry the right pid and comm everywhere

#[test]
fn events_carry_the_callers_pid_and_comm() {
    let ns = Netns::new();
    let dir = TempDir::new("vis-pid");
    let policy = registry(&dir, &[service_entry("vis-a", &[], &[ns.v4(2)], &[(8080, "TCP")])], &[]);
    let (x, y) = (ns.v4(3), ns.v4(4));
    let bin = enforcer_bin().display().to_string();
    let v = Vis::run(
        &policy,
        json!({
            "ops": [tcp_op(&x, 8080, 1, 10), udp_op(&y, 5353, 1, 10, false)],
            "events": 2,
            "exec": [[&bin, "events", "--admin", "ADMIN", "--json"], [&bin, "events", "--admin", "ADMIN"]],
        }),
    );
    assert_eq!(v.results[0]["errors"], json!({"1": 1}), "{}", v.out);
    assert_eq!(v.results[1]["errors"], json!({"1": 1}), "{}", v.out);
    let wl = py_name();
    let pid = v.pid;
    let tcp_line = format!(
        "denied connect {wl}[{pid}] -> {x}:8080/tcp: not in registry; allow it with --allow {x}:8080 or a ServiceEntry"
    );
    let udp_line = format!(
        "denied sendmsg {wl}[{pid}] -> {y}:5353/udp: not in registry; allow it with --allow {y}:5353 or a ServiceEntry"
    );
    assert_eq!(
        v.verdict_lines(),
        vec![format!("enforcer: {tcp_line}"), format!("enforcer: {udp_line}")],
        "\n{}",
        v.out
    );

    let check = |evs: &[Value], src: &str| {
        let denied: Vec<&Value> = evs.iter().filter(|e| e["verdict"] == "denied").collect();
        assert_eq!(denied.len(), 2, "{src}: {evs:?}");
        for (e, (hook, dst, proto, line)) in denied.iter().zip([
            ("connect", format!("{x}:8080"), "tcp", &tcp_line),
            ("sendmsg", format!("{y}:5353"), "udp", &udp_line),
        ]) {
            assert_eq!(e["pid"], pid, "{src}: {e}");
            assert_eq!(e["tid"], pid, "{src}: single-threaded client: {e}");
            assert_eq!(e["comm"], wl.as_str(), "{src}: {e}");
            assert_eq!(e["workload"], wl.as_str(), "{src}: {e}");
            assert_eq!(e["hook"], hook, "{src}: {e}");
            assert_eq!(e["destination"], dst.as_str(), "{src}: {e}");
            assert_eq!(e["protocol"], proto, "{src}: {e}");
            assert_eq!(e["reason"], "not_in_registry", "{src}: {e}");
            assert_eq!(e["line"], line.as_str(), "{src}: {e}");
            assert!(e["cgroup_id"].as_u64().unwrap() > 1, "{src}: {e}");
        }
    };
    check(&v.events, "/debug/events");
    assert_eq!(v.exec[0]["status"], 0, "{}", v.exec[0]);
    check(&ndjson(v.exec[0]["stdout"].as_str().unwrap()), "enforcer events --json");
    let human = v.exec[1]["stdout"].as_str().unwrap();
    assert_eq!(v.exec[1]["status"], 0, "{}", v.exec[1]);
    assert!(human.lines().any(|l| l == format!("{tcp_line} ({wl})")), "enforcer events:\n{human}");
    assert!(human.lines().any(|l| l == format!("{udp_line} ({wl})")), "enforcer events:\n{human}");

    // `--event-format json`: the same objects on enforcer's stderr, as they happen.
    let mut pol = policy.clone();
    pol.extend(["--event-format".into(), "json".into()]);
    let run = run_client(&pol, &[op("tcp", &x, 8080)]);
    run.res[0].assert_eperm();
    let objs: Vec<Value> = run
        .out
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(objs.len(), 1, "one JSON event on stderr\n{}", run.out);
    let e = &objs[0];
    assert_eq!(e["verdict"], "denied");
    assert_eq!(e["pid"], run.pid);
    assert_eq!(e["comm"], wl.as_str());
    assert_eq!(e["workload"], wl.as_str());
    assert_eq!(e["destination"], format!("{x}:8080"));
    assert!(e["line"].as_str().unwrap().starts_with(&format!("denied connect {wl}[{}] -> ", run.pid)), "{e}");
    assert!(
        !run.out.stderr.lines().any(|l| l.starts_with("enforcer: denied")),
        "JSON instead of human lines\n{}",
        run.out
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Daemon: workloads named by cgroup path, unknown traffic, `enforcer events --follow`

fn daemon_admin(d: &Daemon) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = admin_addr_from_log(&d.log()) {
            return a;
        }
        assert!(Instant::now() < deadline, "no `admin listener serving addr=` line\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Scrape until `done` holds (≤ 10 s), returning the last scrape.
fn scrape_until(admin: SocketAddr, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = http_get_openmetrics(admin, "/metrics");
        assert_eq!(st, 200, "{body}");
        let m = Metrics::parse(&body);
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: not reached within 10 s\n{}", m.text);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn daemon_names_workloads_by_cgroup_and_streams_events() {
    const N_A: u32 = 4;
    const K: u32 = 10;
    const L: u32 = 200;
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("vis-daemon");
    let (a, u, x) = (ns.v4(2), ns.v4(5), ns.v4(3));
    let _echo = udp_echo(&ns, &u, 5353);
    let f = dir.write(
        "reg/services.yaml",
        &[
            service_entry("vis-a", &[], std::slice::from_ref(&a), &[(8080, "TCP")]),
            service_entry("vis-u", &[], std::slice::from_ref(&u), &[(5353, "UDP")]),
        ]
        .join("---\n"),
    );
    let cg = Cgroup::new("vis");
    let web = cg.child("web");
    let extra: Vec<String> =
        ["--registry", f.to_str().unwrap(), "--no-host-dns", "--dns-port", "0", "--interface", &ns.host_if]
            .map(String::from)
            .to_vec();
    let d = Daemon::start(&cg, PinDir::new(), &extra);
    let admin = daemon_admin(&d);

    let mut follow = LineFollower::spawn(std::process::Command::new(enforcer_bin()).args([
        "events",
        "--follow",
        "--admin",
        &admin.to_string(),
    ]));
    std::thread::sleep(Duration::from_millis(300)); // let it subscribe before the denial
    assert!(follow.is_running(), "enforcer events --follow exited: {:?}", follow.lines());

    let script = json!({"ops": [tcp_op(&a, 8080, N_A, 500), tcp_op(&x, 8080, 1, 10)]}).to_string();
    let out = web.run(&[python().display().to_string(), "-c".into(), VIS_PY.into(), script]);
    assert_eq!(out.status, 0, "{out}");
    let res: Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    let pid = res["pid"].as_u64().unwrap();
    assert_eq!(res["results"][0]["ok"], N_A, "{res}");
    assert_eq!(res["results"][1]["errors"], json!({"1": 1}), "{res}");

    let wl = web.rel().trim_start_matches('/').to_string();
    let want = format!(
        "denied connect python3[{pid}] -> {x}:8080/tcp: not in registry; allow it with --allow {x}:8080 or a ServiceEntry ({wl})"
    );
    let got = follow.wait_for(Duration::from_secs(10), |l| l.contains(&format!("python3[{pid}]")));
    assert_eq!(got, want, "enforcer events --follow");
    drop(follow);
    d.wait_log(&format!("python3[{pid}]"));

    // The test process itself (outside the enforced tree) sends K datagrams to vis-u: counted as
    // source_workload="unknown", exactly.
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut replies = 0u64;
    for _ in 0..K {
        sock.send_to(&vec![b'k'; L as usize], (u.as_str(), 5353)).unwrap();
        let mut buf = [0u8; 2048];
        replies += sock.recv(&mut buf).expect("echo from the netns") as u64 + 28;
    }

    let labels =
        [("source_workload", wl.as_str()), ("destination_service", "vis-a.enforcer.test"), ("response_flags", "-")];
    let unk = [("source_workload", "unknown"), ("destination_service", "vis-u.enforcer.test")];
    let m = scrape_until(admin, "closed connections and unknown bytes", |m| {
        m.sum("istio_tcp_connections_closed_total", &labels) >= f64::from(N_A)
            && m.sum("enforcer_udp_sent_bytes_total", &unk) >= replies as f64
    });
    assert_eq!(m.sum("istio_tcp_connections_opened_total", &labels), f64::from(N_A), "{}", m.text);
    assert_eq!(m.sum("istio_tcp_connections_closed_total", &labels), f64::from(N_A), "{}", m.text);
    assert_between(
        "daemon: request bytes to vis-a",
        m.sum("istio_tcp_received_bytes_total", &labels),
        tcp_bounds(N_A.into(), u64::from(N_A * 500), 4),
        &m,
    );
    let bh = [("source_workload", wl.as_str()), ("destination_service", "BlackHoleCluster"), ("response_flags", "UH")];
    assert_eq!(m.sum("istio_tcp_connections_opened_total", &bh), 1.0, "{}", m.text);
    assert_eq!(
        m.sum("enforcer_denied_connections_total", &[("source_workload", &wl), ("verdict", "denied")]),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("enforcer_udp_received_bytes_total", &unk),
        f64::from(K * (L + 28)),
        "unenforced sender = unknown\n{}",
        m.text
    );
    assert_eq!(m.sum("enforcer_udp_sent_bytes_total", &unk), replies as f64, "{}", m.text);
    assert!(m.series("istio_tcp_sent_bytes_total", &[("destination_service", "vis-u.enforcer.test")]).is_empty());
    // Only the enforced tree's cgroup paths and "unknown" appear as workloads.
    for s in m.samples.iter().filter(|s| s.family.starts_with("istio_tcp_") || s.family.starts_with("enforcer_udp_")) {
        let w = &s.labels["source_workload"];
        assert!(
            w == "unknown" || w == &wl || w == cg.rel().trim_start_matches('/'),
            "unexpected workload {w:?}: {s:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Ring buffer overflow: counted, never blocking

#[test]
fn ring_buffer_overflow_is_counted_and_reported() {
    const N: usize = 5000;
    let ns = Netns::new();
    let dir = TempDir::new("vis-drops");
    let f = dir.write("reg/services.yaml", &service_entry("vis-a", &[], &[ns.v4(2)], &[(8080, "TCP")]));
    let cg = Cgroup::new("vis-drops");
    let extra: Vec<String> =
        ["--registry", f.to_str().unwrap(), "--no-host-dns", "--dns-port", "0"].map(String::from).to_vec();
    let d = Daemon::start(&cg, PinDir::new(), &extra);
    let admin = daemon_admin(&d);
    let target = ns.v4(3);
    let script = format!(
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nn = 0\nt = time.monotonic()\nfor i in range({N}):\n    try:\n        s.sendto(b'x', ('{target}', 10000 + i % 1000))\n    except PermissionError:\n        n += 1\nprint(n, time.monotonic() - t, flush=True)\n"
    );
    let out = {
        // The agent is frozen: nobody drains the ring buffer while the burst runs.
        let _frozen = Frozen::new(d.pid());
        cg.run(&[python().display().to_string(), "-c".into(), script])
    };
    assert_eq!(out.status, 0, "{out}");
    let (n, secs) = out.stdout.trim().split_once(' ').unwrap();
    assert_eq!(n, N.to_string(), "every sendto was refused with EPERM\n{out}");
    eprintln!("{N} denied sendto()s with the agent frozen took {secs} s");

    let m = scrape_until(admin, "denied count", |m| {
        m.sum("enforcer_denied_connections_total", &[("verdict", "denied")]) >= N as f64
    });
    assert_eq!(m.sum("enforcer_denied_connections_total", &[("verdict", "denied")]), N as f64, "{}", m.text);
    let m = scrape_until(admin, "drops reported", |m| {
        m.sum("enforcer_events_dropped_total", &[("reason", "ring_buffer")]) > 0.0
    });
    let dropped = m.sum("enforcer_events_dropped_total", &[("reason", "ring_buffer")]);
    assert_eq!(m.sum("enforcer_events_dropped_total", &[("reason", "follower_lag")]), 0.0, "{}", m.text);
    assert!(dropped > 0.0, "5000 events cannot fit a 256 KiB ring buffer\n{}", m.text);
    assert!(dropped < N as f64, "the ring buffer kept some: {dropped}");

    // /debug/events says so too, with the same count.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = http_get(admin, "/debug/events");
        assert_eq!(st, 200);
        let evs = ndjson(&body);
        let drops: Vec<&Value> = evs.iter().filter(|e| e["verdict"] == "dropped").collect();
        if !drops.is_empty() {
            let total: f64 = drops.iter().map(|e| e["count"].as_f64().unwrap()).sum();
            assert_eq!(total, dropped, "dropped records in /debug/events: {drops:?}");
            assert!(drops[0]["message"].as_str().unwrap().contains("ring buffer"), "{drops:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no \"dropped\" record in /debug/events ({} events)", evs.len());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.log().contains("events dropped: the ring buffer was full"), "{}", d.log());
}
