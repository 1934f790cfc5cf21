//! A name resolved by any resolver path connects on the first try: glibc through nscd (a daemon
//! outside the cgroup answering over a UNIX socket), glibc through nss-resolve and
//! systemd-resolved (varlink), a loopback stub (unbound on 127.0.0.53 and 127.0.0.1), nsswitch
//! `hosts:` lines rewritten, a static musl client, Go's pure resolver, dual-stack answers.
//!
//! Each test builds a host of its own: a netns with dnsmasq (the upstream) and a listener, and a
//! private mount namespace ([`ResolverHost`]) with its resolv.conf / nsswitch.conf and the real
//! daemons from Debian's packages. `enforcer run` runs inside it. A test whose package is not
//! installed says SKIP and returns.

use enforcer_tests::*;
use serde_json::{Value, json};

const PORT: u16 = 8080;

fn registry(dir: &TempDir) -> std::path::PathBuf {
    dir.write(
        "registry.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: wild\n  namespace: default\nspec:\n  hosts:\n  - \"*.svc.test\"\n  location: MESH_EXTERNAL\n  ports:\n  - number: {PORT}\n    name: http\n    protocol: HTTP\n  resolution: NONE\n"
        ),
    )
}

struct Setup {
    ns: Netns,
    _srv: Server,
    dns: Dnsmasq,
    dir: TempDir,
    reg: std::path::PathBuf,
}

/// A global-looking IPv6 address of the netns (its fd00::/8 ones are private to the rebinding
/// filter): 2001:db8:<subnet>::2.
fn public_v6(ns: &Netns) -> String {
    let v4 = ns.v4(2);
    let subnet: Vec<&str> = v4.split('.').collect();
    format!("2001:db8:{}:{}::2", subnet[1], subnet[2])
}

fn setup() -> Setup {
    let ns = Netns::new();
    let a6 = public_v6(&ns);
    let st = ns.command("ip").args(["addr", "add", &format!("{a6}/64"), "dev", "veth0", "nodad"]).status().unwrap();
    assert!(st.success());
    let srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let (a, b) = (ns.v4(2), ns.v4(3));
    let dns = Dnsmasq::start(
        &ns,
        &ns.v4(7),
        &[("a.svc.test", &a), ("b.svc.test", &b), ("dual.svc.test", &a), ("dual.svc.test", &a6)],
        60,
        &[],
    );
    let dir = TempDir::new("dns-resolvers");
    let reg = registry(&dir);
    Setup { ns, _srv: srv, dns, dir, reg }
}

/// The flags every test gives `enforcer run`; the command is confined (the default): the resolver
/// view (dns::isolate) is mounted by its init. The nscd test also runs it `--privileged` (a mount
/// namespace of the command's own), so both paths are covered.
fn policy(s: &Setup, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--registry".to_string(),
        s.reg.display().to_string(),
        "--no-host-dns".into(),
        "--dns-upstream".into(),
        s.dns.addr.ip().to_string(),
    ];
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

fn rc(name: &str) -> Value {
    json!({"op": "resolve_connect", "name": name, "port": PORT})
}

fn one(out: &Outcome) -> Value {
    parse_worker(out, 1).remove(0)
}

#[test]
fn glibc_through_nscd_is_learned_because_the_command_does_not_see_nscd() {
    let nscd = require_program!("nscd", "nscd");
    let s = setup();
    let mut host = ResolverHost::new(&s.ns, &format!("nameserver {}\n", s.ns.v4(7)), "hosts: files dns\n");
    host.start_nscd(&nscd);
    let a = s.ns.v4(2);

    // The proof that the test exercises nscd: with the host's view, getaddrinfo is answered by
    // nscd (outside the cgroup, its own sockets): the address comes back, nothing is learned.
    let out = host.enforcer_run(&policy(&s, &["--no-dns-isolation"]), &worker_cmd(&[rc("a.svc.test")]));
    let r = one(&out);
    assert_eq!(r["addrs"], json!([a]), "{out}");
    assert_eq!(r["connect"]["errno"], libc::EPERM, "nscd answered, so the forwarder learned nothing: {r}\n{out}");

    // Default: the command's mount namespace hides nscd's socket; glibc resolves itself, the
    // query is steered, learned, and the first connect succeeds.
    let out = host.enforcer_run(&policy(&s, &[]), &worker_cmd(&[rc("b.svc.test")]));
    let r = one(&out);
    assert_eq!(r["addrs"], json!([s.ns.v4(3)]), "{out}");
    assert_eq!(r["connect"]["ok"], true, "{r}\n{out}\n--- nscd\n{}", host.daemon_log("nscd"));
    assert!(!out.stderr.contains("enforcer: denied"), "{out}");
    // --privileged: the command gets a mount namespace of its own for the same view.
    let out = host.enforcer_run(&policy(&s, &["--privileged"]), &worker_cmd(&[rc("a.svc.test")]));
    let r = one(&out);
    assert_eq!(r["connect"]["ok"], true, "--privileged: {r}\n{out}");
    // The host's nscd is untouched (still there for everything else).
    assert!(host.command("test").args(["-S", "/run/nscd/socket"]).status().unwrap().success());
}

