//! The per-packet backstop (cgroup_skb egress): what the socket address does not show is judged
//! by the packet. Each case runs a real sender under `enforcer run` in a client netns (where the
//! test may set sysctls and nft rules: they are the command's own) against a recorder in a server
//! netns that logs every marker that arrives — over UDP, UDP-Lite, TCP, ICMP and ICMPv6. Every
//! denied case is first run without enforcer, to show that the marker *would* arrive.

use std::{fs, path::PathBuf, process::Command, time::Duration};

use enforcer_tests::*;

/// Records every marker that arrives, whatever the transport: prints `ready`, then appends
/// `KIND LOCAL_ADDR PAYLOAD` lines to the file in argv[1]. UDP and UDP-Lite listen on argv[2], TCP
/// on argv[3].
const RECORDER_PY: &str = r#"
import socket, sys, threading
out = open(sys.argv[1], 'a', buffering=1)
port = int(sys.argv[2])
tcp_port = int(sys.argv[3])
lock = threading.Lock()
def rec(kind, addr, data):
    if b'ENFMARK' in data:
        i = data.index(b'ENFMARK')
        with lock:
            out.write('%s %s %s\n' % (kind, addr, data[i:i+40].split(b' ')[0].decode(errors='replace')))
def dgram(proto, kind):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, proto)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    s.bind(('::', port))
    def loop():
        while True:
            data, anc, _, peer = s.recvmsg(4096, 1024)
            dst = '?'
            for level, typ, d in anc:
                if level == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO:
                    dst = socket.inet_ntop(socket.AF_INET6, d[:16])
            rec(kind, dst, data)
    return loop
def tcp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(('::', tcp_port))
    s.listen(64)
    def handle(c):
        c.settimeout(3)
        try:
            rec('tcp', c.getsockname()[0], c.recv(4096))
        except OSError:
            pass
        c.close()
    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    return loop
def raw(fam, proto, kind):
    s = socket.socket(fam, socket.SOCK_RAW, proto)
    def loop():
        while True:
            data, peer = s.recvfrom(65535)
            rec(kind, peer[0], data)
    return loop
loops = [dgram(socket.IPPROTO_UDP, 'udp'), dgram(136, 'udplite'), tcp(),
         raw(socket.AF_INET, socket.IPPROTO_ICMP, 'icmp'), raw(socket.AF_INET6, socket.IPPROTO_ICMPV6, 'icmp6')]
for l in loops:
    threading.Thread(target=l, daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
"#;

/// Sends one marker per case (argv: CASE ARGS... joined by `|`), prints one JSON line per case:
/// `{"case", "ok", "errno", "error"}`.
const SENDER_PY: &str = r#"
import json, socket, struct, sys, time
def run(case, a):
    mark = ('ENFMARK-' + case).encode()
    if case in ('udplite4', 'udplite6'):
        fam = socket.AF_INET if case.endswith('4') else socket.AF_INET6
        s = socket.socket(fam, socket.SOCK_DGRAM, 136)
        s.sendto(mark, (a[0], int(a[1])))
    elif case in ('udp4', 'udp6'):
        fam = socket.AF_INET if case.endswith('4') else socket.AF_INET6
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.sendto(mark, (a[0], int(a[1])))
    elif case == 'udpconnect_nosend':
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((a[0], int(a[1])))
        s.getsockname()
    elif case == 'udpconnect_send':
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((a[0], int(a[1])))
        s.send(mark)
    elif case in ('tcp4', 'tcp6'):
        fam = socket.AF_INET if case.endswith('4') else socket.AF_INET6
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((a[0], int(a[1])))
        s.sendall(mark)
        time.sleep(0.2)
    elif case == 'ping4':
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        s.sendto(bytes([8, 0, 0, 0, 0, 0, 0, 1]) + mark, (a[0], 0))
    elif case == 'ping6':
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
        s.sendto(bytes([128, 0, 0, 0, 0, 0, 0, 1]) + mark, (a[0], 0))
    elif case == 'raw4':
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        payload = mark
        hdr = struct.pack('!HHHH', 40000, int(a[1]), 8 + len(payload), 0)
        s.sendto(hdr + payload, (a[0], 0))
    elif case == 'lsrr4':
        # An IPv4 loose source route (CAP_NET_RAW): the packet goes first to the hop a[1], the
        # socket's destination a[0] rides in the option.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        opt = bytes([131, 7, 4]) + socket.inet_aton(a[1]) + bytes([0])
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, opt)
        s.sendto(mark, (a[0], int(a[2])))
    elif case == 'rthdr6':
        # An SRv6 header (type 4): segments[0] is replaced by the socket's destination (allowed),
        # the packet goes first to segments[1] (`via`, unregistered).
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        srh = bytes([0, 4, 4, 1, 1, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, '::') \
            + socket.inet_pton(socket.AF_INET6, a[1])
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh)
        s.sendto(mark, (a[0], int(a[2])))
    else:
        raise ValueError(case)
