use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::*;
use crate::kube::adapter;
use crate::kube::cgroup::KubeletRoot;
use crate::kube::model::{KubeService, ServicePort, SliceInfo};
use crate::kube::services;

fn items(text: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(text).unwrap()["items"].as_array().unwrap().clone()
}

fn dynamic(mut v: Value) -> DynamicObject {
    if v.pointer("/metadata/creationTimestamp").is_some_and(|t| t == "") {
        v["metadata"].as_object_mut().unwrap().remove("creationTimestamp");
    }
    serde_json::from_value(v).unwrap()
}

fn root() -> KubeletRoot {
    KubeletRoot::at("/sys/fs/cgroup/kubepods.slice")
}

fn opts() -> Options {
    Options::new(root())
}

/// The fixtures of `enforcer/tests/fixtures/kube` as cluster state, plus two Services.
fn fixture_state() -> ClusterState {
    let mut st = ClusterState::default();
    let mut d = Vec::new();
    for o in items(include_str!("../../../tests/fixtures/kube/serviceentries.json")) {
        st.services.extend(adapter::service_entries("networking.istio.io/v1", &dynamic(o), &mut d));
    }
    for o in items(include_str!("../../../tests/fixtures/kube/destinationrules.json")) {
        st.destination_rules.extend(adapter::destination_rules("networking.istio.io/v1", &dynamic(o), &mut d));
    }
    for o in items(include_str!("../../../tests/fixtures/kube/sidecars.json")) {
        st.sidecars.extend(adapter::sidecar(&dynamic(o), &mut d));
    }
    let cm: ConfigMap =
        serde_json::from_str(include_str!("../../../tests/fixtures/kube/configmap-istio.json")).unwrap();
    st.mesh = adapter::mesh_settings(&cm, &mut d);
    for o in items(include_str!("../../../tests/fixtures/kube/pods.json")) {
        let p: Pod = serde_json::from_value(o).unwrap();
        st.pods.push(PodInfo::from_pod(&p).unwrap());
    }
    for o in items(include_str!("../../../tests/fixtures/kube/namespaces.json")) {
        let n: Namespace = serde_json::from_value(o).unwrap();
        let n = NamespaceInfo::from_namespace(&n).unwrap();
        st.namespaces.insert(n.name.clone(), n);
    }
    st.services.extend(services::service_entries(
        &[
            svc("default", "kubernetes", "10.96.0.1", 443, "TCP"),
            svc("kube-system", "kube-dns", "10.96.0.10", 53, "UDP"),
            svc("team-a", "web", "10.96.0.20", 80, "TCP"),
        ],
        &[SliceInfo {
            namespace: "default".into(),
            service: "kubernetes".into(),
            addresses: vec!["192.0.2.10".parse().unwrap()],
            ports: [("https".to_string(), (6443, "TCP".to_string()))].into(),
        }],
        "cluster.local",
    ));
    st
}

fn svc(ns: &str, name: &str, ip: &str, port: u16, proto: &str) -> KubeService {
    KubeService {
        namespace: ns.into(),
        name: name.into(),
        cluster_ips: vec![ip.parse().unwrap()],
        ports: vec![ServicePort { name: "https".into(), port, protocol: proto.into(), target_port: None }],
        external_name: None,
        export_to: vec![],
        created: "2020-01-01T00:00:00Z".into(),
    }
}

fn policy<'a>(c: &'a Computed, name: &str) -> &'a WorkloadPolicy {
    c.policies.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no policy {name}: {:#?}", c.placements))
}

/// `ns/name host,host` of the policy's services (synthetic ones left out), sorted.
fn view(p: &WorkloadPolicy) -> Vec<String> {
    let mut v: Vec<String> = p
        .registry
        .services
        .iter()
        .filter(|s| s.namespace != "enforcer")
        .map(|s| {
            let hosts: Vec<String> = s.hosts.iter().map(|h| h.to_string()).collect();
            format!("{}/{} {}", s.namespace, s.name, hosts.join(","))
        })
        .collect();
    v.sort();
    v
}

fn drs(p: &WorkloadPolicy) -> Vec<String> {
    let mut v: Vec<String> =
        p.registry.destination_rules.iter().map(|d| format!("{}/{} {}", d.namespace, d.name, d.host)).collect();
    v.sort();
    v
}

