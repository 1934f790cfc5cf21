//! The gate of issue 14: a real Prometheus (Debian's `prometheus`) scrapes a daemon every second
//! while known traffic runs, and the kinds of PromQL Istio's own Grafana dashboards make (workload,
//! service and mesh dashboards in istio/istio manifests/addons/dashboards: `reporter="source"`,
//! grouping and filtering by the standard labels) give the right numbers.
//!
//! The queries are written here the way Grafana sends them once the dashboards' variables are
//! filled: `$namespace` / `$workload` (workload dashboard) for the source workload, `$service`
//! (service dashboard), "All" (`.*`) for the multi-value ones, `$qrep` = `source` (we report as
//! the client side; the saved default `destination` shows server-side proxies, which egress
//! traffic has none of). Rates are checked for shape (a series per expected label set); the
//! numbers are checked on the counters themselves (`sum by (...)` of the same selectors), which
//! is exact where an `irate` over a short test is not.
//!
//! Traffic (one daemon, two workload policies from a `--workloads` file):
//! - `shop/web` (REGISTRY_ONLY): N_A TCP connections to `vis-a.enforcer.test` (registered), N_D
//!   refused ones (BlackHoleCluster, UH), K UDP datagrams to `vis-u.enforcer.test`, and HTTP
//!   through the L7 proxy to `api.test` (DestinationRule SIMPLE: HTTP in, TLS out): 3 x 200, 1 x 404;
//! - `shop/batch` (ALLOW_ANY): N_P TCP connections to an unregistered address (PassthroughCluster).

use std::{collections::BTreeSet, time::Duration};

use enforcer_tests::*;
use serde_json::{Value, json};

const N_A: u64 = 5;
const M: u64 = 1000; // TCP request bytes per connection
const N_D: u64 = 3;
const N_P: u64 = 4;
const K: u64 = 10;
const L: u64 = 200; // UDP payload per datagram

fn se(name: &str, host: &str, addr: &str, ports: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [\"{host}\"]\n  location: MESH_EXTERNAL\n  ports: [{ports}]\n  resolution: STATIC\n  endpoints: [{{address: \"{addr}\"}}]\n"
    )
}

/// Run traffic.py with `ops` in `cg`; the results, each checked by the caller.
fn traffic(cg: &Cgroup, ops: Value) -> Vec<Value> {
    let out = cg.run(&[python().display().to_string(), "-c".into(), TRAFFIC_PY.into(), "run".into(), ops.to_string()]);
    assert_eq!(out.status, 0, "{out}");
    let v: Value =
        serde_json::from_str(out.stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}\n{out}"));
    v["results"].as_array().unwrap().clone()
}

/// (low, high) L3 bytes of `conns` short TCP connections carrying `payload` bytes in one direction
/// with at least `min_pkts` packets each (≥ 40 header bytes) and at most 12 (≤ 60).
fn tcp_bounds(conns: u64, payload: u64, min_pkts: u64) -> (f64, f64) {
    ((payload + conns * min_pkts * 40) as f64, (payload + conns * 12 * 60) as f64)
}

fn assert_within(what: &str, v: f64, (lo, hi): (f64, f64)) {
    assert!(v >= lo && v <= hi, "{what} = {v}, expected within [{lo}, {hi}]");
}

fn keys(m: &std::collections::BTreeMap<String, f64>) -> BTreeSet<&str> {
    m.keys().map(String::as_str).collect()
}

