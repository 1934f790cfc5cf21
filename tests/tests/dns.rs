//! The DNS-aware part of enforcer, end to end: a real DNS server (dnsmasq) in the test's netns is
//! the upstream; confined workloads resolve through the host's resolv.conf, and their port-53
//! traffic is steered to the agent's forwarder, which learns registry answers into the kernel
//! allow map before releasing them.
//!
//! Every test gets its own netns (addresses 198.18.S.0/24), dnsmasq, registry and agent, so the
//! tests run in parallel. 198.18.0.0/15 is not in the rebinding list, so answers with netns
//! addresses are learned; 10.x / 127.x / 169.254.x / 100.64.x answers exercise the rebinding
//! filter (never connected to).

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::*;
use serde_json::{Value, json};

const PORT: u16 = 8080;
const EAI_NONAME: i64 = -2;
const RCODE_NOERROR: i64 = 0;
const RCODE_SERVFAIL: i64 = 2;
const RCODE_NXDOMAIN: i64 = 3;
const RCODE_REFUSED: i64 = 5;

fn se_header(name: &str, hosts: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts:\n"
    );
    for h in hosts {
        s.push_str(&format!("  - \"{h}\"\n"));
    }
    s.push_str(&format!(
        "  location: MESH_EXTERNAL\n  ports:\n  - number: {PORT}\n    name: http\n    protocol: HTTP\n"
    ));
    s
}

/// `resolution: NONE` without addresses (a wildcard host: learned from DNS answers only).
fn se_none(name: &str, host: &str) -> String {
    se_header(name, &[host]) + "  resolution: NONE\n"
}

/// `resolution: NONE` with explicit `addresses`.
fn se_addresses(name: &str, host: &str, addresses: &[&str]) -> String {
    let mut s = se_header(name, &[host]);
    s.push_str("  addresses:\n");
    for a in addresses {
        s.push_str(&format!("  - \"{a}\"\n"));
    }
    s + "  resolution: NONE\n"
}

/// `resolution: DNS` (resolved by the agent itself, kept fresh on its TTL).
fn se_dns(name: &str, host: &str) -> String {
    se_header(name, &[host]) + "  resolution: DNS\n"
}

/// `resolution: STATIC` with one endpoint.
fn se_static(name: &str, host: &str, ip: &str) -> String {
    se_header(name, &[host]) + &format!("  resolution: STATIC\n  endpoints:\n  - address: \"{ip}\"\n")
}

fn docs(d: &[String]) -> String {
    d.join("---\n")
}

/// The resolver the workload's getaddrinfo() asks (its queries are steered whatever it is).
fn system_resolver() -> String {
    resolv_conf_nameserver().expect(
        "these tests resolve through the host's /etc/resolv.conf (glibc asks its nameserver; enforcer steers the query): /etc/resolv.conf has no nameserver line",
    )
}

