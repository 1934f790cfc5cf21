//! Each refusal as the page lists it: the event the agent published (`/debug/events`) plus the
//! fix, ready to copy: the `--allow` flag, and the ServiceEntry (or port edit) that
//! `enforcer suggest` drafts for it ([`crate::suggest::draft`], not a copy of its logic).

use serde::Serialize;
use serde_json::Value;

use crate::events::EventJson;

/// Namespace of the drafted ServiceEntries (as `enforcer suggest` defaults to).
const DRAFT_NAMESPACE: &str = "default";

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Fix {
    /// `--allow HOST:PORT` (the name seen in DNS when there is one, else the address), for
    /// connect()/sendmsg() refusals; `None` for the proxy's (SNI) refusals.
    pub allow: Option<String>,
    /// What `enforcer suggest` drafts from this refusal alone.
    pub service_entry: String,
}

/// The fix for a denied or audited event; `None` for other records (proxy errors, drops).
pub fn fix_for(ev: &EventJson) -> Option<Fix> {
    if ev.verdict != "denied" && ev.verdict != "audit" {
        return None;
    }
    let allow = match ev.hook.as_str() {
        "connect" | "sendmsg" => Some(match &ev.host {
            Some(h) => format!("--allow {}:{}", h.trim_end_matches('.'), ev.port),
            None => format!("--allow {}", ev.destination),
        }),
        _ => None,
    };
    Some(Fix { allow, service_entry: crate::suggest::draft(std::slice::from_ref(ev), DRAFT_NAMESPACE, None) })
}

/// One `/debug/events` line with a `fix` object added when it is a refusal (other lines, and
/// lines that are not events, pass through unchanged).
pub fn enrich(line: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(line) else { return line.to_string() };
    let Ok(ev) = serde_json::from_value::<EventJson>(v.clone()) else { return line.to_string() };
    match (fix_for(&ev), v.as_object_mut()) {
        (Some(fix), Some(obj)) => {
            obj.insert("fix".into(), serde_json::to_value(fix).unwrap_or(Value::Null));
            v.to_string()
        }
        _ => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(verdict: &str, host: Option<&str>) -> EventJson {
        EventJson {
            verdict: verdict.into(),
            hook: "connect".into(),
            destination: "198.51.100.7:8443".into(),
            address: "198.51.100.7".into(),
            port: 8443,
            protocol: "tcp".into(),
            reason: "not_in_registry".into(),
            workload: Some("web".into()),
            host: host.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn denied_and_audited_events_get_the_flag_and_the_drafted_entry() {
        let f = fix_for(&ev("denied", None)).unwrap();
        assert_eq!(f.allow.as_deref(), Some("--allow 198.51.100.7:8443"));
        assert_eq!(f.service_entry, crate::suggest::draft(&[ev("denied", None)], "default", None));
        assert!(f.service_entry.contains("kind: ServiceEntry"), "{}", f.service_entry);
        let f = fix_for(&ev("audit", Some("api.example.com."))).unwrap();
        assert_eq!(f.allow.as_deref(), Some("--allow api.example.com:8443"));
        assert!(f.service_entry.contains("- api.example.com"), "{}", f.service_entry);
        assert_eq!(fix_for(&ev("error", None)), None);
    }

    #[test]
    fn enrich_adds_fix_and_passes_other_lines_through() {
        let line = serde_json::to_string(&ev("denied", None)).unwrap();
        let v: Value = serde_json::from_str(&enrich(&line)).unwrap();
        assert_eq!(v["fix"]["allow"], "--allow 198.51.100.7:8443");
        assert_eq!(v["destination"], "198.51.100.7:8443");
        let drop = r#"{"verdict":"dropped","count":3,"message":"3 events dropped"}"#;
        assert_eq!(enrich(drop), drop);
        assert_eq!(enrich("not json"), "not json");
    }
}