for arg in sys.argv[1:]:
    parts = arg.split('|')
    r = {'case': parts[0], 'ok': False, 'errno': None, 'error': None}
    try:
        run(parts[0], parts[1:])
        r['ok'] = True
    except OSError as e:
        r['errno'] = e.errno
        r['error'] = str(e)
    print(json.dumps(r), flush=True)
"#;

/// UDP (and UDP-Lite) port; TCP listens on the next one.
const PORT: u16 = 7301;
const TCP_PORT: u16 = PORT + 1;

/// A client netns wired to a server [`Netns`]: the veth end that `Netns` leaves in the host
/// namespace is moved into the client namespace, so nothing of the host is touched.
struct Pair {
    server: Netns,
    client: String,
}

impl Pair {
    fn new() -> Self {
        let server = Netns::new();
        let client = format!("enfc-{}-{}", std::process::id(), unique());
        sh(&["ip", "netns", "add", &client]);
        let p = Self { server, client };
        let h = p.server.host_if.clone();
        sh(&["ip", "link", "set", &h, "netns", &p.client]);
        let c = ["ip", "-n", p.client.as_str()];
        let run = |args: &[&str]| sh(&[&c[..], args].concat());
        run(&["link", "set", "lo", "up"]);
        run(&["addr", "add", &format!("{}/24", p.server.v4(1)), "dev", &h]);
        run(&["-6", "addr", "add", &format!("{}/64", p.server.v6(1)), "dev", &h, "nodad"]);
        run(&["link", "set", &h, "up"]);
        // Unprivileged ping sockets for every group, in the client namespace only.
        p.client_sh(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
        // The server namespace processes SRv6 headers, so a source-routed datagram is delivered.
        // ... and accepts IPv4 source routes.
        for k in ["all", "veth0"] {
            for kv in [format!("net.ipv6.conf.{k}.seg6_enabled=1"), format!("net.ipv4.conf.{k}.accept_source_route=1")]
            {
                sh(&["ip", "netns", "exec", &p.server.name, "sysctl", "-qw", &kv]);
            }
        }
        p
    }

    /// `nsenter --net`: only the network namespace changes (`ip netns exec` would remount /sys and
    /// hide the cgroup2 mount from enforcer).
    fn client_cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.client)).arg("--").arg(prog);
        c
    }

    fn client_sh(&self, argv: &[&str]) -> Outcome {
        let mut c = self.client_cmd(argv[0]);
        c.args(&argv[1..]);
        output_with_timeout(&mut c, Duration::from_secs(20))
    }

    fn recorder(&self, log: &PathBuf) -> Server {
        let mut c = self.server.command(python());
        c.arg("-c").arg(RECORDER_PY).arg(log).arg(PORT.to_string()).arg(TCP_PORT.to_string());
        Server::start(c, "marker recorder")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the pair.
        let _ = Command::new("ip").args(["netns", "del", &self.client]).status();
    }
}

fn sh(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().expect("running a setup command");
    assert!(out.status.success(), "{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[derive(Debug)]
struct Sent {
    case: String,
    ok: bool,
    errno: Option<i64>,
    error: Option<String>,
}

fn parse_sent(out: &Outcome) -> Vec<Sent> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}\n{out}"));
            Sent {
                case: v["case"].as_str().unwrap().to_string(),
                ok: v["ok"].as_bool().unwrap(),
                errno: v["errno"].as_i64(),
                error: v["error"].as_str().map(str::to_string),
            }
        })
        .collect()
}

/// The sender without enforcement.
fn send_plain(p: &Pair, cases: &[String]) -> Vec<Sent> {
    let mut c = p.client_cmd(python().to_str().unwrap());
    c.arg("-c").arg(SENDER_PY).args(cases);
    let out = output_with_timeout(&mut c, Duration::from_secs(60));
    parse_sent(&out)
}

