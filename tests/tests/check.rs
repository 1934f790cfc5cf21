//! `enforcer check PATH...`: exit 0 when valid (warnings printed), 1 when invalid, with file:line,
//! field and fix. No kernel needed.

use enforcer_tests::*;

/// `enforcer ARGS` with extra environment variables.
fn enforcer_with_env(args: Vec<&str>, env: &[(&str, &str)]) -> Outcome {
    let mut c = std::process::Command::new(enforcer_bin());
    c.args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    output_with_timeout(&mut c, std::time::Duration::from_secs(60))
}

fn check(args: &[&str]) -> Outcome {
    let mut v = vec!["check"];
    v.extend_from_slice(args);
    enforcer(v)
}

#[test]
fn the_demo_example_is_valid() {
    let demo = workspace().join("examples/demo");
    let out = check(&[demo.to_str().unwrap()]);
    out.assert_status(0);
    assert!(out.stdout.contains("1 ServiceEntry (1 host)"), "{out}");
    assert!(out.stdout.contains("mode REGISTRY_ONLY (from"), "{out}");
    assert!(out.stdout.contains("mesh.yaml:3"), "the mode's source is file:line\n{out}");
    assert!(out.stdout.contains("No validation issues found"), "{out}");
    assert!(!out.stdout.contains("Error"), "{out}");

    // Files one by one too.
    let out = check(&[demo.join("registry.yaml").to_str().unwrap()]);
    out.assert_status(0);
    assert!(out.stdout.contains("no mode set (default REGISTRY_ONLY)"), "{out}");
}

#[test]
fn a_generated_valid_registry_is_valid() {
    let dir = TempDir::new("check-valid");
    let mut yaml = service_entry("a", &["198.18.0.0/24", "fd00:198:18::/64"], &[], &[(443, "HTTPS"), (53, "UDP")]);
    yaml.push_str("---\n");
    yaml.push_str(&service_entry("b", &[], &["198.18.1.2".into(), "fd00::2".into()], &[(8080, "HTTP"), (9000, "TCP")]));
    let f = dir.write("r.yaml", &yaml);
    let out = check(&[f.to_str().unwrap()]);
    out.assert_status(0);
    assert!(out.stdout.contains("2 ServiceEntries (2 hosts)"), "{out}");
}

#[test]
fn an_invalid_file_exits_1_naming_file_line_field_and_fix() {
    let dir = TempDir::new("check-invalid");
    let f = dir.write(
        "bad.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  hosts:\n  - bad.enforcer.test\n  ports:\n  - number: 99999\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  endpoints:\n  - address: 198.18.0.9\n",
    );
    let out = check(&[f.to_str().unwrap()]);
    out.assert_status(1);
    let err =
        out.stdout.lines().find(|l| l.starts_with("Error: ") && l.contains("99999")).unwrap_or_else(|| panic!("{out}"));
    assert!(err.contains(&format!("{}:10", f.display())), "file:line: {err}");
    assert!(err.contains("spec.ports[0].number"), "field: {err}");
    assert!(err.contains("fix:"), "fix: {err}");
    assert!(out.stdout.contains("1 problem(s) found"), "{out}");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let dir = TempDir::new("check-many");
    let f = dir.write(
        "bad.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  hosts:\n  - bad.enforcer.test\n  ports:\n  - number: 99999\n    name: http\n    protocol: NOPE\n  resolution: STATIC\n  endpoints:\n  - address: 198.18.0.9\n",
    );
    let out = check(&[f.to_str().unwrap()]);
    out.assert_status(1);
    let errors: Vec<&str> =
        out.stdout.lines().filter(|l| l.starts_with("Error: ") && l.contains(&*f.to_string_lossy())).collect();
    assert_eq!(errors.len(), 2, "{out}");
    assert!(errors.iter().any(|l| l.contains(&format!("{}:10", f.display()))), "{out}");
    assert!(errors.iter().any(|l| l.contains(&format!("{}:12", f.display())) && l.contains("protocol")), "{out}");
    assert!(out.stdout.contains("2 problem(s) found"), "{out}");
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let dir = TempDir::new("check-syntax");
    let f =
        dir.write("broken.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nspec:\n  hosts: [a.test\n");
    let out = check(&[f.to_str().unwrap()]);
    out.assert_status(1);
    assert!(out.stdout.contains(&f.display().to_string()), "{out}");
    assert!(out.stdout.contains("YAML syntax error"), "{out}");
}

