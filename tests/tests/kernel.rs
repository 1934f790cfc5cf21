//! The kernel contract across daemon restarts and upgrades: the pinned links get the new build's
//! programs (program ids change, the hook is never empty), learned entries and their expiry survive
//! in the pinned maps, and a connect loop running through the restart sees no wrong verdict.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::*;
use serde_json::{Value, json};

const PORT: u16 = 8080;

/// cgroup attach types (uapi `enum bpf_attach_type`) of the hooks a daemon always attaches.
const ATTACH_TYPES: [(u32, &str); 3] = [(1, "cgroup_skb/egress"), (10, "connect4"), (11, "connect6")];

/// Ids of the programs attached directly to `cgroup` on `attach_type` (`BPF_PROG_QUERY`).
fn attached(cgroup: &Path, attach_type: u32) -> Vec<u32> {
    let cg = fs::File::open(cgroup).expect("opening the cgroup");
    let mut ids = [0u32; 16];
    #[repr(C, align(8))]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _rest: [u32; 9],
    }
    let mut q = Query {
        target_fd: cg.as_raw_fd() as u32,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _rest: [0; 9],
    };
    const BPF_PROG_QUERY: libc::c_long = 16;
    // SAFETY: a bpf_attr `query` member with a buffer for 16 ids, both live for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &raw mut q, size_of::<Query>() as u32) };
    assert!(r == 0, "BPF_PROG_QUERY on {}: {}", cgroup.display(), std::io::Error::last_os_error());
    ids[..q.prog_cnt as usize].to_vec()
}

fn attached_ids(cgroup: &Path) -> BTreeMap<&'static str, Vec<u32>> {
    ATTACH_TYPES.iter().map(|(t, name)| (*name, attached(cgroup, *t))).collect()
}

/// Connects in a loop to (addr, want_allowed) targets until the stop file exists; prints
/// `{"n": connects, "nwrong": wrong verdicts, "wrong": first few}`.
const LOOP_PY: &str = r#"
import json, os, socket, sys
stop = sys.argv[1]
targets = []
for t in sys.argv[2:]:
    addr, port, want = t.split('|')
    targets.append((addr, int(port), want == 'allow'))
n, wrong = 0, []
while not os.path.exists(stop):
    for addr, port, want in targets:
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((addr, port))
            ok, err = True, None
        except OSError as e:
            ok, err = False, e.errno
        s.close()
        n += 1
        if ok != want:
            wrong.append([addr, ok, err])
print(json.dumps({'n': n, 'nwrong': len(wrong), 'wrong': wrong[:10]}), flush=True)
"#;

fn se_none(name: &str, host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
         hosts:\n  - \"{host}\"\n  location: MESH_EXTERNAL\n  ports:\n  - number: {PORT}\n    name: tcp\n    protocol: TCP\n  \
         resolution: NONE\n"
    )
}

#[test]
fn restart_swaps_the_programs_keeps_learned_entries_and_never_lapses() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let (a, learned, denied) = (ns.v4(2), ns.v4(3), ns.v4(4));
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("l.svc.test", &learned)], 600, &[]);
    let dir = TempDir::new("k-restart");
    let reg = dir.write(
        "registry.yaml",
        &format!(
            "{}---\n{}",
            service_entry("api", &[], std::slice::from_ref(&a), &[(PORT, "TCP")]),
            se_none("wild", "*.svc.test")
        ),
    );
    let cg = Cgroup::new("krestart");
    let args: Vec<String> = vec![
        "--registry".into(),
        reg.display().to_string(),
        "--no-host-dns".into(),
        "--dns-upstream".into(),
        dns.addr.ip().to_string(),
        "--dns-port".into(),
        "0".into(),
    ];

    let d1 = Daemon::start(&cg, PinDir::new(), &args);
    d1.wait_log("enforcing");
    // Learn l.svc.test -> `learned` through the daemon's forwarder.
    let req = [json!({"op": "resolve_connect", "name": "l.svc.test", "port": PORT})];
    let out = cg.run(&worker_cmd(&req));
    let res: Vec<Value> = parse_worker(&out, 1);
    assert_eq!(res[0]["connect"]["ok"], true, "the name is learned and connects: {:?}\n{}", res[0], d1.log());
    let before = attached_ids(&cg.path);
    for (hook, ids) in &before {
        assert_eq!(ids.len(), 1, "one program on {hook}: {before:?}");
    }

    // A connect loop through the whole restart.
    let stop = dir.join("stop");
    let mut lp = Command::new(python());
    lp.arg("-c").arg(LOOP_PY).arg(&stop);
    lp.args([format!("{a}|{PORT}|allow"), format!("{learned}|{PORT}|allow"), format!("{denied}|{PORT}|deny")]);
    lp.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    cg.enter_on_exec(&mut lp);
    let child = lp.spawn().expect("starting the connect loop");
    std::thread::sleep(Duration::from_millis(300));

    let (st, log, pins) = d1.stop();
    assert_eq!(st, 0, "{log}");
    // No daemon: the pinned programs and maps (learned entry included) keep judging.
    std::thread::sleep(Duration::from_millis(300));
    let d2 = Daemon::start(&cg, pins, &args);
    let log2 = d2.wait_log("enforcing");
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    fs::write(&stop, "").unwrap();
    let out = child.wait_with_output().expect("waiting for the connect loop");
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
    let v: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("loop output {line:?}: {e}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(v["n"].as_u64().unwrap_or(0) > 30, "the loop kept connecting: {v}");
    assert_eq!(v["nwrong"], 0, "no wrong verdict through the restart: {v}\n--- new daemon\n{log2}");
    assert!(t.elapsed() < Duration::from_secs(30));

    // The same links, now running the new daemon's programs.
    let after = attached_ids(&cg.path);
    for (hook, ids) in &after {
        assert_eq!(ids.len(), 1, "still one program on {hook} (the link was updated, not added): {after:?}");
        assert_ne!(ids, &before[hook], "{hook} runs the new build's program (was {before:?}, now {after:?})");
    }
    assert!(log2.contains("learned"), "the restart reports the learned entries it kept\n{log2}");

    // The learned entry still allows without a new lookup (the pinned map kept it and its expiry).
    let run = cg.client(&[op("tcp", &learned, PORT), op("tcp", &denied, PORT)]);
    run.res[0].assert_ok(&format!("hello from {learned}:{PORT}"));
    run.res[1].assert_eperm();
    drop(d2);
}

