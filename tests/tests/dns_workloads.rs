//! DNS events name the workload that asked, as connect-deny events do: `enforcer daemon
//! --workloads` with two workloads `a` and `b` (same registry, `*.svc.test`), each asking for a
//! name outside it and both for a shared one; `/debug/events` (and `enforcer events`) has one
//! refusal per (workload, name), each with its workload.

use enforcer_tests::*;
use serde_json::Value;

fn resolve_in(cg: &Cgroup, names: &[&str]) {
    let script = format!(
        "import socket\nfor n in {names:?}:\n    try:\n        socket.getaddrinfo(n, 80, socket.AF_INET, socket.SOCK_STREAM)\n    except OSError as e:\n        print(n, e)\n"
    );
    let out = cg.run(&["python3".into(), "-c".into(), script]);
    out.assert_status(0);
}

#[test]
fn dns_refusals_carry_the_workload_of_the_asking_socket() {
    let ns = Netns::new();
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("a.svc.test", &ns.v4(2))], 60, &[]);
    let dir = TempDir::new("dns-workloads");
    let reg = dir.write(
        "registry.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: wild}\nspec:\n  hosts: [\"*.svc.test\"]\n  ports: [{number: 80, name: tcp, protocol: TCP}]\n  resolution: NONE\n",
    );
    let cg = Cgroup::new("dnswl");
    let (ca, cb) = (cg.child("a"), cg.child("b"));
    let workloads = dir.write(
        "workloads.yaml",
        &enforcer_tests::workloads_yaml(&[("a", &ca, &reg), ("b", &cb, &reg)], "REGISTRY_ONLY"),
    );
    let extra: Vec<String> = [
        "--registry",
        reg.to_str().unwrap(),
        "--workloads",
        workloads.to_str().unwrap(),
        "--no-host-dns",
        "--dns-upstream",
        &dns.addr.ip().to_string(),
        "--dns-port",
        "0",
    ]
    .map(String::from)
    .to_vec();
    let d = Daemon::start(&cg, PinDir::new(), &extra);
    let admin = admin_addr_from_log(&d.wait_log("admin listener serving")).expect("admin address");
    // Each workload's port-53 queries are steered to the forwarder, wherever they were sent.
    resolve_in(&ca, &["only-a.test", "both.test", "a.svc.test"]);
    resolve_in(&cb, &["only-b.test", "both.test", "both.test"]);
    let (st, body) = http_get(admin, "/debug/events");
    assert_eq!(st, 200, "{body}");
    let mut seen: Vec<(String, String)> = body
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["hook"] == "dns")
        .map(|e| {
            (e["workload"].as_str().unwrap_or("").to_string(), e["destination"].as_str().unwrap_or("").to_string())
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String)> =
        [("a", "both.test"), ("a", "only-a.test"), ("b", "both.test"), ("b", "only-b.test")]
            .iter()
            .map(|(w, n)| (w.to_string(), n.to_string()))
            .collect();
    assert_eq!(seen, want, "one refusal per workload and name\n{body}\n--- daemon\n{}", d.log());
    assert!(body.contains("denied dns a -> only-a.test (A)"), "{body}");
    // A registered name still resolves (and is not reported).
    assert!(!body.contains("a.svc.test"), "{body}");
}
