//! Client side of the admin API, used by `enforcer registry`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::model::{EndpointView, Registryz, ServiceView};

/// Whole-request budget (connect + request + body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no enforcer agent answering on {addr} (is `enforcer daemon` running? pass --admin ADDR)")]
    NotRunning {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to enforcer agent on {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("enforcer agent on {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP error talking to enforcer agent on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("enforcer agent on {addr} answered {status} for {path}: {body}")]
    Status { addr: SocketAddr, path: String, status: StatusCode, body: String },
    #[error("enforcer agent on {addr} sent a registryz document this client cannot read: {source}")]
    Decode {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
}

/// A raw admin response.
#[derive(Debug)]
pub struct AdminResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// GET /debug/registryz from the agent at `admin`.
pub async fn fetch_registryz(admin: SocketAddr) -> Result<Registryz, ClientError> {
    fetch_registryz_filtered(admin, None).await
}

/// GET /debug/registryz?service=NAME (NAME: "ns/name", short name or host).
pub async fn fetch_registryz_filtered(admin: SocketAddr, service: Option<&str>) -> Result<Registryz, ClientError> {
    let path = match service {
        Some(s) => format!("/debug/registryz?service={}", percent_encode(s)),
        None => "/debug/registryz".to_owned(),
    };
    let resp = request(admin, "GET", &path).await?;
    if resp.status != StatusCode::OK {
        return Err(ClientError::Status {
            addr: admin,
            path,
            status: resp.status,
            body: String::from_utf8_lossy(&resp.body).trim().to_owned(),
        });
    }
    serde_json::from_slice(&resp.body).map_err(|source| ClientError::Decode { addr: admin, source })
}

/// One request to the admin API over a fresh HTTP/1.1 connection; any status is Ok.
pub async fn request(admin: SocketAddr, method: &str, path: &str) -> Result<AdminResponse, ClientError> {
    request_with_headers(admin, method, path, &[]).await
}

/// [`request`] with extra request headers (e.g. `Accept` for `/metrics`).
pub async fn request_with_headers(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<AdminResponse, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, request_inner(admin, method, path, headers))
        .await
        .unwrap_or(Err(ClientError::Timeout { addr: admin, timeout: REQUEST_TIMEOUT }))
}

async fn request_inner(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<AdminResponse, ClientError> {
    let (resp, driver) = open(admin, method, path, headers).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|source| ClientError::Http { addr: admin, source })?.to_bytes();
    driver.abort();
    Ok(AdminResponse { status: parts.status, headers: parts.headers, body })
}

/// Send one request and return the response with its body still streaming.
async fn open(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(hyper::Response<hyper::body::Incoming>, tokio::task::JoinHandle<()>), ClientError> {
    let stream = TcpStream::connect(admin).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::ConnectionRefused {
            ClientError::NotRunning { addr: admin, source }
        } else {
            ClientError::Connect { addr: admin, source }
        }
    })?;
    let http = |source| ClientError::Http { addr: admin, source };
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "admin client connection ended with error");
        }
    });
    let host = HeaderValue::from_str(&admin.to_string()).unwrap_or(HeaderValue::from_static("localhost"));
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, concat!("enforcer-cli/", env!("CARGO_PKG_VERSION")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| ClientError::Connect {
        addr: admin,
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let resp = sender.send_request(req).await.map_err(http)?;
    Ok((resp, driver))
}

/// GET `path` and call `line` for every line of the body as it arrives (no overall timeout: used
/// to follow `/debug/events`). Returns when the agent closes the stream.
pub async fn stream_lines(admin: SocketAddr, path: &str, mut line: impl FnMut(&str)) -> Result<(), ClientError> {
    let (resp, driver) = open(admin, "GET", path, &[]).await?;
    if !resp.status().is_success() {
        return Err(ClientError::Status {
            addr: admin,
            path: path.to_string(),
            status: resp.status(),
            body: String::new(),
        });
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| ClientError::Http { addr: admin, source })?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = buf.drain(..=pos).collect();
                line(String::from_utf8_lossy(&l[..l.len() - 1]).as_ref());
            }
        }
    }
    if !buf.is_empty() {
        line(String::from_utf8_lossy(&buf).as_ref());
    }
    driver.abort();
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/' | b':') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------
// `istioctl proxy-config endpoint`-style table

