//! `enforcer run -- CMD`: real kernel, real cgroup, real peers in a private network namespace.
//!
//! Every test gets its own netns + veth + /24 + /64 (see `Netns`), so the tests run in parallel.

use std::{net::TcpListener, time::Duration};

use enforcer_tests::*;

/// Registry with one ServiceEntry `NAME` (STATIC endpoints) written to a temp dir; returns the
/// policy args (`--registry FILE --no-host-dns` + extra).
fn registry(dir: &TempDir, yaml: &str, extra: &[&str]) -> Vec<String> {
    let f = dir.write("registry.yaml", yaml);
    let mut v = vec!["--registry".to_string(), f.display().to_string(), "--no-host-dns".into()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn summary_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("enforcer: summary"))
        .unwrap_or_else(|| panic!("no summary on stderr:\n{stderr}"))
}

#[test]
fn registered_destination_connects_and_curl_gets_the_body() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("reg");
    let policy = registry(&dir, &service_entry("api", &[], &[ns.v4(2)], &[(8080, "HTTP")]), &[]);

    let url = format!("http://{}:8080/", ns.v4(2));
    let cmd = ["curl", "-sS", "--noproxy", "*", "--max-time", "10", url.as_str()];
    let out = enforcer_run(&policy, &cmd);
    out.assert_status(0);
    assert_eq!(out.stdout, format!("hello from {}:8080\n", ns.v4(2)), "curl should print the body\n{out}");
    assert!(!out.stderr.contains("enforcer: denied"), "nothing was denied\n{out}");
    let summary = summary_line(&out.stderr);
    assert!(summary.contains("1 allowed, 0 denied"), "{summary}");
    assert!(out.stderr.contains("default/api"), "the summary names the service\n{out}");

    // The same connect from python: exact success, and the peer saw the registered address.
    let run = run_client(&policy, &[op("tcp", ns.v4(2), 8080)]);
    run.res[0].assert_ok(&format!("hello from {}:8080", ns.v4(2)));
}

#[test]
fn unregistered_address_is_denied_with_eperm_and_a_deny_line() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("unreg");
    let policy = registry(&dir, &service_entry("api", &[], &[ns.v4(2)], &[(8080, "HTTP")]), &[]);
    let other = ns.v4(3);

    // Reachable without enforcement (so a failure below is the enforcer's doing).
    let url = format!("http://{other}:8080/");
    let plain = output_with_timeout(
        std::process::Command::new("curl").args(["-sS", "--noproxy", "*", "--max-time", "10", &url]),
        Duration::from_secs(20),
    );
    assert_eq!(plain.status, 0, "{other}:8080 must answer without the enforcer\n{plain}");

    let run = run_client(&policy, &[op("tcp", &other, 8080), op("tcp", ns.v4(2), 8080)]);
    run.res[0].assert_eperm();
    run.res[1].assert_ok("hello from");
    let lines = run.verdict_lines();
    assert_eq!(lines.len(), 1, "one deny line\n{}", run.out);
    let want = format!(
        "enforcer: denied connect python3[{}] -> {other}:8080/tcp: not in registry; allow it with --allow {other}:8080 or a ServiceEntry",
        run.pid
    );
    assert_eq!(lines[0], want, "\n{}", run.out);

    // curl: fails at once (exit 7 = could not connect), the line names curl, its pid and the fix.
    // (-s without -S: curl's own error message would interleave with the deny line on the shared
    // stderr.)
    let out = enforcer_run(&policy, &["curl", "-s", "--noproxy", "*", "--max-time", "10", url.as_str()]);
    out.assert_status(7);
    let line =
        out.stderr.lines().find(|l| l.starts_with("enforcer: denied")).unwrap_or_else(|| panic!("no deny line\n{out}"));
    let rest =
        line.strip_prefix("enforcer: denied connect curl[").unwrap_or_else(|| panic!("comm should be curl: {line}"));
    let (pid, rest) = rest.split_once(']').unwrap();
    assert!(pid.parse::<u32>().is_ok_and(|p| p > 1), "pid in {line}");
    assert_eq!(
        rest,
        format!(" -> {other}:8080/tcp: not in registry; allow it with --allow {other}:8080 or a ServiceEntry")
    );
    assert!(summary_line(&out.stderr).contains("0 allowed, 1 denied"), "{out}");
    assert!(out.stderr.contains("BlackHoleCluster"), "{out}");
}

