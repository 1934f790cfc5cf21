//! `enforcer daemon --kubernetes` against the fake API server (real list + watch, real
//! Kubernetes JSON), a kubelet-shaped cgroup tree below the test's cgroup, pods running in a test
//! network namespace, real BPF programs.
//!
//! Addresses: the pods' network is the test netns `N`; a server there answers on every address
//! (ports 80, 443, 8080). `N.2` is never a registry address (denied under REGISTRY_ONLY),
//! `N.3` is the shop/web Service's ClusterIP (port 80), `N.4` its endpoint (port 8080), `N.5` the
//! `kubernetes` Service's ClusterIP (443).

use std::time::{Duration, Instant};

use enforcer_tests::*;
use serde_json::Value;

const GOVERNED: &str = "a1a1a1a1-0000-4000-8000-000000000001";
const UNGOVERNED: &str = "a1a1a1a1-0000-4000-8000-000000000002";

/// The cluster of every test: namespaces shop (opted in) and other (not), REGISTRY_ONLY mesh,
/// the two Services, a governed and an ungoverned pod with their cgroups.
fn cluster() -> (KubeNode, PodCgroup, PodCgroup, Server) {
    let node = KubeNode::new();
    let n = &node.net;
    let server = n.serve(&["tcp:80", "tcp:443", "tcp:8080"]);
    node.namespace("shop", true);
    node.namespace("other", false);
    node.namespace("default", false);
    node.mesh_mode("REGISTRY_ONLY");
    node.service("shop", "web", &n.v4(3), 80, Some((&n.v4(4), 8080)));
    node.service("default", "kubernetes", &n.v4(5), 443, None);
    node.pod("shop", "app", GOVERNED);
    node.pod("other", "legacy", UNGOVERNED);
    let g = node.sandbox(GOVERNED);
    let u = node.sandbox(UNGOVERNED);
    (node, g, u, server)
}

