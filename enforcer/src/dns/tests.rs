//! Forwarder tests: real sockets on 127.0.0.1, an in-test upstream built from hickory-proto
//! messages, and a recording policy.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::answer::{lifetime, name_key};
use super::{Config, DnsPolicy, Forwarder, Stats, UnknownNames, is_rebinding_addr};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub(super) fn n(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

pub(super) fn sid(raw: u32) -> enforcer_common::ServiceId {
    enforcer_common::ServiceId::new(raw).expect("non-zero")
}

pub(super) fn rec_a(owner: &str, ttl: u32, ip: &str) -> Record {
    Record::from_rdata(n(owner), ttl, RData::A(A(Ipv4Addr::from_str(ip).expect("v4"))))
}

pub(super) fn rec_aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
    Record::from_rdata(n(owner), ttl, RData::AAAA(AAAA(Ipv6Addr::from_str(ip).expect("v6"))))
}

pub(super) fn rec_cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(n(owner), ttl, RData::CNAME(CNAME(n(target))))
}

// ---------------------------------------------------------------------------------------------
// Test upstream
// ---------------------------------------------------------------------------------------------

#[derive(Default, Clone)]
pub(super) struct Zone {
    pub records: Vec<Record>,
    /// Names answered with TC (header + question only) over UDP; full answer over TCP.
    pub truncate_udp: HashSet<String>,
    /// Names answered SERVFAIL.
    pub servfail: HashSet<String>,
    /// Names answered with a wrong message id.
    pub wrong_id: HashSet<String>,
    /// Names answered after a delay.
    pub delay: HashMap<String, Duration>,
}

pub(super) fn zone() -> Zone {
    let mut records = vec![
        rec_a("api.test.", 300, "93.184.216.34"),
        rec_a("api.test.", 120, "93.184.216.35"),
        rec_aaaa("api.test.", 300, "2606:2800:220:1:248:1893:25c8:1946"),
        rec_cname("www.api.test.", 60, "edge.cdn.example."),
        rec_cname("edge.cdn.example.", 600, "edge2.cdn.example."),
        rec_a("edge2.cdn.example.", 600, "198.51.100.7"),
        rec_a("foo.svc.test.", 30, "203.0.113.5"),
        rec_a("svc.test.", 30, "203.0.113.6"),
        rec_a("evil.test.", 300, "10.0.0.1"),
        rec_a("evil.test.", 300, "127.0.0.1"),
        rec_a("evil.test.", 300, "169.254.169.254"),
        rec_a("evil.test.", 300, "1.2.3.4"),
        rec_aaaa("evil.test.", 300, "::1"),
        rec_aaaa("evil.test.", 300, "fe80::1"),
        rec_aaaa("evil.test.", 300, "fd00::1"),
        rec_aaaa("evil.test.", 300, "::ffff:10.0.0.1"),
        rec_aaaa("evil.test.", 300, "2001:db8::1"),
        rec_a("meta.test.", 300, "169.254.169.254"),
        rec_a("zero.test.", 0, "1.1.1.1"),
        rec_a("long.test.", 86400, "1.0.0.1"),
        rec_aaaa("v6.test.", 100, "2001:db8::6"),
        rec_a("unknown.example.", 300, "5.6.7.8"),
        rec_a("spoof.test.", 300, "5.5.5.5"),
        rec_a("slow.test.", 300, "5.5.5.6"),
    ];
    for i in 0..40u8 {
        records.push(rec_a("big.test.", 300, &format!("8.8.{i}.{i}")));
    }
    Zone {
        records,
        truncate_udp: ["big.test".to_owned()].into(),
        servfail: HashSet::new(),
        wrong_id: ["spoof.test".to_owned()].into(),
        delay: [("slow.test".to_owned(), Duration::from_millis(150))].into(),
    }
}

fn build_answer(zone: &Zone, query: &Message, udp: bool) -> Option<Vec<u8>> {
    let q = query.queries().first()?.clone();
    let key = name_key(q.name());
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    resp.add_queries(query.queries().iter().cloned());
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        resp.set_edns(edns);
    }
    if zone.servfail.contains(&key) {
        resp.set_response_code(ResponseCode::ServFail);
    } else if udp && zone.truncate_udp.contains(&key) {
        resp.set_truncated(true);
    } else if !zone.records.iter().any(|r| r.name() == q.name()) {
        resp.set_response_code(ResponseCode::NXDomain);
    } else {
        for q in query.queries() {
            let mut current = q.name().clone();
            for _ in 0..20 {
                let mut next = None;
                for r in zone.records.iter().filter(|r| r.name() == &current) {
                    if r.record_type() == q.query_type() || q.query_type() == RecordType::ANY {
                        resp.add_answer(r.clone());
                    } else if let RData::CNAME(c) = r.data() {
                        resp.add_answer(r.clone());
                        next = Some(c.0.clone());
                    }
                }
                match next {
                    Some(t) => current = t,
                    None => break,
                }
            }
        }
    }
    if zone.wrong_id.contains(&key) {
        resp.set_id(query.id() ^ 0x5a5a);
    }
    resp.to_vec().ok()
}

