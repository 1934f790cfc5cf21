//! `enforcer daemon`: enforcement on a cgroup the test creates, reloads on SIGHUP, pinned state
//! that survives restarts, and `enforcer unpin`.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use enforcer_tests::*;

/// Registry dir with `services.yaml` (one ServiceEntry `api` on `endpoints`:8080) and, if `mode`,
/// `mesh.yaml`.
fn write_registry(dir: &TempDir, endpoints: &[String], mode: Option<&str>) {
    dir.write("reg/services.yaml", &service_entry("api", &[], endpoints, &[(8080, "HTTP")]));
    if let Some(m) = mode {
        dir.write("reg/mesh.yaml", &mesh_config(m));
    }
}

fn daemon_args(dir: &TempDir) -> Vec<String> {
    vec!["--registry".into(), dir.join("reg").display().to_string(), "--no-host-dns".into()]
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn daemon_enforces_on_the_cgroup_and_its_descendants_only() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("d-enforce");
    write_registry(&dir, &[ns.v4(2)], None);
    let cg = Cgroup::new("enforce");
    let d = Daemon::start(&cg, PinDir::new(), &daemon_args(&dir));
    let log = d.wait_log("enforcing (attached)");
    assert!(log.contains("mode=REGISTRY_ONLY"), "{log}");

    let (a, b) = (ns.v4(2), ns.v4(3));
    // A process started in the cgroup.
    let run = cg.client(&[op("tcp", &a, 8080), op("tcp", &b, 8080)]);
    run.res[0].assert_ok(&format!("hello from {a}:8080"));
    run.res[1].assert_eperm();
    let log = d.wait_log(&format!("python3[{}]", run.pid));
    assert!(
        log.contains(&format!(
            "enforcer: denied connect python3[{}] -> {b}:8080/tcp: not in registry; allow it with --allow {b}:8080 or a ServiceEntry",
            run.pid
        )),
        "the daemon logs the deny\n{log}"
    );

    // A process in a child cgroup: also enforced.
    let sub = cg.child("sub");
    let run = sub.client(&[op("tcp", &b, 8080), op("udp", &b, 5353)]);
    run.res[0].assert_eperm();
    run.res[1].assert_eperm();
    drop(sub);

    // A process outside the cgroup is not affected.
    let out = output_with_timeout(
        Command::new(python()).arg("-c").arg(CLIENT_PY).arg(op("tcp", &b, 8080)),
        Duration::from_secs(30),
    );
    let (_, res) = parse_client(&out);
    res[0].assert_ok(&format!("hello from {b}:8080"));

    // A running process moved into the cgroup is judged from then on.
    let script = format!("import sys\nsys.stdin.readline()\n{CLIENT_PY}");
    let mut child = Command::new(python())
        .arg("-c")
        .arg(script)
        .args([op("tcp", &b, 8080), op("tcp", &a, 8080)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cg.move_in(child.id());
    assert!(cg.pids().contains(&(child.id() as i32)));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let out = Outcome {
        status: shell_status(o.status),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    };
    out.assert_status(0);
    let (_, res) = parse_client(&out);
    res[0].assert_eperm();
    res[1].assert_ok("hello from");
}

#[test]
fn daemon_switches_mode_at_runtime_on_sighup() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("d-mode");
    write_registry(&dir, &[ns.v4(2)], Some("REGISTRY_ONLY"));
    let cg = Cgroup::new("mode");
    let mut d = Daemon::start(&cg, PinDir::new(), &daemon_args(&dir));
    let log = d.wait_log("enforcing");
    assert!(log.contains("mode=REGISTRY_ONLY") && log.contains("mesh.yaml"), "mode and its source are logged\n{log}");
    let ops = [op("tcp", ns.v4(2), 8080), op("tcp", ns.v4(3), 8080)];

    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();

    dir.write("reg/mesh.yaml", &mesh_config("ALLOW_ANY"));
    let new = d.sighup_and_wait("reloaded");
    assert!(new.contains("mode=ALLOW_ANY"), "{new}");
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_ok(&format!("hello from {}:8080", ns.v4(3)));

    dir.write("reg/mesh.yaml", &mesh_config("REGISTRY_ONLY"));
    let new = d.sighup_and_wait("reloaded");
    assert!(new.contains("mode=REGISTRY_ONLY"), "{new}");
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();

    // AUDIT: allowed, logged as audit.
    dir.write("reg/mesh.yaml", &mesh_config("AUDIT"));
    let new = d.sighup_and_wait("reloaded");
    assert!(new.contains("mode=AUDIT"), "{new}");
    let run = cg.client(&ops);
    run.res[1].assert_ok("hello from");
    d.wait_log(&format!("audit: would deny connect python3[{}] -> {}:8080/tcp", run.pid, ns.v4(3)));
    assert!(d.is_running());
}

#[test]
fn daemon_keeps_the_last_good_registry_when_a_reload_is_invalid() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("d-bad");
    write_registry(&dir, &[ns.v4(2)], None);
    let cg = Cgroup::new("bad");
    let mut d = Daemon::start(&cg, PinDir::new(), &daemon_args(&dir));
    d.wait_log("enforcing");
    let ops = [op("tcp", ns.v4(2), 8080), op("tcp", ns.v4(3), 8080)];
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();

    // An invalid file that would also allow .3 if it were (partly) applied.
    let bad =
        service_entry("api", &[], &[ns.v4(2), ns.v4(3)], &[(8080, "HTTP")]).replace("number: 8080", "number: 99999");
    let f = dir.write("reg/services.yaml", &bad);
    let line = bad.lines().position(|l| l.contains("99999")).unwrap() + 1;
    let new = d.sighup_and_wait("reload rejected");
    assert!(new.contains("last good registry"), "the log says the last good registry stays\n{new}");
    assert!(new.contains(&format!("{}:{line}", f.display())), "the error names file:line\n{new}");
    assert!(lines_with(&new, "reload rejected")[0].contains("ERROR"), "logged as an error\n{new}");
    assert!(d.is_running(), "the daemon survives a bad reload");
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();

    // YAML that does not even parse.
    dir.write("reg/services.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nspec: [unclosed\n");
    d.sighup_and_wait("reload rejected");
    assert!(d.is_running());
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();

    // Fixed: the new registry applies.
    write_registry(&dir, &[ns.v4(2), ns.v4(3)], None);
    d.sighup_and_wait("reloaded");
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_ok(&format!("hello from {}:8080", ns.v4(3)));
}

