//! The L7 proxy under `enforcer run`: DestinationRule `tls.mode: SIMPLE` (HTTP in, TLS out),
//! Istio request metrics, failures (wrong CA, refused, silent upstream), streaming of large
//! bodies with bounded memory, `--sni-check`, and ports that must NOT be proxied.
//!
//! Setup per test: a [`Netns`] whose namespace side (`198.18.S.2`) runs the upstream servers
//! ([`HTTPS_SERVER_PY`]: TLS with a certificate from a [`Pki`] made with openssl at test time, or
//! plain), a registry + DestinationRule file, and `enforcer run --admin 127.0.0.1:PORT -- python3
//! -c PROXY_CLIENT_PY SPEC` ([`ProxyRun`]). The confined command (tests/helpers/proxy_client.py)
//! runs every client (curl, or a python socket when getpeername matters), samples the agent's
//! VmRSS (the agent is the command's parent process), then scrapes `/metrics` and `/debug/events` itself (the agent lives only as long as
//! the command) and prints one JSON line.
//!
//! All counts asserted are exact: every request is one the test made.

use enforcer_tests::*;
use serde_json::json;

/// The standard setup: `api.test` port 80 (HTTP, targetPort 8443) at `198.18.S.2`, SIMPLE TLS on
/// port 80 verified against `ca`.
fn api_registry(addr: &str, ca: &std::path::Path) -> Vec<String> {
    vec![
        se_at("default", "api", &["api.test"], addr, &[(80, "HTTP", Some(8443))]),
        dr("default", "api", "api.test", &simple_tls_on(80, ca, None)),
    ]
}

const RESET: &str = "upstream connect error or disconnect/reset before headers. reset reason: ";

// ---------------------------------------------------------------------------------------------

/// Plain HTTP to a registry port whose DestinationRule says SIMPLE comes back with the HTTPS
/// server's content (the server saw SNI and Host = the ServiceEntry host), and the app's
/// getpeername() shows the original destination, not the proxy's 127.0.0.1.
#[test]
fn originates_tls_and_getpeername_shows_the_original_destination() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-basic");
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 8443, &pki);
    let run = ProxyRun::go(
        &dir,
        &api_registry(&addr, &pki.ca),
        &[],
        json!({"ops": [
            curl_op(&["--resolve", &resolve("api.test", 80, &addr), "http://api.test/hello?x=1"]),
            {"kind": "peer", "addr": addr, "port": 80, "host": "api.test", "path": "/from-python"},
        ], "requests": 2}),
    );
    let d = run.dump();
    let (body, code, _, _) = curl_parts(&run.results[0]);
    assert_eq!(code, 200, "curl through the proxy\n{d}");
    assert_eq!(
        body.trim_end(),
        format!("hello path=/hello?x=1 host=api.test sni=api.test peer={}", body_peer(&body)),
        "{d}"
    );

    let p = &run.results[1];
    assert_eq!(p["peer"], json!([addr, 80]), "getpeername() must show the original destination\n{d}");
    let resp = p["response"].as_str().unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "python client response: {resp}\n{d}");
    assert!(resp.contains("hello path=/from-python host=api.test sni=api.test"), "python client response: {resp}\n{d}");
    // The connection the app made was to the proxy: the server saw another one (from the agent).
    let server_peer = body_peer(resp);
    let app_sock = format!("{}:{}", p["sock"][0].as_str().unwrap(), p["sock"][1]);
    assert_ne!(server_peer, app_sock, "the server saw the app's own socket: not proxied?\n{d}");

    assert_eq!(run.metric("istio_requests_total", &[("response_code", "200")]), 2.0, "{d}");
    assert!(!run.out.stderr.contains("enforcer: error") && !run.out.stderr.contains("enforcer: denied"), "{d}");
}

