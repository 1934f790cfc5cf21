//! The name policy and the secure defaults, one test per rule: refusal by default, search-domain
//! expansions, every question judged, opcodes, sanitized queries (EDNS options, query records,
//! id), AUDIT reports, embedded-IPv4 rebinding forms, the TTL floor and its release guarantee.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RecordType};

use super::judge::{self, BlockReason, Class, Decision, Why};
use super::tests::{
    Running, TestPolicy, addrs_of, config, get, ip, query, rec_aaaa, serve, sid, start_upstream, udp_ask, zone,
};
use super::{Action, Config, MIN_TTL_FLOOR, PolicyMode, UnknownNames, is_rebinding_addr};

fn search() -> Vec<String> {
    vec!["corp.example".to_string(), "eu.corp.example".to_string()]
}

fn classify(q: &str) -> Class {
    judge::classify(q, &TestPolicy::registry(), &search())
}

// ---------------------------------------------------------------------------------------------
// Pure rules
// ---------------------------------------------------------------------------------------------

#[test]
fn names_are_classified_with_the_search_list() {
    // Exact and wildcard registry names.
    assert_eq!(classify("api.test"), Class::Registered(sid(1)));
    assert_eq!(classify("foo.svc.test"), Class::Registered(sid(100)));
    // Unregistered: reported as asked.
    assert_eq!(classify("evil.com"), Class::Unregistered { report: "evil.com".into(), why: Why::NotInRegistry });
    // The resolver trying `evil.com` with `search corp.example`: the same name, reported as such.
    assert_eq!(
        classify("evil.com.corp.example"),
        Class::Unregistered { report: "evil.com".into(), why: Why::SearchExpansion }
    );
    // The longest search domain gives the name asked for.
    assert_eq!(
        classify("evil.com.eu.corp.example"),
        Class::Unregistered { report: "evil.com".into(), why: Why::SearchExpansion }
    );
    // An expansion of a registered name: NXDOMAIN locally, so the resolver goes on to the name.
    assert_eq!(classify("api.test.corp.example"), Class::SearchMiss);
    // Kubernetes-style: labels between the registered name and the search domain.
    let k8s = vec!["cluster.local".to_string()];
    let p = TestPolicy::registry();
    assert_eq!(judge::classify("api.test.default.svc.cluster.local", &p, &k8s), Class::SearchMiss);
    assert_eq!(judge::classify("foo.svc.test.default.svc.cluster.local", &p, &k8s), Class::SearchMiss);
    assert_eq!(
        judge::classify("myservice.default.svc.cluster.local", &p, &k8s),
        Class::Unregistered { report: "myservice.default.svc".into(), why: Why::SearchExpansion }
    );
    // A single label with a search domain is just that expanded name.
    assert_eq!(
        classify("printer.corp.example"),
        Class::Unregistered { report: "printer.corp.example".into(), why: Why::NotInRegistry }
    );
}

#[test]
fn registry_names_win_over_search_expansions() {
    let mut p = TestPolicy::registry();
    p.wildcard.push(("corp.example".into(), sid(200)));
    p.exact.push(("db.eu.corp.example".into(), sid(201)));
    let s = search();
    // `*.corp.example` covers it: the registry allows that name (the query cannot tell it from
    // `evil.com` plus the search domain).
    assert_eq!(judge::classify("evil.com.corp.example", &p, &s), Class::Registered(sid(200)));
    assert_eq!(judge::classify("printer.corp.example", &p, &s), Class::Registered(sid(200)));
    // An exact host, and its bare form gets NXDOMAIN so that the search reaches it.
    assert_eq!(judge::classify("db.eu.corp.example", &p, &s), Class::Registered(sid(201)));
    assert_eq!(judge::classify("db.eu", &p, &s), Class::SearchMiss);
    // Without the wildcard, `db.eu` alone (nothing registered under corp.example) is refused.
    assert_eq!(classify("db.eu"), Class::Unregistered { report: "db.eu".into(), why: Why::NotInRegistry });
}