fn addrs(v: &Value) -> Vec<String> {
    v["addrs"]
        .as_array()
        .unwrap_or_else(|| panic!("no addrs in {v}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// IPs of a raw query's answer (`[[ip, ttl], ...]`).
fn answer_ips(v: &Value) -> Vec<String> {
    v["addrs"]
        .as_array()
        .unwrap_or_else(|| panic!("no addrs in {v}"))
        .iter()
        .map(|a| a[0].as_str().unwrap().to_string())
        .collect()
}

fn assert_resolves(v: &Value, want: &[&str], what: &str) {
    assert_eq!(v["ok"], true, "{what}: getaddrinfo failed: {v}");
    assert_eq!(addrs(v), want, "{what}: {v}");
}

/// Every endpoint of every service in a registryz document, with the service name added.
fn endpoints(rz: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for s in rz["services"].as_array().expect("services") {
        for e in s["endpoints"].as_array().expect("endpoints") {
            let mut e = e.clone();
            e["service"] = s["name"].clone();
            out.push(e);
        }
    }
    out
}

fn endpoint<'a>(eps: &'a [Value], address: &str) -> Option<&'a Value> {
    eps.iter().find(|e| e["address"] == address)
}

/// Poll `f` every 50 ms until it is true; returns the time it took, or None after `limit`.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if f() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// dnsmasq log lines for queries of `name` (`query[A] name from ...`).
fn upstream_queries(dns: &Dnsmasq, name: &str) -> Vec<String> {
    dns.log()
        .lines()
        .filter(|l| l.contains("query[") && l.contains(&format!("] {name} from ")))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Wildcard hosts are learned from answers, for matching names only
// ---------------------------------------------------------------------------------------------

#[test]
fn wildcard_host_is_learned_from_the_answer_and_only_for_matching_names() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let (a, evil, bare) = (ns.v4(2), ns.v4(3), ns.v4(4));
    let dns =
        Dnsmasq::start(&ns, &ns.v4(7), &[("a.svc.test", &a), ("evilsvc.test", &evil), ("svc.test", &bare)], 60, &[]);
    let dir = TempDir::new("dns-wild");
    let reg = dir.write("registry.yaml", &se_none("wild", "*.svc.test"));
    // `--unknown-names answer`: look-alike names are answered, so their addresses can be tried.
    let pol = registry_dns_args(&reg, dns.addr.ip(), &["--unknown-names", "answer"]);

    // A fresh run: nothing learned yet, so the address is denied before any lookup.
    let mut w = Workload::start(&pol);
    w.connect(&a, PORT).assert_eperm();
    let r = w.call(json!({"op": "resolve_connect", "name": "a.svc.test", "port": PORT}));
    assert_resolves(&r, &[&a], "a.svc.test");
    assert_eq!(r["connect"]["ok"], true, "connect right after the lookup must succeed: {r}");
    assert_eq!(r["connect"]["reply"], format!("hello from {a}:{PORT}\n"), "{r}");
    // Names that only look similar: answered (--unknown-names answer) but not learned.
    for (name, ip) in [("evilsvc.test", &evil), ("svc.test", &bare)] {
        let r = w.resolve(name, PORT);
        assert_resolves(&r, &[ip], name);
        w.connect(ip, PORT).assert_eperm();
    }
    // The learned address stays allowed (TTL 60 s + grace).
    w.connect(&a, PORT).assert_ok(&format!("hello from {a}:{PORT}"));
    // Case and a trailing dot do not matter to the match.
    let r = w.resolve("A.SVC.TEST.", PORT);
    assert_resolves(&r, &[&a], "A.SVC.TEST.");
    let (st, log) = w.finish();
    assert_eq!(st, 0, "enforcer run exit status\n{log}");
    let denied: Vec<&str> = log.lines().filter(|l| l.starts_with("enforcer: denied connect")).collect();
    assert_eq!(denied.len(), 3, "one deny line per denied destination ({a}, {evil}, {bare})\n{log}");
    for ip in [&a, &evil, &bare] {
        assert!(denied.iter().any(|l| l.contains(&format!("-> {ip}:{PORT}/tcp: not in registry"))), "{ip}\n{log}");
    }
    // The queries reached dnsmasq from the host side of the veth (the forwarder), not from a
    // resolver the workload would have reached directly.
    let q = upstream_queries(&dns, "a.svc.test");
    assert!(!q.is_empty() && q.iter().all(|l| l.ends_with(&format!("from {}", ns.v4(1)))), "{q:?}\n{}", dns.log());

    // curl (its own resolver path: getaddrinfo from a resolver thread, A + AAAA) in a fresh run.
    let url = format!("http://a.svc.test:{PORT}/");
    let out = enforcer_run(&pol, &["curl", "-sS", "--noproxy", "*", "--max-time", "10", url.as_str()]);
    out.assert_status(0);
    assert_eq!(out.stdout, format!("hello from {a}:{PORT}\n"), "{out}");
    assert!(!out.stderr.contains("enforcer: denied"), "{out}");
    let url = format!("http://evilsvc.test:{PORT}/");
    let out = enforcer_run(&pol, &["curl", "-s", "--noproxy", "*", "--max-time", "10", url.as_str()]);
    out.assert_status(7);
    assert!(
        out.stderr.contains("enforcer: denied connect curl[") && out.stderr.contains(&format!("-> {evil}:{PORT}/tcp")),
        "{out}"
    );
}

#[test]
fn cname_chains_are_followed_to_the_addresses_they_end_at() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let target = ns.v4(5);
    // alias.svc.test -> CNAME real.elsewhere.test -> A target: the query name is the registry's.
    let dns = Dnsmasq::start(
        &ns,
        &ns.v4(7),
        &[("real.elsewhere.test", &target)],
        60,
        &["--cname=alias.svc.test,real.elsewhere.test"],
    );
    let dir = TempDir::new("dns-cname");
    let reg = dir.write("registry.yaml", &se_none("wild", "*.svc.test"));
    let mut w = Workload::start(&registry_dns_args(&reg, dns.addr.ip(), &[]));
    w.connect(&target, PORT).assert_eperm();
    let q = w.query(&system_resolver(), "alias.svc.test", 1, "udp");
    assert_eq!(
        (q["rcode"].clone(), q["ancount"].clone(), answer_ips(&q)),
        (json!(RCODE_NOERROR), json!(2), vec![target.clone()]),
        "CNAME + A: {q}"
    );
    w.connect(&target, PORT).assert_ok(&format!("hello from {target}:{PORT}"));
    let eps = endpoint_snapshot(&w);
    let e = endpoint(&eps, &target).unwrap_or_else(|| panic!("{target} learned: {eps:?}"));
    assert_eq!((e["source"].as_str(), e["host"].as_str()), (Some("learned"), Some("alias.svc.test")), "{e}");
}

// ---------------------------------------------------------------------------------------------
// 2. No race between the answer and the first connect
// ---------------------------------------------------------------------------------------------