#[test]
fn kube_governed_pods_reach_in_cluster_services_and_ungoverned_pods_are_untouched() {
    let (node, governed, ungoverned, _server) = cluster();
    let pins = PinDir::new();
    let d = KubeDaemon::start(&node, &pins, &[]);
    let n = &node.net;
    let r = node.client(
        &governed,
        &[op("tcp", n.v4(3), 80), op("tcp", n.v4(4), 8080), op("tcp", n.v4(5), 443), op("tcp", n.v4(2), 80)],
    );
    r.res[0].assert_ok("hello from");
    r.res[1].assert_ok("hello from");
    assert!(r.res[2].ok, "kubernetes.default is always reachable: {:?}", r.res[2]);
    r.res[3].assert_eperm();
    // The pod outside the opted-in namespace: untouched.
    let r = node.client(&ungoverned, &[op("tcp", n.v4(2), 80)]);
    r.res[0].assert_ok("hello from");
    let log = d.log();
    assert!(log.contains("kubelet pod cgroups"), "{log}");
    // The Service goes away: so does its reachability (the watch, not a restart).
    node.api.delete("Service", "shop", "web");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = node.client(&governed, &[op("tcp", n.v4(3), 80)]);
        if r.res[0].errno == Some(libc::EPERM as i64) {
            break;
        }
        assert!(Instant::now() < deadline, "the deleted Service stayed allowed\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn targets(node: &KubeNode) -> Vec<String> {
    vec![format!("{}:80:allow", node.net.v4(3)), format!("{}:80:deny", node.net.v4(2))]
}

#[test]
fn kube_pod_churn_and_enrolment_keep_every_verdict() {
    let (node, governed, _ungoverned, _server) = cluster();
    let pins = PinDir::new();
    let d = KubeDaemon::start(&node, &pins, &[]);
    // A running pod keeps connecting while 100 pods start and stop around it.
    let lp = node.spawn_loop(&governed, 30.0, &targets(&node));
    let mut through = Vec::new();
    let mut enrol_ms = Vec::new();
    let t0 = Instant::now();
    for i in 0..100 {
        let uid = format!("b0000000-0000-4000-8000-{i:012}");
        let name = format!("churn-{i}");
        node.pod("shop", &name, &uid);
        // The kubelet creates the cgroup once the pod is bound, then starts the container at once:
        // the container's connects begin right after the directory exists.
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        let cg = node.sandbox(&uid);
        let r = loop_result(node.spawn_loop(&cg, 0.05, &[format!("{}:80:deny", node.net.v4(2))]));
        through.push(r["allowed_before_first_eperm"].as_u64().unwrap());
        let _ = t;
        if let Some(f) = r["first_eperm"].as_f64() {
            enrol_ms.push(f * 1000.0);
        }
        drop(cg);
        node.api.delete("Pod", "shop", &name);
    }
    let churn = t0.elapsed();
    let res: Value = loop_result(lp);
    eprintln!(
        "churn of 100 pods took {churn:?}; loop rounds {}; new pods' connects before their first EPERM: {:?}; first EPERM after the container started (ms): min {:.1} max {:.1}",
        res["rounds"],
        through.iter().sum::<u64>(),
        enrol_ms.iter().cloned().fold(f64::MAX, f64::min),
        enrol_ms.iter().cloned().fold(0.0, f64::max)
    );
    assert_eq!(res["wrong_count"], 0, "wrong verdicts for the running pod during churn: {res}\n{}", d.log());
    assert_eq!(through.iter().sum::<u64>(), 0, "a new pod connected before it was enrolled: {through:?}\n{}", d.log());
}

#[test]
fn kube_restart_keeps_pinned_policies_while_the_api_server_is_unreachable() {
    let (node, governed, _ungoverned, _server) = cluster();
    let pins = PinDir::new();
    let d1 = KubeDaemon::start(&node, &pins, &[]);
    let lp = node.spawn_loop(&governed, 12.0, &targets(&node));
    std::thread::sleep(Duration::from_secs(2));
    // The API server goes away, then the daemon restarts (an upgrade, a crash).
    node.api.set_down(true);
    let log1 = d1.stop();
    let mut d2 = KubeDaemon::spawn(&node, &pins, &[]);
    std::thread::sleep(Duration::from_secs(4));
    assert!(!d2.started(), "the new daemon cannot have synced without the API server\n{}", d2.log());
    node.api.set_down(false);
    d2.wait_started(Duration::from_secs(40));
    let res = loop_result(lp);
    assert_eq!(
        res["wrong_count"],
        0,
        "verdicts changed across the restart: {res}\n--- first daemon\n{log1}\n--- second\n{}",
        d2.log()
    );
    assert!(res["rounds"].as_u64().unwrap() > 100, "{res}");
}

/// DestinationRule TLS origination for a pod in its own network namespace: the proxy listens on
/// `--local-address` (here the node side of the pod network's veth, an address of the node that
/// the pod reaches), not on the node's loopback, which the pod's netns does not share.
#[test]
fn kube_tls_origination_from_a_pod_netns_through_the_local_address() {
    let (node, governed, _ungoverned, _server) = cluster();
    let n = &node.net;
    let pki = Pki::new(&node.dir, "api", &["api.test"]);
    let api = n.v4(6);
    let _https = https_server(n, &api, 8443, &pki);
    node.api.put(
        "ServiceEntry",
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"hosts": ["api.test"], "location": "MESH_EXTERNAL", "resolution": "STATIC",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8443}],
                     "endpoints": [{"address": api}]}}),
    );
    node.api.put(
        "DestinationRule",
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"host": "api.test", "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 80}, "tls": {"mode": "SIMPLE", "caCertificates": pki.ca.display().to_string()}}]}}}),
    );
    let pins = PinDir::new();
    let d = KubeDaemon::start(&node, &pins, &["--local-address", &n.v4(1)]);
    let r = node.client(&governed, &[op("tcp", &api, 80)]);
    assert!(r.res[0].ok, "plain HTTP to api.test:80 from the pod: {:?}\n{}", r.res[0], d.log());
    let reply = r.res[0].reply.clone().unwrap_or_default();
    assert!(reply.contains("sni=api.test"), "the proxy originated TLS to the server: {reply}\n{}", d.log());
}

