//! The L7 proxy routes HTTP by Host like Envoy and keeps `--sni-check` where Istio's layouts
//! put TLS, under `enforcer run`:
//! - an unregistered Host on a registered address: 502 (Istio's REGISTRY_ONLY `block_all`
//!   route) with a `host_not_in_registry` event and `istio_requests_total{destination_service=
//!   "BlackHoleCluster",response_flags="NR"}`; under ALLOW_ANY forwarded unchanged as
//!   PassthroughCluster;
//! - two ServiceEntries on one address, each with its own DestinationRule (SNI, CA, targetPort):
//!   each Host gets its own, the rule chosen with Istio's namespace precedence;
//! - Istio's sample layout (port 80 HTTP targetPort 443 + port 443 HTTPS on one ServiceEntry)
//!   in both port orders: a wrong SNI to 443 is refused; `--sni-check-target-ports` closes a
//!   targetPort that `--sni-check` alone leaves open to any SNI;
//! - CONNECT refused with 405, plain bytes on an SNI-checked port refused with an event and a
//!   counter, and `--quiet` silencing the proxy's lines.
//!
//! Servers: [`HTTPS_SERVER_PY`] in a [`Netns`] (body `hello path=P host=H sni=S peer=A`).

use enforcer_tests::*;
use serde_json::json;

/// `api.test` port 80 (HTTP, targetPort 8443) at `addr`, SIMPLE TLS on 80 verified against `ca`.
fn api(addr: &str, ca: &std::path::Path) -> Vec<String> {
    vec![
        se_at("default", "api", &["api.test"], addr, &[(80, "HTTP", Some(8443))]),
        dr("default", "api", "api.test", &simple_tls_on(80, ca, None)),
    ]
}

fn get(host: &str, port: u16, addr: &str, path: &str) -> serde_json::Value {
    curl_op(&["--resolve", &resolve(host, port, addr), &format!("http://{host}:{port}{path}")])
}

#[test]
fn unregistered_host_on_a_registered_address_gets_no_route_under_registry_only() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-host");
    let pki = Pki::new(&dir, "api", &["api.test", "other.test"]);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 8443, &pki);
    // `-H Host:` applies to both URLs: two refused requests on one keep-alive connection.
    let r = resolve("api.test", 80, &addr);
    let run = ProxyRun::go(
        &dir,
        &api(&addr, &pki.ca),
        &[],
        json!({"ops": [
            curl_op(&["--resolve", &r, "http://api.test/a", "-H", "Host: other.test", "http://api.test/b"]),
            // No Host at all (HTTP/1.0): the address itself names its service.
            raw_op(&addr, 80, "GET /ten HTTP/1.0\r\n\r\n", None),
        ], "requests": 3, "events": 1}),
    );
    let d = run.dump();
    let out = run.results[0]["stdout"].as_str().unwrap();
    assert!(out.contains("no route: Host other.test is not in the registry"), "{d}");
    assert_eq!(out.matches("sni=api.test").count(), 0, "a Host header applies to every URL of this curl\n{d}");
    let ten = run.results[1]["response"].as_str().unwrap();
    assert!(ten.starts_with("HTTP/1.0 200") && ten.contains("hello path=/ten"), "{ten}\n{d}");

    let ev = run.events_with("host_not_in_registry");
    assert_eq!(ev.len(), 2, "one event per refused request\n{d}");
    assert_eq!(ev[0]["host"], "other.test", "{d}");
    assert_eq!(ev[0]["destination"], format!("{addr}:80"), "{d}");
    assert_eq!(ev[0]["verdict"], "denied", "{d}");
    let bh = [("destination_service", "BlackHoleCluster"), ("response_code", "502"), ("response_flags", "NR")];
    assert_eq!(run.metric("istio_requests_total", &bh), 2.0, "{d}");
    assert_eq!(
        run.metric("istio_requests_total", &[("destination_service", "api.test"), ("response_code", "200")]),
        1.0,
        "{d}"
    );
    assert_eq!(run.metric("enforcer_proxy_refusals_total", &[("reason", "host_not_in_registry")]), 2.0, "{d}");
    assert!(
        run.out.stderr.lines().any(|l| l.starts_with("enforcer: denied proxy") && l.contains("other.test")),
        "no `enforcer: denied proxy` line\n{d}"
    );
}

#[test]
fn unregistered_host_passes_through_under_allow_any() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-pass");
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let addr = ns.v4(2);
    let _tls = https_server(&ns, &addr, 8443, &pki);
    // What the address serves on port 80 itself (reached as sent: plain, original port).
    let _plain = plain_http_server(&ns, &addr, 80);
    let run = ProxyRun::go(
        &dir,
        &api(&addr, &pki.ca),
        &["--mode", "ALLOW_ANY"],
        json!({"ops": [get("api.test", 80, &addr, "/reg"), get("other.test", 80, &addr, "/pass")], "requests": 2}),
    );
    let d = run.dump();
    let (body, code, _, _) = curl_parts(&run.results[0]);
    assert_eq!(code, 200, "{d}");
    assert!(body.contains("path=/reg host=api.test sni=api.test"), "registered: TLS originated\n{d}");
    let (body, code, _, _) = curl_parts(&run.results[1]);
    assert_eq!(code, 200, "{d}");
    assert!(body.contains("path=/pass host=other.test sni=-"), "passthrough: plain, to port 80\n{d}");
    let pass = [("destination_service", "PassthroughCluster"), ("response_code", "200"), ("response_flags", "-")];
    assert_eq!(run.metric("istio_requests_total", &pass), 1.0, "{d}");
    assert!(run.events.iter().all(|e| e["verdict"] == "mode"), "no refusal, only the mode record: {d}");
}