#[test]
fn no_first_connect_race_over_1000_lookups() {
    let ns = Netns::new();
    netns_add_v4_hosts(&ns, 8..=250);
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let n = 1000;
    let names: Vec<String> = (0..n).map(|i| format!("n{i}.svc.test")).collect();
    let ips: Vec<String> = (0..n).map(|i| ns.v4(8 + (i % 243) as u8)).collect();
    let hosts: Vec<(&str, &str)> = names.iter().zip(&ips).map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &hosts, 1, &[]);
    let dir = TempDir::new("dns-race");
    let reg = dir.write("registry.yaml", &se_none("wild", "*.svc.test"));
    // Short lifetimes (TTL 1 s, no grace; swept every second) and a pace of 10 ms per lookup:
    // an address comes round again after 2.43 s, when its previous entry is gone, so nearly every
    // lookup learns an address that is not in the map and the connect right after it is the racy
    // one (`fresh` counts them: the address was denied just before the lookup).
    let mut w =
        Workload::start(&registry_dns_args(&reg, dns.addr.ip(), &["--dns-ttl-floor", "1s", "--dns-grace", "0s"]));
    let t0 = Instant::now();
    let r = w.call(json!({"op": "race", "names": names, "ips": ips, "port": PORT, "pace": 0.01}));
    eprintln!("race (paced): {r}");
    assert_eq!(r["n"], n, "{r}");
    assert_eq!(
        r["eperm"], 0,
        "a connect right after its lookup was denied: the answer was released before the map held it\n{r}"
    );
    assert_eq!(r["other"], 0, "lookups/connects failed otherwise\n{r}");
    let fresh = r["fresh"].as_u64().unwrap();
    assert!(
        fresh >= 900,
        "most lookups should have learned an address absent from the map (fresh = {fresh} of {n})\n{r}"
    );
    // The same names as fast as possible: lookups now also re-learn entries that are still in the
    // map or expire while the loop runs.
    let r = w.call(json!({"op": "race", "names": names, "ips": ips, "port": PORT}));
    eprintln!("race (burst): {r}");
    assert_eq!((r["eperm"].clone(), r["other"].clone()), (json!(0), json!(0)), "{r}");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// 3. resolution: DNS hosts follow record changes; the old address gets a grace period
// ---------------------------------------------------------------------------------------------

#[test]
fn dns_resolution_host_follows_a_record_change_and_the_old_address_expires_after_grace() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let (ip1, ip2) = (ns.v4(2), ns.v4(3));
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("api.test", &ip1)], 1, &[]);
    let dir = TempDir::new("dns-ttl");
    let reg = dir.write("registry.yaml", &se_dns("api", "api.test"));
    let mut w =
        Workload::start(&registry_dns_args(&reg, dns.addr.ip(), &["--dns-ttl-floor", "1s", "--dns-grace", "2s"]));

    w.connect(&ip1, PORT).assert_ok(&format!("hello from {ip1}:{PORT}"));
    w.connect(&ip2, PORT).assert_eperm();
    let eps = endpoints(&w.registryz());
    let e = endpoint(&eps, &ip1).unwrap_or_else(|| panic!("{ip1} not in registryz: {eps:?}"));
    assert_eq!((e["source"].as_str(), e["host"].as_str()), (Some("resolved"), Some("api.test")), "{e}");

    dns.set_hosts(&[("api.test", &ip2)], "api.test", &ip2);
    let changed = Instant::now();
    let to_new = wait_until(Duration::from_secs(10), || w.connect(&ip2, PORT).ok)
        .unwrap_or_else(|| panic!("{ip2} (the new record) never became allowed within 10 s\n{}", w.log()));
    // Right after the switch the old address is still allowed (TTL 1 s + grace 2 s)...
    w.connect(&ip1, PORT).assert_ok(&format!("hello from {ip1}:{PORT}"));
    let eps = endpoint_snapshot(&w);
    assert!(
        endpoint(&eps, &ip1).is_some() && endpoint(&eps, &ip2).is_some(),
        "both in registryz during the grace: {eps:?}"
    );
    // ... and denied once TTL + grace have passed.
    let to_old = wait_until(Duration::from_secs(10), || w.connect(&ip1, PORT).errno == Some(libc::EPERM as i64))
        .unwrap_or_else(|| {
            panic!(
                "{ip1} (the old record) was still allowed 10 s after the change (TTL 1 s + grace 2 s); registryz: {:?}\n{}",
                endpoint(&endpoint_snapshot(&w), &ip1),
                w.log()
            )
        });
    eprintln!("change -> new allowed after {to_new:?}; old denied {to_old:?} later (total {:?})", changed.elapsed());
    assert!(
        to_old >= Duration::from_millis(1000),
        "the old address was removed {to_old:?} after the new one appeared; --dns-grace 2s should keep it ~2 s"
    );
    w.connect(&ip2, PORT).assert_ok(&format!("hello from {ip2}:{PORT}"));
    let eps = endpoint_snapshot(&w);
    assert!(endpoint(&eps, &ip1).is_none(), "{ip1} gone from registryz: {eps:?}");
    assert_eq!(endpoint(&eps, &ip2).map(|e| e["source"].clone()), Some(json!("resolved")), "{eps:?}");
}