#[test]
fn enforcement_survives_daemon_restart_and_unpin_detaches() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("d-restart");
    write_registry(&dir, &[ns.v4(2)], None);
    let cg = Cgroup::new("restart");
    let args = daemon_args(&dir);
    let (a, b) = (ns.v4(2), ns.v4(3));
    let ops = [op("tcp", &a, 8080), op("tcp", &b, 8080)];

    let d1 = Daemon::start(&cg, PinDir::new(), &args);
    d1.wait_log("enforcing (attached)");
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();

    // Stop it: exits 0, pins stay.
    let d1_pid = d1.pid();
    let (status, log, pins) = d1.stop();
    assert_eq!(status, 0, "daemon exits 0 on SIGTERM\n{log}");
    assert!(log.contains("enforcement stays pinned"), "{log}");
    assert!(!std::path::Path::new(&format!("/proc/{d1_pid}")).exists(), "no daemon is running");
    let pinned = pins.entries();
    assert!(pinned.iter().any(|p| p.starts_with("link_")), "links are pinned: {pinned:?}");
    assert!(pinned.iter().any(|p| p == "ALLOW"), "maps are pinned: {pinned:?}");

    // No daemon: still enforced.
    let run = cg.client(&ops);
    run.res[0].assert_ok(&format!("hello from {a}:8080"));
    run.res[1].assert_eperm();

    // A daemon that cannot load its registry refuses to start and leaves the enforcement alone.
    let bad_dir = TempDir::new("d-restart-bad");
    let bad = bad_dir.write("bad.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nspec: [unclosed\n");
    let out =
        Daemon::start_fails(&cg, &pins, &["--registry".into(), bad.display().to_string(), "--no-host-dns".into()]);
    out.assert_status(125);
    assert!(out.stderr.contains("stays in place"), "{out}");
    assert_eq!(pins.entries(), pinned, "the pins are untouched");
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();

    // Restart: adopts the pins.
    let mut d2 = Daemon::start(&cg, pins, &args);
    let log = d2.wait_log("enforcing");
    assert!(log.contains("adopted the pinned programs"), "{log}");
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();

    // A registry change still applies (additions and removals): now only .3 is registered.
    write_registry(&dir, std::slice::from_ref(&b), None);
    let new = d2.sighup_and_wait("reloaded");
    assert!(new.contains("added=") && new.contains("removed="), "{new}");
    let run = cg.client(&ops);
    run.res[0].assert_eperm();
    run.res[1].assert_ok(&format!("hello from {b}:8080"));

    // Stop, unpin: the programs are detached, everything passes.
    let (status, log, pins) = d2.stop();
    assert_eq!(status, 0, "{log}");
    let run = cg.client(&ops);
    run.res[0].assert_eperm();
    let out = pins.unpin();
    out.assert_status(0);
    assert!(out.stderr.contains("removed") && out.stderr.contains("detached"), "{out}");
    assert!(pins.entries().is_empty(), "no pins left: {:?}", pins.entries());
    let run = cg.client(&ops);
    run.res[0].assert_ok(&format!("hello from {a}:8080"));
    run.res[1].assert_ok(&format!("hello from {b}:8080"));

    // Unpinning again: nothing left.
    let out = pins.unpin();
    out.assert_status(0);
    assert!(out.stderr.contains("nothing pinned"), "{out}");
}

