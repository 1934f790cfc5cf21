//! The secure defaults of the DNS forwarder, end to end with real upstreams (dnsmasq, and a
//! recording upstream for what leaves the host): names outside the registry are REFUSED under
//! REGISTRY_ONLY and never reach the upstream, each reported once (deny line, event, counter);
//! search-domain expansions get the same answer; every question of a query is judged; EDNS
//! options that carry data are stripped; NAT64 answers embedding private addresses are dropped;
//! the TTL floor has a minimum and TTL-0 names neither hot-loop nor race.

use std::time::Duration;

use enforcer_tests::*;
use serde_json::json;

const PORT: u16 = 8080;

fn se_wild() -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: wild\n  namespace: default\nspec:\n  hosts:\n  - \"*.svc.test\"\n  location: MESH_EXTERNAL\n  ports:\n  - number: {PORT}\n    name: http\n    protocol: HTTP\n  resolution: NONE\n"
    )
}

fn upstream_queries(dns: &Dnsmasq, name: &str) -> usize {
    dns.log().lines().filter(|l| l.contains("query[") && l.contains(&format!("] {name} from "))).count()
}

#[test]
fn unknown_names_are_refused_by_default_and_reported_once() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("a.svc.test", &ns.v4(2)), ("other.test", &ns.v4(3))], 60, &[]);
    let dir = TempDir::new("dns-refuse");
    let reg = dir.write("registry.yaml", &se_wild());
    let port = free_dns_port();
    let mut w = Workload::start(&registry_dns_args(
        &reg,
        dns.addr.ip(),
        &["--dns-port", &port.to_string(), "--dns-search", "corp.test"],
    ));
    for _ in 0..3 {
        let r = w.resolve("other.test", PORT);
        assert_eq!(r["ok"], false, "{r}");
    }
    let q = w.query(&resolv_conf_nameserver().unwrap(), "other.test", 1, "udp");
    assert_eq!(q["rcode"], 5, "REFUSED: {q}");
    // The resolver trying other.test with a search domain: the same answer, the same name.
    let fwd = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(rcode(&raw_exchange(fwd, &raw_query(1, &[("other.test.corp.test", 1)], None, false))), 5);
    // An expansion of a registered name: NXDOMAIN, so the resolver goes on to the name itself.
    assert_eq!(rcode(&raw_exchange(fwd, &raw_query(2, &[("a.svc.test.corp.test", 1)], None, false))), 3);
    // The registry name works.
    let r = w.call(json!({"op": "resolve_connect", "name": "a.svc.test", "port": PORT}));
    assert_eq!(r["connect"]["ok"], true, "{r}");
    assert_eq!(upstream_queries(&dns, "other.test"), 0, "the name never left the host\n{}", dns.log());
    assert_eq!(upstream_queries(&dns, "other.test.corp.test"), 0);
    let metrics = w.admin_get("/metrics").1;
    let refused = metric_samples(&metrics, "enforcer_dns_refused_total");
    let by =
        |reason: &str| refused.iter().find(|(l, _)| l.get("reason").map(String::as_str) == Some(reason)).map(|x| x.1);
    assert!(by("not_in_registry").unwrap_or(0.0) >= 4.0, "{metrics}");
    assert_eq!(by("search_expansion"), Some(1.0), "{metrics}");
    assert_eq!(by("search_miss"), Some(1.0), "{metrics}");
    // One event for the name per asking workload in /debug/events (hook dns): the command's, and
    // the test's own raw queries (outside the run's cgroup: no workload name).
    let (_, events) = w.admin_get("/debug/events");
    let dns_events: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["hook"] == "dns")
        .collect();
    let by_workload = |w: &str| dns_events.iter().filter(|e| e["workload"] == w).count();
    assert_eq!((by_workload("python3"), by_workload("unknown")), (1, 1), "{events}");
    let (st, log) = w.finish();
    assert_eq!(st, 0, "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("enforcer: denied dns python3 -> ")).collect();
    assert_eq!(lines.len(), 1, "each refused name once per run and workload\n{log}");
    assert!(
        lines[0].contains("other.test (A)") && lines[0].contains("REFUSED") && lines[0].contains("--allow other.test"),
        "{log}"
    );
}