fn endpoint_snapshot(w: &Workload) -> Vec<Value> {
    endpoints(&w.registryz())
}

// ---------------------------------------------------------------------------------------------
// 4. Names outside the registry under REGISTRY_ONLY
// ---------------------------------------------------------------------------------------------

struct UnknownSetup {
    ns: Netns,
    _srv: Server,
    dns: Dnsmasq,
    reg: PathBuf,
    _dir: TempDir,
}

fn unknown_setup() -> UnknownSetup {
    let ns = Netns::new();
    let srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("a.svc.test", &ns.v4(2)), ("other.test", &ns.v4(3))], 60, &[]);
    let dir = TempDir::new("dns-unknown");
    let reg = dir.write("registry.yaml", &se_none("wild", "*.svc.test"));
    UnknownSetup { ns, _srv: srv, dns, reg, _dir: dir }
}

/// The registry name still resolves and connects, whatever is done with unknown names.
fn registry_name_works(w: &mut Workload, ns: &Netns) {
    let r = w.call(json!({"op": "resolve_connect", "name": "a.svc.test", "port": PORT}));
    assert_resolves(&r, &[&ns.v4(2)], "a.svc.test");
    assert_eq!(r["connect"]["ok"], true, "{r}");
}

#[test]
fn unknown_names_nxdomain() {
    let s = unknown_setup();
    let resolver = system_resolver();
    let mut w = Workload::start(&registry_dns_args(&s.reg, s.dns.addr.ip(), &["--unknown-names", "nxdomain"]));
    let r = w.resolve("other.test", PORT);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["gai_errno"], EAI_NONAME, "getaddrinfo should fail with EAI_NONAME: {r}");
    for tr in ["udp", "tcp"] {
        let q = w.query(&resolver, "other.test", 1, tr);
        assert_eq!(
            (q["ok"].clone(), q["rcode"].clone(), q["ancount"].clone()),
            (json!(true), json!(RCODE_NXDOMAIN), json!(0)),
            "{tr}: {q}"
        );
    }
    registry_name_works(&mut w, &s.ns);
    // Answered by the forwarder itself: the upstream never saw the unknown name.
    assert!(upstream_queries(&s.dns, "other.test").is_empty(), "{}", s.dns.log());
    assert_eq!(w.metric("enforcer_dns_blocked_total"), Some(3.0), "getaddrinfo + 2 raw queries");
    let (st, log) = w.finish();
    assert_eq!(st, 0, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("dns: name not in the registry") && l.contains("other.test") && l.contains("nxdomain")),
        "an info line names the blocked name\n{log}"
    );
}

#[test]
fn unknown_names_refused() {
    let s = unknown_setup();
    let resolver = system_resolver();
    let mut w = Workload::start(&registry_dns_args(&s.reg, s.dns.addr.ip(), &["--unknown-names", "refused"]));
    for tr in ["udp", "udpconnect", "tcp"] {
        let q = w.query(&resolver, "other.test", 1, tr);
        assert_eq!(
            (q["ok"].clone(), q["rcode"].clone(), q["ancount"].clone()),
            (json!(true), json!(RCODE_REFUSED), json!(0)),
            "{tr}: {q}"
        );
    }
    registry_name_works(&mut w, &s.ns);
    assert!(upstream_queries(&s.dns, "other.test").is_empty(), "{}", s.dns.log());
}

#[test]
fn unknown_names_answer_allows_nothing() {
    let s = unknown_setup();
    let other = s.ns.v4(3);
    let mut w = Workload::start(&registry_dns_args(&s.reg, s.dns.addr.ip(), &["--unknown-names", "answer"]));
    let r = w.call(json!({"op": "resolve_connect", "name": "other.test", "port": PORT}));
    assert_resolves(&r, &[&other], "other.test");
    assert_eq!(r["connect"]["errno"], libc::EPERM, "the answer is released but nothing is learned: {r}");
    registry_name_works(&mut w, &s.ns);
    assert_eq!(upstream_queries(&s.dns, "other.test").len(), 1, "forwarded once\n{}", s.dns.log());
    assert!(endpoint(&endpoint_snapshot(&w), &other).is_none());

    // Not enforcing (ALLOW_ANY): unknown names pass untouched even with --unknown-names nxdomain.
    let mut w = Workload::start(&registry_dns_args(
        &s.reg,
        s.dns.addr.ip(),
        &["--mode", "ALLOW_ANY", "--unknown-names", "nxdomain"],
    ));
    let r = w.call(json!({"op": "resolve_connect", "name": "other.test", "port": PORT}));
    assert_resolves(&r, &[&other], "other.test under ALLOW_ANY");
    assert_eq!(r["connect"]["ok"], true, "{r}");
}

