//! Wire model of the admin API (`GET /debug/registryz`).
//!
//! Shared by the agent (which fills it in from the live registry and the BPF
//! maps) and by the `enforcer registry` CLI client (which renders it).
//! Field names are snake_case in JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// GET /debug/registryz — like Istio's /debug/registryz: every service with
/// hosts, ports, resolution and current endpoints.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Registryz {
    /// Outbound traffic policy mode, e.g. "REGISTRY_ONLY".
    pub mode: String,
    /// Where the mode came from (file:line, flag, default, ...).
    pub mode_source: String,
    /// RFC3339 UTC timestamp of when this snapshot was taken (see [`rfc3339_utc`]).
    pub generated_at: String,
    pub services: Vec<ServiceView>,
    pub map: MapStats,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ServiceView {
    pub id: u32,
    /// "namespace/name", e.g. "default/api".
    pub name: String,
    pub namespace: String,
    pub hosts: Vec<String>,
    pub ports: Vec<PortView>,
    /// STATIC | DNS | NONE | DNS_ROUND_ROBIN | CLI | HOST_DNS
    pub resolution: String,
    pub location: String,
    /// Where the service was declared, "file:line".
    pub source: String,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PortView {
    pub number: u16,
    pub protocol: String,
    pub name: String,
    pub target_port: Option<u16>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EndpointView {
    /// IP or CIDR.
    pub address: String,
    /// The name it came from, for resolved/learned endpoints.
    pub host: Option<String>,
    /// "static" | "resolved" | "learned" | "cli"
    pub source: String,
    /// None = does not expire.
    pub expires_in_secs: Option<u64>,
    pub ports: Vec<u16>,
    /// "tcp" / "udp"
    pub protocol: String,
    /// "HEALTHY" while in the map, "STALE" when kept past expiry during a
    /// resolution-failure grace period.
    pub status: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MapStats {
    pub allow_entries: u64,
    pub allow_capacity: u64,
    pub learned_entries: u64,
}

impl ServiceView {
    /// Whether `query` names this service: its full name ("default/api"),
    /// its short name ("api") or one of its hosts (case-insensitive for hosts).
    pub fn matches(&self, query: &str) -> bool {
        let query = query.trim();
        if query.is_empty() {
            return false;
        }
        if self.name == query {
            return true;
        }
        if self.name.rsplit('/').next() == Some(query) {
            return true;
        }
        let q = query.trim_end_matches('.');
        self.hosts.iter().any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(q))
    }
}

impl Registryz {
    /// A copy keeping only the services that [`ServiceView::matches`] `query`.
    pub fn filtered(&self, query: &str) -> Registryz {
        Registryz { services: self.services.iter().filter(|s| s.matches(query)).cloned().collect(), ..self.clone() }
    }
}

/// Formats `t` as RFC3339 in UTC with second precision, e.g. "2025-01-31T12:34:56Z".
/// (For filling [`Registryz::generated_at`] without a date crate.)
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", sod / 3600, (sod % 3600) / 60, sod % 60)
}

/// Howard Hinnant's days-since-epoch → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_738_326_896)), "2025-01-31T12:34:56Z");
    }

    #[test]
    fn json_field_names_are_snake_case_and_roundtrip() {
        let ep = EndpointView {
            address: "10.0.0.1".into(),
            host: None,
            source: "static".into(),
            expires_in_secs: Some(3),
            ports: vec![443],
            protocol: "tcp".into(),
            status: "HEALTHY".into(),
        };
        let v = serde_json::to_value(&ep).unwrap();
        assert_eq!(v["expires_in_secs"], 3);
        assert!(v["host"].is_null());
        let back: EndpointView = serde_json::from_value(v).unwrap();
        assert_eq!(back, ep);
    }

    #[test]
    fn service_matching() {
        let s = ServiceView {
            id: 1,
            name: "default/api".into(),
            namespace: "default".into(),
            hosts: vec!["api.example.com".into()],
            ports: vec![],
            resolution: "DNS".into(),
            location: "MESH_EXTERNAL".into(),
            source: "se.yaml:1".into(),
            endpoints: vec![],
        };
        assert!(s.matches("default/api"));
        assert!(s.matches("api"));
        assert!(s.matches("API.example.com."));
        assert!(!s.matches("other/api.example.com"));
        assert!(!s.matches(""));
    }
}