#[test]
fn registered_address_on_an_unlisted_port_is_denied_port_not_listed() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080", "tcp:8081"]);
    let dir = TempDir::new("port");
    let policy = registry(&dir, &service_entry("smk", &[], &[ns.v4(2)], &[(8080, "HTTP")]), &[]);
    let a = ns.v4(2);

    let run = run_client(&policy, &[op("tcp", &a, 8081), op("tcp", &a, 8080)]);
    run.res[0].assert_eperm();
    run.res[1].assert_ok(&format!("hello from {a}:8080"));
    let lines = run.verdict_lines();
    assert_eq!(lines.len(), 1, "{}", run.out);
    assert_eq!(
        lines[0],
        format!(
            "enforcer: denied connect python3[{}] -> {a}:8081/tcp: port 8081 not listed for default/smk; add it to that ServiceEntry's ports or allow it with --allow {a}:8081",
            run.pid
        )
    );
}

#[test]
fn cidr_addresses_allow_inside_and_deny_outside() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("cidr");
    // 198.18.S.4/30 = .4-.7; .2 and .3 are outside.
    let cidr = ns.v4_cidr(4, 30);
    let policy = registry(&dir, &service_entry("net", &[&cidr], &[], &[(8080, "TCP")]), &[]);

    let run = run_client(
        &policy,
        &[op("tcp", ns.v4(4), 8080), op("tcp", ns.v4(6), 8080), op("tcp", ns.v4(3), 8080), op("tcp", ns.v4(2), 8080)],
    );
    run.res[0].assert_ok(&format!("hello from {}:8080", ns.v4(4)));
    run.res[1].assert_ok(&format!("hello from {}:8080", ns.v4(6)));
    run.res[2].assert_eperm();
    run.res[3].assert_eperm();
    let lines = run.verdict_lines();
    assert_eq!(lines.len(), 2, "{}", run.out);
    assert!(lines.iter().all(|l| l.contains("not in registry")), "{}", run.out);
}

#[test]
fn allow_any_lets_everything_through_as_passthrough() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080", "tcp:8081"]);
    let dir = TempDir::new("allowany");
    let policy = registry(&dir, &service_entry("api", &[], &[ns.v4(2)], &[(8080, "HTTP")]), &["--mode", "ALLOW_ANY"]);

    let run = run_client(&policy, &[op("tcp", ns.v4(3), 8080), op("tcp", ns.v4(2), 8081), op("tcp", ns.v4(2), 8080)]);
    for r in &run.res {
        r.assert_ok("hello from");
    }
    assert!(run.verdict_lines().is_empty(), "nothing denied or audited\n{}", run.out);
    let summary = summary_line(&run.out.stderr);
    assert!(summary.contains("(ALLOW_ANY)") && summary.contains("3 allowed, 0 denied"), "{}", run.out);
    let passthrough: Vec<&str> = run.out.stderr.lines().filter(|l| l.contains("PassthroughCluster")).collect();
    assert_eq!(passthrough.len(), 2, "unregistered destinations are PassthroughCluster\n{}", run.out);
    assert!(passthrough.iter().any(|l| l.contains(&format!("{}:8080", ns.v4(3)))));
    assert!(passthrough.iter().any(|l| l.contains(&format!("{}:8081", ns.v4(2)))));
    assert!(
        run.out.stderr.lines().any(|l| l.contains(&format!("{}:8080", ns.v4(2))) && l.contains("default/api")),
        "the registered destination is still attributed to its service\n{}",
        run.out
    );
}

#[test]
fn audit_lets_through_but_reports_audit() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("audit");
    let report = dir.join("report.json");
    let policy = registry(
        &dir,
        &service_entry("api", &[], &[ns.v4(2)], &[(8080, "HTTP")]),
        &["--mode", "AUDIT", "--report-file", report.to_str().unwrap()],
    );
    let other = ns.v4(3);

    let run = run_client(&policy, &[op("tcp", &other, 8080), op("tcp", ns.v4(2), 8080)]);
    run.res[0].assert_ok(&format!("hello from {other}:8080"));
    run.res[1].assert_ok("hello from");
    let lines = run.verdict_lines();
    assert_eq!(
        lines,
        vec![format!(
            "enforcer: audit: would deny connect python3[{}] -> {other}:8080/tcp: not in registry; allow it with --allow {other}:8080 or a ServiceEntry",
            run.pid
        )],
        "\n{}",
        run.out
    );
    assert!(summary_line(&run.out.stderr).contains("1 audited"), "{}", run.out);

    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(rep["mode"], "AUDIT");
    let rows = report_rows(&rep);
    assert_eq!(
        rows.get(&("audited".into(), format!("{other}:8080"), "tcp".into())),
        Some(&("PassthroughCluster".into(), 1)),
        "{rep}"
    );
    assert_eq!(
        rows.get(&("allowed".into(), format!("{}:8080", ns.v4(2)), "tcp".into())),
        Some(&("default/api".into(), 1)),
        "{rep}"
    );
    assert!(rep["denied"].as_array().unwrap().is_empty(), "{rep}");
}