/// 200/404/500 from the upstream are counted exactly, per code, with the destination and source
/// labels; the duration histogram counts every request; response bytes add up.
#[test]
fn request_metrics_count_status_codes_exactly() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-metrics");
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 8443, &pki);
    let r = resolve("api.test", 80, &addr);
    // One curl with several URLs: one keep-alive client connection, several requests on it.
    let urls = ["200", "200", "200", "404", "404", "500"].map(|c| format!("http://api.test/status/{c}"));
    let mut args = vec!["--resolve", r.as_str()];
    args.extend(urls.iter().map(String::as_str));
    let run = ProxyRun::go(&dir, &api_registry(&addr, &pki.ca), &[], json!({"ops": [curl_op(&args)], "requests": 6}));
    let d = run.dump();
    let out = run.results[0]["stdout"].as_str().unwrap();
    assert_eq!(out.matches("status 200").count(), 3, "{d}");
    assert_eq!(out.matches("status 404").count(), 2, "{d}");
    assert_eq!(out.matches("status 500").count(), 1, "{d}");

    let wl = py_name();
    let common = [
        ("reporter", "source"),
        ("source_workload", wl.as_str()),
        ("destination_service", "api.test"),
        ("destination_service_name", "api.test"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
        ("response_flags", "-"),
    ];
    for (code, n) in [("200", 3.0), ("404", 2.0), ("500", 1.0)] {
        let mut want = common.to_vec();
        want.push(("response_code", code));
        let s = run.series("istio_requests_total", &want);
        assert_eq!(s.len(), 1, "one series for code {code}\n{d}");
        assert_eq!(s[0].1, n, "istio_requests_total for {code}\n{d}");
        assert_eq!(run.metric("istio_request_duration_milliseconds_count", &want), n, "duration count for {code}\n{d}");
        assert_eq!(run.metric("istio_response_bytes_count", &want), n, "response size count for {code}\n{d}");
        // Body `status NNN\n` = 11 bytes each.
        assert_eq!(run.metric("istio_response_bytes_sum", &want), 11.0 * n, "response bytes for {code}\n{d}");
        assert_eq!(run.metric("istio_request_bytes_sum", &want), 0.0, "GETs have no body\n{d}");
    }
    assert_eq!(run.metric("istio_requests_total", &[]), 6.0, "no other requests\n{d}");
    assert_eq!(run.metric("istio_request_duration_milliseconds_count", &[]), 6.0, "{d}");
    let inf = run.metric("istio_request_duration_milliseconds_bucket", &[("le", "+Inf")]);
    assert_eq!(inf, 6.0, "+Inf buckets add up to the request count\n{d}");
}

/// A server certificate from a CA other than `caCertificates`: 503 with the TLS error in the
/// body, `response_flags="UF"`, a `tls_verify_failed` event and an `enforcer: error proxy` line.
#[test]
fn wrong_ca_gives_503_uf_and_a_tls_verify_failed_event() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-wrongca");
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let other = Pki::new(&dir, "other", &["api.test"]);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 8443, &pki);
    let run = ProxyRun::go(
        &dir,
        &api_registry(&addr, &other.ca),
        &[],
        json!({"ops": [curl_op(&["--resolve", &resolve("api.test", 80, &addr), "http://api.test/"])], "requests": 1, "events": 1}),
    );
    let d = run.dump();
    let (body, code, _, _) = curl_parts(&run.results[0]);
    assert_eq!(code, 503, "{d}");
    assert!(body.starts_with(RESET), "Envoy-style body expected: {body:?}\n{d}");
    assert!(
        body.contains("TLS error") && body.contains("certificate"),
        "the body should name the TLS error: {body:?}\n{d}"
    );
    assert!(body.contains("UnknownIssuer"), "the body should say why the certificate was refused: {body:?}\n{d}");

    let ev = run.events_with("tls_verify_failed");
    assert_eq!(ev.len(), 1, "one tls_verify_failed event\n{d}");
    assert_eq!(ev[0]["destination"], format!("{addr}:80"), "{d}");
    assert_eq!(ev[0]["hook"], "proxy", "{d}");
    assert_eq!(run.metric("istio_requests_total", &[("response_code", "503"), ("response_flags", "UF")]), 1.0, "{d}");
    assert_eq!(run.metric("istio_requests_total", &[]), 1.0, "{d}");
    let line = run
        .out
        .stderr
        .lines()
        .find(|l| l.starts_with("enforcer: error proxy"))
        .unwrap_or_else(|| panic!("no error line\n{d}"));
    assert!(line.contains(&format!("{addr}:80")) && line.contains("TLS verification failed"), "{line}\n{d}");
}