// ---------------------------------------------------------------------------------------------
// 5. Upstream down: SERVFAIL within the timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn upstream_down_gives_servfail_within_the_timeout() {
    let ns = Netns::new();
    let resolver = system_resolver();
    let hole = ns.v4(5);
    let _hole = udp_blackhole(&ns, &hole, 53);
    let closed = ns.v4(6); // nothing listens on port 53 there: ICMP port unreachable
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("a.svc.test", &ns.v4(2))], 60, &[]);
    let dir = TempDir::new("dns-down");
    let reg = dir.write("registry.yaml", &se_none("wild", "*.svc.test"));

    // An upstream that never answers: SERVFAIL after --dns-timeout (1 s) (unknown names are
    // forwarded too with `--unknown-names answer`).
    let mut w = Workload::start(&registry_dns_args(&reg, &hole, &["--dns-timeout", "1s", "--unknown-names", "answer"]));
    for name in ["a.svc.test", "unknown.test"] {
        let q = w.query(&resolver, name, 1, "udp");
        let el = q["elapsed"].as_f64().unwrap();
        assert_eq!((q["ok"].clone(), q["rcode"].clone()), (json!(true), json!(RCODE_SERVFAIL)), "{name}: {q}");
        assert!((0.8..3.0).contains(&el), "{name}: SERVFAIL after {el:.2} s, expected about the 1 s timeout: {q}");
    }
    assert!(w.metric("enforcer_dns_upstream_timeouts_total").unwrap_or(0.0) >= 2.0, "{}", w.admin_get("/metrics").1);
    assert!(w.metric("enforcer_dns_servfail_total").unwrap_or(0.0) >= 2.0, "{}", w.admin_get("/metrics").1);
    drop(w);

    // An upstream that refuses (port closed): SERVFAIL at once, no waiting for the timeout.
    let mut w = Workload::start(&registry_dns_args(&reg, &closed, &["--dns-timeout", "1s"]));
    let q = w.query(&resolver, "a.svc.test", 1, "udp");
    assert_eq!((q["ok"].clone(), q["rcode"].clone()), (json!(true), json!(RCODE_SERVFAIL)), "{q}");
    assert!(q["elapsed"].as_f64().unwrap() < 3.0, "{q}");
    drop(w);

    // The dead upstream first, a live one second: the answer comes from the second after one
    // timeout, and its address is learned.
    let mut pol = registry_dns_args(&reg, &hole, &["--dns-timeout", "1s"]);
    pol.extend(["--dns-upstream".to_string(), dns.addr.ip().to_string()]);
    let mut w = Workload::start(&pol);
    let q = w.query(&resolver, "a.svc.test", 1, "udp");
    assert_eq!((q["rcode"].clone(), answer_ips(&q)), (json!(RCODE_NOERROR), vec![ns.v4(2)]), "{q}");
    let el = q["elapsed"].as_f64().unwrap();
    assert!((0.8..3.0).contains(&el), "failover after {el:.2} s: {q}");
}

// ---------------------------------------------------------------------------------------------
// 6. DNS rebinding: private/loopback/link-local/CGNAT answers are dropped, not learned
// ---------------------------------------------------------------------------------------------

#[test]
fn rebinding_answers_are_filtered_and_not_learned() {
    let ns = Netns::new();
    let resolver = system_resolver();
    let good = ns.v4(2);
    let v6ula = ns.v6(2); // fd00::/8: unique local, in the rebinding list
    let hosts = [
        ("evil.svc.test", "10.1.2.3"),
        ("mixed.svc.test", "10.1.2.4"),
        ("mixed.svc.test", good.as_str()),
        ("lo.svc.test", "127.0.0.1"),
        ("meta.svc.test", "169.254.169.254"),
        ("cgnat.svc.test", "100.64.1.1"),
        ("ula.svc.test", v6ula.as_str()),
        ("listed.svc.test", "10.1.2.5"),
    ];
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &hosts, 60, &[]);
    let dir = TempDir::new("dns-rebind");
    // 10.1.2.5 is listed explicitly by another ServiceEntry: exempt from the filter.
    let reg = dir.write(
        "registry.yaml",
        &docs(&[se_none("wild", "*.svc.test"), se_addresses("corp", "corp.test", &["10.1.2.5"])]),
    );
    let mut w = Workload::start(&registry_dns_args(&reg, dns.addr.ip(), &[]));

    // Sanity: dnsmasq itself does answer the private addresses.
    assert_eq!(dns_a(dns.addr, "evil.svc.test"), vec!["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]);

    let cases: [(&str, u16, Vec<String>); 7] = [
        ("evil.svc.test", 1, vec![]),
        ("mixed.svc.test", 1, vec![good.clone()]),
        ("lo.svc.test", 1, vec![]),
        ("meta.svc.test", 1, vec![]),
        ("cgnat.svc.test", 1, vec![]),
        ("ula.svc.test", 28, vec![]),
        ("listed.svc.test", 1, vec!["10.1.2.5".to_string()]),
    ];
    for (name, qtype, want) in &cases {
        let q = w.query(&resolver, name, *qtype, "udp");
        assert_eq!(q["rcode"], RCODE_NOERROR, "{name}: {q}");
        assert_eq!(&answer_ips(&q), want, "{name} (qtype {qtype}): the workload must not see filtered addresses: {q}");
    }
    let eps = endpoint_snapshot(&w);
    for bad in ["10.1.2.3", "10.1.2.4", "127.0.0.1", "169.254.169.254", "100.64.1.1", v6ula.as_str()] {
        assert!(endpoint(&eps, bad).is_none(), "{bad} must not be in the map: {eps:?}");
    }
    let g = endpoint(&eps, &good).unwrap_or_else(|| panic!("{good} (public part of mixed.svc.test) learned: {eps:?}"));
    assert_eq!((g["source"].as_str(), g["host"].as_str()), (Some("learned"), Some("mixed.svc.test")), "{g}");
    assert_eq!(w.metric("enforcer_dns_rebinding_dropped_total"), Some(6.0), "{}", w.admin_get("/metrics").1);
    // Each drop is an event naming the workload that asked (the command under `run`).
    let (_, events) = w.admin_get("/debug/events");
    let rebinding: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["hook"] == "dns" && e["reason"] == "rebinding")
        .collect();
    assert_eq!(rebinding.len(), 6, "{events}");
    assert!(rebinding.iter().all(|e| e["workload"] == "python3"), "{events}");
    assert!(rebinding.iter().any(|e| e["destination"] == "evil.svc.test"), "{events}");
    // The learned public address connects.
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    w.connect(&good, PORT).assert_ok(&format!("hello from {good}:{PORT}"));
}