#[test]
fn ipv6_registered_allowed_unregistered_denied() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("v6");
    let policy = registry(&dir, &service_entry("api6", &[], &[ns.v6(2)], &[(8080, "HTTP")]), &[]);

    let run = run_client(&policy, &[op("tcp", ns.v6(2), 8080), op("tcp", ns.v6(3), 8080)]);
    run.res[0].assert_ok(&format!("hello from [{}]:8080", ns.v6(2)));
    run.res[1].assert_eperm();
    let other = ns.v6(3);
    assert_eq!(
        run.verdict_lines(),
        vec![format!(
            "enforcer: denied connect python3[{}] -> [{other}]:8080/tcp: not in registry; allow it with --allow [{other}]:8080 or a ServiceEntry",
            run.pid
        )],
        "\n{}",
        run.out
    );

    // curl over IPv6 too.
    let url = format!("http://[{}]:8080/", ns.v6(2));
    let out = enforcer_run(&policy, &["curl", "-sS", "-g", "--noproxy", "*", "--max-time", "10", url.as_str()]);
    out.assert_status(0);
    assert_eq!(out.stdout, format!("hello from [{}]:8080\n", ns.v6(2)));
}

#[test]
fn ipv6_cidr_addresses() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("v6cidr");
    let cidr = format!("{}/127", ns.v6(2)); // ::2 and ::3
    let policy = registry(&dir, &service_entry("net6", &[&cidr], &[], &[(8080, "TCP")]), &[]);
    let run = run_client(&policy, &[op("tcp", ns.v6(2), 8080), op("tcp", ns.v6(3), 8080), op("tcp", ns.v6(3), 8081)]);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_ok("hello from");
    run.res[2].assert_eperm();
    assert!(run.verdict_lines()[0].contains("port 8081 not listed for default/net6"), "{}", run.out);
}

#[test]
fn ipv4_mapped_ipv6_is_judged_as_the_ipv4_address() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("mapped");
    let policy = registry(&dir, &service_entry("api", &[], &[ns.v4(2)], &[(8080, "HTTP")]), &[]);
    let (a, b) = (ns.v4(2), ns.v4(3));

    // AF_INET6 sockets (the address contains ':').
    let run = run_client(&policy, &[op("tcp", format!("::ffff:{a}"), 8080), op("tcp", format!("::ffff:{b}"), 8080)]);
    run.res[0].assert_ok(&format!("hello from {a}:8080"));
    run.res[1].assert_eperm();
    assert_eq!(
        run.verdict_lines(),
        vec![format!(
            "enforcer: denied connect python3[{}] -> {b}:8080/tcp: not in registry; allow it with --allow {b}:8080 or a ServiceEntry",
            run.pid
        )],
        "the mapped address is reported as the IPv4 address\n{}",
        run.out
    );
}

#[test]
fn ipv4_mapped_ipv6_udp_sendto() {
    let ns = Netns::new();
    let _srv = ns.serve(&["udp:5353"]);
    let dir = TempDir::new("mappedudp");
    let policy = registry(&dir, &service_entry("dns", &[], &[ns.v4(2)], &[(5353, "UDP")]), &[]);
    let run = run_client(
        &policy,
        &[op("udp", format!("::ffff:{}", ns.v4(2)), 5353), op("udp", format!("::ffff:{}", ns.v4(3)), 5353)],
    );
    run.res[0].assert_ok(&format!("echo {}:5353", ns.v4(2)));
    run.res[1].assert_eperm();
}

#[test]
fn udp_sendto_registered_port_ok_unregistered_eperm() {
    let ns = Netns::new();
    let _srv = ns.serve(&["udp:5353", "udp:5354"]);
    let dir = TempDir::new("udp");
    let policy = registry(&dir, &service_entry("dns", &[], &[ns.v4(2), ns.v6(2)], &[(5353, "UDP")]), &[]);

    let run = run_client(
        &policy,
        &[
            op("udp", ns.v4(2), 5353),
            op("udp", ns.v4(3), 5353),
            op("udp", ns.v4(2), 5354),
            op("udpconnect", ns.v4(2), 5353),
            op("udpconnect", ns.v4(3), 5353),
            op("udp", ns.v6(2), 5353),
            op("udp", ns.v6(3), 5353),
        ],
    );
    run.res[0].assert_ok(&format!("echo {}:5353", ns.v4(2)));
    run.res[1].assert_eperm();
    run.res[2].assert_eperm();
    run.res[3].assert_ok(&format!("echo {}:5353", ns.v4(2)));
    run.res[4].assert_eperm();
    run.res[5].assert_ok(&format!("echo [{}]:5353", ns.v6(2)));
    run.res[6].assert_eperm();
    let lines = run.verdict_lines();
    let (b, a) = (ns.v4(3), ns.v4(2));
    assert!(
        lines.contains(&format!("enforcer: denied sendmsg python3[{}] -> {b}:5353/udp: not in registry; allow it with --allow {b}:5353 or a ServiceEntry", run.pid).as_str()),
        "{}",
        run.out
    );
    assert!(
        lines.iter().any(|l| l.contains(&format!("-> {a}:5354/udp: port 5354 not listed for default/dns"))),
        "{}",
        run.out
    );
}