/// Two ServiceEntries sharing one address and port, each with its own DestinationRule: a.test
/// (targetPort 8443, CA a, SNI a.test) and b.test (targetPort 9443, CA b, SNI from the rule).
/// b.test's rules: a wrong one in another namespace listed first, and the right one in its own
/// namespace (Istio: the service's namespace wins over others).
#[test]
fn shared_address_services_get_their_own_destination_rules() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-shared");
    let (pa, pb) = (Pki::new(&dir, "a", &["a.test"]), Pki::new(&dir, "b", &["b-origin.test"]));
    let addr = ns.v4(2);
    let _a = https_server(&ns, &addr, 8443, &pa);
    let _b = https_server(&ns, &addr, 9443, &pb);
    let docs = vec![
        se_at("team-a", "a", &["a.test"], &addr, &[(80, "HTTP", Some(8443))]),
        se_at("team-b", "b", &["b.test"], &addr, &[(80, "HTTP", Some(9443))]),
        dr("team-a", "a", "a.test", &simple_tls_on(80, &pa.ca, None)),
        dr("elsewhere", "b-wrong", "b.test", &simple_tls_on(80, &pa.ca, Some("wrong.test"))),
        dr("team-b", "b", "b.test", &simple_tls_on(80, &pb.ca, Some("b-origin.test"))),
    ];
    let run = ProxyRun::go(
        &dir,
        &docs,
        &[],
        json!({"ops": [get("a.test", 80, &addr, "/1"), get("b.test", 80, &addr, "/2"), get("a.test", 80, &addr, "/3")],
               "requests": 3}),
    );
    let d = run.dump();
    for (i, want) in [
        (0, "path=/1 host=a.test sni=a.test"),
        (1, "path=/2 host=b.test sni=b-origin.test"),
        (2, "path=/3 host=a.test sni=a.test"),
    ] {
        let (body, code, _, _) = curl_parts(&run.results[i]);
        assert_eq!(code, 200, "request {i}: {body}\n{d}");
        assert!(body.contains(want), "request {i}: {body}\n{d}");
    }
    assert_eq!(
        run.metric(
            "istio_requests_total",
            &[("destination_service", "a.test"), ("destination_service_namespace", "team-a")]
        ),
        2.0,
        "{d}"
    );
    assert_eq!(
        run.metric(
            "istio_requests_total",
            &[("destination_service", "b.test"), ("destination_service_namespace", "team-b")]
        ),
        1.0,
        "{d}"
    );
}

/// Istio's sample layout: one ServiceEntry with port 80 (HTTP, targetPort 443, SIMPLE TLS
/// origination) and port 443 (HTTPS), in both orders, under `--sni-check`: the TLS port is
/// checked whatever the order — the registry name gets through, another SNI is refused — and
/// plain HTTP to port 80 is still originated to 443.
#[test]
fn sni_check_holds_on_istios_sample_layout_in_both_port_orders() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-layout");
    let pki = Pki::new(&dir, "api", &["api.test", "other.test"]);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 443, &pki);
    let ca = pki.ca.display().to_string();
    let tls =
        |host: &str| curl_op(&["--cacert", &ca, "--resolve", &resolve(host, 443, &addr), &format!("https://{host}/")]);
    let orders: [&[(u16, &str, Option<u16>)]; 2] =
        [&[(80, "HTTP", Some(443)), (443, "HTTPS", None)], &[(443, "HTTPS", None), (80, "HTTP", Some(443))]];
    for ports in orders {
        let docs = vec![
            se_at("default", "api", &["api.test"], &addr, ports),
            dr("default", "api", "api.test", &simple_tls_on(80, &pki.ca, None)),
        ];
        let run = ProxyRun::go(
            &dir,
            &docs,
            &["--sni-check"],
            json!({"ops": [tls("api.test"), tls("other.test"), get("api.test", 80, &addr, "/plain")], "requests": 1, "events": 1}),
        );
        let d = format!("ports {ports:?}\n{}", run.dump());
        let (body, code, _, _) = curl_parts(&run.results[0]);
        assert_eq!(code, 200, "{d}");
        assert!(body.contains("host=api.test sni=api.test"), "{d}");
        assert_ne!(run.results[1]["rc"], 0, "a wrong SNI to the TLS port must be refused\n{d}");
        assert!(!run.results[1]["stdout"].as_str().unwrap().contains("hello"), "{d}");
        let ev = run.events_with("sni_not_in_registry");
        assert_eq!(ev.len(), 1, "{d}");
        assert_eq!(ev[0]["host"], "other.test", "{d}");
        let (body, code, _, _) = curl_parts(&run.results[2]);
        assert_eq!(code, 200, "{d}");
        assert!(body.contains("path=/plain host=api.test sni=api.test"), "port 80 originates TLS to 443\n{d}");
        assert_eq!(run.metric("enforcer_sni_decisions_total", &[("decision", "allowed")]), 1.0, "{d}");
        assert_eq!(run.metric("enforcer_sni_decisions_total", &[("decision", "denied")]), 1.0, "{d}");
    }
}

