//! DNS steering follows the forwarder's liveness (the kernel reads its heartbeat): a SIGKILLed
//! daemon's workloads get `--dns-fallback` within the heartbeat timeout instead of timing out
//! against a dead forwarder, and a restarted daemon steers again.

use std::time::{Duration, Instant};

use enforcer_tests::*;
use serde_json::{Value, json};

const WILD: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: wild, namespace: default}\nspec:\n  hosts: ['*.svc.test']\n  location: MESH_EXTERNAL\n  resolution: NONE\n  ports: [{number: 8080, name: http, protocol: HTTP}]\n";

fn run(cg: &Cgroup, reqs: &[Value]) -> Vec<Value> {
    let out = cg.run(&worker_cmd(reqs));
    assert_eq!(out.status, 0, "{out}");
    parse_worker(&out, reqs.len())
}

fn query(server: &str, name: &str, timeout: f64) -> Value {
    json!({"op": "query", "server": server, "name": name, "timeout": timeout})
}

struct Setup {
    ns: Netns,
    _srv: Server,
    dns: Dnsmasq,
    dir: TempDir,
    cg: Cgroup,
}

fn setup(tag: &str, mode: Option<&str>) -> (Setup, Vec<String>) {
    let ns = Netns::new();
    let srv = ns.serve(&["tcp:8080"]);
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("a.svc.test", &ns.v4(2)), ("other.test", &ns.v4(3))], 60, &[]);
    let dir = TempDir::new(tag);
    dir.write("reg/wild.yaml", WILD);
    if let Some(m) = mode {
        dir.write("reg/mesh.yaml", &mesh_config(m));
    }
    let args = registry_dns_args(&dir.join("reg"), dns.addr.ip(), &["--dns-port", "0"]);
    let cg = Cgroup::new(tag);
    (Setup { ns, _srv: srv, dns, dir, cg }, args)
}

fn sigkill(d: &Daemon) {
    // SAFETY: plain syscall on the test's own child.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) }, 0);
}