#[test]
fn warnings_pass_unless_strict() {
    let dir = TempDir::new("check-warn");
    // A partial wildcard host: Istio accepts it with a warning.
    let yaml = service_entry("w", &[], &["198.18.0.9".into()], &[(8080, "HTTP")])
        .replace("  - w.enforcer.test\n", "  - w.enforcer.test\n  - \"*w.enforcer.test\"\n");
    let f = dir.write("w.yaml", &yaml);
    let out = check(&[f.to_str().unwrap()]);
    out.assert_status(0);
    assert!(out.stdout.lines().any(|l| l.starts_with("Warning: ") && l.contains("spec.hosts[1]")), "{out}");
    check(&["--strict", f.to_str().unwrap()]).assert_status(1);
}

#[test]
fn notes_never_fail_even_with_strict() {
    let dir = TempDir::new("check-note");
    // exportTo is valid Istio that enforcer applies only in Kubernetes mode: a note.
    let yaml = service_entry("n", &[], &["198.18.0.9".into()], &[(8080, "HTTP")])
        .replace("  resolution: STATIC\n", "  resolution: STATIC\n  exportTo:\n  - \".\"\n");
    let f = dir.write("n.yaml", &yaml);
    let out = check(&["--strict", f.to_str().unwrap()]);
    out.assert_status(0);
    assert!(out.stdout.lines().any(|l| l.starts_with("Note: ") && l.contains("spec.exportTo")), "{out}");
    assert!(out.stdout.contains("No validation issues found"), "{out}");
}

#[test]
fn a_registry_over_the_allow_map_capacity_fails_with_the_count() {
    let dir = TempDir::new("check-capacity");
    // 70,000 addresses x 4 ports (number + targetPort) = 280,000 > 262,144.
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: big\nspec:\n  hosts: [big.enforcer.test]\n  ports:\n  - {number: 443, name: tls, protocol: TLS, targetPort: 8443}\n  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}\n  resolution: NONE\n  addresses:\n",
    );
    for i in 0..70_000u32 {
        yaml.push_str(&format!("  - 10.{}.{}.{}\n", (i >> 16) & 255, (i >> 8) & 255, i & 255));
    }
    let f = dir.write("big.yaml", &yaml);
    let out = check(&[f.to_str().unwrap()]);
    out.assert_status(1);
    assert!(out.stdout.contains("280000 allow entries"), "{out}");
    assert!(out.stdout.contains("more than the kernel ALLOW map holds (262144)"), "{out}");
    assert!(out.stdout.contains("fix: "), "{out}");
}

#[test]
fn dns_names_are_reported_as_unknown_until_enforcing() {
    let dir = TempDir::new("check-dns");
    let f = dir.write(
        "dns.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: d\nspec:\n  hosts: [api.enforcer.test]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: DNS\n",
    );
    let out = check(&[f.to_str().unwrap()]);
    out.assert_status(0);
    assert!(out.stdout.contains("kernel maps: 0 allow entries of 262144"), "{out}");
    assert!(out.stdout.contains("1 DNS name and 0 wildcard hosts, known only when enforcing"), "{out}");
}

#[test]
fn a_sidecar_is_validated() {
    let dir = TempDir::new("check-sidecar");
    let f = dir.write(
        "sc.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: s\n  namespace: team\nspec:\n  egress:\n  - hosts:\n    - \"./*\"\n    - \"httpbin.org\"\n",
    );
    let out = check(&[f.to_str().unwrap()]);
    out.assert_status(1);
    let err = out
        .stdout
        .lines()
        .find(|l| l.starts_with("Error: ") && l.contains("namespace/dnsName"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(err.contains(&format!("{}:10", f.display())), "file:line: {err}");
    assert!(err.contains("spec.egress[0].hosts[1]"), "field: {err}");
    assert!(err.contains("fix: "), "{err}");
    let ok =
        dir.write("ok.yaml", &std::fs::read_to_string(&f).unwrap().replace("\"httpbin.org\"", "\"*/httpbin.org\""));
    let out = check(&[ok.to_str().unwrap()]);
    out.assert_status(0);
    assert!(out.stdout.contains("1 Sidecar,"), "{out}");
}

#[test]
fn a_huge_document_names_the_node_limit_and_how_to_raise_it() {
    let dir = TempDir::new("check-nodes");
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: big\nspec:\n  hosts: [big.enforcer.test]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  addresses:\n",
    );
    for i in 0..1000u32 {
        yaml.push_str(&format!("  - 10.0.{}.{}\n", i >> 8, i & 255));
    }
    let f = dir.write("big.yaml", &yaml);
    let out = enforcer_with_env(vec!["check", f.to_str().unwrap()], &[("ENFORCER_YAML_MAX_NODES", "500")]);
    out.assert_status(1);
    assert!(out.stdout.contains("more than 500 YAML nodes"), "{out}");
    assert!(out.stdout.contains("ENFORCER_YAML_MAX_NODES"), "{out}");
    assert!(out.stdout.contains(&f.display().to_string()), "{out}");
}