/// Nothing on targetPort (refused) and a listener that never answers the handshake (timeout):
/// both 503 `UF`, each within `connectionPool.tcp.connectTimeout: 500ms` (+ slack), with
/// `upstream_connect_failed` / `upstream_timeout` events.
#[test]
fn unreachable_upstream_fails_within_connect_timeout() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-down");
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let addr = ns.v4(2);
    // Port 81 -> 9 (nothing listens), port 82 -> 8444 (accepts, never speaks).
    let _silent = silent_listener(&ns, &addr, 8444);
    let tp = format!(
        "connectionPool: {{tcp: {{connectTimeout: 500ms}}}}\ntls: {{mode: SIMPLE, caCertificates: \"{}\"}}\n",
        pki.ca.display()
    );
    let docs = vec![
        se_at("default", "api", &["api.test"], &addr, &[(81, "HTTP", Some(9)), (82, "HTTP", Some(8444))]),
        dr("default", "api", "api.test", &tp),
    ];
    let run = ProxyRun::go(
        &dir,
        &docs,
        &[],
        json!({"ops": [
            curl_op(&["--resolve", &resolve("api.test", 81, &addr), "http://api.test:81/"]),
            curl_op(&["--resolve", &resolve("api.test", 82, &addr), "http://api.test:82/"]),
        ], "requests": 2, "events": 2}),
    );
    let d = run.dump();
    let (body, code, _, t) = curl_parts(&run.results[0]);
    assert_eq!(code, 503, "refused upstream\n{d}");
    assert_eq!(body, format!("{RESET}connection failure"), "{d}");
    assert!(t < 2.0, "a refused upstream must fail at once, took {t} s\n{d}");

    let (body, code, _, t) = curl_parts(&run.results[1]);
    assert_eq!(code, 503, "silent upstream\n{d}");
    assert_eq!(body, format!("{RESET}connection timeout"), "{d}");
    assert!((0.4..2.0).contains(&t), "a silent upstream must fail after connectTimeout 500ms (took {t} s)\n{d}");

    let refused = run.events_with("upstream_connect_failed");
    assert_eq!(refused.len(), 1, "{d}");
    assert_eq!(refused[0]["destination"], format!("{addr}:81"), "{d}");
    let timeout = run.events_with("upstream_timeout");
    assert_eq!(timeout.len(), 1, "{d}");
    assert_eq!(timeout[0]["destination"], format!("{addr}:82"), "{d}");
    assert_eq!(run.metric("istio_requests_total", &[("response_code", "503"), ("response_flags", "UF")]), 2.0, "{d}");
    assert_eq!(run.out.stderr.lines().filter(|l| l.starts_with("enforcer: error proxy")).count(), 2, "{d}");
}