#[test]
fn protocol_mismatch_tcp_to_a_udp_only_port_is_denied() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:5353", "udp:8080"]);
    let dir = TempDir::new("proto");
    let mut yaml = service_entry("dns", &[], &[ns.v4(2)], &[(5353, "UDP")]);
    yaml.push_str("---\n");
    yaml.push_str(&service_entry("web", &[], &[ns.v4(3)], &[(8080, "TCP")]));
    let policy = registry(&dir, &yaml, &[]);
    let run = run_client(&policy, &[op("tcp", ns.v4(2), 5353), op("udp", ns.v4(3), 8080)]);
    run.res[0].assert_eperm();
    run.res[1].assert_eperm();
    let lines = run.verdict_lines();
    assert!(
        lines.iter().any(|l| l.ends_with(&format!(
            "-> {}:5353/tcp: default/dns lists port 5353 for udp only; declare a TCP port in the ServiceEntry",
            ns.v4(2)
        ))),
        "{}",
        run.out
    );
    assert!(
        lines.iter().any(|l| l.ends_with(&format!(
            "-> {}:8080/udp: default/web lists port 8080 for tcp only; declare a UDP port in the ServiceEntry",
            ns.v4(3)
        ))),
        "{}",
        run.out
    );
}

#[test]
fn allow_flag_with_and_without_port() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080", "tcp:8081", "udp:5353"]);
    let (a, b, c) = (ns.v4(2), ns.v4(3), ns.v4(4));
    let v6 = ns.v6(2);
    let policy: Vec<String> = vec![
        "--no-host-dns".into(),
        "--allow".into(),
        format!("{a}:8080"),
        "--allow".into(),
        b.clone(),
        "--allow".into(),
        format!("[{v6}]:8081"),
    ];
    let run = run_client(
        &policy,
        &[
            op("tcp", &a, 8080),
            op("tcp", &a, 8081),
            op("tcp", &b, 8080),
            op("tcp", &b, 8081),
            op("udp", &b, 5353),
            op("tcp", &c, 8080),
            op("tcp", &v6, 8081),
            op("tcp", &v6, 8080),
        ],
    );
    run.res[0].assert_ok(&format!("hello from {a}:8080"));
    run.res[1].assert_eperm();
    run.res[2].assert_ok(&format!("hello from {b}:8080"));
    run.res[3].assert_ok(&format!("hello from {b}:8081"));
    run.res[4].assert_ok(&format!("echo {b}:5353"));
    run.res[5].assert_eperm();
    run.res[6].assert_ok(&format!("hello from [{v6}]:8081"));
    run.res[7].assert_eperm();
    assert!(
        run.out.stderr.contains(&format!("--allow {a}:8080")),
        "the summary attributes the allowed flow to the flag\n{}",
        run.out
    );
}

#[test]
fn allow_cidr_flag() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080", "tcp:8081"]);
    let cidr = ns.v4_cidr(4, 30);
    let policy: Vec<String> = vec![
        "--no-host-dns".into(),
        "--allow-cidr".into(),
        format!("{cidr}:8081"),
        "--allow-cidr".into(),
        format!("[{}]:8080", ns.v6_net()),
    ];
    let run = run_client(
        &policy,
        &[
            op("tcp", ns.v4(5), 8081),
            op("tcp", ns.v4(7), 8081),
            op("tcp", ns.v4(5), 8080),
            op("tcp", ns.v4(3), 8081),
            op("tcp", ns.v6(3), 8080),
            op("tcp", ns.v6(3), 8081),
        ],
    );
    run.res[0].assert_ok(&format!("hello from {}:8081", ns.v4(5)));
    run.res[1].assert_ok(&format!("hello from {}:8081", ns.v4(7)));
    run.res[2].assert_eperm();
    run.res[3].assert_eperm();
    run.res[4].assert_ok(&format!("hello from [{}]:8080", ns.v6(3)));
    run.res[5].assert_eperm();
}

