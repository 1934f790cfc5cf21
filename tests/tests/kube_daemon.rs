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

/// `api.test` (port 80, targetPort 8443 at `api`) in namespace shop.
fn put_api(node: &KubeNode, api: &str) {
    node.api.put(
        "ServiceEntry",
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"hosts": ["api.test"], "location": "MESH_EXTERNAL", "resolution": "STATIC",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8443}],
                     "endpoints": [{"address": api}]}}),
    );
}

/// The ServiceEntry `shop/wild`: `*.wild.test` port 80 (HTTP), resolution NONE (addresses
/// learned from DNS answers).
fn put_wild(node: &KubeNode) {
    node.api.put(
        "ServiceEntry",
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "wild", "namespace": "shop"},
            "spec": {"hosts": ["*.wild.test"], "location": "MESH_EXTERNAL", "resolution": "NONE",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}}),
    );
}

/// [`put_api`] with a DestinationRule that originates TLS to it, trusting `pki`'s CA.
fn put_api_tls(node: &KubeNode, api: &str, pki: &Pki) {
    put_api(node, api);
    node.api.put(
        "DestinationRule",
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"host": "api.test", "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 80}, "tls": {"mode": "SIMPLE", "caCertificates": pki.ca.display().to_string()}}]}}}),
    );
}

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
    wait_verdict(&node, &governed, &n.v4(3), false, &d);
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
    put_api_tls(&node, &api, &pki);
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
    put_wild(&node);
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

const WEB: &str = "a1a1a1a1-0000-4000-8000-000000000003";

