//! The node adapter: Istio objects as the API server sent them -> the configuration model.
//!
//! ServiceEntries and DestinationRules go through the registry loader's own validation via
//! [`config::load_json`] (the JSON value becomes the loader's node tree directly; nothing is
//! serialized back to text), so diagnostics are those of `enforcer check`. This file is the one
//! place that depends on the loader's entry point; what it needs from `config`:
//! `load_json(&serde_json::Value, &Path) -> Result<Registry, ConfigError>`.
//!
//! The Sidecar and the mesh settings (exportTo defaults, rootNamespace) are read here from typed
//! serde structs, because the registry model has no Sidecar yet.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::api::DynamicObject;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{self, DestinationRule, Mode, ServiceEntry};

/// A ServiceEntry with what the loader does not model: where it lives and who sees it.
#[derive(Clone, Debug)]
pub struct ClusterSe {
    pub namespace: String,
    pub export_to: Vec<String>,
    /// `spec.workloadSelector.labels`: the entry's endpoints are the selected pods.
    pub workload_selector: Option<BTreeMap<String, String>>,
    pub created: String,
    /// A Kubernetes Service (takes precedence over a ServiceEntry for the same host, as in Istio).
    pub from_kubernetes: bool,
    pub entry: ServiceEntry,
}

#[derive(Clone, Debug)]
pub struct ClusterDr {
    pub namespace: String,
    pub export_to: Vec<String>,
    pub selector: Option<BTreeMap<String, String>>,
    pub created: String,
    pub rule: DestinationRule,
}

/// An Istio Sidecar, as far as egress is concerned.
#[derive(Clone, Debug, PartialEq)]
pub struct Sidecar {
    pub namespace: String,
    pub name: String,
    pub created: String,
    pub selector: Option<BTreeMap<String, String>>,
    /// `None`: no egress section (`*/*`).
    pub egress: Option<Vec<EgressListener>>,
    pub mode: Option<Mode>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EgressListener {
    /// `port.number`, unless 0 or an `HTTP_PROXY` listener (then every port, as in Istio).
    pub port: Option<u16>,
    /// (namespace as written, `.` kept; dnsName).
    pub hosts: Vec<(String, String)>,
}

/// `Kind ns/name` of an object, for diagnostics.
pub fn label(kind: &str, o: &DynamicObject) -> String {
    format!("{kind} {}/{}", namespace(o), o.metadata.name.as_deref().unwrap_or(""))
}

fn namespace(o: &DynamicObject) -> String {
    o.metadata.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into())
}

fn created(o: &DynamicObject) -> String {
    o.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn labels(v: Option<&Value>) -> Option<BTreeMap<String, String>> {
    let m = v?.as_object()?;
    let m: BTreeMap<String, String> =
        m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect();
    (!m.is_empty()).then_some(m)
}

/// The object as the loader reads it: apiVersion, kind, metadata (name, namespace) and the spec
/// without the fields handled here (exportTo, workloadSelector).
fn loader_value(api_version: &str, kind: &str, o: &DynamicObject) -> Value {
    let mut spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(s) = spec.as_object_mut() {
        s.remove("exportTo");
        s.remove("workloadSelector");
        // In a cluster MESH_INTERNAL is ordinary (in-mesh services, workloadSelector entries):
        // no "use MESH_EXTERNAL" advice; the location is restored after loading.
        if kind == "ServiceEntry" && s.get("location").and_then(Value::as_str) == Some("MESH_INTERNAL") {
            s.remove("location");
        }
    }
    serde_json::json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": o.metadata.name, "namespace": namespace(o)},
        "spec": spec,
    })
}

fn load(api_version: &str, kind: &str, o: &DynamicObject, diagnostics: &mut Vec<String>) -> Option<config::Registry> {
    let file =
        PathBuf::from(format!("kubernetes:{kind}/{}/{}", namespace(o), o.metadata.name.as_deref().unwrap_or("")));
    match config::load_json(&loader_value(api_version, kind, o), &file) {
        Ok(reg) => {
            diagnostics.extend(reg.warnings.iter().map(|w| format!("warning: {w}")));
            Some(reg)
        }
        Err(e) => {
            diagnostics.push(format!("{} skipped: {e}", label(kind, o)));
            None
        }
    }
}