#[test]
fn loopback_is_always_allowed() {
    preflight();
    // Real listeners in this (host) namespace, empty registry, REGISTRY_ONLY.
    let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l6 = TcpListener::bind("[::1]:0").ok();
    let p4 = l4.local_addr().unwrap().port();
    let mut ops = vec![op("tcpconnect", "127.0.0.1", p4), op("tcpconnect", "::ffff:127.0.0.1", p4)];
    if let Some(l) = &l6 {
        ops.push(op("tcpconnect", "::1", l.local_addr().unwrap().port()));
    }
    // tcpconnect is not an op of the client; use a tiny script instead.
    let script = r#"
import socket, sys, json
out = []
for spec in sys.argv[1:]:
    _, addr, port = spec.split('|')
    s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
    try:
        s.connect((addr, int(port)))
        out.append(None)
    except OSError as e:
        out.append(e.errno)
print(json.dumps(out))
"#;
    let mut cmd = vec![python().display().to_string(), "-c".into(), script.into()];
    cmd.extend(ops.iter().cloned());
    let out = enforcer_run(&["--no-host-dns".to_string(), "--mode".into(), "REGISTRY_ONLY".into()], &cmd);
    out.assert_status(0);
    let errs: Vec<Option<i64>> = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(errs.iter().all(Option::is_none), "loopback connects must succeed: {errs:?}\n{out}");
    assert_eq!(errs.len(), ops.len());
    assert!(!out.stderr.contains("enforcer: denied"), "{out}");
}

#[test]
fn argv_is_passed_exactly() {
    preflight();
    let args = [
        "plain",
        "with spaces  and\ttab",
        "\"double\" and 'single' quotes",
        "",
        "--mode",
        "ALLOW_ANY",
        "--",
        "$HOME `x` ; | * ?",
        "ünïcødé",
        "new\nline",
    ];
    let mut cmd =
        vec![python().display().to_string(), "-c".into(), "import sys, json; print(json.dumps(sys.argv[1:]))".into()];
    cmd.extend(args.iter().map(|s| s.to_string()));
    let out = enforcer_run(&["--no-host-dns".to_string()], &cmd);
    out.assert_status(0);
    let got: Vec<String> = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(got, args, "\n{out}");
    assert!(
        summary_line(&out.stderr).contains("(REGISTRY_ONLY)"),
        "the `--mode` after `--` belongs to the command\n{out}"
    );
}

#[test]
fn exit_status_is_passed_through() {
    preflight();
    let none: [&str; 0] = [];
    enforcer_run(&none, &["sh", "-c", "exit 7"]).assert_status(7);
    enforcer_run(&none, &["sh", "-c", "exit 0"]).assert_status(0);
    enforcer_run(&none, &["sh", "-c", "exit 255"]).assert_status(255);
    // Killed by a signal: 128 + N.
    enforcer_run(&none, &["sh", "-c", "kill -KILL $$"]).assert_status(137);
    enforcer_run(&none, &["sh", "-c", "kill -TERM $$"]).assert_status(143);
    // Not found: 127, and the error names the command.
    let missing = format!("enforcer-test-no-such-command-{}", unique_tag());
    let out = enforcer_run(&none, &[missing.as_str()]);
    out.assert_status(127);
    assert!(out.stderr.contains(&missing), "{out}");
    // Not executable: 126.
    let dir = TempDir::new("noexec");
    let f = dir.write("script.sh", "#!/bin/sh\nexit 0\n");
    set_mode(&f, 0o644);
    let out = enforcer_run(&none, &[f.to_str().unwrap()]);
    out.assert_status(126);
}