const K8S: [&str; 2] = [
    "default/kubernetes kubernetes.default.svc.cluster.local",
    "kube-system/kube-dns kube-dns.kube-system.svc.cluster.local",
];

fn with_k8s(mut v: Vec<&str>) -> Vec<String> {
    v.extend(K8S);
    let mut v: Vec<String> = v.into_iter().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn fixtures_give_istio_visibility_per_scope() {
    let c = compute(&fixture_state(), &opts(), &[]);
    let names: Vec<&str> = c.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["kube:default", "kube:team-a", "kube:team-a sidecar=team-a/ratings", "kube:team-b"]);

    // default: the root namespace's Sidecar (./* and default/*): `.` is the WORKLOAD's namespace
    // (default), not istio-system, so istio-system's foo.bar.com is not imported.
    let d = policy(&c, "kube:default");
    assert_eq!(
        view(d),
        with_k8s(vec![
            "default/external-svc-https api.dropboxapi.com,www.googleapis.com",
            "default/external-svc-mongocluster mymongodb.somedomain",
        ])
    );
    assert_eq!(drs(d), ["default/dropbox-timeouts api.dropboxapi.com"]);
    assert_eq!(d.mode, Mode::RegistryOnly, "mesh ConfigMap mode");
    let sleep_dirs = root().pod_dirs("a1a1a1a1-0000-4000-8000-000000000001");
    assert_eq!(d.cgroups, sleep_dirs);
    assert_eq!(d.workloads[&sleep_dirs[1]].name, "sleep", "the Deployment, not the pod");
    assert_eq!(d.workloads[&sleep_dirs[1]].namespace, "default");

    // team-a: its namespace Sidecar (./*, istio-system/*): team-a's own web Service too.
    let a = policy(&c, "kube:team-a");
    assert_eq!(
        view(a),
        with_k8s(vec![
            "istio-system/external-svc-dns foo.bar.com",
            "team-a/external-svc-wikipedia *.wikipedia.org",
            "team-a/team-a-private api.team-a.example.com",
            "team-a/web web.team-a.svc.cluster.local",
        ])
    );
    assert_eq!(drs(a), ["istio-system/tls-foobar foo.bar.com", "team-a/wikipedia-private *.wikipedia.org"]);
    assert_eq!(a.mode, Mode::RegistryOnly);

    // ratings: `./en.wikipedia.org` is exact: it does NOT import the *.wikipedia.org entry
    // (SubsetOf); the Sidecar's mode applies.
    let r = policy(&c, "kube:team-a sidecar=team-a/ratings");
    assert_eq!(view(r), with_k8s(vec![]));
    assert_eq!(r.mode, Mode::AllowAny);

    // team-b: root Sidecar (./* = team-b, default/*): mongocluster is exported to team-b by name;
    // details-svc (workloadSelector) is kept for its addresses (with a warning).
    let b = policy(&c, "kube:team-b");
    assert_eq!(
        view(b),
        with_k8s(vec![
            "default/external-svc-https api.dropboxapi.com,www.googleapis.com",
            "default/external-svc-mongocluster mymongodb.somedomain",
            "team-b/details-svc details.bookinfo.com",
        ])
    );
    assert!(c.diagnostics.iter().any(|d| d.contains("details-svc") && d.contains("workloadSelector")));
    // team-b's pods see default's DR only through exportTo (default: *).
    assert_eq!(drs(b), ["default/dropbox-timeouts api.dropboxapi.com"]);

    // Governance: the reasons for everything left alone.
    assert_eq!(
        c.excluded,
        vec![
            ("default/legacy-0".to_string(), "opted out (pod label)"),
            ("kube-system/coredns-668d6bf9bc-9wq2z".to_string(), "system namespace"),
            ("team-b/meshed-5f6d7c8b9-pqrst".to_string(), "runs an Istio sidecar"),
            ("team-b/node-agent-q8r7s".to_string(), "hostNetwork pod"),
        ]
    );
    assert_eq!(c.known_uids.len(), 8);
}