/// A wildcard ServiceEntry learns its addresses from the pod's own lookups: the pod's DNS (in
/// its netns) is steered to the forwarder on `--local-address` with `--kube-dns-steer`.
#[test]
fn kube_wildcard_hosts_are_learned_from_a_pod_netns() {
    let (node, governed, _ungoverned, _server) = cluster();
    let n = &node.net;
    let dns = Dnsmasq::start(n, &n.v4(7), &[("a.wild.test", &n.v4(2))], 30, &[]);
    node.api.put(
        "ServiceEntry",
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "wild", "namespace": "shop"},
            "spec": {"hosts": ["*.wild.test"], "location": "MESH_EXTERNAL", "resolution": "NONE",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}}),
    );
    let pins = PinDir::new();
    let upstream = n.v4(7);
    let d = KubeDaemon::start(
        &node,
        &pins,
        &["--local-address", &n.v4(1), "--kube-dns-steer", "--dns-upstream", &upstream, "--dns-port", "0"],
    );
    let target = n.v4(2);
    let r = node.worker(
        &governed,
        &[
            serde_json::json!({"op": "connect", "addr": target, "port": 80}),
            serde_json::json!({"op": "query", "server": dns.addr.ip().to_string(), "name": "a.wild.test"}),
            serde_json::json!({"op": "connect", "addr": target, "port": 80}),
        ],
    );
    assert_eq!(r[0]["errno"], libc::EPERM, "not learned yet: {}\n{}", r[0], d.log());
    assert_eq!(
        r[1]["addrs"][0][0],
        target,
        "the pod's lookup was answered (through the forwarder): {}\n{}",
        r[1],
        d.log()
    );
    assert_eq!(r[2]["ok"], true, "learned from the pod's lookup: {}\n{}", r[2], d.log());
}

/// `--kube-dns-steer` steers governed pods only: a governed pod's lookup goes to the forwarder
/// (answered from the daemon's upstream, and learned), an ungoverned pod's reaches the resolver
/// it asked, directly.
#[test]
fn kube_dns_steering_is_per_policy_and_leaves_ungoverned_pods_alone() {
    let (node, governed, ungoverned, _server) = cluster();
    let n = &node.net;
    netns_add_v4_hosts(n, 8..=8);
    // The daemon's upstream and the pods' own resolver answer the same name differently.
    let upstream = Dnsmasq::start(n, &n.v4(7), &[("x.wild.test", &n.v4(2))], 30, &[]);
    let own = Dnsmasq::start(n, &n.v4(8), &[("x.wild.test", "192.0.2.99")], 30, &[]);
    node.api.put(
        "ServiceEntry",
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "wild", "namespace": "shop"},
            "spec": {"hosts": ["*.wild.test"], "location": "MESH_EXTERNAL", "resolution": "NONE",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}}),
    );
    let pins = PinDir::new();
    let up = upstream.addr.ip().to_string();
    let d = KubeDaemon::start(
        &node,
        &pins,
        &["--local-address", &n.v4(1), "--kube-dns-steer", "--dns-upstream", &up, "--dns-port", "0"],
    );
    let resolver = own.addr.ip().to_string();
    let q = serde_json::json!({"op": "query", "server": resolver, "name": "x.wild.test", "timeout": 3});
    let target = n.v4(2);
    let r = node.worker(&governed, &[q.clone(), serde_json::json!({"op": "connect", "addr": target, "port": 80})]);
    assert_eq!(r[0]["addrs"][0][0], target, "the governed pod's lookup went to the forwarder: {}\n{}", r[0], d.log());
    assert_eq!(r[0]["recv_from"][0], resolver, "shown as the resolver it asked: {}", r[0]);
    assert_eq!(r[1]["ok"], true, "learned from the governed pod's lookup: {}\n{}", r[1], d.log());
    let r = node.worker(&ungoverned, &[q]);
    assert_eq!(r[0]["addrs"][0][0], "192.0.2.99", "the ungoverned pod reached its own resolver: {}\n{}", r[0], d.log());
    assert!(own.log().contains("x.wild.test"), "{}", own.log());
}