fn msg(questions: &[(&str, RecordType)]) -> Message {
    let mut m = query(questions[0].0, questions[0].1, 7);
    for (n, t) in &questions[1..] {
        m.add_query(Query::query(Name::from_ascii(n).unwrap(), *t));
    }
    m
}

fn decide(m: &Message, p: &TestPolicy, unknown: UnknownNames) -> Decision {
    judge::decide(m, p, unknown, &search())
}

#[test]
fn every_question_is_judged() {
    let enforce = TestPolicy { enforcing: true, ..TestPolicy::registry() };
    let mixed = msg(&[("api.test.", RecordType::A), ("exfil.evil.com.", RecordType::A)]);
    assert_eq!(
        decide(&mixed, &enforce, UnknownNames::Refused),
        Decision::Block {
            rcode: ResponseCode::Refused,
            reason: BlockReason::MultiQuestion,
            report: vec![(1, "exfil.evil.com".into(), Why::NotInRegistry)]
        }
    );
    assert!(matches!(
        decide(&mixed, &enforce, UnknownNames::Nxdomain),
        Decision::Block { rcode: ResponseCode::NXDomain, reason: BlockReason::MultiQuestion, .. }
    ));
    let both = msg(&[("api.test.", RecordType::A), ("v6.test.", RecordType::AAAA)]);
    assert_eq!(
        decide(&both, &enforce, UnknownNames::Refused),
        Decision::Forward { learn: vec![(0, sid(1)), (1, sid(7))], unregistered: vec![] }
    );
    // The opt-out forwards, learns the registered question, and reports the other.
    assert_eq!(
        decide(&mixed, &enforce, UnknownNames::AnswerNoAllow),
        Decision::Forward {
            learn: vec![(0, sid(1))],
            unregistered: vec![(1, "exfil.evil.com".into(), Why::NotInRegistry)]
        }
    );
    let search_miss = msg(&[("api.test.corp.example.", RecordType::A)]);
    assert!(matches!(
        decide(&search_miss, &enforce, UnknownNames::Refused),
        Decision::Block { rcode: ResponseCode::NXDomain, reason: BlockReason::SearchMiss, .. }
    ));
}

#[test]
fn opcodes_other_than_query_are_refused_when_enforcing() {
    let enforce = TestPolicy { enforcing: true, ..TestPolicy::registry() };
    let mut update = msg(&[("api.test.", RecordType::SOA)]);
    update.set_op_code(OpCode::Update);
    assert!(matches!(
        decide(&update, &enforce, UnknownNames::Refused),
        Decision::Block { rcode: ResponseCode::Refused, reason: BlockReason::Opcode, .. }
    ));
    let open = TestPolicy::registry();
    assert!(matches!(decide(&update, &open, UnknownNames::Refused), Decision::Forward { .. }));
}

#[test]
fn audit_reports_and_allow_any_does_not() {
    let audit = TestPolicy { audit: true, ..TestPolicy::registry() };
    assert_eq!(audit.mode_for_test(), PolicyMode::Audit);
    let m = msg(&[("evil.com.", RecordType::A)]);
    assert_eq!(
        decide(&m, &audit, UnknownNames::Refused),
        Decision::Forward { learn: vec![], unregistered: vec![(0, "evil.com".into(), Why::NotInRegistry)] }
    );
    let open = TestPolicy::registry();
    assert_eq!(decide(&m, &open, UnknownNames::Refused), Decision::Forward { learn: vec![], unregistered: vec![] });
}

impl TestPolicy {
    fn mode_for_test(&self) -> PolicyMode {
        super::DnsPolicy::mode(self)
    }
}