/// 100 MiB through the proxy arrive complete, and the agent's memory stays bounded: hyper
/// streams the body frame by frame (no buffering of whole bodies), so the agent's VmRSS during
/// the transfer must stay far below the body size. Bound: the agent's RSS before the transfer
/// plus 40 MiB, and < 100 MiB overall (a debug build's agent idles at ~15-30 MiB; buffering the
/// body would need > 100 MiB).
#[test]
fn large_response_streams_with_bounded_agent_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let ns = Netns::new();
    let dir = TempDir::new("proxy-large");
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 8443, &pki);
    let mut op = curl_op(&[
        "--resolve",
        &resolve("api.test", 80, &addr),
        "-o",
        "/dev/null",
        &format!("http://api.test/bytes/{SIZE}"),
    ]);
    op["rss"] = json!(true);
    op["args"][4] = json!("120"); // --max-time: a debug build is slow
    let run = ProxyRun::go(&dir, &api_registry(&addr, &pki.ca), &[], json!({"ops": [op], "requests": 1}));
    let d = run.dump();
    let r = &run.results[0];
    let (_, code, size, t) = curl_parts(r);
    assert_eq!(code, 200, "{d}");
    assert_eq!(size, SIZE, "exact byte count\n{d}");
    let before = r["rss_before_kib"].as_u64().unwrap_or_else(|| panic!("no RSS of the agent (pid {})\n{d}", run.ppid));
    let max = r["rss_max_kib"].as_u64().unwrap_or_else(|| panic!("no RSS samples\n{d}"));
    let n = r["rss_samples"].as_u64().unwrap();
    eprintln!("100 MiB in {t:.2} s; agent VmRSS before {before} KiB, max {max} KiB during the transfer ({n} samples)");
    assert!(n >= 5, "too few RSS samples ({n}) to say anything\n{d}");
    assert!(max < before + 40 * 1024, "agent RSS grew from {before} KiB to {max} KiB during a 100 MiB transfer\n{d}");
    assert!(max < 100 * 1024, "agent RSS {max} KiB >= 100 MiB during a 100 MiB transfer\n{d}");
    assert_eq!(run.metric("istio_response_bytes_sum", &[("response_code", "200")]), SIZE as f64, "{d}");
}

/// `--sni-check`: two ServiceEntries on the same address:443 (TLS), `allowed.test` and
/// `*.wild.test`; one HTTPS server whose certificate covers every name used. Registry names get
/// through (TLS end to end: curl verifies the server itself); `other.test` (not in the registry)
/// and `wild.test` (a wildcard does not match its own suffix) are closed, with events naming them.
#[test]
fn sni_check_lets_only_registry_names_through() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-sni");
    let names = ["allowed.test", "other.test", "*.wild.test", "wild.test"];
    let pki = Pki::new(&dir, "sni", &names);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 443, &pki);
    let docs = vec![
        se_at("default", "allowed", &["allowed.test"], &addr, &[(443, "TLS", None)]),
        se_at("default", "wild", &["*.wild.test"], &addr, &[(443, "TLS", None)]),
    ];
    let ca = pki.ca.display().to_string();
    let get =
        |host: &str| curl_op(&["--cacert", &ca, "--resolve", &resolve(host, 443, &addr), &format!("https://{host}/")]);
    let run = ProxyRun::go(
        &dir,
        &docs,
        &["--sni-check"],
        json!({"ops": [get("allowed.test"), get("a.wild.test"), get("other.test"), get("wild.test")], "events": 2}),
    );
    let d = run.dump();
    for (i, host) in [(0, "allowed.test"), (1, "a.wild.test")] {
        let (body, code, _, _) = curl_parts(&run.results[i]);
        assert_eq!(code, 200, "{host}\n{d}");
        assert!(body.contains(&format!("host={host} sni={host}")), "{host}: {body}\n{d}");
        // Spliced, not re-originated: the server's peer is the agent, but the TLS is curl's own.
    }
    for (i, host) in [(2, "other.test"), (3, "wild.test")] {
        let r = &run.results[i];
        assert_ne!(r["rc"], 0, "{host} must not connect\n{d}");
        assert!(!r["stdout"].as_str().unwrap().contains("hello"), "{host} got content\n{d}");
        let ev: Vec<_> = run.events_with("sni_not_in_registry").into_iter().filter(|e| e["host"] == host).collect();
        assert_eq!(ev.len(), 1, "one sni_not_in_registry event for {host}\n{d}");
        assert_eq!(ev[0]["destination"], format!("{addr}:443"), "{d}");
        assert_eq!(ev[0]["verdict"], "denied", "{d}");
        assert!(
            run.out.stderr.lines().any(|l| l.starts_with("enforcer: denied proxy") && l.contains(host)),
            "no `enforcer: denied proxy` line for {host}\n{d}"
        );
    }
    assert_eq!(run.events_with("sni_not_in_registry").len(), 2, "{d}");
    let sni = |svc: &str, dec: &str| {
        run.metric("enforcer_sni_decisions_total", &[("destination_service", svc), ("decision", dec)])
    };
    assert_eq!(sni("allowed.test", "allowed"), 1.0, "{d}");
    assert_eq!(sni("*.wild.test", "allowed"), 1.0, "{d}");
    assert_eq!(sni("BlackHoleCluster", "denied"), 2.0, "{d}");
    assert_eq!(run.metric("enforcer_sni_decisions_total", &[]), 4.0, "{d}");
}