#[test]
fn resolvers_are_reachable_and_scope_by_dns_config() {
    let mut st = fixture_state();
    let mut o = opts();
    o.node_resolvers = vec!["192.0.2.53".parse().unwrap()];
    // A second default pod with dnsPolicy None and its own nameserver: its own scope.
    let mut p = st.pods[0].clone();
    p.name = "custom-dns".into();
    p.uid = "a1a1a1a1-0000-4000-8000-0000000000aa".into();
    p.dns_policy = "None".into();
    p.dns_nameservers = vec!["203.0.113.53".parse().unwrap()];
    st.pods.push(p);
    let c = compute(&st, &o, &[]);
    let d = policy(&c, "kube:default");
    let dns = d.registry.services.iter().find(|s| s.name == "dns-resolvers").unwrap();
    assert_eq!(dns.addresses, vec!["169.254.20.10/32".parse::<ipnet::IpNet>().unwrap()]);
    assert_eq!(
        dns.ports.iter().map(|p| (p.number, p.protocol.is_udp())).collect::<Vec<_>>(),
        [(53, true), (53, false)]
    );
    let cd = policy(&c, "kube:default dns=203.0.113.53");
    let dns = cd.registry.services.iter().find(|s| s.name == "dns-resolvers").unwrap();
    assert_eq!(dns.addresses, vec!["203.0.113.53/32".parse::<ipnet::IpNet>().unwrap()]);
    assert_eq!(view(cd), view(d), "same Istio view, different resolvers");
}

#[test]
fn pods_of_a_scope_share_one_policy() {
    let mut st = fixture_state();
    let template = st.pods[0].clone();
    for i in 0..1000 {
        let mut p = template.clone();
        p.name = format!("sleep-{i}");
        p.uid = format!("b0000000-0000-4000-8000-{i:012}");
        st.pods.push(p);
    }
    let c = compute(&st, &opts(), &[]);
    assert_eq!(c.policies.len(), 4, "1,000 more pods in default: still one policy for the namespace");
    assert_eq!(policy(&c, "kube:default").cgroups.len(), 3 * 1001);
}

#[test]
fn udp_setting_and_unresolved_cgroups() {
    let mut o = opts();
    o.udp = UdpPolicy::Allow;
    let cg = PathBuf::from("/sys/fs/cgroup/kubepods.slice/kubepods-podffffffff_0000_4000_8000_000000000000.slice");
    let c = compute(&fixture_state(), &o, std::slice::from_ref(&cg));
    let d = policy(&c, "kube:default");
    assert!(d.registry.services.iter().any(|s| s.name == "udp-any" && s.ports[0].protocol.is_udp()));
    let u = c.policies.last().unwrap();
    assert_eq!((u.name.as_str(), u.mode, u.cgroups.as_slice()), (UNRESOLVED_POLICY, Mode::RegistryOnly, &[cg][..]));
    assert!(u.registry.services.is_empty(), "deny-all");
}

fn se(ns: &str, name: &str, host: &str, export_to: Option<&[&str]>, created: &str, port: u16) -> ClusterSe {
    let mut v = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
        "spec": {"hosts": [host], "ports": [{"number": port, "name": "p", "protocol": "TLS"}],
                 "resolution": if host.starts_with("*.") { "NONE" } else { "DNS" }}
    });
    if let Some(e) = export_to {
        v["spec"]["exportTo"] = json!(e);
    }
    let mut d = Vec::new();
    let out = adapter::service_entries("networking.istio.io/v1", &dynamic(v), &mut d);
    assert!(d.is_empty(), "{d:?}");
    out.into_iter().next().unwrap()
}

fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> PodInfo {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("c0000000-0000-4000-8000-{:012}", name.len() * 7 + ns.len()),
                      "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).chain([("istio.io/dataplane-mode".to_string(), "enforcer".to_string())]).collect::<BTreeMap<_, _>>()},
        "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}
    }))
    .unwrap();
    PodInfo::from_pod(&p).unwrap()
}

fn sidecar(ns: &str, name: &str, created: &str, spec: Value) -> Sidecar {
    let mut d = Vec::new();
    adapter::sidecar(
        &dynamic(json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created}, "spec": spec})),
        &mut d,
    )
    .unwrap()
}

fn names(c: &Computed, policy_name: &str) -> Vec<String> {
    let mut v: Vec<String> = policy(c, policy_name)
        .registry
        .services
        .iter()
        .filter(|s| s.namespace != "enforcer")
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    v.sort();
    v
}

