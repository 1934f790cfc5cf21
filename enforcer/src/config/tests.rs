use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// Fixture directory: `$ENFORCER_FIXTURES` if set, else the crate's
/// `tests/fixtures/istio`.
fn fixtures() -> PathBuf {
    if let Some(p) = std::env::var_os("ENFORCER_FIXTURES") {
        return PathBuf::from(p);
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio");
    if crate_dir.is_dir() {
        return crate_dir;
    }
    // This file lives in <crate>/src/config/tests.rs.
    Path::new(file!())
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|c| c.join("tests/fixtures/istio"))
        .unwrap_or(crate_dir)
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn load_fixture(name: &str) -> Registry {
    match load_paths(&[fixture(name)]) {
        Ok(r) => r,
        Err(e) => panic!("{name}: {e}"),
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match load_str(text, Path::new("test.yaml")) {
        Ok(r) => panic!("expected errors, got {r:#?}"),
        Err(ConfigError::Invalid { errors }) => errors,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn ok(text: &str) -> Registry {
    load_str(text, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// Assert a single diagnostic mentions file, line, field and a fix.
fn assert_diag(d: &Diagnostic, field: &str, line: usize, needle: &str) {
    let s = d.to_string();
    assert!(s.starts_with(&format!("test.yaml:{line}: document ")), "line: {s}");
    assert!(s.contains(&format!("{field}: ")), "field {field}: {s}");
    assert!(s.contains("; fix: "), "fix: {s}");
    assert!(s.contains(needle), "{needle:?} not in {s}");
    assert_eq!(d.field, field);
    assert_eq!(d.source.line, line, "{s}");
}

fn find<'a>(ds: &'a [Diagnostic], field: &str) -> &'a Diagnostic {
    ds.iter().find(|d| d.field == field).unwrap_or_else(|| panic!("no diagnostic for {field}: {ds:#?}"))
}

const SE_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: foo\nspec:\n";

// --- real Istio examples -------------------------------------------------

#[test]
fn httpbin_dns_external() {
    let r = load_fixture("httpbin-ext.yaml");
    assert_eq!(r.services.len(), 1);
    let se = &r.services[0];
    assert_eq!(se.name, "httpbin-ext");
    assert_eq!(se.namespace, "default");
    assert_eq!(se.hosts, vec![Host::Exact("httpbin.org".into())]);
    assert_eq!(se.ports, vec![Port { number: 80, protocol: Protocol::Http, name: "http".into(), target_port: None }]);
    assert_eq!(se.resolution, Resolution::Dns);
    assert_eq!(se.location, Location::MeshExternal);
    assert_eq!(se.source.line, 2);
    assert_eq!(se.source.document, 1);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn edition_cnn_target_port_and_destination_rule() {
    let r = load_fixture("edition-cnn-tls-origination.yaml");
    let se = &r.services[0];
    assert_eq!(se.ports[0].number, 80);
    assert_eq!(se.ports[0].target_port, Some(443));
    assert_eq!(se.ports[1].protocol, Protocol::Https);
    assert_eq!(r.destination_rules.len(), 1);
    let dr = &r.destination_rules[0];
    assert_eq!(dr.host, "edition.cnn.com");
    assert_eq!(dr.port_tls[&80].mode, TlsMode::Simple);
    assert!(dr.tls.is_none());
    assert_eq!(dr.source.document, 2);
    assert!(r.destination_rule_for("edition.cnn.com").is_some());
}

#[test]
fn wikipedia_wildcard_defaults_to_none() {
    let r = load_fixture("wikipedia-wildcard.yaml");
    let se = &r.services[0];
    assert_eq!(se.hosts, vec![Host::Wildcard("wikipedia.org".into())]);
    assert_eq!(se.hosts[0].to_string(), "*.wikipedia.org");
    assert_eq!(se.resolution, Resolution::None);
    assert!(se.matches_host("en.wikipedia.org"));
    assert!(!se.matches_host("wikipedia.org"));
}

#[test]
fn mongocluster_static_cidr_and_mtls_rule() {
    let r = load_fixture("mongocluster-static.yaml");
    let se = &r.services[0];
    assert_eq!(se.resolution, Resolution::Static);
    assert_eq!(se.location, Location::MeshInternal);
    assert_eq!(se.addresses, vec!["192.192.192.192/24".parse::<ipnet::IpNet>().unwrap()]);
    assert_eq!(se.ports[0].protocol, Protocol::Mongo);
    assert_eq!(se.endpoints.len(), 2);
    assert_eq!(se.endpoints[0].address, EndpointAddress::Ip("2.2.2.2".parse().unwrap()));
    let w = find(&r.warnings, "spec.location");
    assert!(w.message.contains("treated like MESH_EXTERNAL"), "{w}");
    assert_eq!(w.source.line, 15);
    let dr = &r.destination_rules[0];
    let tls = dr.tls.as_ref().unwrap();
    assert_eq!(tls.mode, TlsMode::Mutual);
    assert_eq!(tls.ca_certificates.as_deref(), Some(Path::new("/etc/certs/rootcacerts.pem")));
}

#[test]
fn external_svc_dns_endpoint_ports() {
    let r = load_fixture("external-svc-dns.yaml");
    let se = &r.services[0];
    assert_eq!(se.endpoints.len(), 3);
    assert_eq!(se.endpoints[0].address, EndpointAddress::Hostname("us.foo.bar.com".into()));
    assert_eq!(se.endpoints[0].ports.get("https"), Some(&8443));
    assert_eq!(se.endpoints[2].ports.get("https"), Some(&7443));
    assert_eq!(r.destination_rules[0].tls.as_ref().unwrap().mode, TlsMode::Simple);
}

#[test]
fn external_svc_redirect_none_with_two_hosts() {
    let r = load_fixture("external-svc-redirect.yaml");
    let se = &r.services[0];
    assert_eq!(se.hosts.len(), 2);
    assert_eq!(se.resolution, Resolution::None);
    assert_eq!(se.ports[0].protocol, Protocol::Tls);
}

#[test]
fn multi_document_with_other_kinds_warns() {
    let r = load_fixture("wikipedia-egress-gateway.yaml");
    assert_eq!(r.services.len(), 1);
    assert_eq!(r.services[0].name, "www-wikipedia");
    assert_eq!(r.services[0].source.document, 4);
    assert_eq!(r.destination_rules.len(), 1);
    let kinds: Vec<_> = r.warnings.iter().filter(|w| w.message.contains("is not used by enforcer")).collect();
    assert_eq!(kinds.len(), 2, "{:#?}", r.warnings);
    assert!(kinds[0].to_string().contains("kind Gateway is not used by enforcer; ignored"));
    assert!(kinds[1].to_string().contains("kind VirtualService is not used by enforcer; ignored"));
}

#[test]
fn istio_testdata_valid_file_loads_with_partial_wildcard_warning() {
    // Istio's own "valid" test data must load unchanged; the partial wildcard "*x" (which Istio
    // accepts) is a warning because enforcer matches wildcards on label boundaries only.
    let r = load_paths(&[fixture("serviceentry-valid.yaml")]).expect("Istio's valid data loads");
    let w = r
        .warnings
        .iter()
        .find(|d| d.field == "spec.hosts[0]" && d.object.as_deref() == Some("ServiceEntry default/partial-wildcard"))
        .expect("a warning for the partial wildcard");
    assert_eq!(w.source.document, 4);
    assert!(w.message.contains("matches nothing"), "{w}");
    assert!(load_str(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec:\n  hosts: [\"a*b.com\"]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n",
        Path::new("t.yaml")
    )
    .is_err(), "a `*` in the middle of a label is still an error");
}

#[test]
fn istio_testdata_full_entry_fields() {
    let text = std::fs::read_to_string(fixture("serviceentry-valid.yaml")).unwrap();
    let first = text.split("\n---\n").next().unwrap();
    let r = ok(first);
    let se = &r.services[0];
    assert_eq!(se.addresses[0].to_string(), "1.2.3.4/32");
    assert_eq!(se.addresses[1].to_string(), "1:db8::/128");
    for f in ["spec.exportTo", "spec.workloadSelector", "spec.subjectAltNames"] {
        find(&r.warnings, f);
    }
}

#[test]
fn directory_load_is_sorted_and_merged() {
    let dir = std::env::temp_dir().join(format!("enforcer-cfg-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for f in ["httpbin-ext.yaml", "google.yaml", "edition-cnn-tls-origination.yaml"] {
        std::fs::copy(fixture(f), dir.join(f)).unwrap();
    }
    std::fs::copy(fixture("wikipedia-wildcard.yaml"), dir.join("sub/wiki.yml")).unwrap();
    std::fs::write(dir.join("README.md"), "not yaml: [").unwrap();
    std::fs::copy(fixture("mesh/istio-operator-registry-only.yaml"), dir.join("sub/mesh.yaml")).unwrap();
    let r = load_paths(&[&dir]).unwrap();
    let names: Vec<_> = r.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["edition-cnn-com", "google", "httpbin-ext", "wikipedia"]);
    assert_eq!(r.mode.as_ref().unwrap().0, Mode::RegistryOnly);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fixture_directory_loads_everything() {
    // The whole fixture dir minus the deliberately-rejected Istio testdata.
    let paths: Vec<PathBuf> = [
        "httpbin-ext.yaml",
        "google.yaml",
        "edition-cnn-tls-origination.yaml",
        "wikipedia-wildcard.yaml",
        "wikipedia-egress-gateway.yaml",
        "mongocluster-static.yaml",
        "external-svc-redirect.yaml",
        "external-svc-dns.yaml",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    let r = load_paths(&paths).unwrap();
    assert_eq!(r.services.len(), 8);
    assert_eq!(r.destination_rules.len(), 4);
}

#[test]
fn list_is_expanded() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1beta1\n  kind: ServiceEntry\n  metadata:\n    name: a\n    namespace: egress\n  spec:\n    hosts: [a.example.com]\n    ports: [{number: 443, name: https, protocol: TLS}]\n- apiVersion: networking.istio.io/v1beta1\n  kind: ServiceEntry\n  metadata:\n    name: b\n  spec:\n    hosts: [b.example.com]\n    ports: [{number: 53, name: dns, protocol: UDP}]\n    resolution: DNS\n";
    let r = ok(text);
    assert_eq!(r.services.len(), 2);
    assert_eq!(r.services[0].namespace, "egress");
    assert_eq!(r.services[0].source.line, 4);
    assert!(r.services[1].ports[0].protocol.is_udp());
    let bad = text.replace("protocol: UDP", "protocol: QUIC");
    let ds = errors(&bad);
    assert_diag(&ds[0], "items[1].spec.ports[0].protocol", 18, "unsupported protocol: QUIC");
}

// --- Host matching ---------------------------------------------------------

#[test]
fn host_matching_label_boundaries() {
    let w = Host::Wildcard("example.com".into());
    assert!(w.matches("a.example.com"));
    assert!(w.matches("a.b.example.com"));
    assert!(w.matches("A.Example.COM."));
    assert!(!w.matches("example.com"));
    assert!(!w.matches("evilexample.com"));
    assert!(!w.matches(".example.com"));
    assert!(!w.matches("example.com.evil"));
    let e = Host::Exact("example.com".into());
    assert!(e.matches("example.com"));
    assert!(e.matches("EXAMPLE.com."));
    assert!(!e.matches("a.example.com"));
}

#[test]
fn mode_parse_display() {
    assert_eq!("allow_any".parse::<Mode>().unwrap(), Mode::AllowAny);
    assert_eq!("REGISTRY_ONLY".parse::<Mode>().unwrap(), Mode::RegistryOnly);
    assert_eq!("Audit".parse::<Mode>().unwrap().to_string(), "AUDIT");
    assert!("block".parse::<Mode>().is_err());
}

// --- errors ----------------------------------------------------------------

#[test]
fn missing_name_and_empty_hosts_both_reported() {
    let ds = errors(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  namespace: x\nspec:\n  hosts: []\n  ports: [{number: 80, name: http}]\n",
    );
    assert_eq!(ds.len(), 2, "{ds:#?}");
    assert_diag(find(&ds, "metadata.name"), "metadata.name", 4, "missing metadata.name");
    assert_diag(find(&ds, "spec.hosts"), "spec.hosts", 6, "at least one host");
}

#[test]
fn bad_hosts() {
    let ds = errors(&format!(
        "{SE_HEAD}  hosts:\n  - \"*\"\n  - \"foo.*.com\"\n  - \"bad_host.com\"\n  - \"*.ok.com\"\n  ports: [{{number: 443, name: https, protocol: TLS}}]\n"
    ));
    assert_eq!(ds.len(), 3, "{ds:#?}");
    assert_diag(&ds[0], "spec.hosts[0]", 7, "hostname cannot be wildcard");
    assert_diag(&ds[1], "spec.hosts[1]", 8, "only allowed as the whole first label");
    assert_diag(&ds[2], "spec.hosts[2]", 9, "not a valid DNS name");
    assert!(ds[0].to_string().contains("(ServiceEntry default/foo)"));
}

#[test]
fn port_errors() {
    let ds = errors(&format!(
        "{SE_HEAD}  hosts: [a.com]\n  ports:\n  - number: 0\n    name: a\n  - number: 70000\n    name: b\n  - number: 443\n    name: https\n    protocol: HTTPZ\n  - number: 443\n    name: https\n    targetPort: 99999\n  - number: \"https\"\n    name: c\n"
    ));
    assert_diag(find(&ds, "spec.ports[0].number"), "spec.ports[0].number", 8, "must be in the range 1..65535");
    assert_diag(find(&ds, "spec.ports[1].number"), "spec.ports[1].number", 10, "70000");
    assert_diag(find(&ds, "spec.ports[2].protocol"), "spec.ports[2].protocol", 14, "use one of HTTP, HTTPS");
    assert_diag(find(&ds, "spec.ports[3].name"), "spec.ports[3].name", 16, "port name \"https\" already defined");
    assert_diag(find(&ds, "spec.ports[3].number"), "spec.ports[3].number", 15, "port 443 already defined");
    assert_diag(find(&ds, "spec.ports[3].targetPort"), "spec.ports[3].targetPort", 17, "99999");
    assert_diag(
        find(&ds, "spec.ports[4].number"),
        "spec.ports[4].number",
        18,
        "expected integer, got string \"https\"",
    );
    assert_eq!(ds.len(), 7, "{ds:#?}");
}

#[test]
fn bad_addresses() {
    let ds = errors(&format!(
        "{SE_HEAD}  hosts: [a.com]\n  addresses: [10.0.0.0/8, not-an-ip, 10.1.2.3/33]\n  ports: [{{number: 80, name: http}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.0.1}}]\n"
    ));
    assert_eq!(ds.len(), 2, "{ds:#?}");
    assert_diag(&ds[0], "spec.addresses[1]", 7, "not-an-ip is not a valid IP");
    assert_diag(&ds[1], "spec.addresses[2]", 7, "10.1.2.3/33");
}

#[test]
fn cidr_with_dns_rejected() {
    let ds = errors(&format!(
        "{SE_HEAD}  hosts: [a.com]\n  addresses: [10.0.0.0/8]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n"
    ));
    assert_diag(&ds[0], "spec.addresses", 7, "CIDR addresses are allowed only for NONE/STATIC");
}

#[test]
fn static_hostname_endpoint_rejected() {
    let ds = errors(&format!(
        "{SE_HEAD}  hosts: [a.com]\n  ports: [{{number: 80, name: http}}]\n  resolution: STATIC\n  endpoints:\n  - address: api.a.com\n"
    ));
    assert_eq!(ds.len(), 1);
    assert_diag(&ds[0], "spec.endpoints[0].address", 10, "STATIC endpoints must be IP addresses");
    assert!(ds[0].fix.as_deref().unwrap().contains("resolution: DNS"));
}

#[test]
fn dns_wildcard_without_endpoints_rejected() {
    let ds = errors(&format!(
        "{SE_HEAD}  hosts: [\"*.a.com\"]\n  ports: [{{number: 443, name: https, protocol: TLS}}]\n  resolution: DNS\n"
    ));
    assert_eq!(ds.len(), 1);
    assert_diag(&ds[0], "spec.hosts", 6, "hosts must be FQDN if no endpoints are provided");
}

#[test]
fn none_with_endpoints_rejected() {
    let ds = errors(&format!(
        "{SE_HEAD}  hosts: [a.com]\n  ports: [{{number: 80, name: http}}]\n  endpoints:\n  - address: 1.2.3.4\n"
    ));
    assert_eq!(ds.len(), 1);
    assert_diag(&ds[0], "spec.endpoints", 8, "no endpoints should be provided for resolution type none");
}

#[test]
fn endpoint_port_name_must_be_declared() {
    let ds = errors(&format!(
        "{SE_HEAD}  hosts: [a.com]\n  ports: [{{number: 80, name: http}}]\n  resolution: DNS\n  endpoints:\n  - address: b.com\n    ports:\n      htps: 8080\n"
    ));
    assert_eq!(ds.len(), 1);
    assert_diag(&ds[0], "spec.endpoints[0].ports.htps", 12, "endpoint port htps is not defined");
    assert!(ds[0].fix.as_deref().unwrap().contains("(http)"));
}

#[test]
fn multiple_hosts_tcp_rejected() {
    let ds = errors(&format!(
        "{SE_HEAD}  hosts: [a.com, b.com]\n  ports: [{{number: 5432, name: pg, protocol: TCP}}]\n  resolution: DNS\n"
    ));
    assert_diag(&ds[0], "spec.hosts", 6, "multiple hosts provided with non-HTTP, non-TLS ports");
}

#[test]
fn unsupported_api_version() {
    let ds = errors(
        "apiVersion: networking.istio.io/v2\nkind: ServiceEntry\nmetadata:\n  name: foo\nspec:\n  hosts: [a.com]\n",
    );
    assert_diag(
        &ds[0],
        "apiVersion",
        1,
        "networking.istio.io/v1alpha3, networking.istio.io/v1beta1, networking.istio.io/v1",
    );
}

#[test]
fn yaml_syntax_error_has_line_and_other_docs_still_checked() {
    let text = format!("{SE_HEAD}  hosts: [a.com\n  ports: []\n---\n{SE_HEAD}  hosts: [\"*\"]\n");
    let ds = errors(&text);
    assert_eq!(ds.len(), 2, "{ds:#?}");
    let s = ds[0].to_string();
    assert!(s.starts_with("test.yaml:") && s.contains("YAML syntax error at line"), "{s}");
    assert!(ds[0].source.line >= 6, "{s}");
    assert!(s.contains("; fix: "));
    assert_eq!(ds[1].source.document, 2);
    assert_eq!(ds[1].source.line, 14);
}

#[test]
fn resolution_and_tls_enum_errors() {
    let ds = errors(&format!(
        "{SE_HEAD}  hosts: [a.com]\n  ports: [{{number: 80, name: http}}]\n  resolution: MAGIC\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: d\nspec:\n  host: a.com\n  trafficPolicy:\n    tls:\n      mode: SIMPEL\n    connectionPool:\n      tcp:\n        connectTimeout: soon\n"
    ));
    assert_eq!(ds.len(), 3, "{ds:#?}");
    assert_diag(&ds[0], "spec.resolution", 8, "unsupported resolution type MAGIC");
    assert_diag(&ds[1], "spec.trafficPolicy.tls.mode", 18, "unsupported TLS mode SIMPEL");
    assert_diag(&ds[2], "spec.trafficPolicy.connectionPool.tcp.connectTimeout", 21, "invalid duration");
}

// --- warnings ----------------------------------------------------------------

#[test]
fn notes_for_unsupported_fields_and_errors_for_unknown_ones() {
    let r = ok(&format!(
        "{SE_HEAD}  hosts: [a.com]\n  exportTo: [\".\"]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS_ROUND_ROBIN\n  endpoints:\n  - address: 1.2.3.4\n    labels: {{app: x}}\n    weight: 3\n"
    ));
    let w = find(&r.warnings, "spec.exportTo");
    assert_eq!(w.source.line, 7);
    assert_eq!(w.severity, Severity::Note);
    assert!(
        find(&r.warnings, "spec.resolution").message.contains("treated like DNS: every resolved address is allowed")
    );
    find(&r.warnings, "spec.endpoints[0].labels");
    find(&r.warnings, "spec.endpoints[0].weight");
    assert_eq!(r.services[0].resolution, Resolution::DnsRoundRobin);
    assert_eq!(r.strict_warnings().count(), 0, "only notes: {:#?}", r.warnings);

    // Istio's decoder (istioctl validate) rejects unknown fields.
    let ds = errors(&format!(
        "{SE_HEAD}  hosts: [a.com]\n  hostz: [b.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n"
    ));
    assert_eq!(ds.len(), 1, "{ds:#?}");
    assert_diag(&ds[0], "spec.hostz", 7, "unknown field \"hostz\" in spec; check spelling");
}

#[test]
fn unsupported_kind_and_plain_configmap_warn() {
    let r = ok(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\ndata:\n  foo: bar\n---\n# only a comment\n",
    );
    assert_eq!(r.warnings.len(), 2, "{:#?}", r.warnings);
    assert!(r.warnings[0].to_string().contains("kind Service is not used by enforcer; ignored"));
    assert!(r.warnings[1].to_string().contains("ConfigMap default/other"));
}

// --- mesh mode -------------------------------------------------------------

#[test]
fn mode_from_meshconfig_configmap_and_operator() {
    let r = load_fixture("mesh/meshconfig-registry-only.yaml");
    let (m, src) = r.mode.unwrap();
    assert_eq!(m, Mode::RegistryOnly);
    assert_eq!(src.line, 3);

    let r = load_fixture("mesh/configmap-istio-allow-any.yaml");
    let (m, src) = r.mode.unwrap();
    assert_eq!(m, Mode::AllowAny);
    assert_eq!(src.line, 19, "{src}");

    let r = load_fixture("mesh/istio-operator-registry-only.yaml");
    let (m, src) = r.mode.unwrap();
    assert_eq!(m, Mode::RegistryOnly);
    assert_eq!(src.line, 8);
}

#[test]
fn conflicting_modes_error_names_both_places() {
    let err = load_paths(&[
        fixture("mesh/configmap-istio-allow-any.yaml"),
        fixture("mesh/istio-operator-registry-only.yaml"),
    ])
    .unwrap_err();
    let ds = err.diagnostics();
    assert_eq!(ds.len(), 1, "{err}");
    let s = ds[0].to_string();
    assert!(s.contains("istio-operator-registry-only.yaml:8"), "{s}");
    assert!(s.contains("configmap-istio-allow-any.yaml:19"), "{s}");
    assert!(s.contains("REGISTRY_ONLY") && s.contains("ALLOW_ANY") && s.contains("; fix: "), "{s}");

    // Within one file too.
    let ds = errors("outboundTrafficPolicy:\n  mode: ALLOW_ANY\n---\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n");
    assert_diag(&ds[0], "outboundTrafficPolicy.mode", 5, "conflicts with mode ALLOW_ANY set at test.yaml:2");
}

#[test]
fn merge_keeps_first_mode_and_warns() {
    let mut a = ok("outboundTrafficPolicy:\n  mode: ALLOW_ANY\n");
    let b = ok("outboundTrafficPolicy:\n  mode: AUDIT\n");
    // AUDIT is an enforcer extension: Istio would reject it (a warning of its own).
    assert_eq!(b.warnings.len(), 1, "{:?}", b.warnings);
    a.merge(b);
    assert_eq!(a.mode.as_ref().unwrap().0, Mode::AllowAny);
    assert_eq!(a.warnings.iter().filter(|w| w.message.contains("conflicts with mode")).count(), 1);
}

// --- DestinationRule ---------------------------------------------------------

#[test]
fn destination_rule_port_tls_and_timeout() {
    let r = ok(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: d\n  namespace: egress\nspec:\n  host: api.example.com\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        connectTimeout: 500ms\n    tls:\n      mode: SIMPLE\n      sni: api.example.com\n      insecureSkipVerify: true\n    portLevelSettings:\n    - port:\n        number: 8443\n      tls:\n        mode: SIMPLE\n        caCertificates: /etc/ca.pem\n",
    );
    let dr = &r.destination_rules[0];
    assert_eq!(dr.namespace, "egress");
    assert_eq!(dr.connect_timeout, Some(Duration::from_millis(500)));
    let tls = dr.tls.as_ref().unwrap();
    assert_eq!(tls.sni.as_deref(), Some("api.example.com"));
    assert!(tls.insecure_skip_verify);
    // Istio rejects subjectAltNames (or caCertificates) together with insecureSkipVerify.
    let bad = load_str(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: a.com\n  trafficPolicy:\n    tls: {mode: SIMPLE, insecureSkipVerify: true, subjectAltNames: [a.com]}\n",
        Path::new("t.yaml"),
    );
    assert!(bad.unwrap_err().to_string().contains("when InsecureSkipVerify is set true"));
    assert_eq!(dr.port_tls[&8443].mode, TlsMode::Simple);
    assert_eq!(dr.port_tls[&8443].ca_certificates.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert_eq!(validate::go_duration("1s"), Some(1_000_000_000));
    assert_eq!(validate::go_duration("1m30s"), Some(90_000_000_000));
}

// --- Sidecar -------------------------------------------------------------------------------------

#[test]
fn sidecar_is_parsed_into_the_model() {
    let r = ok(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: s\n  namespace: team\nspec:\n  workloadSelector:\n    labels: {app: web}\n  egress:\n  - port: {number: 8080, protocol: HTTP, name: http}\n    hosts: [\"./*\", \"istio-system/*.example.com\"]\n  - hosts: [\"*/api.example.org\", \"~other/*\"]\n  outboundTrafficPolicy:\n    mode: REGISTRY_ONLY\n",
    );
    assert_eq!(r.sidecars.len(), 1);
    let s = &r.sidecars[0];
    assert_eq!((s.name.as_str(), s.namespace.as_str()), ("s", "team"));
    assert_eq!(s.workload_selector.as_ref().unwrap()["app"], "web");
    assert_eq!(s.outbound_mode, Some(Mode::RegistryOnly));
    assert_eq!(s.egress.len(), 2);
    assert_eq!(s.egress[0].port.as_ref().unwrap().number, 8080);
    assert!(s.egress[1].port.is_none());
    let h = &s.egress[0].hosts;
    assert_eq!(h[0].namespace, EgressNamespace::Named("team".into()), "`.` is the Sidecar's namespace");
    assert_eq!(h[0].host, HostPattern::Any);
    assert_eq!(h[1].host, HostPattern::Suffix("example.com".into()));
    assert_eq!(s.egress[1].hosts[0].namespace, EgressNamespace::Any);
    assert!(s.egress[1].hosts[1].exclude);
    assert!(s.source.line == 1 && s.source.document == 1);

    // What it imports (Istio's SubsetOf).
    let p = HostPattern::parse;
    assert!(s.imports("team", &p("anything.team.svc")));
    assert!(s.imports("istio-system", &p("a.example.com")));
    assert!(s.imports("istio-system", &p("*.b.example.com")), "a narrower wildcard is imported");
    assert!(!s.imports("istio-system", &p("*.com")), "a wider wildcard is not");
    assert!(s.imports("elsewhere", &p("api.example.org")));
    assert!(!s.imports("elsewhere", &p("*.example.org")), "an exact egress host does not import a wildcard");
    assert!(!s.imports("other", &p("api.example.org")), "~other/* excludes the namespace");
}

#[test]
fn sidecar_without_egress_imports_everything_and_reports_every_problem() {
    let r = ok(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  outboundTrafficPolicy: {mode: ALLOW_ANY}\n",
    );
    assert!(r.sidecars[0].imports("any", &HostPattern::parse("*.x.y")));
    assert_eq!(r.sidecars[0].outbound_mode, Some(Mode::AllowAny));
    let ds = errors(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  egress:\n  - hosts: [httpbin.org, \"./x\"]\n  outboundTrafficPolicy: {mode: allow_any}\n",
    );
    assert_eq!(ds.len(), 3, "{ds:#?}");
    assert_diag(&ds[0], "spec.egress[0].hosts[0]", 6, "must be of form namespace/dnsName");
    assert_diag(&ds[1], "spec.egress[0].hosts[1]", 6, "short names (non FQDN) are not allowed");
    assert_diag(&ds[2], "spec.outboundTrafficPolicy.mode", 7, "must be upper case");
}

// --- DestinationRule model and lookup -------------------------------------------------------------

const DR_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: d\nspec:\n";

#[test]
fn destination_rule_lookup_is_the_host_matchers() {
    let mut text = String::new();
    for (i, h) in ["\"*\"", "\"*.example.com\"", "api.example.com", "\"*.a.example.com\""].iter().enumerate() {
        text.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d{i}}}\nspec:\n  host: {h}\n  trafficPolicy: {{tls: {{mode: SIMPLE}}}}\n"
        ));
    }
    let r = ok(&text);
    let name = |h: &str| r.destination_rule_for(h).map(|d| d.name.as_str());
    assert_eq!(name("api.example.com"), Some("d2"));
    assert_eq!(name("API.Example.com."), Some("d2"));
    assert_eq!(name("www.example.com"), Some("d1"));
    assert_eq!(name("x.a.example.com"), Some("d3"), "the most specific wildcard");
    assert_eq!(name("*.a.example.com"), Some("d3"));
    assert_eq!(name("*.example.com"), Some("d1"));
    assert_eq!(name("example.com"), Some("d0"), "*.example.com does not cover example.com; * does");
    assert_eq!(name("other.org"), Some("d0"));
}

#[test]
fn port_level_settings_do_not_inherit_and_the_first_entry_wins() {
    let r = ok(&format!(
        "{DR_HEAD}  host: api.example.com\n  trafficPolicy:\n    tls: {{mode: SIMPLE}}\n    portLevelSettings:\n    - port: {{number: 8080}}\n      connectionPool: {{tcp: {{maxConnections: 5}}}}\n    - port: {{number: 9443}}\n      tls: {{mode: SIMPLE, sni: first.example.com}}\n    - port: {{number: 9443}}\n      tls: {{mode: DISABLE}}\n"
    ));
    let dr = &r.destination_rules[0];
    assert_eq!(dr.tls.as_ref().unwrap().mode, TlsMode::Simple);
    assert_eq!(dr.port_tls[&8080].mode, TlsMode::Disable, "an entry without tls means no TLS for that port");
    assert_eq!(dr.port_tls[&9443].sni.as_deref(), Some("first.example.com"));
    let n = find(&r.warnings, "spec.trafficPolicy.portLevelSettings[2].port.number");
    assert_eq!(n.severity, Severity::Note);
    assert!(n.message.contains("Istio uses the first one"), "{n}");
}

#[test]
fn export_to_selector_and_subsets_are_kept_in_the_model() {
    let r = ok(&format!(
        "{DR_HEAD}  host: api.example.com\n  exportTo: [\".\"]\n  workloadSelector:\n    matchLabels: {{app: web}}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n---\n{SE_HEAD}  hosts: [api.example.com]\n  exportTo: [\".\", team-b]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: DNS\n"
    ));
    let dr = &r.destination_rules[0];
    assert_eq!(dr.export_to, ["."]);
    assert_eq!(dr.workload_selector.as_ref().unwrap()["app"], "web");
    assert_eq!(dr.subsets, ["v1"]);
    assert_eq!(r.services[0].export_to, [".", "team-b"]);
}

#[test]
fn dynamic_dns_is_enforced_like_dns_with_wildcards_learned() {
    let r = ok(&format!(
        "{SE_HEAD}  hosts: [\"*.example.com\"]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: DYNAMIC_DNS\n"
    ));
    assert_eq!(r.services[0].resolution, Resolution::Dns);
    assert_eq!(r.services[0].hosts, [Host::Wildcard("example.com".into())]);
    assert_eq!(r.strict_warnings().count(), 0, "{:#?}", r.warnings);
}

#[test]
fn errors_inside_a_list_carry_the_item_prefix() {
    let ds = errors(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: DestinationRule\n  metadata: {name: d}\n  spec:\n    host: a.com\n    trafficPolicy: {}\n",
    );
    assert_diag(&ds[0], "items[0].spec.trafficPolicy", 9, "traffic policy must have at least one field");
}

#[test]
fn a_big_file_loads_on_several_threads_with_file_order_and_lines_kept() {
    let mut text = String::new();
    for i in 0..2_500 {
        let host = if i == 2_400 { "bad_host.example.com".to_string() } else { format!("h{i}.example.com") };
        text.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: s{i}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: DNS\n"
        ));
    }
    let ds = errors(&text);
    assert_eq!(ds.len(), 1, "{ds:#?}");
    assert_eq!(ds[0].source.document, 2_401);
    assert_eq!(ds[0].source.line, 2_400 * 9 + 7);
    let good = text.replace("bad_host", "good-host");
    let r = ok(&good);
    assert_eq!(r.services.len(), 2_500);
    assert!(r.services.iter().enumerate().all(|(i, s)| s.name == format!("s{i}")), "file order");
    assert_eq!(r.services[2_499].source.document, 2_500);
}