/// The sender under `enforcer run` in the client namespace; returns (results, enforcer's stderr).
fn send_enforced(p: &Pair, registry: &PathBuf, cases: &[String]) -> (Vec<Sent>, String) {
    let mut c = p.client_cmd(enforcer_bin().to_str().unwrap());
    c.args(["run", "--registry"]).arg(registry).args(["--no-host-dns", "--mode", "REGISTRY_ONLY", "--"]);
    c.arg(python()).arg("-c").arg(SENDER_PY).args(cases).env("NO_COLOR", "1");
    let out = output_with_timeout(&mut c, Duration::from_secs(90));
    (parse_sent(&out), out.stderr)
}

fn arrivals(log: &PathBuf) -> String {
    // Datagrams in flight land within a few ms; give stragglers a moment.
    std::thread::sleep(Duration::from_millis(300));
    fs::read_to_string(log).unwrap_or_default()
}

fn registry(p: &Pair, dir: &TempDir) -> PathBuf {
    let a4 = p.server.v4(2);
    let a6 = p.server.v6(2);
    dir.write("registry.yaml", &service_entry("allowed", &[], &[a4, a6], &[(PORT, "UDP"), (TCP_PORT, "TCP")]))
}

#[test]
fn packets_the_socket_address_does_not_show_are_dropped_and_reported() {
    let p = Pair::new();
    let dir = TempDir::new("backstop");
    let log = dir.join("arrivals.log");
    let _rec = p.recorder(&log);
    let reg = registry(&p, &dir);
    let (a4, a6) = (p.server.v4(2), p.server.v6(2));
    let (u4, u6) = (p.server.v4(3), p.server.v6(3));

    let cases = vec![
        format!("udplite4|{a4}|{PORT}"),
        format!("udplite6|{a6}|{PORT}"),
        format!("ping4|{u4}"),
        format!("ping6|{u6}"),
        format!("raw4|{u4}|{PORT}"),
        format!("rthdr6|{a6}|{u6}|{PORT}"),
        // Both ends registered: only the source route itself is refused.
        format!("lsrr4|{a4}|{a4}|{PORT}"),
    ];
    // Without enforcement every marker arrives (so an empty log below is the backstop's doing).
    let plain = send_plain(&p, &cases);
    let seen = arrivals(&log);
    let mut checked = Vec::new();
    for s in &plain {
        let mark = format!("ENFMARK-{}", s.case);
        if (s.case == "rthdr6" || s.case == "lsrr4") && (!s.ok || !seen.contains(&mark)) {
            eprintln!("skipping {}: not delivered here even without enforcer ({:?})", s.case, s.error);
            continue;
        }
        assert!(s.ok, "without enforcer, {} should be sent: {s:?}", s.case);
        assert!(seen.contains(&mark), "without enforcer, {mark} should arrive; arrivals:\n{seen}");
        checked.push(s.case.clone());
    }
    fs::write(&log, "").unwrap();

    let cases: Vec<String> =
        cases.into_iter().filter(|c| checked.iter().any(|k| c.starts_with(&format!("{k}|")))).collect();
    let (sent, stderr) = send_enforced(&p, &reg, &cases);
    assert_eq!(sent.len(), cases.len(), "one result per case\n{stderr}");
    for s in &sent {
        if s.case == "ping6" {
            // ping_v6_sendmsg() ignores the error of pushing its frames: the echo request is
            // dropped and reported, but sendto() returns success (README limits).
            continue;
        }
        assert!(!s.ok, "{} must fail under enforcer: {s:?}\n{stderr}", s.case);
        assert_eq!(s.errno, Some(libc::EPERM as i64), "{} must fail with EPERM: {s:?}\n{stderr}", s.case);
    }
    let seen = arrivals(&log);
    assert!(seen.is_empty(), "nothing may arrive under enforcer; arrived:\n{seen}\n{stderr}");
    // Each refusal is reported with the packet's real destination.
    for want in [&u4, &u6] {
        assert!(stderr.contains(want.as_str()), "a deny line names {want}\n{stderr}");
    }
}