const HEADERS: [&str; 6] = ["ENDPOINT", "STATUS", "OUTLIER CHECK", "SERVICE", "EXPIRES", "SOURCE"];

struct Row {
    host: String,
    port: Option<u16>,
    addr: AddrKey,
    cells: [String; 6],
}

/// The `istioctl proxy-config endpoint`-style table: columns ENDPOINT, STATUS,
/// OUTLIER CHECK (always OK), SERVICE, EXPIRES, SOURCE.
///
/// One row per endpoint port (an endpoint without ports takes the service's
/// port numbers; with neither, the port shows as `*`). SERVICE is Istio's
/// cluster name `outbound|<port>||<host>` with the endpoint's `host` when set,
/// else the service's first host (else its name). Rows are sorted by host,
/// port, then endpoint address (numerically). Columns are left-aligned and
/// separated by at least two spaces; lines carry no trailing spaces.
pub fn format_endpoint_table(r: &Registryz) -> String {
    let mut rows: Vec<Row> = Vec::new();
    for svc in &r.services {
        for ep in &svc.endpoints {
            push_rows(&mut rows, svc, ep);
        }
    }
    rows.sort_by(|a, b| {
        a.host
            .cmp(&b.host)
            .then(a.port.cmp(&b.port))
            .then_with(|| a.addr.cmp(&b.addr))
            .then_with(|| a.cells.cmp(&b.cells))
    });

    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(&row.cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADERS.map(str::to_owned);
    for cells in std::iter::once(&header).chain(rows.iter().map(|r| &r.cells)) {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if i + 1 < cells.len() {
                let pad = w - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn push_rows(rows: &mut Vec<Row>, svc: &ServiceView, ep: &EndpointView) {
    let host = ep
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .or_else(|| svc.hosts.first().cloned())
        .unwrap_or_else(|| svc.name.clone());
    let ports: Vec<Option<u16>> = if !ep.ports.is_empty() {
        ep.ports.iter().copied().map(Some).collect()
    } else if !svc.ports.is_empty() {
        svc.ports.iter().map(|p| Some(p.number)).collect()
    } else {
        vec![None]
    };
    let addr = ep.address.trim();
    let shown_addr = if addr.contains(':') && !addr.starts_with('[') { format!("[{addr}]") } else { addr.to_owned() };
    let mut seen = Vec::new();
    for port in ports {
        if seen.contains(&port) {
            continue;
        }
        seen.push(port);
        let port_s = port.map_or_else(|| "*".to_owned(), |p| p.to_string());
        rows.push(Row {
            host: host.clone(),
            port,
            addr: AddrKey::parse(addr),
            cells: [
                format!("{shown_addr}:{port_s}"),
                ep.status.clone(),
                "OK".to_owned(),
                format!("outbound|{port_s}||{host}"),
                format_expiry(ep.expires_in_secs),
                ep.source.clone(),
            ],
        });
    }
}

/// "never", "29s", "4m10s", "1h0m5s" (Go duration style, as kubectl/istioctl print).
pub fn format_expiry(secs: Option<u64>) -> String {
    let Some(s) = secs else {
        return "never".to_owned();
    };
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Sort key for an endpoint address: IPs/CIDRs numerically (v4 before v6,
/// then by prefix length), unparseable ones last, by text.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum AddrKey {
    Ip(IpAddr, u8),
    Other(String),
}

impl AddrKey {
    fn parse(s: &str) -> AddrKey {
        let s = s.trim_start_matches('[').trim_end_matches(']');
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, len.parse::<u8>().ok()),
            None => (s, None),
        };
        match ip.parse::<IpAddr>() {
            Ok(ip) => {
                let full = if ip.is_ipv4() { 32 } else { 128 };
                AddrKey::Ip(ip, len.unwrap_or(full))
            }
            Err(_) => AddrKey::Other(s.to_owned()),
        }
    }
}