#[test]
fn sigterm_to_enforcer_is_forwarded_to_the_command() {
    preflight();
    use std::io::BufRead as _;
    let mut c = std::process::Command::new(enforcer_bin());
    c.args(["run", "--no-host-dns", "--"])
        .arg(python())
        .args(["-c", "import signal, time\nprint('ready', flush=True)\ntime.sleep(60)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("enforcer did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(shell_status(st), 143, "the command died of the forwarded SIGTERM");
}

#[test]
fn invalid_registry_exits_125_and_names_file_and_line() {
    preflight();
    let dir = TempDir::new("invalid");
    let bad = dir.write(
        "bad.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  hosts:\n  - bad.enforcer.test\n  ports:\n  - number: 99999\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  endpoints:\n  - address: 198.18.0.9\n",
    );
    let marker = dir.join("ran");
    let script = format!("touch {}", marker.display());
    let out =
        enforcer_run(&["--registry".to_string(), bad.display().to_string()], &["sh".to_string(), "-c".into(), script]);
    out.assert_status(125);
    assert!(out.stderr.contains(&format!("{}:10", bad.display())), "error names file:line\n{out}");
    assert!(out.stderr.contains("spec.ports[0].number"), "error names the field\n{out}");
    assert!(!marker.exists(), "the command must not run with an invalid registry");
}

#[test]
fn report_file_counts_match_the_connects_made() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("report");
    let report = dir.join("report.json");
    let policy = registry(
        &dir,
        &service_entry("api", &[], &[ns.v4(2)], &[(8080, "HTTP")]),
        &["--report-file", report.to_str().unwrap(), "--report", "json"],
    );
    let (a, b) = (ns.v4(2), ns.v4(3));
    let ops = [op("tcp", &a, 8080), op("tcp", &a, 8080), op("tcp", &b, 8080), op("tcp", &a, 8080), op("tcp", &b, 8080)];
    let run = run_client(&policy, &ops);
    for i in [0, 1, 3] {
        run.res[i].assert_ok("hello from");
    }
    run.res[2].assert_eperm();
    run.res[4].assert_eperm();
    // Each denied destination is printed once, however often it is tried.
    assert_eq!(run.verdict_lines().len(), 1, "{}", run.out);

    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(rep["mode"], "REGISTRY_ONLY");
    assert_eq!(rep["exit_status"], 0);
    let rows = report_rows(&rep);
    assert_eq!(rows.len(), 2, "{rep}");
    assert_eq!(rows[&("allowed".into(), format!("{a}:8080"), "tcp".into())], ("default/api".into(), 3), "{rep}");
    assert_eq!(rows[&("denied".into(), format!("{b}:8080"), "tcp".into())], ("BlackHoleCluster".into(), 2), "{rep}");
    assert_eq!(rep["allowed"][0]["verdict"], "allowed");
    assert_eq!(rep["denied"][0]["verdict"], "denied");

    // --report json: the same summary as one JSON line on stderr.
    let json_line =
        run.out.stderr.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON summary\n{}", run.out));
    let on_stderr: serde_json::Value = serde_json::from_str(json_line).unwrap();
    assert_eq!(report_rows(&on_stderr), rows);

    // The command's exit status is recorded.
    let out = enforcer_run(&policy, &["sh", "-c", "exit 3"].map(String::from));
    out.assert_status(3);
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(rep["exit_status"], 3);
}

#[test]
fn quiet_prints_nothing_but_still_denies_and_reports() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("quiet");
    let report = dir.join("report.json");
    let policy = registry(
        &dir,
        &service_entry("api", &[], &[ns.v4(2)], &[(8080, "HTTP")]),
        &["--quiet", "--report-file", report.to_str().unwrap()],
    );
    let run = run_client(&policy, &[op("tcp", ns.v4(3), 8080), op("tcp", ns.v4(2), 8080)]);
    run.res[0].assert_eperm();
    run.res[1].assert_ok("hello from");
    assert!(
        !run.out.stderr.contains("enforcer: denied") && !run.out.stderr.contains("summary"),
        "--quiet prints no deny lines and no summary\n{}",
        run.out
    );
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let rows = report_rows(&rep);
    assert_eq!(rows[&("denied".into(), format!("{}:8080", ns.v4(3)), "tcp".into())].1, 1);
}

#[test]
fn mode_comes_from_meshconfig_and_mode_flag_overrides_it() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("mesh");
    dir.write("reg/services.yaml", &service_entry("api", &[], &[ns.v4(2)], &[(8080, "HTTP")]));
    dir.write("reg/mesh.yaml", &mesh_config("ALLOW_ANY"));
    let regdir = dir.join("reg").display().to_string();
    let ops = [op("tcp", ns.v4(3), 8080)];

    let run = run_client(&["--registry".into(), regdir.clone(), "--no-host-dns".into()], &ops);
    run.res[0].assert_ok("hello from");
    assert!(summary_line(&run.out.stderr).contains("(ALLOW_ANY)"), "{}", run.out);

    let run = run_client(
        &["--registry".into(), regdir, "--no-host-dns".into(), "--mode".into(), "REGISTRY_ONLY".into()],
        &ops,
    );
    run.res[0].assert_eperm();
}

#[test]
fn target_port_and_endpoint_ports_are_allowed_too() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080", "tcp:9090", "tcp:8081"]);
    let dir = TempDir::new("tport");
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: tp\n  namespace: default\nspec:\n  hosts:\n  - tp.enforcer.test\n  ports:\n  - number: 80\n    targetPort: 8080\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  endpoints:\n  - address: {a}\n  - address: {b}\n    ports:\n      http: 9090\n",
        a = ns.v4(2),
        b = ns.v4(3)
    );
    let policy = registry(&dir, &yaml, &[]);
    let (a, b) = (ns.v4(2), ns.v4(3));
    let run = run_client(
        &policy,
        &[op("tcp", &a, 8080), op("tcp", &a, 80), op("tcp", &b, 9090), op("tcp", &a, 8081), op("tcp", &a, 9090)],
    );
    run.res[0].assert_ok(&format!("hello from {a}:8080"));
    // Port 80 is allowed too: nothing listens there, so the kernel refuses it (not EPERM).
    assert_eq!(run.res[1].errno, Some(libc::ECONNREFUSED as i64), "{:?}", run.res[1]);
    run.res[2].assert_ok(&format!("hello from {b}:9090"));
    run.res[3].assert_eperm();
    // The endpoint port map belongs to that endpoint only.
    run.res[4].assert_eperm();
}

