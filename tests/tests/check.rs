//! `enforcer check PATH...`: exit 0 when valid (warnings printed), 1 when invalid, with file:line,
//! field and fix. No kernel needed.

use enforcer_tests::*;

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
    let yaml = service_entry("w", &[], &["198.18.0.9".into()], &[(8080, "HTTP")])
        .replace("  resolution: STATIC\n", "  resolution: STATIC\n  exportTo:\n  - \".\"\n");
    let f = dir.write("w.yaml", &yaml);
    let out = check(&[f.to_str().unwrap()]);
    out.assert_status(0);
    assert!(out.stdout.lines().any(|l| l.starts_with("Warning: ") && l.contains("spec.exportTo")), "{out}");
    check(&["--strict", f.to_str().unwrap()]).assert_status(1);
}
