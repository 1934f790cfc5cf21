//! deploy/: the plain manifests are what the Helm chart renders with its default values, and
//! every manifest validates against the Kubernetes schemas of the supported versions
//! (kubernetes-validate, installed by `cargo xtask setup`). No cluster and no helm needed.

use std::process::Command;

use enforcer_tests::workspace;

/// The Kubernetes versions the chart supports (`kubeVersion` in Chart.yaml: >= 1.30, for the
/// container `appArmorProfile` field).
const VERSIONS: [&str; 6] = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0"];

fn render(template: &str, set: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(workspace().join("deploy/helm/render.py"))
        .arg(workspace().join("deploy/helm/enforcer"))
        .args(["--template", template])
        .args(set)
        .output()
        .expect("python3 (with PyYAML: apt python3-yaml) runs deploy/helm/render.py");
    assert!(out.status.success(), "rendering {template} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn plain_manifests_are_the_chart_rendered_with_defaults() {
    for (template, file) in [("daemonset.yaml", "deploy/daemonset.yaml"), ("rbac.yaml", "deploy/rbac.yaml")] {
        let want = std::fs::read_to_string(workspace().join(file)).unwrap();
        assert_eq!(
            render(template, &[]),
            want,
            "{file} differs from the chart's {template} with default values; regenerate it: python3 deploy/helm/render.py deploy/helm/enforcer --template {template} > {file}"
        );
    }
    // Values reach the manifest.
    let r = render("daemonset.yaml", &["--set", "governance.governAll=true", "--set", "ports.metrics=9999"]);
    assert!(r.contains("- --kube-govern-all") && r.contains("- 0.0.0.0:9999"), "{r}");
    let m = render("podmonitor.yaml", &["--set", "podMonitor.enabled=true"]);
    assert!(m.contains("kind: PodMonitor") && m.contains("port: metrics"), "{m}");
    assert!(render("podmonitor.yaml", &[]).trim().is_empty(), "PodMonitor is off by default");
}

#[test]
fn manifests_validate_against_the_supported_kubernetes_versions() {
    // The defaults (= deploy/*.yaml) and the variant with a node-local address (hostNetwork, the
    // dummy-interface init container, DNS steering).
    let dir = enforcer_tests::TempDir::new("deploy");
    let variant = dir.write(
        "daemonset-local-address.yaml",
        &render("daemonset.yaml", &["--set", "localAddress=169.254.20.11", "--set", "dnsSteer=true"]),
    );
    assert!(std::fs::read_to_string(&variant).unwrap().contains("hostNetwork: true"));
    let files = [workspace().join("deploy/daemonset.yaml"), workspace().join("deploy/rbac.yaml"), variant];
    for v in VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", v])
            .args(&files)
            .output()
            .expect("kubernetes-validate is on PATH (cargo xtask setup installs it with pip)");
        assert!(
            out.status.success(),
            "deploy/ does not validate against Kubernetes {v}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