#[test]
fn export_to_variants_and_mesh_default() {
    let mut state = ClusterState {
        services: vec![
            se("a", "absent", "absent.example.com", None, "", 443),
            se("a", "star", "star.example.com", Some(&["*"]), "", 443),
            se("a", "dot", "dot.example.com", Some(&["."]), "", 443),
            se("a", "to-b", "tob.example.com", Some(&["b"]), "", 443),
            se("a", "dot-and-c", "dotc.example.com", Some(&[".", "c"]), "", 443),
            se("a", "none", "none.example.com", Some(&["~"]), "", 443),
        ],
        pods: vec![pod("a", "p", &[]), pod("b", "p", &[]), pod("c", "p", &[])],
        ..Default::default()
    };
    let c = compute(&state, &opts(), &[]);
    assert_eq!(names(&c, "kube:a"), ["a/absent", "a/dot", "a/dot-and-c", "a/star"]);
    assert_eq!(names(&c, "kube:b"), ["a/absent", "a/star", "a/to-b"]);
    assert_eq!(names(&c, "kube:c"), ["a/absent", "a/dot-and-c", "a/star"]);
    assert_eq!(policy(&c, "kube:a").mode, Mode::AllowAny, "Istio's default mode");
    state.mesh.default_service_export_to = vec![".".into()];
    let c = compute(&state, &opts(), &[]);
    assert_eq!(names(&c, "kube:b"), ["a/star", "a/to-b"]);
}

