//! The enforcer's view of an Istio registry: typed, validated values.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Istio `MeshConfig.outboundTrafficPolicy.mode`, plus the enforcer's `AUDIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Unknown destinations are allowed (Istio's default).
    AllowAny,
    /// Only destinations in the registry are allowed.
    RegistryOnly,
    /// Enforcer extension: behave like `REGISTRY_ONLY` but only report.
    Audit,
}

impl Mode {
    pub const ALL: [&'static str; 3] = ["ALLOW_ANY", "REGISTRY_ONLY", "AUDIT"];
}

/// Error returned by [`Mode::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown outbound traffic policy mode {0:?}; expected one of ALLOW_ANY, REGISTRY_ONLY, AUDIT")]
pub struct ParseModeError(pub String);

impl FromStr for Mode {
    type Err = ParseModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "ALLOW_ANY" => Ok(Mode::AllowAny),
            "REGISTRY_ONLY" => Ok(Mode::RegistryOnly),
            "AUDIT" => Ok(Mode::Audit),
            _ => Err(ParseModeError(s.to_string())),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::AllowAny => "ALLOW_ANY",
            Mode::RegistryOnly => "REGISTRY_ONLY",
            Mode::Audit => "AUDIT",
        })
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRef {
    pub file: PathBuf,
    /// 1-based document index within the file.
    pub document: usize,
    /// 1-based line of the document/object start, or of the field when known.
    pub line: usize,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} (document {})", self.file.display(), self.line, self.document)
    }
}

/// A ServiceEntry host. Stored lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// An exact DNS name, e.g. `httpbin.org`.
    Exact(String),
    /// `*.<suffix>`; holds the suffix without `*.`, e.g. `wikipedia.org`.
    Wildcard(String),
}

impl Host {
    /// Does `name` match this host?
    ///
    /// Istio semantics with label boundaries: `*.example.com` matches
    /// `a.example.com` and `a.b.example.com`, but NOT `example.com` itself and
    /// NOT `evilexample.com`. Comparison is case-insensitive and ignores one
    /// trailing dot on `name`.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        match self {
            Host::Exact(h) => *h == name,
            Host::Wildcard(suffix) => {
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
        }
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self, Host::Wildcard(_))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Exact(h) => f.write_str(h),
            Host::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Port protocol, as accepted by Istio's `protocol.Parse`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
    Http2,
    Grpc,
    GrpcWeb,
    Tls,
    Tcp,
    Mongo,
    Mysql,
    Redis,
    Udp,
    /// Accepted by Istio but not modelled here (e.g. `HTTP_PROXY`), upper-cased.
    Unknown(String),
}

impl Protocol {
    /// Names accepted in `spec.ports[].protocol` (case-insensitive).
    pub const ACCEPTED: &'static str =
        "HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, UDP, MONGO, MYSQL, REDIS, HTTP_PROXY";

