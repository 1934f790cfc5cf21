//! Istio YAML for the tests' registries, and the `--report-file` JSON they read back.

use std::collections::HashMap;

use serde_json::Value;

/// A ServiceEntry with STATIC endpoints (and optional `addresses`).
/// `ports`: (number, protocol).
pub fn service_entry(name: &str, addresses: &[&str], endpoints: &[String], ports: &[(u16, &str)]) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts:\n  - {name}.enforcer.test\n  location: MESH_EXTERNAL\n"
    );
    if !addresses.is_empty() {
        s.push_str("  addresses:\n");
        for a in addresses {
            s.push_str(&format!("  - \"{a}\"\n"));
        }
    }
    s.push_str("  ports:\n");
    for (n, proto) in ports {
        s.push_str(&format!("  - number: {n}\n    name: {}-{n}\n    protocol: {proto}\n", proto.to_ascii_lowercase()));
    }
    s.push_str("  resolution: STATIC\n");
    if !endpoints.is_empty() {
        s.push_str("  endpoints:\n");
        for e in endpoints {
            s.push_str(&format!("  - address: \"{e}\"\n"));
        }
    }
    s
}

pub fn mesh_config(mode: &str) -> String {
    format!("outboundTrafficPolicy:\n  mode: {mode}\n")
}

/// `--report-file` JSON, indexed: (list, destination, protocol) -> (service, count).
pub fn report_rows(report: &Value) -> HashMap<(String, String, String), (String, u64)> {
    let mut m = HashMap::new();
    for list in ["allowed", "denied", "audited"] {
        for r in report[list].as_array().unwrap_or_else(|| panic!("report has no {list} list: {report}")) {
            m.insert(
                (list.to_string(), r["destination"].as_str().unwrap().into(), r["protocol"].as_str().unwrap().into()),
                (r["service"].as_str().unwrap().into(), r["count"].as_u64().unwrap()),
            );
        }
    }
    m
}