/// The `source_*` labels of a pod's traffic are Istio's workload identity: Deployment `web`
/// (its pod's ReplicaSet owner) in namespace `shop`, canonical service and revision from the
/// pod's `app`/`version` labels — on the kernel's TCP counters, on the proxy's
/// `istio_requests_total` (TLS origination) and in the events (`shop/web`).
#[test]
fn kube_source_labels_are_the_pods_workload_identity() {
    let (node, governed, ungoverned, _server) = cluster();
    let n = &node.net;
    node.deployment_pod("shop", "web", WEB, serde_json::json!({"app": "web-app", "version": "v3"}));
    let web = node.sandbox(WEB);
    let pki = Pki::new(&node.dir, "api", &["api.test"]);
    let api = n.v4(6);
    let _https = https_server(n, &api, 8443, &pki);
    put_api_tls(&node, &api, &pki);
    let pins = PinDir::new();
    let d = KubeDaemon::start(&node, &pins, &["--local-address", &n.v4(1), "--metrics-addr", "127.0.0.1:0"]);
    let r = node.client(&web, &[op("tcp", n.v4(3), 80), op("tcp", n.v4(2), 80), op("tcp", &api, 80)]);
    r.res[0].assert_ok("hello from");
    r.res[1].assert_eperm();
    assert!(r.res[2].ok, "HTTP to api.test through the proxy: {:?}\n{}", r.res[2], d.log());
    // The StatefulSet pod without labels: Istio's fallbacks.
    node.client(&governed, &[op("tcp", n.v4(3), 80)]).res[0].assert_ok("hello from");
    // An ungoverned pod's traffic is no workload's: never a series named after its cgroup.
    node.client(&ungoverned, &[op("tcp", n.v4(3), 80)]).res[0].assert_ok("hello from");

    let want_web = [
        ("source_workload", "web"),
        ("source_workload_namespace", "shop"),
        ("source_canonical_service", "web-app"),
        ("source_canonical_revision", "v3"),
        ("source_app", "web-app"),
        ("source_version", "v3"),
    ];
    let want_app = [
        ("source_workload", "app"),
        ("source_workload_namespace", "shop"),
        ("source_canonical_service", "app"),
        ("source_canonical_revision", "latest"),
        ("source_app", "unknown"),
        ("source_version", "unknown"),
    ];
    let has = |samples: &[(std::collections::BTreeMap<String, String>, f64)], want: &[(&str, &str)], dst: &str| {
        samples.iter().any(|(l, v)| {
            *v > 0.0
                && want.iter().all(|(k, x)| l.get(*k).map(String::as_str) == Some(*x))
                && l.get("destination_service").map(String::as_str) == Some(dst)
        })
    };
    // Scraped where Prometheus scrapes: the public listener.
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let (code, text) = http_get(d.public(), "/metrics");
        assert_eq!(code, 200, "{text}");
        let tcp = metric_samples(&text, "istio_tcp_connections_opened_total");
        let http = metric_samples(&text, "istio_requests_total");
        let svc = "web.shop.svc.cluster.local";
        if has(&tcp, &want_web, svc) && has(&tcp, &want_app, svc) && has(&http, &want_web, "api.test") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no series with the pods' workload identity\n{}\n--- log\n{}",
            text.lines().filter(|l| l.starts_with("istio_")).collect::<Vec<_>>().join("\n"),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // No series is named after the pod or its cgroup.
    for l in text.lines().filter(|l| l.contains("source_workload=")) {
        assert!(!l.contains("x2k4p") && !l.contains("kubepods"), "{l}");
    }
    // The denied connect's event names the workload with its namespace (events reach the hub
    // from the kernel's ring buffer asynchronously, so give it a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, events) = d.admin_get("/debug/events");
        if events.lines().any(|l| l.contains("\"workload\":\"shop/web\"") && l.contains(&n.v4(2))) {
            break;
        }
        assert!(Instant::now() < deadline, "no event of shop/web's denied connect:\n{events}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The public listener shows no events (pids, destinations) and no registry services.
    let (_, public_events) = http_get(d.public(), "/debug/events");
    assert!(!public_events.contains("shop/web") && !public_events.contains(&n.v4(2)), "{public_events}");
    let (_, registryz) = http_get(d.public(), "/debug/registryz");
    assert!(!registryz.contains("api.test"), "{registryz}");
    assert!(d.admin_get("/debug/registryz").1.contains("api.test"), "the loopback admin has the registry");
}

/// A static pod (a kubelet manifest): its API object is the mirror pod, whose `metadata.uid` is
/// not the cgroup's name — the kubelet names the pod cgroup after the static pod's UID, the
/// manifest hash (32 hex digits, `kubernetes.io/config.mirror`). Enrolled on its cgroup's
/// creation like any pod; a hash-named pod cgroup of no known pod is denied (fail closed).
#[test]
fn kube_static_pods_are_enrolled_by_their_manifest_hash() {
    let (node, _governed, _ungoverned, _server) = cluster();
    let n = &node.net;
    let hash = "6b1f0e8b2a7c4d9e8f00112233445566";
    node.mirror_pod("shop", "probe", "d4d4d4d4-0000-4000-8000-000000000001", hash);
    let pins = PinDir::new();
    let d = KubeDaemon::start(&node, &pins, &[]);
    // The kubelet creates the cgroup after the daemon runs: the inotify path enrols it.
    let cg = node.sandbox(hash);
    let r = loop_result(node.spawn_loop(&cg, 0.05, &[format!("{}:80:deny", n.v4(2))]));
    assert_eq!(r["allowed_before_first_eperm"], 0, "the static pod connected before it was enrolled: {r}\n{}", d.log());
    let r = node.client(&cg, &[op("tcp", n.v4(3), 80), op("tcp", n.v4(2), 80)]);
    r.res[0].assert_ok("hello from");
    r.res[1].assert_eperm();
    // A static pod whose mirror is not (yet) in the API: its cgroup is denied everything.
    let unknown = node.sandbox("0123456789abcdef0123456789abcdef");
    wait_verdict(&node, &unknown, &n.v4(3), false, &d);
    assert!(d.log().contains("pod cgroup of no pod known on this node"), "{}", d.log());
}

/// Wait (≤ 10 s) until a TCP connect from `cg` to `addr:80` succeeds (`allowed`) or gets EPERM.
fn wait_verdict(node: &KubeNode, cg: &PodCgroup, addr: &str, allowed: bool, d: &KubeDaemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = node.client(cg, &[op("tcp", addr, 80)]);
        let denied = r.res[0].errno == Some(libc::EPERM as i64);
        if r.res[0].ok == allowed && denied != allowed {
            return;
        }
        assert!(Instant::now() < deadline, "{addr}:80 never became allowed={allowed}: {:?}\n{}", r.res[0], d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A MESH_INTERNAL ServiceEntry with a `workloadSelector`: as in Istio, its endpoints are the
/// pod IPs of the matching pods in its namespace — on any node — and its matching
/// WorkloadEntries, and follow them as pods are relabelled and deleted.
#[test]
fn kube_workload_selector_entries_follow_the_selected_pods() {
    let (node, governed, _ungoverned, _server) = cluster();
    let n = &node.net;
    node.api.put(
        "ServiceEntry",
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "vms", "namespace": "shop"},
            "spec": {"hosts": ["vms.shop.internal"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                     "workloadSelector": {"labels": {"app": "vm"}}}}),
    );
    node.remote_pod("shop", "vm-a", &n.v4(6), serde_json::json!({"app": "vm"}));
    node.remote_pod("shop", "web-b", &n.v4(7), serde_json::json!({"app": "web"}));
    // The same label in another namespace is not the entry's.
    node.remote_pod("other", "vm-c", &n.v4(2), serde_json::json!({"app": "vm"}));
    let pins = PinDir::new();
    let d = KubeDaemon::start(&node, &pins, &[]);
    let r = node.client(&governed, &[op("tcp", n.v4(6), 80), op("tcp", n.v4(7), 80), op("tcp", n.v4(2), 80)]);
    assert!(r.res[0].ok, "the selected pod is the entry's endpoint: {:?}\n{}", r.res[0], d.log());
    r.res[1].assert_eperm();
    r.res[2].assert_eperm();
    assert!(d.log().contains("watching the pods of every node"), "{}", d.log());
    // Relabelled into the selection, then the first pod goes away.
    node.remote_pod("shop", "web-b", &n.v4(7), serde_json::json!({"app": "vm"}));
    wait_verdict(&node, &governed, &n.v4(7), true, &d);
    node.api.delete("Pod", "shop", "vm-a");
    wait_verdict(&node, &governed, &n.v4(6), false, &d);
    // A WorkloadEntry (a VM) of the namespace with the labels is an endpoint too (N.2, denied
    // so far: the other namespace's pod there is not the entry's).
    node.api.put(
        "WorkloadEntry",
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": "vm-1", "namespace": "shop"},
            "spec": {"address": n.v4(2), "labels": {"app": "vm"}}}),
    );
    wait_verdict(&node, &governed, &n.v4(2), true, &d);
    node.api.delete("WorkloadEntry", "shop", "vm-1");
    wait_verdict(&node, &governed, &n.v4(2), false, &d);
}