    /// Parse like Istio (case-insensitive). `None` means unsupported.
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "https" => Protocol::Https,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "mysql" => Protocol::Mysql,
            "redis" => Protocol::Redis,
            "udp" => Protocol::Udp,
            "http_proxy" => Protocol::Unknown("HTTP_PROXY".to_string()),
            _ => return None,
        })
    }

    pub fn is_udp(&self) -> bool {
        matches!(self, Protocol::Udp)
    }

    /// HTTP family (Istio `IsHTTP`).
    pub fn is_http(&self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
            || matches!(self, Protocol::Unknown(s) if s == "HTTP_PROXY")
    }

    /// TLS family (Istio `IsTLS`).
    pub fn is_tls(&self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Mongo => "MONGO",
            Protocol::Mysql => "MYSQL",
            Protocol::Redis => "REDIS",
            Protocol::Udp => "UDP",
            Protocol::Unknown(s) => s,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    /// Absent protocol (Istio: auto-detect) is recorded as TCP.
    pub protocol: Protocol,
    pub name: String,
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    Ip(IpAddr),
    Hostname(String),
    /// Path after `unix://`.
    Unix(String),
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Ip(ip) => write!(f, "{ip}"),
            EndpointAddress::Hostname(h) => f.write_str(h),
            EndpointAddress::Unix(p) => write!(f, "unix://{p}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: EndpointAddress,
    /// Port name -> port number override.
    pub ports: BTreeMap<String, u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resolution::None => "NONE",
            Resolution::Static => "STATIC",
            Resolution::Dns => "DNS",
            Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntry {
    pub name: String,
    /// `"default"` when absent.
    pub namespace: String,
    pub hosts: Vec<Host>,
    /// Single IPs become /32 or /128.
    pub addresses: Vec<ipnet::IpNet>,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
    pub resolution: Resolution,
    pub location: Location,
    pub source: SourceRef,
}

impl ServiceEntry {
    /// Does any host of this entry match `name`?
    pub fn matches_host(&self, name: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Disable => "DISABLE",
            TlsMode::Simple => "SIMPLE",
            TlsMode::Mutual => "MUTUAL",
            TlsMode::IstioMutual => "ISTIO_MUTUAL",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: TlsMode,
    pub sni: Option<String>,
    pub ca_certificates: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRule {
    pub name: String,
    pub namespace: String,
    pub host: String,
    /// `spec.trafficPolicy.tls`
    pub tls: Option<TlsSettings>,
    /// `spec.trafficPolicy.portLevelSettings[].port.number` -> tls
    pub port_tls: BTreeMap<u16, TlsSettings>,
    /// `spec.trafficPolicy.connectionPool.tcp.connectTimeout`
    pub connect_timeout: Option<Duration>,
    pub source: SourceRef,
}

/// One problem (error or warning) found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub source: SourceRef,
    /// The object the problem belongs to, e.g. `ServiceEntry default/foo`.
    pub object: Option<String>,
    /// Dotted path, e.g. `spec.ports[1].protocol`.
    pub field: String,
    pub message: String,
    pub fix: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: document {}", self.source.file.display(), self.source.line, self.source.document)?;
        if let Some(obj) = &self.object {
            write!(f, " ({obj})")?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// Everything loaded from the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    pub services: Vec<ServiceEntry>,
    pub destination_rules: Vec<DestinationRule>,
    pub mode: Option<(Mode, SourceRef)>,
    pub warnings: Vec<Diagnostic>,
}

impl Registry {
    /// Append `other`. If both define a mode and they differ, `self`'s mode is
    /// kept and a warning is recorded; use [`Registry::try_merge`] (what
    /// [`super::load_paths`] does) to treat that as an error instead.
    pub fn merge(&mut self, other: Registry) {
        if let Err(d) = self.try_merge(other) {
            self.warnings.push(d);
        }
    }

    /// Like [`Registry::merge`] but returns the mode conflict as a diagnostic
    /// (everything else is merged regardless).
    #[allow(clippy::result_large_err)]
    pub fn try_merge(&mut self, other: Registry) -> Result<(), Diagnostic> {
        self.services.extend(other.services);
        self.destination_rules.extend(other.destination_rules);
        self.warnings.extend(other.warnings);
        match (&self.mode, other.mode) {
            (_, None) => Ok(()),
            (None, Some(m)) => {
                self.mode = Some(m);
                Ok(())
            }
            (Some((a, a_src)), Some((b, b_src))) => {
                if *a == b {
                    Ok(())
                } else {
                    Err(mode_conflict(*a, a_src, b, &b_src))
                }
            }
        }
    }

    /// Find the destination rule for a host name (exact match on `host`).
    pub fn destination_rule_for(&self, host: &str) -> Option<&DestinationRule> {
        self.destination_rules.iter().find(|d| d.host.eq_ignore_ascii_case(host))
    }
}

pub(crate) fn mode_conflict(a: Mode, a_src: &SourceRef, b: Mode, b_src: &SourceRef) -> Diagnostic {
    Diagnostic {
        source: b_src.clone(),
        object: None,
        field: "outboundTrafficPolicy.mode".to_string(),
        message: format!("mode {b} conflicts with mode {a} set at {a_src}"),
        fix: Some("set outboundTrafficPolicy.mode in exactly one place, or make both agree".into()),
    }
}