// ---------------------------------------------------------------------------------------------
// 7. Reload with a broken file keeps enforcement
// ---------------------------------------------------------------------------------------------

#[test]
fn a_broken_registry_edit_keeps_enforcement_and_the_fix_applies() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let (a, b) = (ns.v4(2), ns.v4(3));
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("x.svc.test", &ns.v4(4))], 60, &[]);
    let dir = TempDir::new("dns-reload");
    let reg = dir.write("registry.yaml", &se_static("api", "api.test", &a));
    let mut w = Workload::start(&registry_dns_args(&reg, dns.addr.ip(), &[]));
    w.connect(&a, PORT).assert_ok(&format!("hello from {a}:{PORT}"));
    w.connect(&b, PORT).assert_eperm();
    assert_eq!(w.metric("enforcer_config_reload_errors_total"), Some(0.0));

    // Broken YAML: rejected (counted), the last good registry stays enforced.
    dir.write("registry.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: [unclosed\n");
    wait_until(Duration::from_secs(10), || w.metric("enforcer_config_reload_errors_total").unwrap_or(0.0) >= 1.0)
        .unwrap_or_else(|| panic!("enforcer_config_reload_errors_total never rose\n{}", w.log()));
    w.connect(&a, PORT).assert_ok(&format!("hello from {a}:{PORT}"));
    w.connect(&b, PORT).assert_eperm();
    assert!(w.log().contains("reload rejected"), "{}", w.log());
    // A broken file that is valid YAML but not a valid ServiceEntry: the same.
    let mut bad = se_static("api", "api.test", &a);
    bad = bad.replace(&format!("number: {PORT}"), "number: \"http\"");
    dir.write("registry.yaml", &bad);
    wait_until(Duration::from_secs(10), || w.metric("enforcer_config_reload_errors_total").unwrap_or(0.0) >= 2.0)
        .unwrap_or_else(|| panic!("the second bad edit was not counted\n{}", w.log()));
    w.connect(&a, PORT).assert_ok(&format!("hello from {a}:{PORT}"));
    // The last good registry still judges names (no wildcard there: x.svc.test is unknown, so
    // it is refused).
    let r = w.call(json!({"op": "resolve_connect", "name": "x.svc.test", "port": PORT}));
    assert_eq!(r["ok"], false, "{r}");

    // The fix: b instead of a, plus a wildcard.
    let reloads_before = w.metric("enforcer_config_reloads_total").unwrap_or(0.0);
    dir.write("registry.yaml", &docs(&[se_static("api", "api.test", &b), se_none("wild", "*.svc.test")]));
    wait_until(Duration::from_secs(10), || w.connect(&b, PORT).ok)
        .unwrap_or_else(|| panic!("the fixed registry was never applied\n{}", w.log()));
    w.connect(&a, PORT).assert_eperm();
    let r = w.call(json!({"op": "resolve_connect", "name": "x.svc.test", "port": PORT}));
    assert_eq!(r["connect"]["ok"], true, "the new wildcard is learned: {r}");
    assert!(w.metric("enforcer_config_reloads_total").unwrap_or(0.0) > reloads_before);
    assert_eq!(w.metric("enforcer_config_reload_errors_total"), Some(2.0));
}