#[test]
fn loopback_stub_resolvers_are_steered_like_any_resolver() {
    let unbound = require_program!("unbound", "unbound");
    let s = setup();
    // 127.0.0.53 (systemd-resolved's stub address) and 127.0.0.1 (a local unbound).
    let mut host = ResolverHost::new(&s.ns, "nameserver 127.0.0.53\n", "hosts: files dns\n");
    host.start_unbound(&unbound, &["127.0.0.53", "127.0.0.1"], &s.ns.v4(7));
    // The forwarder's upstream is the host's resolver (resolv.conf: the stub itself).
    let pol = vec!["--registry".to_string(), s.reg.display().to_string()];
    let reqs = [
        rc("a.svc.test"),
        json!({"op": "query", "server": "127.0.0.1", "port": 53, "name": "b.svc.test", "qtype": 1, "transport": "udp"}),
        json!({"op": "connect", "addr": s.ns.v4(3), "port": PORT}),
    ];
    let out = host.enforcer_run(&pol, &worker_cmd(&reqs));
    let r = parse_worker(&out, 3);
    assert_eq!(r[0]["connect"]["ok"], true, "getaddrinfo via 127.0.0.53: {}\n{out}", r[0]);
    assert_eq!(r[1]["rcode"], 0, "a raw query to 127.0.0.1: {}", r[1]);
    assert_eq!(r[2]["ok"], true, "its answer was learned: {}\n{out}", r[2]);
    // Both went through unbound to dnsmasq (the forwarder asked the stub).
    assert!(s.dns.log().contains("a.svc.test"), "{}", s.dns.log());
}

#[test]
fn nsswitch_hosts_sources_other_than_files_dns_are_rewritten_for_the_command() {
    let s = setup();
    let host = ResolverHost::new(
        &s.ns,
        &format!("nameserver {}\n", s.ns.v4(7)),
        "passwd: files\nhosts: files mdns4_minimal [NOTFOUND=return] resolve [!UNAVAIL=return] dns myhostname\n",
    );
    let out = host.enforcer_run(&policy(&s, &[]), &["cat", "/etc/nsswitch.conf"]);
    out.assert_status(0);
    assert!(out.stdout.contains("\nhosts:          files dns\n"), "{out}");
    assert!(out.stdout.starts_with("passwd: files\n"), "{out}");
    let out = host.enforcer_run(&policy(&s, &[]), &worker_cmd(&[rc("a.svc.test")]));
    assert_eq!(one(&out)["connect"]["ok"], true, "{out}");
}