#[test]
fn sidecar_import_rules_follow_istio() {
    let state = ClusterState {
        services: vec![
            se("a", "wild", "*.example.com", None, "", 443),
            se("a", "exact", "api.example.org", None, "", 443),
            se("b", "other", "api.other.net", None, "", 443),
            se("istio-system", "shared", "shared.example.net", None, "", 443),
            // The same host in two namespaces: a's wins for a's pods.
            se("b", "dup-b", "dup.example.com", None, "2020-01-01T00:00:00Z", 443),
            se("a", "dup-a", "dup.example.com", None, "2024-01-01T00:00:00Z", 8443),
        ],
        sidecars: vec![
            sidecar(
                "a",
                "web-new",
                "2025-02-01T00:00:00Z",
                json!({"workloadSelector": {"labels": {"app": "web"}}, "egress": [{"hosts": ["*/*"]}]}),
            ),
            sidecar(
                "a",
                "web-old",
                "2025-01-01T00:00:00Z",
                json!({"workloadSelector": {"labels": {"app": "web"}},
                    "egress": [{"hosts": ["./*.foo.example.com", "./api.example.com"]},
                               {"port": {"number": 443, "protocol": "TLS", "name": "tls"}, "hosts": ["b/*"]}],
                    "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
            ),
            sidecar("a", "default", "2025-01-01T00:00:00Z", json!({"egress": [{"hosts": ["./*.example.org", "~/*"]}]})),
            sidecar("istio-system", "default", "2025-01-01T00:00:00Z", json!({"egress": [{"hosts": ["./*"]}]})),
        ],
        pods: vec![
            pod("a", "web", &[("app", "web")]),
            pod("a", "db", &[("app", "db")]),
            pod("b", "web", &[("app", "web")]),
        ],
        ..Default::default()
    };
    let c = compute(&state, &opts(), &[]);
    // web-old (oldest matching): neither *.foo.example.com nor api.example.com imports the
    // wildcard *.example.com entry; b/* on port 443 imports b's services on 443 only — dup-b
    // loses to nothing here (a's dup-a is not imported by a b/ host).
    assert_eq!(names(&c, "kube:a sidecar=a/web-old"), ["b/dup-b", "b/other"]);
    assert_eq!(policy(&c, "kube:a sidecar=a/web-old").mode, Mode::RegistryOnly);
    assert_eq!(names(&c, "kube:a"), ["a/exact"]);
    // b: the root Sidecar's ./* is b/*: b's own entries; dup.example.com is b's.
    assert_eq!(names(&c, "kube:b"), ["b/dup-b", "b/other"]);

    // A namespace-wide import of everything: a's pods get a's dup.example.com, not b's.
    let mut st2 = state.clone();
    st2.sidecars.clear();
    st2.pods.push(pod("c", "p", &[]));
    let c = compute(&st2, &opts(), &[]);
    let n = names(&c, "kube:a");
    assert!(n.contains(&"a/dup-a".to_string()) && !n.contains(&"b/dup-b".to_string()), "{n:?}");
    let n = names(&c, "kube:c");
    assert!(n.contains(&"b/dup-b".to_string()) && !n.contains(&"a/dup-a".to_string()), "oldest wins: {n:?}");
}

#[test]
fn subset_of_is_istios() {
    let e = |s: &str| Host::Exact(s.into());
    let w = |s: &str| Host::Wildcard(s.into());
    assert!(subset_of(&e("a.example.com"), "*.example.com"));
    assert!(subset_of(&e("a.example.com"), "*"));
    assert!(subset_of(&w("example.com"), "*.example.com"));
    assert!(subset_of(&w("a.example.com"), "*.example.com"));
    assert!(!subset_of(&w("example.com"), "a.example.com"), "exact does not import wildcard");
    assert!(!subset_of(&w("example.com"), "*.a.example.com"));
    assert!(!subset_of(&e("evilexample.com"), "*.example.com"));
    assert!(subset_of(&e("API.example.com".to_ascii_lowercase().as_str()), "api.EXAMPLE.com"));
}

#[test]
fn destination_rule_precedence_and_selectors() {
    let dr = |ns: &str, name: &str, host: &str, created: &str, extra: Value| -> ClusterDr {
        let mut spec = json!({"host": host, "trafficPolicy": {"tls": {"mode": "SIMPLE"}}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let mut d = Vec::new();
        let v = adapter::destination_rules(
            "networking.istio.io/v1",
            &dynamic(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": created}, "spec": spec})),
            &mut d,
        );
        assert!(d.is_empty(), "{d:?}");
        v.into_iter().next().unwrap()
    };
    let state = ClusterState {
        services: vec![se("svc", "api", "api.example.com", None, "", 443)],
        destination_rules: vec![
            dr("istio-system", "root", "*.example.com", "", json!({})),
            dr("svc", "svc-ns", "api.example.com", "", json!({})),
            dr("a", "a-wild", "*.example.com", "", json!({})),
            dr("a", "a-web", "api.example.com", "", json!({"workloadSelector": {"matchLabels": {"app": "web"}}})),
            dr("b", "b-private", "api.example.com", "", json!({"exportTo": ["."]})),
            dr(
                "svc",
                "svc-selector",
                "api.example.com",
                "2019-01-01T00:00:00Z",
                json!({"workloadSelector": {"matchLabels": {"app": "web"}}}),
            ),
        ],
        pods: vec![
            pod("a", "web", &[("app", "web")]),
            pod("a", "db", &[]),
            pod("c", "any", &[("app", "web")]),
            pod("b", "x", &[]),
        ],
        ..Default::default()
    };
    let c = compute(&state, &opts(), &[]);
    let chosen = |p: &str| drs(policy(&c, p));
    // a: namespace-local rules first; the selector one for matching pods (and its own scope).
    assert_eq!(chosen("kube:a dr=a-web"), ["a/a-web api.example.com"]);
    // Istio: the most specific local host (a-web's exact host) wins over a-wild even for pods
    // its selector does not match — and then they get no rule at all (SidecarScope's
    // DestinationRule returns only the selector-less rule of that host).
    assert!(chosen("kube:a").is_empty());
    // c: no local rule: the service namespace's exported one (its selector rule never applies
    // outside svc).
    assert_eq!(chosen("kube:c"), ["svc/svc-ns api.example.com"]);
    // b: its own (private) rule.
    assert_eq!(chosen("kube:b"), ["b/b-private api.example.com"]);
}

#[test]
fn governance_opt_in_and_exclusions() {
    let g = Governance::default();
    let ns_in =
        NamespaceInfo { name: "x".into(), labels: [("istio.io/dataplane-mode".into(), "enforcer".into())].into() };
    let ns_out = NamespaceInfo { name: "x".into(), labels: BTreeMap::new() };
    let mut p = pod("x", "p", &[]);
    p.labels.clear();
    assert_eq!(g.decide(&p, Some(&ns_out)), Err("not opted in"));
    assert_eq!(g.decide(&p, Some(&ns_in)), Ok(()));
    p.labels.insert("istio.io/dataplane-mode".into(), "none".into());
    assert_eq!(g.decide(&p, Some(&ns_in)), Err("opted out (pod label)"));
    p.labels.insert("istio.io/dataplane-mode".into(), "enforcer".into());
    assert_eq!(g.decide(&p, Some(&ns_out)), Ok(()), "a pod can opt in alone");
    p.host_network = true;
    assert_eq!(g.decide(&p, None), Err("hostNetwork pod"));
    let g2 = Governance { govern_host_network: true, ..Governance::default() };
    assert_eq!(g2.decide(&p, None), Ok(()));
    p.host_network = false;
    p.containers.push("istio-proxy".into());
    assert_eq!(g.decide(&p, None), Err("runs an Istio sidecar"));
    p.containers.pop();
    p.namespace = "kube-system".into();
    assert_eq!(g.decide(&p, None), Err("system namespace"));
    let all = Governance { govern_all: true, allow_system_namespaces: true, ..Governance::default() };
    p.labels.clear();
    assert_eq!(all.decide(&p, None), Ok(()));
    p.phase = "Succeeded".into();
    assert_eq!(all.decide(&p, None), Err("finished pod"));
}

#[test]
fn invalid_object_is_skipped_with_a_diagnostic_naming_it() {
    let mut d = Vec::new();
    let bad = items(include_str!("../../../tests/fixtures/kube/serviceentries.json"))
        .into_iter()
        .find(|o| o["metadata"]["name"] == "invalid-port")
        .unwrap();
    assert!(adapter::service_entries("networking.istio.io/v1", &dynamic(bad), &mut d).is_empty());
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].starts_with("ServiceEntry default/invalid-port skipped:"), "{}", d[0]);
    assert!(
        d[0].contains("kubernetes:ServiceEntry/default/invalid-port") && d[0].contains("spec.ports[0].number"),
        "{}",
        d[0]
    );
    let _ = Path::new("");
}

/// The sizing target: 1,000 pods on a node and a 10,000-host registry. Pods share their scope's
/// policy, so the kernel holds one copy of the registry per scope, not per pod.
#[test]
fn a_thousand_pods_and_ten_thousand_hosts_fit_the_kernel_maps() {
    let mut st = ClusterState::default();
    for i in 0..10_000u32 {
        let mut e = se("ext", &format!("h{i}"), &format!("h{i}.example.com"), None, "", 443);
        e.entry.resolution = crate::config::Resolution::Static;
        e.entry.addresses =
            vec![ipnet::IpNet::from(std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]))];
        st.services.push(e);
    }
    for i in 0..1000u32 {
        st.pods.push(pod(&format!("ns{}", i % 10), &format!("p{i}"), &[]));
        st.pods.last_mut().unwrap().uid = format!("d0000000-0000-4000-8000-{i:012}");
    }
    let t = std::time::Instant::now();
    let c = compute(&st, &opts(), &[]);
    let took = t.elapsed();
    assert_eq!(c.policies.len(), 10, "one policy per namespace scope");
    assert_eq!(c.placements.len(), 1000);
    let mut ids = crate::policy::ServiceIds::default();
    let resolved = std::collections::HashMap::new();
    let mut entries = 0;
    for (n, p) in c.policies.iter().enumerate() {
        let (d, _) = crate::policy::compile(
            &crate::policy::Inputs {
                registry: &p.registry,
                resolved: &resolved,
                cli: &[],
                dns_servers: &[],
                policy_id: enforcer_common::PolicyId::new(n as u32 + 1).unwrap(),
                sni_check: false,
                sni_check_target_ports: false,
                scope: &p.name,
            },
            &mut ids,
        );
        entries += d.allow.len();
    }
    let cap = enforcer_common::ALLOW_MAX_ENTRIES as usize;
    eprintln!(
        "1,000 pods x 10,000 hosts: {} policies, {entries} ALLOW entries of {cap} ({:.0}%), computed in {took:?}",
        c.policies.len(),
        100.0 * entries as f64 / cap as f64
    );
    assert!(entries <= cap, "{entries} > {cap}");
    // Pod churn with an unchanged configuration reuses the scope registries.
    let mut cache = ScopeCache::default();
    let first = compute_cached(&st, &opts(), &[], &mut cache, 7);
    st.pods.pop();
    let t = std::time::Instant::now();
    let again = compute_cached(&st, &opts(), &[], &mut cache, 7);
    let cached = t.elapsed();
    eprintln!("recompute after a pod change, configuration unchanged: {cached:?} (full: {took:?})");
    assert_eq!(again.placements.len(), 999);
    assert_eq!(again.policies[0].registry, first.policies[0].registry);
    assert!(cached < took, "the cache saves the rebuild");
    // One policy per pod would have needed 1,000 x 10,000 entries.
    assert!(1000 * 10_000 > cap);
}

#[test]
fn workload_selector_entries_take_the_selected_pods_as_endpoints() {
    let entry = |ns: &str| {
        let mut d = Vec::new();
        let v = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "vms", "namespace": ns},
            "spec": {"hosts": ["vms.internal"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}],
                     "workloadSelector": {"labels": {"app": "vm"}}}});
        let out = adapter::service_entries("networking.istio.io/v1", &dynamic(v), &mut d);
        // No advice to change a MESH_INTERNAL entry of a cluster.
        assert!(d.is_empty(), "{d:?}");
        let se = out.into_iter().next().unwrap();
        assert_eq!(se.entry.location, crate::config::Location::MeshInternal);
        se
    };
    let mesh_pod = |ns: &str, app: &str, ip: &str| crate::kube::model::MeshPod {
        namespace: ns.into(),
        labels: [("app".to_string(), app.to_string()), ("tier".to_string(), "x".to_string())].into_iter().collect(),
        ips: vec![ip.parse().unwrap()],
        ports: BTreeMap::new(),
    };
    let mut st = ClusterState { services: vec![entry("team-a")], ..Default::default() };
    st.pods.push(pod("team-a", "client", &[]));
    // Matching pods of the entry's namespace (any node); not other namespaces, not other labels.
    let pods = [
        mesh_pod("team-a", "vm", "10.1.0.7"),
        mesh_pod("team-a", "vm", "10.1.0.5"),
        mesh_pod("team-a", "web", "10.1.0.9"),
        mesh_pod("team-b", "vm", "10.2.0.1"),
    ];
    services::select_endpoints(&mut st.services, &pods);
    let eps: Vec<String> = st.services[0].entry.endpoints.iter().map(|e| e.address.to_string()).collect();
    assert_eq!(eps, ["10.1.0.5", "10.1.0.7"]);
    let c = compute(&st, &opts(), &[]);
    let p = policy(&c, "kube:team-a");
    let se = p.registry.services.iter().find(|s| s.name == "vms").unwrap();
    assert_eq!(se.endpoints.len(), 2);
    assert!(!c.diagnostics.iter().any(|d| d.contains("workloadSelector")), "{:?}", c.diagnostics);
    // None selected: a warning naming the entry.
    services::select_endpoints(&mut st.services, &pods[2..]);
    let c = compute(&st, &opts(), &[]);
    assert!(
        c.diagnostics.iter().any(|d| d.contains("team-a/vms") && d.contains("selects no running pod")),
        "{:?}",
        c.diagnostics
    );
}

