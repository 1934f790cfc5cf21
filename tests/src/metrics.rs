//! Reading Prometheus/OpenMetrics text (the agent's `/metrics`).

/// Sum of the samples named exactly `name` (any labels) in Prometheus/OpenMetrics text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (sample, value) = match l.rsplit_once(' ') {
            Some(v) => v,
            None => continue,
        };
        let sname = sample.split('{').next().unwrap_or("").trim();
        if sname == name
            && let Ok(v) = value.trim().parse::<f64>()
        {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Samples of the metric `name` (exact sample name) in Prometheus/OpenMetrics text, with their
/// labels. Label values are unescaped (`\"`, `\\`, `\n`).
pub fn metric_samples(text: &str, name: &str) -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = match l.rsplit_once(' ') {
            Some(v) => v,
            None => continue,
        };
        let (sname, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (head, ""),
        };
        if sname.trim() != name {
            continue;
        }
        let Ok(v) = value.trim().parse::<f64>() else { continue };
        let mut map = std::collections::BTreeMap::new();
        let mut rest = labels;
        while let Some((k, after)) = rest.split_once("=\"") {
            let mut val = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, c2)) => val.push(c2),
                        None => {}
                    },
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => val.push(c),
                }
            }
            map.insert(k.trim_start_matches(',').trim().to_string(), val);
            rest = after[end..].trim_start_matches(',');
        }
        out.push((map, v));
    }
    out
}

/// Istio's standard labels: every `istio_*` and `enforcer_udp_*` series carries exactly these
/// (requests add `response_code` and `grpc_response_status`).
pub const ISTIO_LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// GET `path` asking for OpenMetrics (`Accept: application/openmetrics-text`) -> (status, body).
pub fn http_get_openmetrics(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, &[("Accept", "application/openmetrics-text; version=1.0.0")])
}

/// Minimal HTTP/1.1 GET with extra headers (Connection: close) -> (status, body).
pub fn http_get_with(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(15))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| panic!("reading {path} from {addr}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP header end in {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// `promtool check metrics` (Debian's `prometheus` package) on a text-format exposition: it must
/// pass, except for the lint Istio's own metric name earns (`istio_request_duration_milliseconds`
/// is not in base units). Panics with promtool's output otherwise, or when promtool is missing.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running promtool (apt-get install prometheus; cargo xtask setup does): {e}"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("istio_request_duration_milliseconds "))
        .collect();
    assert!(
        problems.is_empty() && (out.status.success() || !report.is_empty()),
        "promtool check metrics failed:\n{report}\n--- exposition:\n{text}"
    );
}