/// A ServiceEntry object -> its entries; an invalid one is skipped with a diagnostic naming it.
pub fn service_entries(api_version: &str, o: &DynamicObject, diagnostics: &mut Vec<String>) -> Vec<ClusterSe> {
    let spec = o.data.get("spec");
    let Some(reg) = load(api_version, "ServiceEntry", o, diagnostics) else { return vec![] };
    let internal = spec.and_then(|s| s.get("location")).and_then(Value::as_str) == Some("MESH_INTERNAL");
    reg.services
        .into_iter()
        .map(|mut entry| {
            if internal {
                entry.location = config::Location::MeshInternal;
            }
            entry
        })
        .map(|entry| ClusterSe {
            namespace: namespace(o),
            export_to: strings(spec.and_then(|s| s.get("exportTo"))),
            workload_selector: labels(spec.and_then(|s| s.pointer("/workloadSelector/labels"))),
            created: created(o),
            from_kubernetes: false,
            entry,
        })
        .collect()
}

/// A WorkloadEntry object -> the endpoint it offers ServiceEntry `workloadSelector`s: its
/// namespace, `spec.labels`, `spec.address` (an IP; a hostname address is skipped with a
/// diagnostic) and `spec.ports`.
pub fn workload_entry(o: &DynamicObject, diagnostics: &mut Vec<String>) -> Option<super::model::MeshPod> {
    let spec = o.data.get("spec")?;
    let address = spec.get("address").and_then(Value::as_str).unwrap_or("");
    let Ok(ip) = address.parse::<std::net::IpAddr>() else {
        diagnostics.push(format!(
            "warning: {}: address {address:?} is not an IP address; it is no ServiceEntry endpoint (hostname addresses are not resolved)",
            label("WorkloadEntry", o)
        ));
        return None;
    };
    let ports = spec
        .get("ports")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), u16::try_from(v.as_u64()?).ok()?))).collect())
        .unwrap_or_default();
    Some(super::model::MeshPod {
        namespace: namespace(o),
        labels: labels(spec.get("labels")).unwrap_or_default(),
        ips: vec![ip],
        ports,
    })
}

