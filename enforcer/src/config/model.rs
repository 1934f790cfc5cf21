//! The enforcer's view of an Istio registry: typed, validated values.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::host::HostPattern;

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
    /// trailing dot on `name`. See [`super::host`].
    pub fn matches(&self, name: &str) -> bool {
        let name = super::host::normalize(name);
        match self {
            Host::Exact(h) => *h == name,
            Host::Wildcard(suffix) => super::host::in_suffix(&name, suffix),
        }
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self, Host::Wildcard(_))
    }

    /// This host as a [`HostPattern`] (the one matcher).
    pub fn pattern(&self) -> HostPattern {
        match self {
            Host::Exact(h) => HostPattern::Exact(h.clone()),
            Host::Wildcard(s) => HostPattern::Suffix(s.clone()),
        }
    }

    /// Is every name this host matches also matched by `other`? (Istio `SubsetOf`.)
    pub fn is_subset_of(&self, other: &HostPattern) -> bool {
        self.pattern().is_subset_of(other)
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
    /// `spec.exportTo` as written (empty: the mesh default). Validated; applied in Kubernetes mode.
    pub export_to: Vec<String>,
    /// `spec.workloadSelector.labels`, if set.
    pub workload_selector: Option<BTreeMap<String, String>>,
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
    /// `spec.trafficPolicy.portLevelSettings[].port.number` -> tls. Port-level settings do not
    /// inherit the top-level ones (Istio): an entry without `tls` is recorded as `DISABLE`. The
    /// first entry for a port wins, as in Istio.
    pub port_tls: BTreeMap<u16, TlsSettings>,
    /// `spec.trafficPolicy.connectionPool.tcp.connectTimeout`
    pub connect_timeout: Option<Duration>,
    /// `spec.exportTo` as written.
    pub export_to: Vec<String>,
    /// `spec.workloadSelector.matchLabels`, if set.
    pub workload_selector: Option<BTreeMap<String, String>>,
    /// `spec.subsets[].name`.
    pub subsets: Vec<String>,
    pub source: SourceRef,
}

impl DestinationRule {
    /// `host` as a pattern of the one host matcher.
    pub fn host_pattern(&self) -> HostPattern {
        HostPattern::parse(&self.host)
    }
}

/// The namespace part of a Sidecar egress host (`namespace/dnsName`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EgressNamespace {
    /// `*`: every namespace.
    Any,
    /// A namespace by name (`.` is resolved to the Sidecar's own namespace).
    Named(String),
}

/// One `spec.egress[].hosts[]` entry of a Sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressHost {
    pub namespace: EgressNamespace,
    /// `~ns/host` or `~/host`: excludes what it matches instead of importing it (`~/*`, Istio's
    /// "import nothing", excludes everything).
    pub exclude: bool,
    pub host: HostPattern,
}

impl EgressHost {
    /// Does this entry select `host` of a service in `namespace`? (Istio: the service host is a
    /// subset of the egress host; an exact egress host does not import a wildcard service.)
    pub fn selects(&self, namespace: &str, host: &HostPattern) -> bool {
        let ns_ok = match &self.namespace {
            EgressNamespace::Any => true,
            EgressNamespace::Named(n) => n == namespace,
        };
        ns_ok && host.is_subset_of(&self.host)
    }
}

/// A Sidecar egress listener port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarPort {
    /// 0 for a Unix domain socket listener.
    pub number: u32,
    pub protocol: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressListener {
    /// `None`: the catch-all listener.
    pub port: Option<SidecarPort>,
    pub hosts: Vec<EgressHost>,
}

/// An Istio `Sidecar`: what a workload's proxy may see (egress hosts) and its outbound mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    pub name: String,
    pub namespace: String,
    /// `spec.workloadSelector.labels`; `None` applies to the whole namespace.
    pub workload_selector: Option<BTreeMap<String, String>>,
    /// Empty: no `egress` section (everything visible).
    pub egress: Vec<EgressListener>,
    /// `spec.outboundTrafficPolicy.mode`.
    pub outbound_mode: Option<Mode>,
    pub source: SourceRef,
}

impl Sidecar {
    /// Does this Sidecar import `host` of a service in `namespace`? Without egress listeners
    /// everything is imported; otherwise some listener must select it and no exclusion match it.
    pub fn imports(&self, namespace: &str, host: &HostPattern) -> bool {
        if self.egress.is_empty() {
            return true;
        }
        let hosts = || self.egress.iter().flat_map(|l| l.hosts.iter());
        hosts().any(|h| !h.exclude && h.selects(namespace, host))
            && !hosts().any(|h| h.exclude && h.selects(namespace, host))
    }
}

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// Istio rejects it (or enforcer cannot use it): nothing is loaded.
    Error,
    /// Istio accepts it with a warning, or it is likely a mistake. `check --strict` fails.
    Warning,
    /// Valid Istio configuration that enforcer does not act on (ignored kinds and fields,
    /// semantics enforcer approximates). Printed, never a failure.
    Note,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
            Severity::Note => "Note",
        })
    }
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
    pub severity: Severity,
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
    pub sidecars: Vec<Sidecar>,
    pub mode: Option<(Mode, SourceRef)>,
    /// Warnings and notes ([`Diagnostic::severity`] tells which).
    pub warnings: Vec<Diagnostic>,
}

impl Registry {
    /// Append `other`. If both define a mode and they differ, `self`'s mode is
    /// kept and a warning is recorded; use [`Registry::try_merge`] (what
    /// [`super::load_paths`] does) to treat that as an error instead.
    pub fn merge(&mut self, other: Registry) {
        if let Err(mut d) = self.try_merge(other) {
            d.severity = Severity::Warning;
            self.warnings.push(d);
        }
    }

    /// Like [`Registry::merge`] but returns the mode conflict as a diagnostic
    /// (everything else is merged regardless).
    #[allow(clippy::result_large_err)]
    pub fn try_merge(&mut self, other: Registry) -> Result<(), Diagnostic> {
        // Moving instead of copying when empty keeps a 100k-entry load from holding two copies.
        fn append<T>(a: &mut Vec<T>, b: Vec<T>) {
            if a.is_empty() {
                *a = b;
            } else {
                a.extend(b);
            }
        }
        append(&mut self.services, other.services);
        append(&mut self.destination_rules, other.destination_rules);
        append(&mut self.sidecars, other.sidecars);
        append(&mut self.warnings, other.warnings);
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

    /// The destination rule for a service host (an exact name or a wildcard such as
    /// `*.example.com`), chosen like Istio: a rule whose host equals it, else the most specific
    /// rule whose host covers it (`*.example.com` covers `api.example.com`; `*` covers all).
    pub fn destination_rule_for(&self, host: &str) -> Option<&DestinationRule> {
        let host = HostPattern::parse(host);
        super::host::most_specific(&host, self.destination_rules.iter().map(|d| (d.host_pattern(), d)))
    }

    /// Warnings only (what `check --strict` fails on), without notes.
    pub fn strict_warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.warnings.iter().filter(|d| d.severity == Severity::Warning)
    }
}

pub(crate) fn mode_conflict(a: Mode, a_src: &SourceRef, b: Mode, b_src: &SourceRef) -> Diagnostic {
    Diagnostic {
        source: b_src.clone(),
        object: None,
        field: "outboundTrafficPolicy.mode".to_string(),
        message: format!("mode {b} conflicts with mode {a} set at {a_src}"),
        fix: Some("set outboundTrafficPolicy.mode in exactly one place, or make both agree".into()),
        severity: Severity::Error,
    }
}