#[test]
fn a_hook_the_new_configuration_does_not_want_is_detached() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let dir = TempDir::new("k-detach");
    let reg = dir.write("registry.yaml", &service_entry("api", &[], &[ns.v4(2)], &[(PORT, "TCP")]));
    let cg = Cgroup::new("kdetach");
    let args: Vec<String> = vec!["--registry".into(), reg.display().to_string(), "--no-host-dns".into()];
    const SOCK_OPS: u32 = 3;

    let d1 = Daemon::start(&cg, PinDir::new(), &args);
    d1.wait_log("enforcing");
    assert_eq!(attached(&cg.path, SOCK_OPS).len(), 1, "accounting attaches sock_ops\n{}", d1.log());
    let (st, log, pins) = d1.stop();
    assert_eq!(st, 0, "{log}");
    assert!(pins.entries().iter().any(|e| e == "link_sock_ops"), "{:?}", pins.entries());

    let mut no_acct = args.clone();
    no_acct.push("--no-conn-accounting".into());
    let d2 = Daemon::start(&cg, pins, &no_acct);
    d2.wait_log("enforcing");
    // The proxy may still want sock_ops for its filings, but only once an entry steers to it;
    // this registry has none.
    assert_eq!(attached(&cg.path, SOCK_OPS), Vec::<u32>::new(), "sock_ops is detached\n{}", d2.log());
    let run = cg.client(&[op("tcp", ns.v4(2), PORT), op("tcp", ns.v4(3), PORT)]);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();
}

#[test]
fn a_pin_layout_of_another_version_is_rebuilt_deliberately_without_a_lapse() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let dir = TempDir::new("k-layout");
    let reg = dir.write("registry.yaml", &service_entry("api", &[], &[ns.v4(2)], &[(PORT, "TCP")]));
    let cg = Cgroup::new("klayout");
    let args: Vec<String> = vec!["--registry".into(), reg.display().to_string(), "--no-host-dns".into()];

    let d1 = Daemon::start(&cg, PinDir::new(), &args);
    d1.wait_log("enforcing");
    let before = attached_ids(&cg.path);
    let (st, log, pins) = d1.stop();
    assert_eq!(st, 0, "{log}");
    // An older release's pins: maps without the layout stamp.
    fs::remove_file(pins.path.join("PIN_LAYOUT")).expect("removing the layout stamp");

    let d2 = Daemon::start(&cg, pins, &args);
    let log2 = d2.wait_log("enforcing");
    assert!(log2.contains("rebuilding every map"), "the rebuild is announced\n{log2}");
    let run = cg.client(&[op("tcp", ns.v4(2), PORT), op("tcp", ns.v4(3), PORT)]);
    run.res[0].assert_ok("hello from");
    run.res[1].assert_eperm();
    let after = attached_ids(&cg.path);
    for (hook, ids) in &after {
        assert_eq!(ids.len(), 1, "{hook}: the pinned link was kept and updated: {after:?}");
        assert_ne!(ids, &before[hook], "{hook} runs the new program");
    }
}

#[test]
fn the_kernel_refuses_an_expired_learned_entry_while_no_daemon_runs() {
    let ns = Netns::new();
    let _srv = ns.serve(&[&format!("tcp:{PORT}")]);
    let learned = ns.v4(3);
    let dns = Dnsmasq::start(&ns, &ns.v4(7), &[("short.svc.test", &learned)], 1, &[]);
    let dir = TempDir::new("k-expiry");
    let reg = dir.write("registry.yaml", &se_none("wild", "*.svc.test"));
    let cg = Cgroup::new("kexpiry");
    let args: Vec<String> = [
        "--registry",
        reg.to_str().unwrap(),
        "--no-host-dns",
        "--dns-upstream",
        &dns.addr.ip().to_string(),
        "--dns-port",
        "0",
        "--dns-ttl-floor",
        "1s",
        "--dns-ttl-ceiling",
        "1s",
        "--dns-grace",
        "1s",
    ]
    .map(String::from)
    .to_vec();

    let d = Daemon::start(&cg, PinDir::new(), &args);
    d.wait_log("enforcing");
    let req = [json!({"op": "resolve_connect", "name": "short.svc.test", "port": PORT})];
    let res = parse_worker(&cg.run(&worker_cmd(&req)), 1);
    assert_eq!(res[0]["connect"]["ok"], true, "learned and connected: {:?}\n{}", res[0], d.log());
    // No daemon, so nothing sweeps the entry out of the pinned map: the kernel itself must stop
    // honouring it once its expiry (TTL 1 s + grace 1 s) has passed.
    let (st, log, _pins) = d.stop();
    assert_eq!(st, 0, "{log}");
    std::thread::sleep(Duration::from_secs(4));
    let run = cg.client(&[op("tcp", &learned, PORT)]);
    run.res[0].assert_eperm();
}