#[test]
fn audit_answers_and_reports_what_it_would_refuse() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("other.test", &ns.v4(3))], 60, &[]);
    let dir = TempDir::new("dns-audit");
    let reg = dir.write("registry.yaml", &se_wild());
    let mut w = Workload::start(&registry_dns_args(&reg, dns.addr.ip(), &["--mode", "AUDIT"]));
    let r = w.call(json!({"op": "resolve_connect", "name": "other.test", "port": PORT}));
    assert_eq!(r["connect"]["ok"], true, "{r}");
    assert_eq!(w.metric("enforcer_dns_audit_would_refuse_total"), Some(1.0));
    let (_, log) = w.finish();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("enforcer: audit: would refuse dns python3 -> other.test")).count(),
        1,
        "{log}"
    );
}

#[test]
fn every_question_is_judged_and_edns_data_is_stripped() {
    let ns = Netns::new();
    let dir = TempDir::new("dns-sanitize");
    // The upstream records what reaches it; AAAA answers are a NAT64 form of the metadata address.
    let up = CaptureDns::start(&ns, &dir, &ns.v4(7), &ns.v4(2), "64:ff9b::a9fe:a9fe");
    let reg = dir.write("registry.yaml", &se_wild());
    let port = free_dns_port();
    let w = Workload::start(&registry_dns_args(&reg, up.addr.ip(), &["--dns-port", &port.to_string()]));
    let fwd = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // A registered first question and an unregistered second one: refused, nothing forwarded.
    let m = raw_exchange(fwd, &raw_query(7, &[("a.svc.test", 1), ("secret.evil.example", 1)], None, false));
    assert_eq!(rcode(&m), 5);
    assert!(up.queries().is_empty(), "nothing reached the upstream");

    // EDNS: NSID, an unknown option with data, COOKIE, PADDING (non-zero), CLIENT-SUBNET; and an
    // A record in the additional section.
    let opts: Vec<(u16, Vec<u8>)> = vec![
        (3, vec![]),
        (65001, b"exfil-data".to_vec()),
        (10, vec![1, 2, 3, 4, 5, 6, 7, 8]),
        (12, b"not zeros".to_vec()),
        (8, vec![0, 1, 24, 0, 198, 51, 100]),
    ];
    let m = raw_exchange(fwd, &raw_query(0x4242, &[("a.svc.test", 1)], Some(&opts), true));
    assert_eq!((rcode(&m), u16::from_be_bytes([m[0], m[1]])), (0, 0x4242), "answered with the client's id");
    let seen = up.queries();
    assert_eq!(seen.len(), 1);
    assert_ne!(u16::from_be_bytes([seen[0][0], seen[0][1]]), 0x4242, "the upstream sees the forwarder's id");
    let (arcount, options) = opt_options(&seen[0]);
    assert_eq!(arcount, 1, "only the OPT record is forwarded");
    assert_eq!(options, vec![(10, vec![1, 2, 3, 4, 5, 6, 7, 8]), (12, vec![0; 9])], "cookie and zeroed padding only");
    assert_eq!(w.metric("enforcer_dns_stripped_total"), Some(4.0));

    // NAT64 of 169.254.169.254: dropped by the rebinding filter, not learned.
    let m = raw_exchange(fwd, &raw_query(9, &[("v6.svc.test", 28)], None, false));
    assert_eq!((rcode(&m), u16::from_be_bytes([m[6], m[7]])), (0, 0), "no AAAA left in the answer");
    assert_eq!(w.metric("enforcer_dns_rebinding_dropped_total"), Some(1.0));
}