#[test]
fn workload_entries_are_endpoints_with_their_ports() {
    let we = |name: &str, address: &str| {
        dynamic(json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"address": address, "labels": {"app": "vm"}, "ports": {"http": 8080}}}))
    };
    let mut d = Vec::new();
    let e = adapter::workload_entry(&we("vm-1", "10.9.0.1"), &mut d).unwrap();
    assert_eq!((e.namespace.as_str(), e.ips[0].to_string(), e.ports["http"]), ("team-a", "10.9.0.1".into(), 8080));
    assert_eq!(e.labels["app"], "vm");
    assert!(d.is_empty(), "{d:?}");
    assert!(adapter::workload_entry(&we("vm-2", "vm.example.com"), &mut d).is_none());
    assert!(d[0].contains("WorkloadEntry team-a/vm-2") && d[0].contains("not an IP"), "{d:?}");
    let mut svcs = vec![se("team-a", "vms", "vms.internal", None, "", 80)];
    svcs[0].workload_selector = Some([("app".to_string(), "vm".to_string())].into_iter().collect());
    services::select_endpoints(&mut svcs, &[e]);
    assert_eq!(svcs[0].entry.endpoints.len(), 1);
    assert_eq!(svcs[0].entry.endpoints[0].ports["http"], 8080);
}