/// A targetPort is the proxy's own upstream port: under `--sni-check` alone it stays directly
/// reachable with any SNI (documented); `--sni-check-target-ports` checks it too.
#[test]
fn sni_check_target_ports_closes_the_target_port() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-tport");
    let pki = Pki::new(&dir, "api", &["api.test", "other.test"]);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 8443, &pki);
    let ca = pki.ca.display().to_string();
    let tls = |host: &str| {
        curl_op(&["--cacert", &ca, "--resolve", &resolve(host, 8443, &addr), &format!("https://{host}:8443/")])
    };
    let spec = json!({"ops": [tls("other.test"), tls("api.test"), get("api.test", 80, &addr, "/o")], "requests": 1});

    let open = ProxyRun::go(&dir, &api(&addr, &pki.ca), &["--sni-check"], spec.clone());
    let d = open.dump();
    let (body, code, _, _) = curl_parts(&open.results[0]);
    assert_eq!(code, 200, "without --sni-check-target-ports the targetPort takes any SNI\n{d}");
    assert!(body.contains("sni=other.test"), "{d}");

    let closed = ProxyRun::go(&dir, &api(&addr, &pki.ca), &["--sni-check-target-ports"], spec);
    let d = closed.dump();
    assert_ne!(closed.results[0]["rc"], 0, "other.test to the targetPort must be refused\n{d}");
    let (body, code, _, _) = curl_parts(&closed.results[1]);
    assert_eq!(code, 200, "{d}");
    assert!(body.contains("host=api.test:8443 sni=api.test"), "{d}");
    let (body, code, _, _) = curl_parts(&closed.results[2]);
    assert_eq!(code, 200, "the proxy's own upstream connection is not steered\n{d}");
    assert!(body.contains("path=/o host=api.test sni=api.test"), "{d}");
    assert_eq!(closed.events_with("sni_not_in_registry").len(), 1, "{d}");
}

/// CONNECT on a steered port that is not declared HTTP_PROXY: 405 and an event; nothing is
/// forwarded. Plain bytes to a TLS port checked by SNI: 400, an event and a counter. With
/// `--quiet` the proxy prints nothing, yet the events are recorded.
#[test]
fn connect_and_plaintext_are_refused_with_events_and_quiet_silences_the_lines() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-refuse");
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 8443, &pki);
    let _tls = https_server(&ns, &addr, 443, &pki);
    let mut docs = api(&addr, &pki.ca);
    docs.push(se_at("default", "tls", &["secure.test"], &addr, &[(443, "TLS", None)]));
    let spec = json!({"ops": [
        // (not curl_op: its --noproxy would bypass the proxy)
        json!({"kind": "curl", "args": ["-sS", "--max-time", "10", "-p", "-x", format!("http://{addr}:80"), "https://far.test/"]}),
        curl_op(&["--resolve", &resolve("secure.test", 443, &addr), "http://secure.test:443/"]),
    ], "events": 2});
    for quiet in [false, true] {
        let extra: &[&str] = if quiet { &["--sni-check", "--quiet"] } else { &["--sni-check"] };
        let run = ProxyRun::go(&dir, &docs, extra, spec.clone());
        let d = run.dump();
        let connect = &run.results[0];
        assert_ne!(connect["rc"], 0, "{d}");
        assert!(connect["stderr"].as_str().unwrap().contains("405"), "curl reports the 405\n{d}");
        let ev = run.events_with("connect_not_allowed");
        assert_eq!(ev.len(), 1, "{d}");
        assert_eq!(ev[0]["destination"], format!("{addr}:80"), "{d}");
        let (body, code, _, _) = curl_parts(&run.results[1]);
        assert_eq!(code, 400, "{d}");
        assert!(body.contains("this port expects TLS"), "{d}");
        assert_eq!(run.events_with("plaintext_on_tls_port").len(), 1, "{d}");
        assert_eq!(run.metric("enforcer_proxy_refusals_total", &[("reason", "plaintext_on_tls_port")]), 1.0, "{d}");
        assert_eq!(run.metric("enforcer_proxy_refusals_total", &[("reason", "connect_not_allowed")]), 1.0, "{d}");
        let proxy_lines = run.out.stderr.lines().filter(|l| l.contains("proxy")).count();
        if quiet {
            assert_eq!(proxy_lines, 0, "--quiet: no proxy lines\n{d}");
        } else {
            assert!(proxy_lines >= 2, "one line per refusal\n{d}");
        }
    }
}