/// A DestinationRule object -> its rule.
pub fn destination_rules(api_version: &str, o: &DynamicObject, diagnostics: &mut Vec<String>) -> Vec<ClusterDr> {
    let spec = o.data.get("spec");
    let Some(reg) = load(api_version, "DestinationRule", o, diagnostics) else { return vec![] };
    reg.destination_rules
        .into_iter()
        .map(|rule| ClusterDr {
            namespace: namespace(o),
            export_to: strings(spec.and_then(|s| s.get("exportTo"))),
            selector: labels(spec.and_then(|s| s.pointer("/workloadSelector/matchLabels"))),
            created: created(o),
            rule,
        })
        .collect()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SidecarSpec {
    #[serde(default)]
    workload_selector: Option<SelectorSpec>,
    #[serde(default)]
    egress: Option<Vec<EgressSpec>>,
    #[serde(default)]
    outbound_traffic_policy: Option<OutboundSpec>,
}

#[derive(Deserialize, Default)]
struct SelectorSpec {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct EgressSpec {
    #[serde(default)]
    port: Option<PortSpec>,
    #[serde(default)]
    hosts: Vec<String>,
}

#[derive(Deserialize)]
struct PortSpec {
    #[serde(default)]
    number: u32,
    #[serde(default)]
    protocol: String,
}

#[derive(Deserialize)]
struct OutboundSpec {
    #[serde(default)]
    mode: Option<String>,
}

/// A Sidecar object; `None` (with a diagnostic) when it cannot be used at all.
pub fn sidecar(o: &DynamicObject, diagnostics: &mut Vec<String>) -> Option<Sidecar> {
    let name = label("Sidecar", o);
    let spec: SidecarSpec = match o.data.get("spec").cloned().map(serde_json::from_value).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            diagnostics.push(format!("{name}: spec: {e}; Sidecar ignored"));
            return None;
        }
    };
    let mode = match spec.outbound_traffic_policy.and_then(|p| p.mode) {
        None => None,
        Some(m) => match m.parse::<Mode>() {
            Ok(m) => Some(m),
            Err(e) => {
                diagnostics.push(format!("{name}: spec.outboundTrafficPolicy.mode: {e}; Sidecar ignored"));
                return None;
            }
        },
    };
    let egress = spec.egress.filter(|e| !e.is_empty()).map(|listeners| {
        listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| EgressListener {
                port: l
                    .port
                    .filter(|p| p.number != 0 && !p.protocol.eq_ignore_ascii_case("HTTP_PROXY"))
                    .and_then(|p| u16::try_from(p.number).ok()),
                hosts: l
                    .hosts
                    .iter()
                    .enumerate()
                    .filter_map(|(j, h)| match h.split_once('/') {
                        Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {
                            Some((ns.to_string(), host.trim().to_ascii_lowercase()))
                        }
                        _ => {
                            diagnostics.push(format!(
                                "{name}: spec.egress[{i}].hosts[{j}]: {h:?} is not namespace/host; entry ignored; fix: write e.g. \"./*\" or \"istio-system/{h}\""
                            ));
                            None
                        }
                    })
                    .collect(),
            })
            .collect()
    });
    Some(Sidecar {
        namespace: namespace(o),
        name: o.metadata.name.clone().unwrap_or_default(),
        created: created(o),
        selector: spec.workload_selector.map(|s| s.labels).filter(|l| !l.is_empty()),
        egress,
        mode,
    })
}

/// The mesh-wide settings of the `istio` ConfigMap's `data.mesh`.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshSettings {
    pub mode: Option<Mode>,
    pub default_service_export_to: Vec<String>,
    pub default_destination_rule_export_to: Vec<String>,
    pub root_namespace: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            mode: None,
            default_service_export_to: vec!["*".into()],
            default_destination_rule_export_to: vec!["*".into()],
            root_namespace: "istio-system".into(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MeshSpec {
    #[serde(default)]
    default_service_export_to: Vec<String>,
    #[serde(default)]
    default_destination_rule_export_to: Vec<String>,
    #[serde(default)]
    root_namespace: Option<String>,
}

/// Read `data.mesh` (YAML text, as Istio stores it): the mode through the registry loader (a
/// MeshConfig document), the rest from its own fields.
pub fn mesh_settings(cm: &k8s_openapi::api::core::v1::ConfigMap, diagnostics: &mut Vec<String>) -> MeshSettings {
    let mut out = MeshSettings::default();
    let name = format!(
        "ConfigMap {}/{}",
        cm.metadata.namespace.as_deref().unwrap_or(""),
        cm.metadata.name.as_deref().unwrap_or("")
    );
    let Some(text) = cm.data.as_ref().and_then(|d| d.get("mesh")) else { return out };
    match config::load_str(text, std::path::Path::new(&format!("kubernetes:{name} data.mesh"))) {
        Ok(reg) => out.mode = reg.mode.map(|(m, _)| m),
        Err(e) => diagnostics.push(format!("{name}: mesh config ignored: {e}")),
    }
    match serde_saphyr::from_str::<Option<MeshSpec>>(text) {
        Ok(Some(m)) => {
            if !m.default_service_export_to.is_empty() {
                out.default_service_export_to = m.default_service_export_to;
            }
            if !m.default_destination_rule_export_to.is_empty() {
                out.default_destination_rule_export_to = m.default_destination_rule_export_to;
            }
            if let Some(ns) = m.root_namespace.filter(|s| !s.is_empty()) {
                out.root_namespace = ns;
            }
        }
        Ok(None) => {}
        Err(e) => diagnostics.push(format!("{name}: data.mesh: {e}")),
    }
    out
}