#[test]
fn ipv4_mapped_forms_in_the_policy_match_plain_ipv4() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080", "tcp:8081"]);
    let dir = TempDir::new("mappedpolicy");
    // addresses as an IPv4-mapped IPv6 CIDR (::ffff:198.18.S.4/126 = 198.18.S.4/30), --allow as a
    // mapped address.
    let mapped_cidr = format!("::ffff:{}/126", ns.v4(4));
    let policy = registry(
        &dir,
        &service_entry("m", &[&mapped_cidr], &[], &[(8080, "TCP")]),
        &["--allow", &format!("[::ffff:{}]:8081", ns.v4(2))],
    );
    let run = run_client(
        &policy,
        &[
            op("tcp", ns.v4(5), 8080),
            op("tcp", ns.v4(3), 8080),
            op("tcp", ns.v4(2), 8081),
            op("tcp", format!("::ffff:{}", ns.v4(2)), 8081),
        ],
    );
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();
    run.res[2].assert_ok(&format!("hello from {}:8081", ns.v4(2)));
    run.res[3].assert_ok(&format!("hello from {}:8081", ns.v4(2)));
}

#[test]
fn allow_cidr_with_host_bits_set_covers_the_whole_network() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    // 198.18.S.5/30 means 198.18.S.4/30.
    let policy: Vec<String> = vec!["--no-host-dns".into(), "--allow-cidr".into(), format!("{}/30", ns.v4(5))];
    let run = run_client(&policy, &[op("tcp", ns.v4(4), 8080), op("tcp", ns.v4(7), 8080), op("tcp", ns.v4(3), 8080)]);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_ok("hello from");
    run.res[2].assert_eperm();
}

#[test]
fn bad_allow_flags_exit_125_naming_every_bad_value() {
    preflight();
    let marker = TempDir::new("badflags");
    let m = marker.join("ran");
    let out = enforcer_run(
        &["--allow", "198.18.0.1:99999", "--allow-cidr", "not-a-cidr", "--allow", "198.18.0.0/24"],
        &["touch", m.to_str().unwrap()],
    );
    out.assert_status(125);
    assert!(out.stderr.contains("198.18.0.1:99999"), "{out}");
    assert!(out.stderr.contains("not-a-cidr"), "{out}");
    assert!(out.stderr.contains("--allow-cidr"), "a CIDR given to --allow points at --allow-cidr\n{out}");
    assert!(!m.exists(), "the command must not run");
}

#[test]
fn background_children_do_not_outlive_the_run() {
    preflight();
    let dir = TempDir::new("bg");
    let marker = dir.join("escaped");
    // The command exits at once, leaving a child that would write the marker 1 s later.
    let script = format!("(sleep 1; touch {}) >/dev/null 2>&1 &\nexit 0", marker.display());
    let out = enforcer_run(&["--no-host-dns"], &["sh", "-c", script.as_str()]);
    out.assert_status(0);
    std::thread::sleep(Duration::from_millis(1800));
    assert!(!marker.exists(), "a background child escaped the run (and its enforcement)\n{out}");
}

#[test]
fn cgroup_parent_is_used_and_the_run_cgroup_is_removed() {
    let parent = Cgroup::new("parent");
    let left = || -> Vec<_> {
        std::fs::read_dir(&parent.path)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name())
            .collect()
    };
    // Unconfined, the command sees where it runs: a child of the parent.
    let out = enforcer_run(
        &[
            "--no-host-dns".to_string(),
            "--privileged".into(),
            "--cgroup-parent".into(),
            parent.path.display().to_string(),
        ],
        &["cat", "/proc/self/cgroup"],
    );
    out.assert_status(0);
    let cg = out.stdout.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or_else(|| panic!("{out}"));
    let want = format!("{}/enforcer-run-", parent.rel());
    assert!(cg.starts_with(&want), "the command ran in {cg}, expected a child {want}*");
    assert!(left().is_empty(), "the run's cgroup is removed after exit: {:?}", left());
    // Confined (the default), its cgroup namespace is rooted there: it sees `/`.
    let out = enforcer_run(
        &["--no-host-dns".to_string(), "--cgroup-parent".into(), parent.path.display().to_string()],
        &["cat", "/proc/self/cgroup"],
    );
    out.assert_status(0);
    assert!(out.stdout.lines().any(|l| l == "0::/"), "{out}");
    assert!(left().is_empty(), "the run's cgroup is removed after exit: {:?}", left());
}