/// Ports the proxy must leave alone: a port of a host whose DestinationRule sets TLS only for
/// another port, and a host with no DestinationRule at all. The app connects directly: the
/// server sees the app's own socket address (exactly getsockname() of the client), and the proxy
/// records nothing. The SIMPLE port of the same host is proxied in the same run (control).
#[test]
fn ports_without_simple_tls_are_not_proxied() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-plain");
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let addr = ns.v4(2);
    let _tls = https_server(&ns, &addr, 8443, &pki);
    let _p1 = plain_http_server(&ns, &addr, 8080);
    let _p2 = plain_http_server(&ns, &addr, 8081);
    let docs = vec![
        se_at("default", "api", &["api.test"], &addr, &[(80, "HTTP", Some(8443)), (8080, "HTTP", None)]),
        dr("default", "api", "api.test", &simple_tls_on(80, &pki.ca, None)),
        se_at("default", "nodr", &["nodr.test"], &addr, &[(8081, "HTTP", None)]),
    ];
    let peer = |port: u16, host: &str| json!({"kind": "peer", "addr": addr, "port": port, "host": host, "path": "/"});
    let run = ProxyRun::go(
        &dir,
        &docs,
        &[],
        json!({"ops": [peer(8080, "api.test"), peer(8081, "nodr.test"), peer(80, "api.test")], "requests": 1}),
    );
    let d = run.dump();
    for (i, port) in [(0, 8080), (1, 8081)] {
        let p = &run.results[i];
        assert_eq!(p["peer"], json!([addr, port]), "{d}");
        let resp = p["response"].as_str().unwrap();
        assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("sni=-"), "port {port}: {resp}\n{d}");
        let app_sock = format!("{}:{}", p["sock"][0].as_str().unwrap(), p["sock"][1]);
        assert_eq!(
            body_peer(resp),
            app_sock,
            "port {port}: the server must see the app's own socket (direct connection)\n{d}"
        );
        assert_ne!(p["sock"][0], "127.0.0.1", "{d}");
    }
    // Control: port 80 of the same host is proxied.
    let p = &run.results[2];
    let resp = p["response"].as_str().unwrap();
    assert!(resp.contains("sni=api.test"), "port 80 should be TLS-originated: {resp}\n{d}");
    assert_eq!(run.metric("istio_requests_total", &[]), 1.0, "only the port-80 request goes through the proxy\n{d}");
}

#[test]
fn curl_parts_parses_the_trailer() {
    let r = json!({"stdout": "body\nline\n503 42 0.51"});
    assert_eq!(curl_parts(&r), ("body\nline".to_string(), 503, 42, 0.51));
    let s = metric_samples("# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"z\"} 3\nx_total 2\n", "x_total");
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].0.get("b").map(String::as_str), Some("q\"z"));
    assert_eq!(s[0].1 + s[1].1, 5.0);
}
