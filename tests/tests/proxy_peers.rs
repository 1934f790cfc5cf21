//! A proxied connection can only ever be served as itself: `enforcer daemon --workloads` with two
//! workloads, `a` (whose registry has `api.test` port 80 with SIMPLE TLS origination, so its
//! connections are steered to the proxy) and `b` (whose registry does not).
//!
//! 1. A process of `a` connects to api.test:80 from a fixed local port P: steered, served
//!    (200), counted as `source_workload="a"`.
//! 2. A process of `b` then binds 127.0.0.1:P and connects straight to the proxy's port
//!    (loopback is always allowed) with the same request. It must NOT be served as `a`'s old
//!    connection (with `a`'s registry and labels): no response, nothing counted.
//!
//! Step 2 needs the kernel side to bind PROXY_PEERS filings to their socket and delete them on
//! read and on close (`Dataplane::take_proxy_original`); without that, the stale filing of step 1
//! is found by client address and the assertion marked KERNEL below fails.

use std::time::{Duration, Instant};

use enforcer_tests::*;
use serde_json::{Value, json};

/// The proxy's port from the daemon's `L7 proxy listening local=Some(127.0.0.1:PORT)` line.
fn proxy_port(d: &Daemon) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.log();
        let port = log.lines().filter(|l| l.contains("L7 proxy listening")).find_map(|l| {
            let rest = l.split("127.0.0.1:").nth(1)?;
            rest.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
        });
        if let Some(p) = port {
            return p;
        }
        assert!(Instant::now() < deadline, "no `L7 proxy listening` line with its address\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run [`PROXY_CLIENT_PY`] with `ops` in `cg`, scraping the daemon's admin at the end.
fn client_in(cg: &Cgroup, admin: std::net::SocketAddr, ops: Vec<Value>, requests: u32) -> Value {
    let spec = json!({"admin": admin.to_string(), "ops": ops, "requests": requests});
    let out = cg.run(&[python().display().to_string(), "-c".into(), PROXY_CLIENT_PY.into(), spec.to_string()]);
    assert_eq!(out.status, 0, "{out}");
    serde_json::from_str(out.stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}\n{out}"))
}

#[test]
fn a_port_a_proxied_client_once_used_is_never_served_as_that_client() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-peers");
    let pki = Pki::new(&dir, "api", &["api.test"]);
    let addr = ns.v4(2);
    let _srv = https_server(&ns, &addr, 8443, &pki);
    let reg_a = dir.write(
        "a/registry.yaml",
        &[
            se_at("default", "api", &["api.test"], &addr, &[(80, "HTTP", Some(8443))]),
            dr("default", "api", "api.test", &simple_tls_on(80, &pki.ca, None)),
        ]
        .join("---\n"),
    );
    let reg_b =
        dir.write("b/registry.yaml", &se_at("default", "other", &["other.test"], &ns.v4(3), &[(80, "HTTP", None)]));
    let cg = Cgroup::new("peers");
    let (ca, cb) = (cg.child("a"), cg.child("b"));
    let workloads = dir.write(
        "workloads.yaml",
        &enforcer_tests::workloads_yaml(&[("a", &ca, &reg_a), ("b", &cb, &reg_b)], "REGISTRY_ONLY"),
    );
    let extra: Vec<String> = [
        "--registry",
        reg_b.to_str().unwrap(),
        "--workloads",
        workloads.to_str().unwrap(),
        "--no-host-dns",
        "--dns-port",
        "0",
    ]
    .map(String::from)
    .to_vec();
    let d = Daemon::start(&cg, PinDir::new(), &extra);
    let admin = d.wait_log("admin listener serving");
    let admin = admin_addr_from_log(&admin).expect("admin address");
    let pport = proxy_port(&d);
    let port = free_tcp_port();
    let request = "GET /who HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n";

    // 1. `a`, from port P: steered and served.
    let a = client_in(&ca, admin, vec![raw_op(&addr, 80, request, Some(("0.0.0.0", port)))], 1);
    let resp = a["results"][0]["response"].as_str().unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("hello path=/who host=api.test"), "{a}");
    let sum = |v: &Value, wl: &str| {
        metric_samples(v["metrics"].as_str().unwrap(), "istio_requests_total")
            .iter()
            .filter(|(l, _)| wl.is_empty() || l.get("source_workload").map(String::as_str) == Some(wl))
            .map(|(_, n)| n)
            .sum::<f64>()
    };
    assert_eq!(sum(&a, "a"), 1.0, "{a}");

    // 2. `b`, from the same client address, straight to the proxy.
    let b = client_in(&cb, admin, vec![raw_op("127.0.0.1", pport, request, Some(("127.0.0.1", port)))], 0);
    let r = &b["results"][0];
    assert!(r["error"].is_null() || r["error"].as_str().unwrap().contains("reset"), "b could not connect at all: {b}");
    // KERNEL: needs PROXY_PEERS bound to the socket and deleted on read/close.
    let resp = r["response"].as_str().unwrap();
    assert!(
        !resp.contains("hello"),
        "b's connection from {port} was served as a's earlier connection (stale PROXY_PEERS filing): {resp}\n{}",
        d.log()
    );
    assert_eq!(sum(&b, ""), 1.0, "only a's request was counted\n{b}");
    assert_eq!(sum(&b, "b"), 0.0, "{b}");
}
