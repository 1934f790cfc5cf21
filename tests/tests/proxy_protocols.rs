//! Protocols through the L7 proxy under `enforcer run`, with real servers and clients:
//! - WebSocket (python3-websockets on both ends): the upgrade passes, messages flow both ways
//!   over the TLS the proxy originates;
//! - HTTP/2 upstream via ALPN (nginx `listen ... ssl http2`), for HTTP/1.1 clients too;
//! - h2c from the app (`curl --http2-prior-knowledge`) on a port declared HTTP2; on a port
//!   declared HTTP it is answered 505 (HTTP/1 only there).

use enforcer_tests::*;
use serde_json::json;

#[test]
fn websocket_upgrades_pass_through_with_tls_originated() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-ws");
    let pki = Pki::new(&dir, "ws", &["ws.test"]);
    let addr = ns.v4(2);
    let _srv = ws_server(&ns, &addr, 8443, &pki);
    let docs = vec![
        se_at("default", "ws", &["ws.test"], &addr, &[(80, "HTTP", Some(8443))]),
        dr("default", "ws", "ws.test", &simple_tls_on(80, &pki.ca, None)),
    ];
    let py = system_python_with("websockets", "python3-websockets");
    let client = json!({"kind": "cmd", "argv": [py, "-c", WS_CLIENT_PY, "ws://ws.test/chat", addr, "80"]});
    let run = ProxyRun::go(&dir, &docs, &[], json!({"ops": [client], "requests": 1}));
    let d = run.dump();
    let r = &run.results[0];
    assert_eq!(r["rc"], 0, "{d}");
    let v: serde_json::Value = serde_json::from_str(r["stdout"].as_str().unwrap().trim()).unwrap();
    let replies = v["replies"].as_array().unwrap();
    assert_eq!(replies[0]["text"], "/chat", "{d}");
    assert_eq!(replies[1]["text"], "echo hello", "{d}");
    assert_eq!(replies[2]["len"], 70005, "{d}");
    assert_eq!(replies[3]["hex"], "000162696e617279", "{d}");
    let up = [("destination_service", "ws.test"), ("response_code", "101")];
    assert_eq!(run.metric("istio_requests_total", &up), 1.0, "the upgrade is one request\n{d}");
}

/// nginx serving HTTP/2 (and HTTP/1.1) over TLS, answering with the protocol it saw.
fn h2_nginx(ns: &Netns, dir: &TempDir, addr: &str, pki: &Pki) -> Nginx {
    let block = format!(
        "  server {{\n    listen {addr}:8443 ssl http2;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
         location / {{ return 200 \"proto=$server_protocol host=$host sni=$ssl_server_name\\n\"; }}\n  }}",
        pki.cert.display(),
        pki.key.display()
    );
    Nginx::start(ns, dir, &block, addr, 8443)
}

#[test]
fn http2_upstream_via_alpn_and_h2c_from_the_app_on_http2_ports() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-h2");
    let pki = Pki::new(&dir, "h2", &["h2.test", "h1.test"]);
    let addr = ns.v4(2);
    let _nginx = h2_nginx(&ns, &dir, &addr, &pki);
    let docs = vec![
        se_at("default", "h2", &["h2.test"], &addr, &[(80, "HTTP2", Some(8443))]),
        dr("default", "h2", "h2.test", &simple_tls_on(80, &pki.ca, None)),
        se_at("default", "h1", &["h1.test"], &addr, &[(81, "HTTP", Some(8443))]),
        dr("default", "h1", "h1.test", &simple_tls_on(81, &pki.ca, None)),
    ];
    let op = |host: &str, port: u16, extra: &[&str]| {
        let mut a: Vec<String> = ["-sS", "--noproxy", "*", "--max-time", "20", "-w", "\n%{http_code} %{http_version}"]
            .map(String::from)
            .to_vec();
        a.extend(["--resolve".into(), resolve(host, port, &addr), format!("http://{host}:{port}/")]);
        a.extend(extra.iter().map(|s| s.to_string()));
        json!({"kind": "curl", "args": a})
    };
    let run = ProxyRun::go(
        &dir,
        &docs,
        &[],
        json!({"ops": [
            op("h2.test", 80, &["--http2-prior-knowledge"]),
            op("h2.test", 80, &[]),
            op("h1.test", 81, &[]),
            op("h1.test", 81, &["--http2-prior-knowledge"]),
        ], "requests": 3}),
    );
    let d = run.dump();
    let out = |i: usize| run.results[i]["stdout"].as_str().unwrap().to_string();
    assert_eq!(run.results[0]["rc"], 0, "{d}");
    assert!(out(0).starts_with("proto=HTTP/2.0 host=h2.test sni=h2.test"), "h2c in, h2 out\n{d}");
    assert!(out(0).trim_end().ends_with("200 2"), "the app spoke HTTP/2 with the proxy\n{d}");
    assert!(out(1).starts_with("proto=HTTP/2.0 host=h2.test"), "HTTP/1.1 in, h2 out (ALPN)\n{d}");
    assert!(out(1).trim_end().ends_with("200 1.1"), "{d}");
    assert!(out(2).starts_with("proto=HTTP/2.0 host=h1.test sni=h1.test"), "ALPN on an HTTP port too\n{d}");
    // h2c on a port declared HTTP: a clear 505 (HTTP/1 only there).
    assert!(out(3).contains("not declared HTTP2 or GRPC"), "{d}");
    assert!(out(3).trim_end().ends_with("505 2"), "{d}");
    assert_eq!(run.metric("istio_requests_total", &[("response_code", "200")]), 3.0, "{d}");
}