#[test]
fn istio_dashboard_queries_read_the_right_numbers() {
    let ns = Netns::new();
    let dir = TempDir::new("dash");
    let (a, u, x, y, api) = (ns.v4(2), ns.v4(5), ns.v4(3), ns.v4(4), ns.v4(6));
    let _tcp = ns.serve(&["tcp:8080"]);
    let _udp = udp_echo_at(&ns, &u, 5353);
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let _https = https_server(&ns, &api, 8443, &pki);
    let registry = [
        se("vis-a", "vis-a.enforcer.test", &a, "{number: 8080, name: tcp, protocol: TCP}"),
        se("vis-u", "vis-u.enforcer.test", &u, "{number: 5353, name: udp, protocol: UDP}"),
        se("api", "api.test", &api, "{number: 80, name: http, protocol: HTTP, targetPort: 8443}"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: default}}\nspec:\n  host: api.test\n  trafficPolicy:\n    portLevelSettings:\n    - port: {{number: 80}}\n      tls: {{mode: SIMPLE, caCertificates: \"{}\"}}\n",
            pki.ca.display()
        ),
    ];
    dir.write("reg/services.yaml", &registry.join("---\n"));
    let cg = Cgroup::new("dash");
    let (web, batch) = (cg.child("web"), cg.child("batch"));
    let workloads = dir.write(
        "workloads.yaml",
        &format!(
            "workloads:\n- name: shop/web\n  cgroups: [\"{}\"]\n  registry: [reg/]\n  mode: REGISTRY_ONLY\n- name: shop/batch\n  cgroups: [\"{}\"]\n  registry: [reg/]\n  mode: ALLOW_ANY\n",
            web.rel().trim_start_matches('/'),
            batch.rel().trim_start_matches('/')
        ),
    );
    let extra: Vec<String> = [
        "--registry",
        dir.join("reg").to_str().unwrap(),
        "--workloads",
        workloads.to_str().unwrap(),
        "--no-host-dns",
        "--dns-port",
        "0",
        "--interface",
        &ns.host_if,
    ]
    .map(String::from)
    .to_vec();
    let d = Daemon::start(&cg, PinDir::new(), &extra);
    let admin = {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = admin_addr_from_log(&d.log()) {
                break a;
            }
            assert!(std::time::Instant::now() < deadline, "no admin address\n{}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let prom = Prometheus::start(&[admin]);

    // The traffic.
    let resolve = format!("api.test:80:{api}");
    let mut curl = vec!["-sS", "--noproxy", "*", "--max-time", "20", "--resolve", &resolve];
    let urls = ["200", "200", "200", "404"].map(|c| format!("http://api.test/status/{c}"));
    curl.extend(urls.iter().map(String::as_str));
    let r = traffic(
        &web,
        json!({"ops": [
            {"kind": "tcp", "addr": a, "port": 8080, "count": N_A, "payload": M},
            {"kind": "tcp", "addr": x, "port": 8080, "count": N_D, "payload": 10},
            {"kind": "udp", "addr": u, "port": 5353, "count": K, "size": L},
            {"kind": "curl", "args": curl},
        ]}),
    );
    assert_eq!(r[0]["ok"], N_A, "{r:?}");
    assert_eq!(r[1]["errors"], json!({"1": N_D}), "refused with EPERM: {r:?}");
    assert_eq!(r[2]["ok"], K, "{r:?}");
    assert_eq!(r[3]["status"], 0, "curl through the proxy: {r:?}\n{}", d.log());
    let body = r[3]["stdout"].as_str().unwrap();
    assert_eq!((body.matches("status 200").count(), body.matches("status 404").count()), (3, 1), "{body}");
    let (req_a, resp_a) = (r[0]["sent"].as_u64().unwrap(), r[0]["received"].as_u64().unwrap());
    let udp_resp = r[2]["received"].as_u64().unwrap();
    let p = traffic(&batch, json!({"ops": [{"kind": "tcp", "addr": y, "port": 8080, "count": N_P, "payload": 100}]}));
    assert_eq!(p[0]["ok"], N_P, "ALLOW_ANY lets it through: {p:?}");

    // Prometheus has scraped it all.
    let src = r#"reporter="source", source_workload_namespace=~"shop", source_workload=~"web""#;
    prom.wait_for(
        &format!(r#"sum(istio_tcp_connections_closed_total{{{src}, destination_service="vis-a.enforcer.test"}})"#),
        Duration::from_secs(20),
        |r| r.first().is_some_and(|s| s.1 == N_A as f64),
    );
    prom.wait_for(&format!("sum(istio_requests_total{{{src}}})"), Duration::from_secs(20), |r| {
        r.first().is_some_and(|s| s.1 == 4.0)
    });
    prom.wait_for(
        r#"sum(istio_tcp_connections_closed_total{source_workload="batch"})"#,
        Duration::from_secs(20),
        |r| r.first().is_some_and(|s| s.1 == N_P as f64),
    );
    prom.wait_for(r#"sum(enforcer_udp_sent_bytes_total{source_workload="web"})"#, Duration::from_secs(20), |r| {
        r.first().is_some_and(|s| s.1 >= (udp_resp + 28 * K) as f64)
    });
    assert_eq!(prom.value(r#"up{job="enforcer"}"#), 1.0);

    // ---- Workload dashboard ($namespace=shop, $workload=web, $dstsvc=All) ----
    // Variables.
    let wl = prom.by(
        r#"sum(istio_requests_total{source_workload_namespace=~"shop"}) by (source_workload) or sum(istio_tcp_sent_bytes_total{source_workload_namespace=~"shop"}) by (source_workload)"#,
        "source_workload",
    );
    assert_eq!(keys(&wl), BTreeSet::from(["batch", "web"]), "$workload choices");
    let dstsvc = prom.by(
        &format!(
            "sum(istio_requests_total{{{src}}}) by (destination_service) or sum(istio_tcp_sent_bytes_total{{{src}}}) by (destination_service)"
        ),
        "destination_service",
    );
    assert_eq!(
        keys(&dstsvc),
        BTreeSet::from(["BlackHoleCluster", "api.test", "vis-a.enforcer.test"]),
        "$dstsvc choices: UDP is not TCP, HTTP is not TCP"
    );
    // Outgoing Requests By Destination And Response Code.
    let q = format!(
        r#"sum(istio_requests_total{{connection_security_policy!="mutual_tls", {src}, destination_service=~".*"}}) by (destination_service, response_code)"#
    );
    let codes: Vec<(String, String, f64)> = prom
        .query(&q)
        .into_iter()
        .map(|(l, v)| (l["destination_service"].clone(), l["response_code"].clone(), v))
        .collect();
    assert_eq!(codes, vec![("api.test".into(), "200".into(), 3.0), ("api.test".into(), "404".into(), 1.0)], "{q}");
    // The panel's own irate query: a series per code (once two scrapes hold the series).
    prom.wait_for(
        &format!(
            r#"round(sum(irate(istio_requests_total{{connection_security_policy!="mutual_tls", {src}}}[1m])) by (destination_service, response_code), 0.001)"#
        ),
        Duration::from_secs(10),
        |r| r.len() == 2,
    );
    // Outgoing Success Rate (non-5xx responses) By Destination.
    assert_eq!(
        prom.value(&format!(
            r#"sum(istio_requests_total{{{src}, response_code!~"5.*"}}) by (destination_service) / sum(istio_requests_total{{{src}}}) by (destination_service)"#
        )),
        1.0
    );
    // Outgoing Request Duration / Size By Destination: every request in the +Inf bucket.
    for h in ["istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"] {
        let b =
            prom.by(&format!(r#"sum({h}_bucket{{{src}, le="+Inf"}}) by (destination_service)"#), "destination_service");
        assert_eq!(b.get("api.test"), Some(&4.0), "{h}: {b:?}");
        prom.wait_for(
            &format!(r#"histogram_quantile(0.50, sum(irate({h}_bucket{{{src}}}[1m])) by (destination_service, le))"#),
            Duration::from_secs(10),
            |r| r.len() == 1,
        );
    }
    assert_eq!(
        prom.value(&format!(r#"sum(istio_response_bytes_sum{{{src}, destination_service="api.test"}})"#)),
        4.0 * 11.0,
        "`status NNN\\n` bodies"
    );
    // Bytes Sent on Outgoing TCP Connection (= istio_tcp_received_bytes_total: what the
    // destination received) and Bytes Received from Outgoing TCP Connection (= sent_bytes).
    let sent_on = prom.by(
        &format!(r#"sum(istio_tcp_received_bytes_total{{connection_security_policy!="mutual_tls", {src}}}) by (destination_service)"#),
        "destination_service",
    );
    let recv_from = prom.by(
        &format!(r#"sum(istio_tcp_sent_bytes_total{{connection_security_policy!="mutual_tls", {src}}}) by (destination_service)"#),
        "destination_service",
    );
    assert_within("bytes sent to vis-a", sent_on["vis-a.enforcer.test"], tcp_bounds(N_A, req_a, 4));
    assert_within("bytes received from vis-a", recv_from["vis-a.enforcer.test"], tcp_bounds(N_A, resp_a, 2));
    assert!(sent_on["vis-a.enforcer.test"] > recv_from["vis-a.enforcer.test"], "requests are the larger side here");
    assert_eq!(sent_on.get("BlackHoleCluster"), Some(&0.0), "a refused connect sends nothing");
    assert!(!sent_on.contains_key("api.test") && !recv_from.contains_key("api.test"), "HTTP is counted once");
    // TCP Client Traffic (the top row): sent + received of the workload.
    assert_eq!(
        prom.value(&format!(
            r#"sum(istio_tcp_sent_bytes_total{{{src}}}) + sum(istio_tcp_received_bytes_total{{{src}}})"#
        )),
        sent_on.values().sum::<f64>() + recv_from.values().sum::<f64>()
    );
    // Connections (what Kiali's TCP edges and the BlackHole/Passthrough views read).
    let opened: Vec<(String, String, f64)> = prom
        .query(&format!(r#"sum(istio_tcp_connections_opened_total{{{src}}}) by (destination_service, response_flags)"#))
        .into_iter()
        .map(|(l, v)| (l["destination_service"].clone(), l["response_flags"].clone(), v))
        .collect();
    assert_eq!(
        opened,
        vec![
            ("BlackHoleCluster".into(), "UH".into(), N_D as f64),
            ("vis-a.enforcer.test".into(), "-".into(), N_A as f64)
        ]
    );
    let pt = prom.by(
        r#"sum(istio_tcp_connections_opened_total{reporter="source", source_workload_namespace="shop", source_workload="batch"}) by (destination_service)"#,
        "destination_service",
    );
    assert_eq!(pt, [("PassthroughCluster".to_string(), N_P as f64)].into(), "ALLOW_ANY: passthrough");
    // UDP: its own family, same labels, exact at L3.
    let udp = prom.by(
        r#"sum(enforcer_udp_received_bytes_total{source_workload="web"}) by (destination_service)"#,
        "destination_service",
    );
    assert_eq!(udp, [("vis-u.enforcer.test".to_string(), (K * (L + 28)) as f64)].into());
    assert_eq!(prom.value(r#"sum(enforcer_udp_received_datagrams_total{source_workload="web"})"#), K as f64);
    assert!(prom.query(r#"istio_tcp_sent_bytes_total{destination_service="vis-u.enforcer.test"}"#).is_empty());

    // ---- Service dashboard ($service, $qrep=source, $srccluster/$srcns/$srcwl=All) ----
    let svc = r#"reporter=~"source", destination_service="vis-a.enforcer.test""#;
    let srcns = prom.by(
        &format!("sum(istio_requests_total{{{svc}}}) by (source_workload_namespace) or sum(istio_tcp_sent_bytes_total{{{svc}}}) by (source_workload_namespace)"),
        "source_workload_namespace",
    );
    assert_eq!(keys(&srcns), BTreeSet::from(["shop"]));
    let srccluster =
        prom.by(&format!("sum(istio_tcp_sent_bytes_total{{{svc}}}) by (source_cluster)"), "source_cluster");
    assert_eq!(keys(&srccluster), BTreeSet::from(["unknown"]), "Istio's placeholder, never empty");
    assert_within(
        "TCP Received Bytes",
        prom.value(&format!("sum(istio_tcp_received_bytes_total{{{svc}}})")),
        tcp_bounds(N_A, req_a, 4),
    );
    let by_src: Vec<(String, String)> = prom
        .wait_for(
            &format!(
                r#"round(sum(irate(istio_tcp_received_bytes_total{{{svc}, connection_security_policy!="mutual_tls", source_workload=~".*", source_workload_namespace=~".*"}}[1m])) by (source_workload, source_workload_namespace), 0.001)"#
            ),
            Duration::from_secs(10),
            |r| !r.is_empty(),
        )
        .into_iter()
        .map(|(l, _)| (l["source_workload"].clone(), l["source_workload_namespace"].clone()))
        .collect();
    assert_eq!(
        by_src,
        vec![("web".into(), "shop".into())],
        "Bytes Received from Incoming TCP Connection: legend web.shop"
    );
    assert_eq!(prom.value(r#"sum(istio_requests_total{reporter=~"source", destination_service="api.test"})"#), 4.0);

    // ---- Mesh dashboard ----
    assert_eq!(prom.value(r#"sum(istio_requests_total{reporter=~"source|waypoint"})"#), 4.0, "Traffic Volume");
    assert_eq!(
        prom.value(
            r#"round(sum(istio_requests_total{reporter=~"source|waypoint",response_code=~"4.."}), 0.01) or vector(0)"#
        ),
        1.0,
        "4xxs"
    );
    assert_eq!(
        prom.value(
            r#"round(sum(istio_requests_total{reporter=~"source|waypoint",response_code=~"5.."}), 0.01) or vector(0)"#
        ),
        0.0,
        "5xxs"
    );
    let http_wl = prom.query(
        r#"label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (istio_requests_total{reporter=~"source|waypoint"}), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")"#,
    );
    assert_eq!(http_wl.len(), 1, "{http_wl:?}");
    assert_eq!(http_wl[0].0["destination_workload_var"], "unknown.unknown");
    assert_eq!(http_wl[0].0["destination_service"], "api.test");
    assert_eq!(http_wl[0].1, 4.0);
    let tcp_wl = prom.by(
        r#"label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (istio_tcp_received_bytes_total{reporter=~"source|waypoint"}), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")"#,
        "destination_service",
    );
    assert_eq!(keys(&tcp_wl), BTreeSet::from(["BlackHoleCluster", "PassthroughCluster", "vis-a.enforcer.test"]));

    // ---- The label set and cardinality ----
    let want: BTreeSet<&str> = ISTIO_LABELS.into();
    for (fam, extra) in [
        ("istio_tcp_connections_opened_total", &[][..]),
        ("istio_tcp_sent_bytes_total", &[]),
        ("enforcer_udp_sent_bytes_total", &[]),
        ("istio_requests_total", &["response_code", "grpc_response_status"][..]),
    ] {
        for (labels, _) in prom.query(fam) {
            let got: BTreeSet<&str> =
                labels.keys().map(String::as_str).filter(|k| !["__name__", "instance", "job"].contains(k)).collect();
            let mut w = want.clone();
            w.extend(extra.iter().filter(|k| **k != "grpc_response_status"));
            // Prometheus drops empty label values (grpc_response_status="" for plain HTTP).
            assert_eq!(got, w, "{fam}: {labels:?}");
            for (k, v) in &labels {
                assert!(
                    v.parse::<std::net::IpAddr>().is_err() && !v.contains(&ns.v4(0)[..ns.v4(0).len() - 1]),
                    "{k}={v}"
                );
            }
        }
    }
    assert_eq!(
        prom.value("count(istio_tcp_connections_opened_total)"),
        3.0,
        "web->vis-a, web->BlackHole, batch->Passthrough"
    );
    assert_eq!(prom.value("count(istio_requests_total)"), 2.0);

    // The text format passes promtool.
    let (st, text) = http_get(admin, "/metrics");
    assert_eq!(st, 200);
    promtool_check_metrics(&text);
}