#[test]
fn daemon_with_an_invalid_registry_does_not_start() {
    preflight();
    let dir = TempDir::new("d-invalid");
    let f = dir.write(
        "bad.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  hosts:\n  - bad.enforcer.test\n  ports:\n  - number: 0\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  endpoints:\n  - address: 198.18.0.9\n",
    );
    let cg = Cgroup::new("invalid");
    let pins = PinDir::new();
    let out = Daemon::start_fails(&cg, &pins, &["--registry".into(), f.display().to_string()]);
    out.assert_status(125);
    assert!(out.stderr.contains(&format!("{}:10", f.display())), "{out}");
    assert!(pins.entries().is_empty(), "nothing pinned: {:?}", pins.entries());
}

#[test]
fn daemon_mode_flag_overrides_meshconfig_and_new_files_are_picked_up_on_reload() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("d-flag");
    write_registry(&dir, &[ns.v4(2)], Some("ALLOW_ANY"));
    let cg = Cgroup::new("flag");
    let mut args = daemon_args(&dir);
    args.extend(["--mode".into(), "REGISTRY_ONLY".into()]);
    let mut d = Daemon::start(&cg, PinDir::new(), &args);
    let log = d.wait_log("enforcing");
    assert!(log.contains("mode=REGISTRY_ONLY") && log.contains("mode_source=--mode"), "{log}");
    let ops = [op("tcp", ns.v4(2), 8080), op("tcp", ns.v4(3), 8080), op("tcp", ns.v4(4), 8080)];
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();
    run.res[2].assert_eperm();

    // A new file in the registry directory; the flag still wins over mesh.yaml.
    dir.write("reg/extra.yaml", &service_entry("extra", &[], &[ns.v4(3)], &[(8080, "TCP")]));
    let new = d.sighup_and_wait("reloaded");
    assert!(new.contains("mode=REGISTRY_ONLY"), "{new}");
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_ok(&format!("hello from {}:8080", ns.v4(3)));
    run.res[2].assert_eperm();

    // And a removed file is dropped.
    std::fs::remove_file(dir.join("reg/extra.yaml")).unwrap();
    d.sighup_and_wait("reloaded");
    let run = cg.client(&ops);
    run.res[1].assert_eperm();
}

#[test]
fn restarted_daemon_applies_what_changed_while_it_was_down() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("d-down");
    write_registry(&dir, &[ns.v4(2)], Some("REGISTRY_ONLY"));
    let cg = Cgroup::new("down");
    let args = daemon_args(&dir);
    let ops = [op("tcp", ns.v4(2), 8080), op("tcp", ns.v4(3), 8080), op("tcp", ns.v4(4), 8080)];

    let d1 = Daemon::start(&cg, PinDir::new(), &args);
    d1.wait_log("enforcing");
    let (st, log, pins) = d1.stop();
    assert_eq!(st, 0, "{log}");

    // While no daemon runs: .3 replaces .2 in the registry.
    write_registry(&dir, &[ns.v4(3)], Some("REGISTRY_ONLY"));
    let run = cg.client(&ops);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();

    let d2 = Daemon::start(&cg, pins, &args);
    let log = d2.wait_log("enforcing");
    assert!(log.contains("adopted the pinned programs"), "{log}");
    let run = cg.client(&ops);
    run.res[0].assert_eperm();
    run.res[1].assert_ok(&format!("hello from {}:8080", ns.v4(3)));
    run.res[2].assert_eperm();

    // And a mode changed while down.
    let (st, log, pins) = d2.stop();
    assert_eq!(st, 0, "{log}");
    dir.write("reg/mesh.yaml", &mesh_config("ALLOW_ANY"));
    let d3 = Daemon::start(&cg, pins, &args);
    let log = d3.wait_log("enforcing");
    assert!(log.contains("mode=ALLOW_ANY"), "{log}");
    let run = cg.client(&ops);
    for r in &run.res {
        r.assert_ok("hello from");
    }
}
