//! Daemon faults from the confinement issue: a second daemon on the same pin dir, and a reload
//! racing the resolver upkeep on a big registry.

use std::time::{Duration, Instant};

use enforcer_tests::*;

#[test]
fn a_second_daemon_on_the_same_pins_exits_125_and_changes_nothing() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("d-second");
    dir.write("reg/services.yaml", &service_entry("api", &[], &[ns.v4(2)], &[(8080, "HTTP")]));
    let args = vec!["--registry".into(), dir.join("reg").display().to_string(), "--no-host-dns".into()];
    let cg = Cgroup::new("second");
    let pins = PinDir::new();
    let pin_path = pins.path.clone();
    let mut d = Daemon::start(&cg, pins, &args);
    d.wait_log("enforcing");
    let ops = [op("tcp", ns.v4(2), 8080), op("tcp", ns.v4(3), 8080)];

    // The second one, with a registry that would allow everything and a dead DNS port.
    let other = TempDir::new("d-second-other");
    other.write("reg/mesh.yaml", &mesh_config("ALLOW_ANY"));
    let out = enforcer([
        "daemon".into(),
        "--cgroup".into(),
        cg.path.clone().into_os_string(),
        "--pin-dir".into(),
        pin_path.clone().into_os_string(),
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--no-watch".into(),
        "--dns-port".into(),
        "1".into(),
        "--registry".into(),
        other.join("reg").into_os_string(),
    ]);
    out.assert_status(125);
    assert!(out.stderr.contains("another enforcer daemon"), "{out}");

    // The first one enforces exactly as before and still reloads.
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();
    dir.write("reg/more.yaml", &service_entry("more", &[], &[ns.v4(3)], &[(8080, "TCP")]));
    d.sighup_and_wait("reloaded");
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_ok("hello from");
}

#[test]
fn a_reload_that_removes_a_service_is_not_undone_by_the_resolver_upkeep() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    // A DNS host re-resolved every second keeps the upkeep recomputing while the reload runs.
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("dyn.svc.test", &ns.v4(4))], 1, &[]);
    let dir = TempDir::new("d-race");
    // A big static part (20k addresses outside the netns) makes each apply take a while.
    let big: Vec<String> =
        (0..20_000u32).map(|i| format!("100.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255)).collect();
    let big_refs: Vec<&str> = big.iter().map(String::as_str).collect();
    dir.write("reg/big.yaml", &service_entry("big", &big_refs, &[], &[(9000, "TCP")]));
    dir.write(
        "reg/dyn.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: dyn}\nspec:\n  hosts: [dyn.svc.test]\n  ports: [{number: 8080, name: tcp, protocol: TCP}]\n  resolution: DNS\n",
    );
    dir.write("reg/gone.yaml", &service_entry("gone", &[], &[ns.v4(3)], &[(8080, "TCP")]));
    let args = registry_dns_args(&dir.join("reg"), dns.addr.ip(), &["--dns-ttl-floor", "1s"]);
    let cg = Cgroup::new("race");
    let mut d = Daemon::start(&cg, PinDir::new(), &args);
    d.wait_log("enforcing");
    let gone = [op("tcp", ns.v4(3), 8080)];
    cg.client(&gone).res[0].assert_ok("hello from");

    std::fs::remove_file(dir.join("reg/gone.yaml")).unwrap();
    d.sighup_and_wait("reloaded");
    // For 5 s (several upkeep rounds), the removed address stays denied.
    let until = Instant::now() + Duration::from_secs(5);
    let mut tries = 0;
    while Instant::now() < until {
        cg.client(&gone).res[0].assert_eperm();
        tries += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(tries >= 5, "only {tries} tries");
    assert!(!d.log().contains("applying resolved addresses failed"), "{}", d.log());
}