#[test]
fn report_file_records_a_command_killed_by_a_signal() {
    let ns = Netns::new();
    let _srv = ns.serve(&["tcp:8080"]);
    let dir = TempDir::new("killed");
    let report = dir.join("r.json");
    let policy = registry(
        &dir,
        &service_entry("api", &[], &[ns.v4(2)], &[(8080, "HTTP")]),
        &["--report-file", report.to_str().unwrap()],
    );
    let script = format!(
        "import os, signal, socket\ns = socket.socket()\ntry:\n    s.connect(('{}', 8080))\nexcept PermissionError:\n    pass\nos.kill(os.getpid(), signal.SIGKILL)\n",
        ns.v4(3)
    );
    let out = enforcer_run(&policy, &[python().display().to_string(), "-c".into(), script]);
    out.assert_status(137);
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(rep["exit_status"], 137, "{rep}");
    assert_eq!(report_rows(&rep)[&("denied".into(), format!("{}:8080", ns.v4(3)), "tcp".into())].1, 1, "{rep}");
}

/// Deny lines share stderr with the command: each must be written whole (one write(2) of the
/// line, atomic on a pipe), or it gets torn by the command's own output.
#[test]
fn deny_lines_are_not_torn_by_the_commands_own_stderr() {
    // Traffic goes to the test's own netns only (should enforcement ever fail).
    let ns = Netns::new();
    let script = r#"
import os, socket, sys, threading, time
addr = sys.argv[1]
stop = False
def noise():
    line = b'x' * 100 + b'\n'
    while not stop:
        os.write(2, line)
t = threading.Thread(target=noise)
t.start()
for i in range(40):
    s = socket.socket()
    try:
        s.connect((addr, 9000 + i))
    except PermissionError:
        pass
    s.close()
    time.sleep(0.01)
time.sleep(0.2)
stop = True
t.join()
"#;
    let out = enforcer_run(&["--no-host-dns"], &[python().display().to_string(), "-c".into(), script.into(), ns.v4(3)]);
    out.assert_status(0);
    let noise = "x".repeat(100);
    let mut deny = 0;
    let mut torn = Vec::new();
    for l in out.stderr.lines() {
        // The noise, and the agent's own (timestamped) log lines.
        if l == noise || l.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        if l.starts_with("enforcer: denied connect python3[") && l.ends_with(" or a ServiceEntry") {
            deny += 1;
        } else if l.starts_with("enforcer: summary") || l.starts_with("  denied ") {
        } else {
            torn.push(l.to_string());
        }
    }
    assert!(torn.is_empty(), "torn lines on stderr: {:?}", &torn[..torn.len().min(5)]);
    assert_eq!(deny, 40, "one intact deny line per destination");
}

/// When the event ring buffer overflows (the agent cannot keep up), the report must say how many
/// deny events were lost: printed deny lines + `events_dropped` = denied destinations.
#[test]
fn dropped_deny_events_are_reported() {
    use std::io::{BufRead as _, Write as _};
    let ns = Netns::new();
    let dir = TempDir::new("drops");
    let report = dir.join("r.json");
    const N: usize = 4200; // 6 addresses x 700 ports, all distinct destinations
    let script = r#"
import socket, sys
addrs = sys.argv[1:]
print('ready', flush=True)
sys.stdin.readline()
n = 0
for a in addrs:
    for p in range(1000, 1700):
        s = socket.socket()
        try:
            s.connect((a, p))
        except PermissionError:
            n += 1
        s.close()
print('done %d' % n, flush=True)
"#;
    let mut c = std::process::Command::new(enforcer_bin());
    c.args(["run", "--no-host-dns", "--report-file"])
        .arg(&report)
        .arg("--")
        .arg(python())
        .args(["-c", script])
        .args(Netns::V4_HOSTS.map(|h| ns.v4(h)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let epid = child.id() as i32;
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // Freeze the agent so it cannot drain the ring buffer while the command floods it.
    // SAFETY: plain syscalls on our own child.
    unsafe { libc::kill(epid, libc::SIGSTOP) };
    let guard = scopeguard(epid);
    stdin.write_all(b"go\n").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("done {N}"), "every connect was denied with EPERM");
    drop(guard); // SIGCONT
    let st = child.wait().unwrap();
    let stderr = err_reader.join().unwrap();
    assert_eq!(shell_status(st), 0, "{stderr}");
    let printed = stderr.lines().filter(|l| l.starts_with("enforcer: denied connect")).count();
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let dropped = rep["events_dropped"].as_u64().unwrap_or(0) as usize;
    eprintln!("deny lines printed: {printed}, events_dropped: {dropped}");
    assert_eq!(rep["denied"].as_array().unwrap().len(), N, "the flow counters see every destination");
    assert_eq!(
        printed + dropped,
        N,
        "{printed} deny lines printed and events_dropped = {dropped}: the lost events are not accounted for"
    );

    /// SIGCONT on drop, so a failing assertion never leaves the agent stopped.
    struct Cont(i32);
    impl Drop for Cont {
        fn drop(&mut self) {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    fn scopeguard(pid: i32) -> Cont {
        Cont(pid)
    }
}