#[test]
fn glibc_through_nss_resolve_and_systemd_resolved_is_learned() {
    let Some(root) = resolved_root() else {
        eprintln!(
            "SKIP: systemd-resolved not unpacked (`cargo xtask setup` fetches Debian's systemd-resolved and libnss-resolve into target/debs)"
        );
        return;
    };
    let s = setup();
    let mut host = ResolverHost::new(
        &s.ns,
        &format!("nameserver {}\n", s.ns.v4(7)),
        "hosts: files resolve [!UNAVAIL=return] dns\n",
    );
    if !host.start_resolved(&root) {
        eprintln!("SKIP: systemd-resolved does not run here (see its log above)");
        return;
    }
    // glibc finds libnss_resolve.so.2 in the unpacked package (it is not installed).
    let lib = format!("LD_LIBRARY_PATH={}", root.join("usr/lib/x86_64-linux-gnu").display());
    let cmd = |name: &str| -> Vec<String> {
        let mut v = vec!["env".to_string(), lib.clone()];
        v.extend(worker_cmd(&[rc(name)]));
        v
    };
    // The host's view: nss-resolve asks systemd-resolved over varlink; resolved (outside the
    // cgroup) resolves with its own sockets, so nothing is learned.
    let out = host.enforcer_run(&policy(&s, &["--no-dns-isolation"]), &cmd("a.svc.test"));
    let r = one(&out);
    assert_eq!(r["addrs"], json!([s.ns.v4(2)]), "{out}");
    assert_eq!(r["connect"]["errno"], libc::EPERM, "systemd-resolved answered: nothing learned: {r}\n{out}");
    // Default: `hosts: files dns` and the varlink socket hidden: learned, first connect succeeds.
    let out = host.enforcer_run(&policy(&s, &[]), &cmd("b.svc.test"));
    let r = one(&out);
    assert_eq!(r["connect"]["ok"], true, "{r}\n{out}\n--- resolved\n{}", host.daemon_log("systemd-resolved"));
}

#[test]
fn a_static_musl_client_resolves_and_connects_both_families() {
    let s = setup();
    let Some(client) = build_musl_client(&s.dir) else {
        eprintln!("SKIP: musl-gcc not found (Debian package musl-tools)");
        return;
    };
    let host = ResolverHost::new(&s.ns, &format!("nameserver {}\n", s.ns.v4(7)), "hosts: files dns\n");
    let c = client.display().to_string();
    let out = host.enforcer_run(&policy(&s, &[]), &[c.as_str(), "dual.svc.test", "8080"]);
    out.assert_status(0);
    let mut ok = connected(&out);
    ok.sort();
    let mut want = vec![s.ns.v4(2), public_v6(&s.ns)];
    want.sort();
    assert_eq!(ok, want, "musl's parallel A+AAAA lookup, both learned\n{out}");
}

#[test]
fn go_pure_resolver_clients_resolve_and_connect() {
    let s = setup();
    let Some(client) = build_go_client(&s.dir) else {
        eprintln!("SKIP: go not found (Debian package golang-go)");
        return;
    };
    let host = ResolverHost::new(&s.ns, &format!("nameserver {}\n", s.ns.v4(7)), "hosts: files dns\n");
    let c = client.display().to_string();
    let out = host.enforcer_run(&policy(&s, &[]), &["env", "GODEBUG=netdns=go", c.as_str(), "dual.svc.test", "8080"]);
    out.assert_status(0);
    let mut ok = connected(&out);
    ok.sort();
    let mut want = vec![s.ns.v4(2), public_v6(&s.ns)];
    want.sort();
    assert_eq!(ok, want, "Go's resolver (connected UDP sockets, A and AAAA in parallel)\n{out}");
}

#[test]
fn glibc_dual_stack_answers_connect_on_both_families() {
    let s = setup();
    let host = ResolverHost::new(&s.ns, &format!("nameserver {}\n", s.ns.v4(7)), "hosts: files dns\n");
    let reqs = [
        json!({"op": "resolve", "name": "dual.svc.test", "port": PORT, "family": "any"}),
        json!({"op": "connect", "addr": public_v6(&s.ns), "port": PORT}),
        json!({"op": "connect", "addr": s.ns.v4(2), "port": PORT}),
    ];
    let out = host.enforcer_run(&policy(&s, &[]), &worker_cmd(&reqs));
    let r = parse_worker(&out, 3);
    let mut addrs: Vec<String> = r[0]["addrs"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().into()).collect();
    addrs.sort();
    let mut want = vec![s.ns.v4(2), public_v6(&s.ns)];
    want.sort();
    assert_eq!(addrs, want, "{out}");
    assert_eq!((r[1]["ok"].clone(), r[2]["ok"].clone()), (json!(true), json!(true)), "{out}");
    assert!(!out.stderr.contains("denied connect python3") || out.stderr.contains("/udp"), "no TCP denial\n{out}");
}