pub(super) struct TestUpstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub drop_all: Arc<AtomicBool>,
    pub last_query: Arc<Mutex<Option<Message>>>,
    pub tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub(super) async fn start_upstream(zone: Zone) -> TestUpstream {
    // UDP and TCP on the same port.
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind((LOCAL, 0)).await.expect("udp bind");
        let port = udp.local_addr().expect("addr").port();
        if let Ok(tcp) = TcpListener::bind((LOCAL, port)).await {
            break (Arc::new(udp), tcp);
        }
    };
    let addr = udp.local_addr().expect("addr");
    let zone = Arc::new(zone);
    let hits = Arc::new(AtomicUsize::new(0));
    let drop_all = Arc::new(AtomicBool::new(false));
    let last_query = Arc::new(Mutex::new(None));

    let (z, h, d, l) = (zone.clone(), hits.clone(), drop_all.clone(), last_query.clone());
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((len, peer)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            h.fetch_add(1, Ordering::SeqCst);
            if d.load(Ordering::SeqCst) {
                continue;
            }
            let Ok(q) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            *l.lock().expect("lock") = Some(q.clone());
            let (z, udp) = (z.clone(), udp.clone());
            tokio::spawn(async move {
                if let Some(delay) = q.queries().first().and_then(|q| z.delay.get(&name_key(q.name()))) {
                    tokio::time::sleep(*delay).await;
                }
                if let Some(resp) = build_answer(&z, &q, true) {
                    let _ = udp.send_to(&resp, peer).await;
                }
            });
        }
    });
    let (z, h, d, l) = (zone.clone(), hits.clone(), drop_all.clone(), last_query.clone());
    let tcp_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            let (z, h, d, l) = (z.clone(), h.clone(), d.clone(), l.clone());
            tokio::spawn(async move {
                loop {
                    let Ok(len) = s.read_u16().await else { return };
                    let mut buf = vec![0u8; usize::from(len)];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    if d.load(Ordering::SeqCst) {
                        continue;
                    }
                    let Ok(q) = Message::from_vec(&buf) else {
                        return;
                    };
                    *l.lock().expect("lock") = Some(q.clone());
                    if let Some(resp) = build_answer(&z, &q, false) {
                        let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&resp);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    TestUpstream { addr, hits, drop_all, last_query, tasks: vec![udp_task, tcp_task] }
}

/// An address where nothing listens (UDP: ICMP port unreachable; TCP: RST).
pub(super) async fn dead_addr() -> SocketAddr {
    let s = UdpSocket::bind((LOCAL, 0)).await.expect("bind");
    s.local_addr().expect("addr")
}

// ---------------------------------------------------------------------------------------------
// Recording policy
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(super) struct Learned {
    pub service: enforcer_common::ServiceId,
    pub name: String,
    pub addrs: Vec<IpAddr>,
    /// The lifetime asked for.
    pub ttl: Duration,
    pub until: Instant,
    pub done: Instant,
}

#[derive(Default)]
pub(super) struct TestPolicy {
    pub exact: Vec<(String, enforcer_common::ServiceId)>,
    pub wildcard: Vec<(String, enforcer_common::ServiceId)>,
    pub listed: Vec<IpAddr>,
    pub enforcing: bool,
    /// AUDIT (when not enforcing).
    pub audit: bool,
    pub fail_learn: bool,
    /// learn() sleeps this long first (waiting for the map).
    pub learn_delay: Duration,
    /// The next learn() writes an expiry that has passed by the time it returns.
    pub stale_write: AtomicBool,
    pub learned: Mutex<Vec<Learned>>,
    pub reports: Mutex<Vec<super::Refusal>>,
    /// When set, learn blocks until the test sends on the paired channel.
    pub gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    pub entered: AtomicBool,
}

impl TestPolicy {
    pub(super) fn registry() -> Self {
        let exact = [
            ("api.test", 1),
            ("www.api.test", 2),
            ("evil.test", 3),
            ("zero.test", 4),
            ("long.test", 5),
            ("big.test", 6),
            ("v6.test", 7),
            ("gone.test", 8),
            ("meta.test", 9),
            ("spoof.test", 10),
            ("slow.test", 11),
        ];
        TestPolicy {
            exact: exact.iter().map(|(h, id)| ((*h).to_owned(), sid(*id))).collect(),
            wildcard: vec![("svc.test".to_owned(), sid(100))],
            ..Default::default()
        }
    }

    pub(super) fn learned(&self) -> Vec<Learned> {
        self.learned.lock().expect("lock").clone()
    }

    pub(super) fn reports(&self) -> Vec<super::Refusal> {
        self.reports.lock().expect("lock").clone()
    }
}

impl DnsPolicy for TestPolicy {
    fn match_name(&self, qname: &str) -> Option<super::NameMatch> {
        if let Some((_, id)) = self.exact.iter().find(|(h, _)| h == qname) {
            return Some(super::NameMatch { service: *id, exact: true });
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| crate::config::host::strip_domain(qname, suffix).is_some())
            .map(|(_, id)| super::NameMatch { service: *id, exact: false })
    }

    fn explicitly_listed(&self, ip: IpAddr) -> bool {
        self.listed.contains(&ip)
    }

    fn mode(&self) -> super::PolicyMode {
        match (self.enforcing, self.audit) {
            (true, _) => super::PolicyMode::Enforce,
            (false, true) => super::PolicyMode::Audit,
            (false, false) => super::PolicyMode::Open,
        }
    }

    fn learn(
        &self,
        service_id: enforcer_common::ServiceId,
        name: &str,
        addrs: &[IpAddr],
        life: Duration,
    ) -> Result<Instant, String> {
        let called = Instant::now();
        self.entered.store(true, Ordering::SeqCst);
        if let Some(rx) = self.gate.lock().expect("lock").take() {
            let _ = rx.recv();
        }
        if !self.learn_delay.is_zero() {
            std::thread::sleep(self.learn_delay);
        }
        if self.fail_learn {
            return Err("map full".to_owned());
        }
        // A write that took `stale_write` after its expiry was computed (once).
        let until = if self.stale_write.swap(false, Ordering::SeqCst) {
            let u = Instant::now() + life;
            std::thread::sleep(life + Duration::from_millis(50));
            u
        } else {
            Instant::now() + life
        };
        self.learned.lock().expect("lock").push(Learned {
            service: service_id,
            name: name.to_owned(),
            addrs: addrs.to_vec(),
            ttl: life,
            until,
            done: Instant::now(),
        });
        let _ = called;
        Ok(until)
    }

    fn report(&self, r: &super::Refusal) {
        self.reports.lock().expect("lock").push(r.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// Harness and client helpers
// ---------------------------------------------------------------------------------------------

pub(super) fn config(upstreams: Vec<SocketAddr>) -> Config {
    Config {
        listen: vec![SocketAddr::new(LOCAL, 0)],
        upstreams,
        timeout: Duration::from_millis(300),
        unknown_names: UnknownNames::AnswerNoAllow,
        search: Vec::new(),
        forward_ecs: false,
        min_ttl: Duration::from_secs(5),
        grace: Duration::from_secs(5),
        max_ttl: Duration::from_secs(3600),
        upstream_mark: None,
    }
}

pub(super) struct Running {
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub stats: Arc<Stats>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl Running {
    pub(super) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .expect("run() returns after shutdown")
                .expect("run task");
        }
    }
}

pub(super) async fn serve(cfg: Config, policy: Arc<TestPolicy>) -> Running {
    let fwd = Forwarder::bind(cfg, policy).await.expect("bind");
    let addrs = fwd.local_addrs();
    let stats = fwd.stats();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(fwd.run(async move {
        let _ = rx.await;
    }));
    Running { addr: addrs[0], addrs, stats, stop: Some(tx), task: Some(task) }
}

pub(super) fn query(name: &str, rtype: RecordType, id: u16) -> Message {
    let mut m = Message::new();
    m.set_id(id).set_message_type(MessageType::Query).set_op_code(OpCode::Query).set_recursion_desired(true);
    m.add_query(Query::query(n(name), rtype));
    m
}

pub(super) async fn udp_send(server: SocketAddr, bytes: &[u8]) -> UdpSocket {
    let bind: SocketAddr = if server.is_ipv6() { "[::1]:0".parse().expect("addr") } else { (LOCAL, 0).into() };
    let s = UdpSocket::bind(bind).await.expect("bind");
    s.send_to(bytes, server).await.expect("send");
    s
}

pub(super) async fn udp_recv(s: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, s.recv_from(&mut buf)).await {
        Ok(Ok((len, _))) => Some(buf[..len].to_vec()),
        _ => None,
    }
}

pub(super) async fn udp_ask(server: SocketAddr, q: &Message) -> Message {
    let s = udp_send(server, &q.to_vec().expect("encode")).await;
    let raw = udp_recv(&s, Duration::from_secs(3)).await.expect("udp answer");
    let m = Message::from_vec(&raw).expect("decode answer");
    assert_eq!(m.id(), q.id());
    assert_eq!(m.message_type(), MessageType::Response);
    assert_eq!(m.queries(), q.queries());
    m
}

pub(super) async fn tcp_ask(server: SocketAddr, qs: &[Message]) -> Vec<Message> {
    let mut s = TcpStream::connect(server).await.expect("connect");
    let mut out = Vec::new();
    for q in qs {
        let b = q.to_vec().expect("encode");
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(&b);
    }
    s.write_all(&out).await.expect("write");
    let mut answers = Vec::new();
    for _ in qs {
        let read = async {
            let len = s.read_u16().await?;
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await?;
            std::io::Result::Ok(buf)
        };
        let buf =
            tokio::time::timeout(Duration::from_secs(3), read).await.expect("tcp answer in time").expect("tcp read");
        answers.push(Message::from_vec(&buf).expect("decode"));
    }
    answers
}

pub(super) fn addrs_of(m: &Message) -> Vec<IpAddr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

pub(super) fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

#[test]
fn rebinding_classification() {
    for bad in [
        "10.0.0.1",
        "172.16.5.4",
        "172.31.255.255",
        "192.168.1.1",
        "127.0.0.1",
        "127.8.8.8",
        "0.0.0.0",
        "0.1.2.3",
        "169.254.169.254",
        "169.254.0.1",
        "100.64.0.1",
        "100.127.255.254",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
    ] {
        assert!(is_rebinding_addr(ip(bad)), "{bad} must be filtered");
    }
    for good in [
        "1.2.3.4",
        "8.8.8.8",
        "93.184.216.34",
        "172.32.0.1",
        "172.15.255.255",
        "100.63.255.255",
        "100.128.0.1",
        "169.253.1.1",
        "192.169.0.1",
        "2001:db8::1",
        "2606:4700::1111",
        "fec0::1",
        "::ffff:8.8.8.8",
    ] {
        assert!(!is_rebinding_addr(ip(good)), "{good} must pass");
    }
}

#[test]
fn lifetime_clamps_and_adds_grace() {
    let cfg = config(vec![]);
    assert_eq!(lifetime(0, &cfg), Duration::from_secs(10));
    assert_eq!(lifetime(3, &cfg), Duration::from_secs(10));
    assert_eq!(lifetime(60, &cfg), Duration::from_secs(65));
    assert_eq!(lifetime(86400, &cfg), Duration::from_secs(3605));
    // Misconfigured min > max: max wins, no panic.
    let odd = Config { min_ttl: Duration::from_secs(100), max_ttl: Duration::from_secs(10), ..cfg };
    assert_eq!(lifetime(50, &odd), Duration::from_secs(15));
}

#[test]
fn name_keys_are_lowercase_without_dot() {
    assert_eq!(name_key(&n("API.Test.")), "api.test");
    assert_eq!(name_key(&n("a.b")), "a.b");
    assert_eq!(name_key(&Name::root()), "");
}

// ---------------------------------------------------------------------------------------------
// Forwarder over real sockets
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matched_name_learned_before_answer_is_released() {
    let up = start_upstream(zone()).await;
    let (gate_tx, gate_rx) = std::sync::mpsc::channel();
    let policy = Arc::new(TestPolicy { gate: Mutex::new(Some(gate_rx)), ..TestPolicy::registry() });
    let mut cfg = config(vec![up.addr]);
    cfg.timeout = Duration::from_secs(3);
    let fwd = serve(cfg, policy.clone()).await;

    let q = query("api.test.", RecordType::A, 0x1234);
    let client = udp_send(fwd.addr, &q.to_vec().expect("encode")).await;
    let t0 = Instant::now();
    while !policy.entered.load(Ordering::SeqCst) {
        assert!(t0.elapsed() < Duration::from_secs(3), "learn was never called");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // learn is blocked: the answer must not have been released.
    assert!(udp_recv(&client, Duration::from_millis(300)).await.is_none(), "answer released before learn returned");
    gate_tx.send(()).expect("release learn");
    let raw = udp_recv(&client, Duration::from_secs(3)).await.expect("answer after learn");
    let received = Instant::now();
    let m = Message::from_vec(&raw).expect("decode");
    assert_eq!(m.id(), 0x1234);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(addrs_of(&m), vec![ip("93.184.216.34"), ip("93.184.216.35")]);

    let learned = policy.learned();
    assert_eq!(learned.len(), 1);
    let l = &learned[0];
    assert_eq!(l.service, sid(1));
    assert_eq!(l.name, "api.test");
    assert_eq!(l.addrs, vec![ip("93.184.216.34"), ip("93.184.216.35")]);
    assert_eq!(l.ttl, Duration::from_secs(125), "min TTL 120 + grace 5");
    assert!(l.done < received);
    assert_eq!(get(&fwd.stats.learned_addrs), 2);
    assert_eq!(get(&fwd.stats.answered), 1);
    assert_eq!(get(&fwd.stats.queries_udp), 1);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_chain_followed_and_mixed_case_name_matched() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let m = udp_ask(fwd.addr, &query("WWW.Api.Test.", RecordType::A, 7)).await;
    assert_eq!(m.answers().len(), 3, "two CNAMEs and the A record are passed through");
    assert_eq!(addrs_of(&m), vec![ip("198.51.100.7")]);
    let learned = policy.learned();
    assert_eq!(learned.len(), 1);
    assert_eq!(learned[0].service, sid(2));
    assert_eq!(learned[0].name, "www.api.test");
    assert_eq!(learned[0].addrs, vec![ip("198.51.100.7")]);
    assert_eq!(learned[0].ttl, Duration::from_secs(65), "CNAME TTL 60 is the chain minimum");
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_matched_name_learned_on_label_boundary_only() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let m = udp_ask(fwd.addr, &query("foo.svc.test.", RecordType::A, 8)).await;
    assert_eq!(addrs_of(&m), vec![ip("203.0.113.5")]);
    // The bare suffix is not covered by `*.svc.test`: answered (not enforcing), not learned.
    let m = udp_ask(fwd.addr, &query("svc.test.", RecordType::A, 9)).await;
    assert_eq!(addrs_of(&m), vec![ip("203.0.113.6")]);

    let learned = policy.learned();
    assert_eq!(learned.len(), 1);
    assert_eq!(learned[0].service, sid(100));
    assert_eq!(learned[0].name, "foo.svc.test");
    assert_eq!(learned[0].addrs, vec![ip("203.0.113.5")]);
    assert_eq!(learned[0].ttl, Duration::from_secs(35));
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_addresses_dropped_and_not_learned() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let m = udp_ask(fwd.addr, &query("evil.test.", RecordType::A, 10)).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(addrs_of(&m), vec![ip("1.2.3.4")]);
    let m = udp_ask(fwd.addr, &query("evil.test.", RecordType::AAAA, 11)).await;
    assert_eq!(addrs_of(&m), vec![ip("2001:db8::1")]);
    // Only a metadata address: empty answer, nothing learned.
    let m = udp_ask(fwd.addr, &query("meta.test.", RecordType::A, 12)).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());

    let learned = policy.learned();
    assert_eq!(learned.len(), 2);
    assert_eq!(learned[0].addrs, vec![ip("1.2.3.4")]);
    assert_eq!(learned[1].addrs, vec![ip("2001:db8::1")]);
    assert_eq!(get(&fwd.stats.rebinding_dropped), 3 + 4 + 1);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicitly_listed_addresses_pass_the_rebinding_filter() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy { listed: vec![ip("10.0.0.1"), ip("169.254.169.254")], ..TestPolicy::registry() });
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let m = udp_ask(fwd.addr, &query("evil.test.", RecordType::A, 13)).await;
    assert_eq!(addrs_of(&m), vec![ip("10.0.0.1"), ip("169.254.169.254"), ip("1.2.3.4")]);
    let learned = policy.learned();
    assert_eq!(learned[0].addrs, vec![ip("10.0.0.1"), ip("169.254.169.254"), ip("1.2.3.4")]);
    assert_eq!(get(&fwd.stats.rebinding_dropped), 1, "127.0.0.1 is still dropped");
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_zero_gets_min_ttl_and_long_ttl_is_capped() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let m = udp_ask(fwd.addr, &query("zero.test.", RecordType::A, 14)).await;
    assert_eq!(m.answers()[0].ttl(), 0, "the answer itself is not rewritten");
    udp_ask(fwd.addr, &query("long.test.", RecordType::A, 15)).await;
    let learned = policy.learned();
    assert_eq!(learned[0].ttl, Duration::from_secs(10), "TTL 0 -> min_ttl 5 + grace 5");
    assert_eq!(learned[1].ttl, Duration::from_secs(3605), "capped at max_ttl + grace");
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_handled_like_a() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let m = udp_ask(fwd.addr, &query("v6.test.", RecordType::AAAA, 16)).await;
    assert_eq!(addrs_of(&m), vec![ip("2001:db8::6")]);
    let learned = policy.learned();
    assert_eq!(learned.len(), 1);
    assert_eq!((learned[0].service, learned[0].addrs.clone()), (sid(7), vec![ip("2001:db8::6")]));
    assert_eq!(learned[0].ttl, Duration::from_secs(105));
    fwd.stop().await;
}

async fn unknown_name_case(unknown: UnknownNames, enforcing: bool) -> (Message, Arc<TestPolicy>, usize, Arc<Stats>) {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy { enforcing, ..TestPolicy::registry() });
    let mut cfg = config(vec![up.addr]);
    cfg.unknown_names = unknown;
    let fwd = serve(cfg, policy.clone()).await;
    let m = udp_ask(fwd.addr, &query("unknown.example.", RecordType::A, 0x4242)).await;
    // A registry name is learned in every mode.
    let api = udp_ask(fwd.addr, &query("api.test.", RecordType::A, 0x4243)).await;
    assert_eq!(api.answers().len(), 2);
    let hits = up.hits.load(Ordering::SeqCst);
    let stats = fwd.stats.clone();
    fwd.stop().await;
    (m, policy, hits, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_name_enforcing_nxdomain() {
    let (m, policy, hits, stats) = unknown_name_case(UnknownNames::Nxdomain, true).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.recursion_available());
    assert!(m.answers().is_empty());
    assert_eq!(hits, 1, "only the registry name reached the upstream");
    assert_eq!(get(&stats.blocked), 1);
    assert_eq!(policy.learned().len(), 1);
    assert_eq!(policy.learned()[0].name, "api.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_name_enforcing_refused() {
    let (m, policy, hits, stats) = unknown_name_case(UnknownNames::Refused, true).await;
    assert_eq!(m.response_code(), ResponseCode::Refused);
    assert_eq!(hits, 1);
    assert_eq!(get(&stats.blocked), 1);
    assert_eq!(policy.learned().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_name_enforcing_answer_no_allow() {
    let (m, policy, hits, stats) = unknown_name_case(UnknownNames::AnswerNoAllow, true).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(addrs_of(&m), vec![ip("5.6.7.8")]);
    assert_eq!(hits, 2);
    assert_eq!(get(&stats.blocked), 0);
    let learned = policy.learned();
    assert_eq!(learned.len(), 1, "nothing learned for the unknown name");
    assert_eq!(learned[0].name, "api.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_name_not_enforcing_is_forwarded() {
    let (m, policy, hits, stats) = unknown_name_case(UnknownNames::Nxdomain, false).await;
    assert_eq!(addrs_of(&m), vec![ip("5.6.7.8")]);
    assert_eq!(hits, 2);
    assert_eq!(get(&stats.blocked), 0);
    assert_eq!(policy.learned().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_for_matched_names_forwarded_without_learning() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let m = udp_ask(fwd.addr, &query("gone.test.", RecordType::A, 17)).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    let m = udp_ask(fwd.addr, &query("api.test.", RecordType::MX, 18)).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    assert!(policy.learned().is_empty());
    assert!(!policy.entered.load(Ordering::SeqCst), "learn not called for negative answers");
    assert_eq!(get(&fwd.stats.answered), 2);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_not_listening_gives_servfail() {
    let policy = Arc::new(TestPolicy::registry());
    let dead = dead_addr().await;
    let fwd = serve(config(vec![dead]), policy.clone()).await;

    let t0 = Instant::now();
    let m = udp_ask(fwd.addr, &query("api.test.", RecordType::A, 19)).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(t0.elapsed() < Duration::from_millis(1000));
    let m = &tcp_ask(fwd.addr, &[query("unknown.example.", RecordType::A, 20)]).await[0];
    assert_eq!(m.id(), 20);
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(policy.learned().is_empty());
    assert_eq!(get(&fwd.stats.servfail), 2);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dropping_gives_servfail_within_budget() {
    let up1 = start_upstream(zone()).await;
    let up2 = start_upstream(zone()).await;
    up1.drop_all.store(true, Ordering::SeqCst);
    up2.drop_all.store(true, Ordering::SeqCst);
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up1.addr, up2.addr]), policy.clone()).await;

    let t0 = Instant::now();
    let m = udp_ask(fwd.addr, &query("api.test.", RecordType::A, 21)).await;
    let took = t0.elapsed();
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(took >= Duration::from_millis(550), "both upstreams were tried: {took:?}");
    assert!(took < Duration::from_millis(1200), "answer within timeout * upstreams: {took:?}");
    assert_eq!(up1.hits.load(Ordering::SeqCst), 1);
    assert_eq!(up2.hits.load(Ordering::SeqCst), 1);
    assert_eq!(get(&fwd.stats.upstream_timeouts), 2);
    assert_eq!(get(&fwd.stats.servfail), 1);
    assert!(policy.learned().is_empty());
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_next_upstream_after_timeout_or_servfail() {
    let dropping = start_upstream(zone()).await;
    dropping.drop_all.store(true, Ordering::SeqCst);
    let mut failing_zone = zone();
    failing_zone.servfail.insert("api.test".to_owned());
    let failing = start_upstream(failing_zone).await;
    let good = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![dropping.addr, failing.addr, good.addr]), policy.clone()).await;

    let t0 = Instant::now();
    let m = udp_ask(fwd.addr, &query("api.test.", RecordType::A, 22)).await;
    assert!(t0.elapsed() >= Duration::from_millis(280));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(addrs_of(&m).len(), 2);
    assert_eq!(failing.hits.load(Ordering::SeqCst), 1);
    assert_eq!(good.hits.load(Ordering::SeqCst), 1);
    assert_eq!(policy.learned().len(), 1);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answer_with_wrong_id_is_rejected() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let m = udp_ask(fwd.addr, &query("spoof.test.", RecordType::A, 23)).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    let m = &tcp_ask(fwd.addr, &[query("spoof.test.", RecordType::A, 24)]).await[0];
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(policy.learned().is_empty());
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_failure_gives_servfail() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy { fail_learn: true, ..TestPolicy::registry() });
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let m = udp_ask(fwd.addr, &query("api.test.", RecordType::A, 25)).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(m.answers().is_empty(), "no unlearned address is released");
    assert!(policy.entered.load(Ordering::SeqCst));
    assert_eq!(get(&fwd.stats.learn_failures), 1);
    assert_eq!(get(&fwd.stats.servfail), 1);
    assert_eq!(get(&fwd.stats.answered), 0);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_two_queries_on_one_connection() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    // slow.test answers after 150 ms, so the pipelined second answer may come first.
    let answers =
        tcp_ask(fwd.addr, &[query("slow.test.", RecordType::A, 31), query("v6.test.", RecordType::AAAA, 32)]).await;
    let by_id: HashMap<u16, &Message> = answers.iter().map(|m| (m.id(), m)).collect();
    assert_eq!(addrs_of(by_id[&31]), vec![ip("5.5.5.6")]);
    assert_eq!(addrs_of(by_id[&32]), vec![ip("2001:db8::6")]);
    let mut names: Vec<String> = policy.learned().iter().map(|l| l.name.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["slow.test", "v6.test"]);
    assert_eq!(get(&fwd.stats.queries_tcp), 2);
    assert_eq!(get(&fwd.stats.queries_udp), 0);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_udp_answer_passed_through_and_tcp_gives_full_answer() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let q = query("big.test.", RecordType::A, 33);
    let m = udp_ask(fwd.addr, &q).await;
    assert!(m.truncated(), "TC passed to the client");
    assert!(m.answers().is_empty());
    assert!(policy.learned().is_empty());

    let m = &tcp_ask(fwd.addr, &[q]).await[0];
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 40);
    let learned = policy.learned();
    assert_eq!(learned.len(), 1);
    assert_eq!(learned[0].addrs.len(), 40);
    assert_eq!(get(&fwd.stats.learned_addrs), 40);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_preserved_and_query_forwarded_as_is() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let mut q = query("api.test.", RecordType::A, 34);
    q.set_checking_disabled(true);
    let mut edns = Edns::new();
    edns.set_max_payload(4096).set_dnssec_ok(true);
    q.set_edns(edns);
    let m = udp_ask(fwd.addr, &q).await;
    assert!(m.extensions().is_some(), "OPT in the answer");
    let seen = up.last_query.lock().expect("lock").clone().expect("upstream saw the query");
    assert_eq!(seen.id(), 34);
    assert!(seen.checking_disabled());
    let e = seen.extensions().as_ref().expect("EDNS forwarded");
    assert_eq!(e.max_payload(), 4096);
    assert!(e.flags().dnssec_ok);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_formerr_or_are_dropped() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    // Valid header claiming one question, then garbage.
    let mut bad = query("api.test.", RecordType::A, 0x7777).to_vec().expect("encode");
    bad.truncate(12);
    bad.extend_from_slice(&[0x3f, 0x01]);
    let s = udp_send(fwd.addr, &bad).await;
    let raw = udp_recv(&s, Duration::from_secs(2)).await.expect("FORMERR");
    let m = Message::from_vec(&raw).expect("decode");
    assert_eq!(m.id(), 0x7777);
    assert_eq!(m.response_code(), ResponseCode::FormErr);

    // No question at all.
    let mut empty = Message::new();
    empty.set_id(0x7778).set_message_type(MessageType::Query);
    let s = udp_send(fwd.addr, &empty.to_vec().expect("encode")).await;
    let m = Message::from_vec(&udp_recv(&s, Duration::from_secs(2)).await.expect("FORMERR")).expect("decode");
    assert_eq!((m.id(), m.response_code()), (0x7778, ResponseCode::FormErr));

    // Too short for a header: dropped.
    let s = udp_send(fwd.addr, &[1, 2, 3, 4, 5]).await;
    assert!(udp_recv(&s, Duration::from_millis(200)).await.is_none());

    // A response sent to the forwarder is never answered (no loops).
    let mut resp = query("api.test.", RecordType::A, 0x7779);
    resp.set_message_type(MessageType::Response);
    let s = udp_send(fwd.addr, &resp.to_vec().expect("encode")).await;
    assert!(udp_recv(&s, Duration::from_millis(200)).await.is_none());

    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    assert_eq!(get(&fwd.stats.formerr), 2);
    assert_eq!(get(&fwd.stats.queries_udp), 4);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthesized_answers_carry_opt_when_the_query_had_one() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy { enforcing: true, ..TestPolicy::registry() });
    let mut cfg = config(vec![up.addr]);
    cfg.unknown_names = UnknownNames::Nxdomain;
    let fwd = serve(cfg, policy).await;
    let mut q = query("unknown.example.", RecordType::A, 35);
    q.set_edns(Edns::new());
    let m = udp_ask(fwd.addr, &q).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.extensions().is_some());
    assert!(m.recursion_desired() && m.recursion_available());
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_queries_all_answered() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;

    let mut tasks = Vec::new();
    for i in 0..100u16 {
        let addr = fwd.addr;
        tasks.push(tokio::spawn(async move {
            let name = if i % 2 == 0 { "api.test." } else { "slow.test." };
            udp_ask(addr, &query(name, RecordType::A, 1000 + i)).await
        }));
    }
    for t in tasks {
        let m = t.await.expect("task");
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(!m.answers().is_empty());
    }
    assert_eq!(policy.learned().len(), 100);
    assert_eq!(get(&fwd.stats.answered), 100);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_port_on_v4_and_v6_loopback() {
    let up = start_upstream(zone()).await;
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback; skipping");
        return;
    }
    let policy = Arc::new(TestPolicy::registry());
    let mut cfg = config(vec![up.addr]);
    cfg.listen = vec![SocketAddr::new(LOCAL, 0), "[::1]:0".parse().expect("addr")];
    let fwd = serve(cfg, policy.clone()).await;
    assert_eq!(fwd.addrs.len(), 2);
    assert_ne!(fwd.addrs[0].port(), 0);
    assert_eq!(fwd.addrs[0].port(), fwd.addrs[1].port());
    assert!(fwd.addrs[1].is_ipv6());

    let m = udp_ask(fwd.addrs[1], &query("api.test.", RecordType::A, 36)).await;
    assert_eq!(addrs_of(&m).len(), 2);
    let m = &tcp_ask(fwd.addrs[1], &[query("v6.test.", RecordType::AAAA, 37)]).await[0];
    assert_eq!(addrs_of(m), vec![ip("2001:db8::6")]);
    assert_eq!(policy.learned().len(), 2);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mark_set_or_eperm_ignored() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy::registry());
    let mut cfg = config(vec![up.addr]);
    cfg.upstream_mark = Some(0x4242);
    let fwd = serve(cfg, policy.clone()).await;
    let m = udp_ask(fwd.addr, &query("api.test.", RecordType::A, 38)).await;
    assert_eq!(addrs_of(&m).len(), 2);
    let m = &tcp_ask(fwd.addr, &[query("api.test.", RecordType::A, 39)]).await[0];
    assert_eq!(addrs_of(m).len(), 2);
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_rejects_empty_config() {
    let policy = Arc::new(TestPolicy::registry());
    assert!(Forwarder::bind(config(vec![]), policy.clone()).await.is_err());
    let mut cfg = config(vec![dead_addr().await]);
    cfg.listen.clear();
    assert!(Forwarder::bind(cfg, policy).await.is_err());
}