#[test]
fn dnat_in_the_commands_netns_is_judged_by_the_real_destination() {
    let p = Pair::new();
    let dir = TempDir::new("backstop-nat");
    let log = dir.join("arrivals.log");
    let _rec = p.recorder(&log);
    let reg = registry(&p, &dir);
    let (a4, u4) = (p.server.v4(2), p.server.v4(3));
    // The command's own netns rewrites the allowed address to an unregistered one.
    let rules = format!(
        "table ip enfdnat {{\n chain out {{\n  type nat hook output priority -100; policy accept;\n  \
         ip daddr {a4} udp dport {PORT} dnat to {u4}\n  ip daddr {a4} tcp dport {TCP_PORT} dnat to {u4}\n }}\n}}\n"
    );
    let f = dir.write("dnat.nft", &rules);
    let nft = p.client_sh(&["nft", "-f", f.to_str().unwrap()]);
    assert_eq!(nft.status, 0, "loading the DNAT rules\n{nft}");

    let cases = vec![format!("udp4|{a4}|{PORT}"), format!("tcp4|{a4}|{TCP_PORT}")];
    let plain = send_plain(&p, &cases);
    let seen = arrivals(&log);
    for s in &plain {
        assert!(s.ok, "without enforcer, {} should go through: {s:?}", s.case);
    }
    assert!(seen.contains(&format!("udp ::ffff:{u4} ENFMARK-udp4")), "the DNAT rules redirect UDP to {u4}:\n{seen}");
    assert!(seen.contains("ENFMARK-tcp4"), "the DNAT rules redirect TCP to {u4}:\n{seen}");
    fs::write(&log, "").unwrap();

    let (sent, stderr) = send_enforced(&p, &reg, &cases);
    let udp = sent.iter().find(|s| s.case == "udp4").expect("udp4 result");
    assert_eq!(udp.errno, Some(libc::EPERM as i64), "the redirected datagram fails with EPERM: {udp:?}\n{stderr}");
    let tcp = sent.iter().find(|s| s.case == "tcp4").expect("tcp4 result");
    assert!(!tcp.ok, "the redirected TCP connect must not complete (its SYNs are dropped): {tcp:?}\n{stderr}");
    let seen = arrivals(&log);
    assert!(seen.is_empty(), "nothing may reach {u4}; arrived:\n{seen}\n{stderr}");
    assert!(stderr.contains(&u4), "the deny line names the real destination {u4}\n{stderr}");
}

#[test]
fn allowed_traffic_still_flows_and_a_udp_connect_alone_is_not_a_denial() {
    let p = Pair::new();
    let dir = TempDir::new("backstop-ok");
    let log = dir.join("arrivals.log");
    let _rec = p.recorder(&log);
    let reg = registry(&p, &dir);
    let (a4, a6, u4) = (p.server.v4(2), p.server.v6(2), p.server.v4(3));

    let cases = vec![
        format!("udp4|{a4}|{PORT}"),
        format!("udp6|{a6}|{PORT}"),
        format!("tcp4|{a4}|{TCP_PORT}"),
        format!("tcp6|{a6}|{TCP_PORT}"),
        // glibc's RFC 6724 probe: connect() a UDP socket, never send.
        format!("udpconnect_nosend|{u4}|{PORT}"),
    ];
    let (sent, stderr) = send_enforced(&p, &reg, &cases);
    for s in &sent {
        assert!(s.ok, "{} is allowed: {s:?}\n{stderr}", s.case);
    }
    let seen = arrivals(&log);
    for m in ["ENFMARK-udp4", "ENFMARK-udp6", "ENFMARK-tcp4", "ENFMARK-tcp6"] {
        assert!(seen.contains(m), "{m} arrives:\n{seen}\n{stderr}");
    }
    assert!(!stderr.contains("enforcer: denied"), "a UDP connect that never sends is not a denial\n{stderr}");
    assert!(!stderr.contains(&u4), "nothing reports {u4}\n{stderr}");

    // The first send on such a socket is refused, and reported then.
    let (sent, stderr) = send_enforced(&p, &reg, &[format!("udpconnect_send|{u4}|{PORT}")]);
    assert_eq!(sent[0].errno, Some(libc::EPERM as i64), "the send fails with EPERM: {:?}\n{stderr}", sent[0]);
    assert!(stderr.contains(&u4), "the refused send is reported with {u4}\n{stderr}");
    assert!(!arrivals(&log).contains("udpconnect_send"), "nothing arrives");
}