#[test]
fn ttl_floor_has_a_minimum_and_ttl_zero_names_neither_hot_loop_nor_race() {
    let out = enforcer(["run", "--dns-ttl-floor", "0s", "--", "true"]);
    assert_ne!(out.status, 0, "{out}");
    assert!(out.stderr.contains("below the minimum of 1s"), "{out}");

    let ns = Netns::new();
    netns_add_v4_hosts(&ns, 8..=57);
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let names: Vec<String> = (0..50).map(|i| format!("z{i}.svc.test")).collect();
    let ips: Vec<String> = (0..50).map(|i| ns.v4(8 + i as u8)).collect();
    let mut hosts: Vec<(&str, &str)> = names.iter().zip(&ips).map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let api_ip = ns.v4(3);
    hosts.push(("api.test", &api_ip));
    // TTL 0 for everything.
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &hosts, 0, &[]);
    let dir = TempDir::new("dns-floor");
    let api = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: default\nspec:\n  hosts:\n  - api.test\n  location: MESH_EXTERNAL\n  ports:\n  - number: {PORT}\n    name: http\n    protocol: HTTP\n  resolution: DNS\n"
    );
    let reg = dir.write("registry.yaml", &(se_wild() + &api));
    let mut w =
        Workload::start(&registry_dns_args(&reg, dns.addr.ip(), &["--dns-ttl-floor", "1s", "--dns-grace", "0s"]));
    // Lookup -> connect at once, 50 TTL-0 names, twice: never EPERM.
    for round in 0..2 {
        let r = w.call(json!({"op": "race", "names": names, "ips": ips, "port": PORT}));
        assert_eq!((r["eperm"].clone(), r["other"].clone()), (json!(0), json!(0)), "round {round}: {r}");
    }
    // The agent's own refresh of a TTL-0 `resolution: DNS` host: about once a second.
    let before = upstream_queries(&dns, "api.test");
    std::thread::sleep(Duration::from_secs(5));
    let n = upstream_queries(&dns, "api.test") - before;
    assert!(n <= 12, "{n} queries for api.test in 5 s (A+AAAA once a second at most)\n{}", dns.log());
}

/// Inline client for the zombie test: resolve, hold a connection open across the TTL, reconnect
/// while it is open, close it, wait, reconnect. Prints one JSON object.
const HOLD_PY: &str = r#"
import json, socket, sys, time
name, port = sys.argv[1], int(sys.argv[2])
addr = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
def dial():
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect((addr, port)); return s, 0
    except OSError as e:
        s.close(); return None, e.errno
held, e0 = dial()
time.sleep(float(sys.argv[3]))
again, e1 = dial()
if again: again.close()
if held: held.close()
time.sleep(float(sys.argv[4]))
late, e2 = dial()
if late: late.close()
print(json.dumps({"addr": addr, "first": e0, "while_open": e1, "after_close": e2}))
"#;

#[test]
fn learned_addresses_live_while_connections_to_them_are_open() {
    let ns = Netns::new();
    let addr = ns.v4(2);
    let _srv = silent_listener(&ns, &addr, PORT);
    // TTL 1 s, floor 1 s, no grace: without the zombie keeper the entry is gone after ~1.1 s.
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("long.svc.test", &addr)], 1, &[]);
    let dir = TempDir::new("dns-zombie");
    let reg = dir.write("registry.yaml", &se_wild());
    let pol = registry_dns_args(&reg, dns.addr.ip(), &["--dns-ttl-floor", "1s", "--dns-grace", "0s"]);
    let out = enforcer_run(
        &pol,
        &[python().display().to_string().as_str(), "-c", HOLD_PY, "long.svc.test", "8080", "5", "8"],
    );
    out.assert_status(0);
    let r: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(r["first"], 0, "{out}");
    assert_eq!(r["while_open"], 0, "5 s after a 1 s TTL the address is kept: a connection to it is open\n{out}");
    assert_eq!(r["after_close"], libc::EPERM, "8 s after the last connection closed it is gone\n{out}");
}