/// Poll (queries with a short timeout, every 100 ms) until `done` holds; the time it took.
fn until(cg: &Cgroup, server: &str, limit: Duration, mut done: impl FnMut(&Value) -> bool) -> (Duration, Value) {
    let t0 = Instant::now();
    loop {
        let r = run(cg, &[query(server, "other.test", 0.5)]).remove(0);
        if done(&r) {
            return (t0.elapsed(), r);
        }
        assert!(t0.elapsed() < limit, "no fallback within {limit:?}: last query {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_killed_daemons_registry_only_workloads_get_eperm_for_dns_at_once_and_a_restarted_daemon_steers_again() {
    let (s, args) = setup("fb-ro", None);
    let resolver = s.ns.v4(7);
    let a = s.ns.v4(2);
    let d = Daemon::start(&s.cg, PinDir::new(), &args);
    d.wait_log("enforcing");
    let r = run(
        &s.cg,
        &[
            query(&resolver, "a.svc.test", 3.0),
            query(&resolver, "other.test", 3.0),
            json!({"op": "connect", "addr": a, "port": 8080}),
        ],
    );
    assert_eq!(r[0]["addrs"][0][0], a.as_str(), "steered and answered: {}\n{}", r[0], d.log());
    assert_eq!(r[1]["rcode"], 5, "the forwarder refuses names outside the registry: {}", r[1]);
    assert_eq!(r[2]["ok"], true, "learned from the steered answer: {}", r[2]);

    sigkill(&d);
    let (took, r) = until(&s.cg, &resolver, Duration::from_secs(8), |r| r["errno"] == libc::EPERM);
    eprintln!("REGISTRY_ONLY: DNS refused with EPERM {took:?} after SIGKILL (query took {}s)", r["elapsed"]);
    assert!(took <= Duration::from_millis(4500), "fallback took {took:?}");
    assert!(r["elapsed"].as_f64().unwrap() < 0.2, "refused at once, not a timeout: {r}");
    // Registry traffic stays enforced meanwhile (the pinned programs).
    let c = run(&s.cg, &[json!({"op": "connect", "addr": s.ns.v4(3), "port": 8080})]);
    assert_eq!(c[0]["errno"], libc::EPERM, "{}", c[0]);

    let (_, _, pins) = d.stop();
    let d2 = Daemon::start(&s.cg, pins, &args);
    d2.wait_log("enforcing");
    // The refusals made while no daemon ran stayed in the pinned ring buffer, with their reason.
    d2.wait_log("DNS forwarder not running");
    let r = run(&s.cg, &[query(&resolver, "other.test", 3.0), query(&resolver, "a.svc.test", 3.0)]);
    assert_eq!(r[0]["rcode"], 5, "steered to the new forwarder again (it refuses): {}\n{}", r[0], d2.log());
    assert_eq!(r[1]["addrs"][0][0], a.as_str(), "{}", r[1]);
    let _ = (&s.dns, &s.dir);
}

#[test]
fn a_killed_daemons_allow_any_workloads_reach_their_resolver_directly() {
    let (s, args) = setup("fb-any", Some("ALLOW_ANY"));
    let resolver = s.ns.v4(7);
    let d = Daemon::start(&s.cg, PinDir::new(), &args);
    d.wait_log("enforcing");
    let r = run(&s.cg, &[query(&resolver, "other.test", 3.0)]);
    assert_eq!(r[0]["addrs"][0][0], s.ns.v4(3).as_str(), "through the forwarder: {}\n{}", r[0], d.log());

    sigkill(&d);
    let (took, r) = until(&s.cg, &resolver, Duration::from_secs(8), |r| r["ok"] == true);
    eprintln!("ALLOW_ANY: DNS answered directly {took:?} after SIGKILL (query took {}s)", r["elapsed"]);
    assert_eq!(r["addrs"][0][0], s.ns.v4(3).as_str(), "{r}");
    assert!(took <= Duration::from_millis(4500), "fallback took {took:?}");
    assert_eq!(r["recv_from"][0], resolver.as_str(), "from the resolver itself: {r}");
    let _ = (&s.dns, &s.dir);
}

#[test]
fn dns_fallback_refuse_refuses_allow_any_workloads_too() {
    let (s, mut args) = setup("fb-refuse", Some("ALLOW_ANY"));
    args.extend(["--dns-fallback".into(), "refuse".into()]);
    let resolver = s.ns.v4(7);
    let d = Daemon::start(&s.cg, PinDir::new(), &args);
    d.wait_log("enforcing");
    sigkill(&d);
    let (took, r) = until(&s.cg, &resolver, Duration::from_secs(8), |r| r["errno"] == libc::EPERM);
    eprintln!("--dns-fallback refuse: EPERM {took:?} after SIGKILL");
    assert!(took <= Duration::from_millis(4500), "fallback took {took:?}: {r}");
    let _ = (&s.dns, &s.dir);
}

#[test]
fn a_stopped_daemon_clears_its_heartbeat_so_the_fallback_applies_at_once() {
    let (s, args) = setup("fb-term", None);
    let resolver = s.ns.v4(7);
    let d = Daemon::start(&s.cg, PinDir::new(), &args);
    d.wait_log("enforcing");
    let r = run(&s.cg, &[query(&resolver, "other.test", 3.0)]);
    assert_eq!(r[0]["rcode"], 5, "steered: {}\n{}", r[0], d.log());
    let (status, log, _pins) = d.stop();
    assert_eq!(status, 0, "{log}");
    let t0 = Instant::now();
    let r = run(&s.cg, &[query(&resolver, "other.test", 3.0)]);
    assert_eq!(r[0]["errno"], libc::EPERM, "refused right after SIGTERM: {}\n{log}", r[0]);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let _ = (&s.dns, &s.dir);
}