#[test]
fn daemon_learns_names_for_its_cgroup_and_keeps_the_last_good_registry_on_sighup() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let (a, b, c) = (ns.v4(2), ns.v4(3), ns.v4(4));
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("a.svc.test", &a), ("b.svc.test", &b), ("c.other.test", &c)], 60, &[]);
    let dir = TempDir::new("dns-daemon");
    let reg = dir.write("registry.yaml", &se_none("wild", "*.svc.test"));
    let cg = Cgroup::new("dns");
    let mut extra = registry_dns_args(&reg, dns.addr.ip(), &[]);
    extra.extend(["--dns-port".to_string(), "0".to_string()]);
    let mut d = Daemon::start(&cg, PinDir::new(), &extra);
    let admin = wait_admin(&d);
    let rc = |name: &str| json!({"op": "resolve_connect", "name": name, "port": PORT});
    let run = |cg: &Cgroup, reqs: &[Value]| {
        let out = cg.run(&worker_cmd(reqs));
        assert_eq!(out.status, 0, "{out}");
        parse_worker(&out, reqs.len())
    };

    let res = run(&cg, &[json!({"op": "connect", "addr": a, "port": PORT}), rc("a.svc.test"), rc("c.other.test")]);
    assert_eq!(res[0]["errno"], libc::EPERM, "nothing learned before the lookup: {:?}", res[0]);
    assert_eq!((res[1]["addrs"].clone(), res[1]["connect"]["ok"].clone()), (json!([a]), json!(true)), "{:?}", res[1]);
    assert_eq!(res[2]["ok"], false, "c.other.test is not in the registry: refused: {:?}", res[2]);

    dir.write("registry.yaml", "kind: ServiceEntry\nspec: [\n");
    let new = d.sighup_and_wait("reload rejected");
    assert!(new.contains("registry.yaml"), "the rejection names the file: {new}");
    assert_eq!(metric_value(&http_get(admin, "/metrics").1, "enforcer_config_reload_errors_total"), Some(1.0));
    // The old registry is still in force, learning included.
    let res = run(&cg, &[rc("b.svc.test"), rc("c.other.test")]);
    assert_eq!(res[0]["connect"]["ok"], true, "{:?}", res[0]);
    assert_eq!(res[1]["ok"], false, "{:?}", res[1]);

    dir.write("registry.yaml", &se_none("other", "*.other.test"));
    d.sighup_and_wait("reloaded");
    let res = run(&cg, &[rc("c.other.test")]);
    assert_eq!(res[0]["connect"]["ok"], true, "the fixed registry's wildcard is learned: {:?}", res[0]);
    let rz: Value = serde_json::from_str(&http_get(admin, "/debug/registryz").1).unwrap();
    let eps = endpoints(&rz);
    let e = endpoint(&eps, &c).unwrap_or_else(|| panic!("{c} in registryz: {eps:?}"));
    assert_eq!(
        (e["source"].as_str(), e["host"].as_str(), e["service"].as_str()),
        (Some("learned"), Some("c.other.test"), Some("default/other")),
        "{e}"
    );
}

fn wait_admin(d: &Daemon) -> std::net::SocketAddr {
    let mut addr = None;
    wait_until(Duration::from_secs(10), || {
        addr = admin_addr_from_log(&d.log());
        addr.is_some()
    })
    .unwrap_or_else(|| panic!("the daemon never logged its admin address\n{}", d.log()));
    addr.unwrap()
}

// ---------------------------------------------------------------------------------------------
// 8. registryz and `enforcer registry` show what the map holds
// ---------------------------------------------------------------------------------------------