#[test]
fn embedded_ipv4_forms_are_judged_by_the_embedded_address() {
    let bad = [
        "64:ff9b::a00:1",                       // NAT64 WKP, 10.0.0.1
        "64:ff9b::7f00:1",                      // 127.0.0.1
        "64:ff9b::a9fe:a9fe",                   // 169.254.169.254
        "64:ff9b:1:a00:0:100::",                // local-use /48 layout, 10.0.0.1
        "64:ff9b:1:0:a9:fea9:fe00:0",           // /64 layout: byte 8 zero, 169.254.169.254 at bytes 9..12
        "64:ff9b:1:1234:5678:9abc:a00:1",       // /96 layout, 10.0.0.1
        "2002:c0a8:101::1",                     // 6to4 of 192.168.1.1
        "2002:7f00:1::",                        // 6to4 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo, client 10.0.0.1
        "2001:0:a00:1:8000:63bf:3fff:fdd2",     // Teredo, server 10.0.0.1
        "::a00:1",                              // IPv4-compatible 10.0.0.1
        "::ffff:a9fe:a9fe",                     // IPv4-mapped metadata address
    ];
    for a in bad {
        assert!(is_rebinding_addr(a.parse().unwrap()), "{a} embeds a private/loopback/metadata address");
    }
    let good = [
        "64:ff9b::808:808",
        "64:ff9b:1:808:8:800::",
        "2002:808:808::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2", // RFC 4380's example: client 192.0.2.45
        "::808:808",
        "2001:db8::1",
        "2606:4700::1111",
    ];
    for a in good {
        assert!(!is_rebinding_addr(a.parse().unwrap()), "{a} embeds a public address");
    }
}

#[test]
fn the_ttl_floor_is_at_least_a_second_whatever_the_config() {
    let cfg = Config { min_ttl: Duration::ZERO, grace: Duration::ZERO, max_ttl: Duration::ZERO, ..Config::default() };
    let slack = super::answer::RELEASE_SLACK;
    assert_eq!(super::answer::lifetime(0, &cfg), MIN_TTL_FLOOR + slack);
    assert_eq!(super::answer::lifetime(30, &cfg), MIN_TTL_FLOOR + slack, "a zero ceiling does not go under the floor");
    assert_eq!(Config::default().unknown_names, UnknownNames::Refused, "REFUSED is the default");
}