/// A pod reaches its own resolvers (here `dnsPolicy: None` with `dnsConfig.nameservers`), over
/// UDP and TCP, and no other; another pod's resolvers are not its own. Non-DNS UDP is judged by
/// default; `--kube-udp allow` lets every UDP destination through (Istio does not capture UDP)
/// while TCP stays judged.
#[test]
fn kube_pods_reach_their_own_resolvers_and_udp_is_a_setting() {
    let (node, governed, _ungoverned, _server) = cluster();
    let n = &node.net;
    let own = Dnsmasq::start(n, &n.v4(7), &[("a.test", &n.v4(2))], 30, &[]);
    let other = Dnsmasq::start(n, &n.v4(6), &[("a.test", &n.v4(2))], 30, &[]);
    const DNS_POD: &str = "a1a1a1a1-0000-4000-8000-000000000004";
    node.dns_pod("shop", "resolver-pod", DNS_POD, &[&n.v4(7)]);
    let dns_pod = node.sandbox(DNS_POD);
    let pins = PinDir::new();
    let d = KubeDaemon::start(&node, &pins, &[]);
    let q = |server: &std::net::SocketAddr, transport: &str| {
        serde_json::json!({"op": "query", "server": server.ip().to_string(), "port": server.port(),
                           "name": "a.test", "transport": transport, "timeout": 2})
    };
    let r = node.worker(&dns_pod, &[q(&own.addr, "udp"), q(&own.addr, "tcp"), q(&other.addr, "udp")]);
    assert_eq!(r[0]["addrs"][0][0], n.v4(2), "its own resolver over UDP: {}\n{}", r[0], d.log());
    assert_eq!(r[1]["addrs"][0][0], n.v4(2), "... and TCP: {}\n{}", r[1], d.log());
    assert_eq!(r[2]["errno"], libc::EPERM, "not its resolver: {}\n{}", r[2], d.log());
    // The ClusterFirst pod's resolvers are the cluster's, not the other pod's.
    let r = node.worker(&governed, &[q(&own.addr, "udp")]);
    assert_eq!(r[0]["errno"], libc::EPERM, "{}\n{}", r[0], d.log());
    drop(d.stop());

    let d = KubeDaemon::start(&node, &pins, &["--kube-udp", "allow"]);
    let r = node.worker(&governed, &[q(&other.addr, "udp")]);
    assert_eq!(r[0]["addrs"][0][0], n.v4(2), "--kube-udp allow: {}\n{}", r[0], d.log());
    let r = node.client(&governed, &[op("tcp", n.v4(2), 80)]);
    r.res[0].assert_eperm();
}

/// A DestinationRule with a `workloadSelector` applies to the selected pods of its namespace
/// only (Istio's SidecarScope): the labelled pod's HTTP is originated as TLS by the proxy, the
/// other pod of the namespace goes to the destination as it asked (no rule for it).
#[test]
fn kube_destination_rule_workload_selector_applies_to_the_selected_pods_only() {
    let (node, governed, _ungoverned, _server) = cluster();
    let n = &node.net;
    node.deployment_pod("shop", "tls-client", WEB, serde_json::json!({"app": "tls-client"}));
    let selected = node.sandbox(WEB);
    let pki = Pki::new(&node.dir, "api", &["api.test"]);
    let api = n.v4(6);
    let _https = https_server(n, &api, 8443, &pki);
    put_api(&node, &api);
    node.api.put(
        "DestinationRule",
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "api-tls", "namespace": "shop"},
            "spec": {"host": "api.test", "exportTo": ["."], "workloadSelector": {"matchLabels": {"app": "tls-client"}},
                     "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 80}, "tls": {"mode": "SIMPLE", "caCertificates": pki.ca.display().to_string()}}]}}}),
    );
    let pins = PinDir::new();
    let d = KubeDaemon::start(&node, &pins, &["--local-address", &n.v4(1)]);
    let r = node.client(&selected, &[op("tcp", &api, 80)]);
    let reply = r.res[0].reply.clone().unwrap_or_default();
    assert!(
        reply.contains("sni=api.test"),
        "the selected pod's request was originated as TLS: {:?}\n{}",
        r.res[0],
        d.log()
    );
    let r = node.client(&governed, &[op("tcp", &api, 80)]);
    r.res[0].assert_ok("hello from");
    assert!(!r.res[0].reply.clone().unwrap_or_default().contains("sni="), "{:?}", r.res[0]);
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
    put_wild(&node);
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