#[test]
fn registryz_and_the_registry_table_show_learned_resolved_and_static_endpoints() {
    let ns = Netns::new();
    let (learned, resolved, stat) = (ns.v4(2), ns.v4(3), ns.v4(4));
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("a.svc.test", &learned), ("api.test", &resolved)], 60, &[]);
    let dir = TempDir::new("dns-rz");
    let reg = dir.write(
        "registry.yaml",
        &docs(&[se_none("wild", "*.svc.test"), se_dns("api", "api.test"), se_static("db", "db.test", &stat)]),
    );
    let mut w = Workload::start(&registry_dns_args(&reg, dns.addr.ip(), &[]));

    // Before any lookup: nothing learned.
    let eps = endpoint_snapshot(&w);
    assert!(endpoint(&eps, &learned).is_none(), "{eps:?}");
    assert_resolves(&w.resolve("a.svc.test", PORT), &[&learned], "a.svc.test");

    let out = enforcer(["registry", "--admin", &w.admin.to_string(), "--json"]);
    out.assert_status(0);
    let rz: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("`enforcer registry --json` is not JSON ({e})\n{out}"));
    assert_eq!(rz["mode"], "REGISTRY_ONLY");
    let eps = endpoints(&rz);
    let check = |ip: &str, service: &str, source: &str, host: Option<&str>| -> Value {
        let e = endpoint(&eps, ip).unwrap_or_else(|| panic!("{ip} not in registryz: {rz:#}")).clone();
        assert_eq!(e["service"], service, "{e}");
        assert_eq!(e["source"], source, "{e}");
        assert_eq!(e["host"].as_str(), host, "{e}");
        assert_eq!(e["ports"], json!([PORT]), "{e}");
        assert_eq!(e["protocol"], "tcp", "{e}");
        assert_eq!(e["status"], "HEALTHY", "{e}");
        e
    };
    let e = check(&learned, "default/wild", "learned", Some("a.svc.test"));
    let exp = e["expires_in_secs"].as_u64().unwrap_or_else(|| panic!("a learned endpoint expires: {e}"));
    assert!((1..=65).contains(&exp), "TTL 60 s + 5 s grace: {e}");
    let e = check(&resolved, "default/api", "resolved", Some("api.test"));
    assert!(e["expires_in_secs"].as_u64().is_some_and(|s| s <= 60), "{e}");
    let e = check(&stat, "default/db", "static", None);
    assert!(e["expires_in_secs"].is_null(), "{e}");
    assert!(rz["map"]["learned_entries"].as_u64().unwrap() >= 1, "{rz:#}");
    let wild = rz["services"].as_array().unwrap().iter().find(|s| s["name"] == "default/wild").unwrap();
    assert_eq!((wild["hosts"].clone(), wild["resolution"].clone()), (json!(["*.svc.test"]), json!("NONE")), "{wild}");

    // The istioctl-style table.
    let out = enforcer(["registry", "--admin", &w.admin.to_string()]);
    out.assert_status(0);
    let rows: Vec<Vec<&str>> = out.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["ENDPOINT", "STATUS", "OUTLIER", "CHECK", "SERVICE", "EXPIRES", "SOURCE"], "{}", out.stdout);
    let row = |ip: &str| {
        rows.iter()
            .find(|r| r[0] == format!("{ip}:{PORT}"))
            .unwrap_or_else(|| panic!("no row for {ip}\n{}", out.stdout))
            .clone()
    };
    let r = row(&learned);
    assert_eq!(
        &r[..4],
        [format!("{learned}:{PORT}").as_str(), "HEALTHY", "OK", &format!("outbound|{PORT}||a.svc.test")],
        "{}",
        out.stdout
    );
    assert_eq!(r[5], "learned", "{}", out.stdout);
    assert!(r[4].ends_with('s') && r[4] != "never", "{}", out.stdout);
    let r = row(&resolved);
    assert_eq!((r[3], r[5]), (format!("outbound|{PORT}||api.test").as_str(), "resolved"), "{}", out.stdout);
    let r = row(&stat);
    assert_eq!((r[3], r[4], r[5]), (format!("outbound|{PORT}||db.test").as_str(), "never", "static"), "{}", out.stdout);

    // The raw endpoint agrees with the CLI.
    let eps = endpoint_snapshot(&w);
    assert_eq!(endpoint(&eps, &learned).map(|e| e["source"].clone()), Some(json!("learned")));
}

// ---------------------------------------------------------------------------------------------
// 9. Steered sockets still see the resolver they asked
// ---------------------------------------------------------------------------------------------

#[test]
fn steered_dns_sockets_see_the_resolver_they_asked() {
    let ns = Netns::new();
    let a = ns.v4(2);
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("a.svc.test", &a)], 60, &[]);
    let dir = TempDir::new("dns-peer");
    let reg = dir.write("registry.yaml", &se_none("wild", "*.svc.test"));
    let mut w = Workload::start(&registry_dns_args(&reg, dns.addr.ip(), &[]));

    let mut resolvers =
        vec![system_resolver(), "192.0.2.53".to_string(), "::ffff:192.0.2.54".to_string(), "2001:db8::53".to_string()];
    resolvers.dedup();
    for server in &resolvers {
        for tr in ["udpconnect", "udp", "tcp"] {
            let q = w.query(server, "a.svc.test", 1, tr);
            let what = format!("{tr} query to [{server}]:53");
            assert_eq!(q["ok"], true, "{what}: {q}");
            assert_eq!((q["rcode"].clone(), answer_ips(&q)), (json!(RCODE_NOERROR), vec![a.clone()]), "{what}: {q}");
            let want = json!([server, 53]);
            if tr != "udp" {
                assert_eq!(
                    q["peer"], want,
                    "{what}: getpeername() must show the resolver asked, not the forwarder: {q}"
                );
            }
            if tr != "tcp" {
                assert_eq!(q["recv_from"], want, "{what}: the answer's source must be the resolver asked: {q}");
            }
        }
    }
    // Every one of those went through the forwarder to the upstream.
    assert_eq!(upstream_queries(&dns, "a.svc.test").len(), resolvers.len() * 3, "{}", dns.log());
    assert_eq!(
        w.metric("enforcer_dns_queries_total"),
        Some((resolvers.len() * 3) as f64),
        "{}",
        w.admin_get("/metrics").1
    );
}