#[test]
fn search_domains_come_from_resolv_conf() {
    let text = "nameserver 10.0.0.2\ndomain old.example\nsearch Corp.Example. eu.corp.example # c\noptions ndots:2\n";
    assert_eq!(super::search_domains(text), ["corp.example", "eu.corp.example"]);
    assert!(super::search_domains("nameserver 1.1.1.1\n").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Through the forwarder
// ---------------------------------------------------------------------------------------------

async fn enforcing(
    unknown: UnknownNames,
    extra: impl FnOnce(&mut Config),
) -> (super::tests::TestUpstream, Arc<TestPolicy>, Running) {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy { enforcing: true, ..TestPolicy::registry() });
    let mut cfg = config(vec![up.addr]);
    cfg.unknown_names = unknown;
    cfg.search = search();
    extra(&mut cfg);
    let fwd = serve(cfg, policy.clone()).await;
    (up, policy, fwd)
}

fn hits(up: &super::tests::TestUpstream) -> usize {
    up.hits.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn refused_names_and_their_expansions_never_reach_the_upstream() {
    let (up, policy, fwd) = enforcing(UnknownNames::Refused, |_| {}).await;
    for name in ["unknown.example.", "unknown.example.corp.example.", "unknown.example.eu.corp.example."] {
        let r = udp_ask(fwd.addr, &query(name, RecordType::A, 11)).await;
        assert_eq!(r.response_code(), ResponseCode::Refused, "{name}");
        assert_eq!(r.id(), 11);
        assert!(r.answers().is_empty());
    }
    // An expansion of a registered name: NXDOMAIN (the resolver goes on), upstream not asked.
    let r = udp_ask(fwd.addr, &query("api.test.corp.example.", RecordType::A, 12)).await;
    assert_eq!(r.response_code(), ResponseCode::NXDomain);
    assert_eq!(hits(&up), 0, "nothing reached the upstream");
    // Reported under the name the workload asked for, with what was queried.
    let reps = policy.reports();
    assert_eq!(reps.len(), 3, "{reps:?}");
    assert!(reps.iter().all(|r| r.name == "unknown.example" && r.action == Action::Refused), "{reps:?}");
    assert_eq!(reps[1].queried, "unknown.example.corp.example");
    assert_eq!(reps[1].why, Why::SearchExpansion);
    assert_eq!(get(&fwd.stats.blocked), 4);
    assert_eq!(get(&fwd.stats.refused_not_in_registry), 1);
    assert_eq!(get(&fwd.stats.refused_search_expansion), 2);
    assert_eq!(get(&fwd.stats.search_miss), 1);
    // A registered name still works, and is learned.
    let r = udp_ask(fwd.addr, &query("api.test.", RecordType::A, 13)).await;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    assert_eq!(policy.learned().len(), 1);
    fwd.stop().await;
}

#[tokio::test]
async fn a_multi_question_query_with_an_unregistered_name_is_refused() {
    let (up, policy, fwd) = enforcing(UnknownNames::Refused, |_| {}).await;
    let r = udp_ask(fwd.addr, &msg(&[("api.test.", RecordType::A), ("unknown.example.", RecordType::A)])).await;
    assert_eq!(r.response_code(), ResponseCode::Refused);
    assert_eq!(hits(&up), 0);
    assert_eq!(get(&fwd.stats.refused_multi_question), 1);
    assert_eq!(policy.reports()[0].name, "unknown.example");
    // All registered: forwarded, each question's addresses learned.
    let r = udp_ask(fwd.addr, &msg(&[("api.test.", RecordType::A), ("v6.test.", RecordType::AAAA)])).await;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    let learned = policy.learned();
    assert_eq!(learned.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["api.test", "v6.test"]);
    assert_eq!(learned[1].addrs, [ip("2001:db8::6")]);
    fwd.stop().await;
}

#[tokio::test]
async fn queries_are_sanitized_before_they_go_upstream() {
    for forward_ecs in [false, true] {
        let (up, _policy, fwd) = enforcing(UnknownNames::Refused, |c| c.forward_ecs = forward_ecs).await;
        let mut q = query("api.test.", RecordType::A, 4242);
        let mut edns = Edns::new();
        edns.set_max_payload(1400);
        let opts = edns.options_mut();
        opts.insert(EdnsOption::Unknown(u16::from(EdnsCode::NSID), vec![]));
        opts.insert(EdnsOption::Unknown(65001, b"exfiltrated-secret".to_vec()));
        opts.insert(EdnsOption::Unknown(u16::from(EdnsCode::Cookie), vec![1, 2, 3, 4, 5, 6, 7, 8]));
        opts.insert(EdnsOption::Unknown(u16::from(EdnsCode::Padding), b"not zeros".to_vec()));
        opts.insert(EdnsOption::Subnet(ClientSubnet::new("198.51.100.0".parse().unwrap(), 24, 0)));
        q.set_edns(edns);
        // A record smuggled into the additional section of a query.
        q.add_additional(super::tests::rec_a("data.evil.com.", 0, "1.2.3.4"));
        let r = udp_ask(fwd.addr, &q).await;
        assert_eq!((r.response_code(), r.id()), (ResponseCode::NoError, 4242), "the client's id comes back");
        let seen = up.last_query.lock().unwrap().clone().expect("the upstream saw a query");
        assert_ne!(seen.id(), 4242, "the upstream gets an id of the forwarder's");
        assert!(seen.additionals().is_empty(), "{seen:?}");
        let e = seen.extensions().clone().expect("OPT kept");
        assert_eq!(e.max_payload(), 1400);
        let codes: Vec<EdnsCode> = e.options().as_ref().iter().map(|(c, _)| *c).collect();
        let mut want = vec![EdnsCode::Cookie, EdnsCode::Padding];
        if forward_ecs {
            want.push(EdnsCode::Subnet);
        }
        assert_eq!(codes, want, "forward_ecs {forward_ecs}");
        match e.option(EdnsCode::Padding) {
            Some(EdnsOption::Unknown(_, d)) => assert_eq!(d, &vec![0u8; 9], "padding re-emitted as zeros"),
            other => panic!("padding: {other:?}"),
        }
        assert_eq!(get(&fwd.stats.stripped), if forward_ecs { 3 } else { 4 }, "NSID, 65001, the record (+ ECS)");
        fwd.stop().await;
    }
}

#[tokio::test]
async fn audit_forwards_and_reports_what_it_would_refuse() {
    let up = start_upstream(zone()).await;
    let policy = Arc::new(TestPolicy { audit: true, ..TestPolicy::registry() });
    let mut cfg = config(vec![up.addr]);
    cfg.unknown_names = UnknownNames::Refused;
    let fwd = serve(cfg, policy.clone()).await;
    let r = udp_ask(fwd.addr, &query("unknown.example.", RecordType::A, 3)).await;
    assert_eq!((r.response_code(), addrs_of(&r)), (ResponseCode::NoError, vec![ip("5.6.7.8")]));
    let reps = policy.reports();
    assert_eq!(reps.len(), 1);
    assert_eq!((reps[0].name.as_str(), reps[0].action), ("unknown.example", Action::AuditWouldRefuse));
    assert_eq!(get(&fwd.stats.audit_would_refuse), 1);
    assert_eq!(get(&fwd.stats.blocked), 0);
    fwd.stop().await;
}

#[tokio::test]
async fn nat64_answers_embedding_private_addresses_are_dropped() {
    let mut z = zone();
    z.records.push(rec_aaaa("nat64.svc.test.", 300, "64:ff9b::a9fe:a9fe"));
    z.records.push(rec_aaaa("nat64.svc.test.", 300, "64:ff9b::808:808"));
    let up = start_upstream(z).await;
    let policy = Arc::new(TestPolicy { enforcing: true, ..TestPolicy::registry() });
    let fwd = serve(config(vec![up.addr]), policy.clone()).await;
    let r = udp_ask(fwd.addr, &query("nat64.svc.test.", RecordType::AAAA, 5)).await;
    assert_eq!(addrs_of(&r), [ip("64:ff9b::808:808")]);
    assert_eq!(policy.learned()[0].addrs, [ip("64:ff9b::808:808")]);
    assert_eq!(get(&fwd.stats.rebinding_dropped), 1);
    fwd.stop().await;
}

#[tokio::test]
async fn a_learned_entry_outlives_the_release_of_its_answer_by_the_floor() {
    // TTL 0, floor 1 s, no grace. (1) The map is busy for 1.2 s: the lifetime starts at the
    // write, so the entry still has the floor when the answer goes. (2) The write itself takes
    // longer than the lifetime: the forwarder renews the entry before it answers.
    for (wait, stale) in [(Duration::from_millis(1200), false), (Duration::ZERO, true)] {
        let up = start_upstream(zone()).await;
        let policy = Arc::new(TestPolicy { enforcing: true, learn_delay: wait, ..TestPolicy::registry() });
        policy.stale_write.store(stale, std::sync::atomic::Ordering::SeqCst);
        let mut cfg = config(vec![up.addr]);
        cfg.min_ttl = Duration::ZERO; // raised to MIN_TTL_FLOOR by bind
        cfg.grace = Duration::ZERO;
        cfg.timeout = Duration::from_secs(5);
        let fwd = serve(cfg, policy.clone()).await;
        let r = udp_ask(fwd.addr, &query("zero.test.", RecordType::A, 9)).await;
        let released = Instant::now();
        assert_eq!(addrs_of(&r), [ip("1.1.1.1")]);
        let learned = policy.learned();
        assert_eq!(learned.len(), if stale { 2 } else { 1 }, "stale {stale}: {learned:?}");
        assert_eq!(learned[0].ttl, MIN_TTL_FLOOR + super::answer::RELEASE_SLACK, "TTL 0 gets the 1 s minimum");
        assert_eq!(get(&fwd.stats.relearned), u64::from(stale));
        let left = learned.last().unwrap().until.saturating_duration_since(released);
        assert!(
            left >= MIN_TTL_FLOOR - Duration::from_millis(50),
            "stale {stale}: the entry must outlive the answer's release by the floor: {left:?}"
        );
        fwd.stop().await;
    }
}

#[test]
fn forwarded_addresses_are_still_checked() {
    // Sanity for the test zone: the address the NAT64 test keeps is public.
    assert!(!is_rebinding_addr(IpAddr::V6("64:ff9b::808:808".parse().unwrap())));
}
