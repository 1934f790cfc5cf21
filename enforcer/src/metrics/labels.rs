//! Istio's standard label set, the same on every `istio_*` series (TCP and HTTP alike) and on the
//! `enforcer_udp_*` series. Values are bounded (workload names, registry hosts, fixed words), never
//! an IP: what cannot be known is Istio's placeholder, `unknown`.

use prometheus_client::encoding::EncodeLabelSet;

/// Istio's placeholder for a value that is not known.
pub const UNKNOWN: &str = "unknown";
/// `destination_service` of a destination in no registry entry (ALLOW_ANY, AUDIT).
pub const PASSTHROUGH: &str = "PassthroughCluster";
/// `destination_service` of a refused connection (REGISTRY_ONLY).
pub const BLACKHOLE: &str = "BlackHoleCluster";

/// Who sent the traffic: the `source_*` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    pub cluster: String,
    pub canonical_service: String,
    pub canonical_revision: String,
}

impl Source {
    /// Nothing known (traffic of no enforced socket).
    pub fn unknown() -> Self {
        Self {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
            cluster: UNKNOWN.into(),
            canonical_service: UNKNOWN.into(),
            canonical_revision: UNKNOWN.into(),
        }
    }

    /// A named workload with no further metadata: Istio's fallbacks (canonical service = the
    /// workload's name, canonical revision `latest`), `unknown` for the rest. The name `unknown`
    /// is the unknown source.
    pub fn named(workload: &str, namespace: Option<&str>) -> Self {
        if workload == UNKNOWN {
            return Self::unknown();
        }
        Self {
            workload: workload.into(),
            namespace: namespace.unwrap_or(UNKNOWN).into(),
            canonical_service: workload.into(),
            canonical_revision: "latest".into(),
            ..Self::unknown()
        }
    }
}

/// Where the traffic went: the `destination_*` labels. Egress destinations are outside the mesh,
/// so only the service is known (its registry host and the ServiceEntry's namespace).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Destination {
    pub service: String,
    pub service_name: String,
    pub service_namespace: String,
}

impl Destination {
    /// A registry service: Istio names a ServiceEntry's service after its host, in the
    /// ServiceEntry's namespace (`destination_service_name` is the host too).
    pub fn service(host: &str, namespace: Option<&str>) -> Self {
        Self { service: host.into(), service_name: host.into(), service_namespace: namespace.unwrap_or(UNKNOWN).into() }
    }

    pub fn passthrough() -> Self {
        Self { service: PASSTHROUGH.into(), service_name: PASSTHROUGH.into(), service_namespace: UNKNOWN.into() }
    }

    pub fn blackhole() -> Self {
        Self { service: BLACKHOLE.into(), service_name: BLACKHOLE.into(), service_namespace: UNKNOWN.into() }
    }
}

/// Every label of Istio's TCP metrics, in Istio's order. HTTP metrics add `response_code` and
/// `grpc_response_status` ([`RequestLabels`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct IstioLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

impl IstioLabels {
    /// Reported by the client side (`reporter="source"`), without mTLS
    /// (`connection_security_policy="unknown"`, as Istio reports on the client side).
    pub fn new(src: &Source, dst: &Destination, request_protocol: &str, response_flags: &str) -> Self {
        Self {
            reporter: "source".into(),
            source_workload: src.workload.clone(),
            source_canonical_service: src.canonical_service.clone(),
            source_canonical_revision: src.canonical_revision.clone(),
            source_workload_namespace: src.namespace.clone(),
            source_principal: src.principal.clone(),
            source_app: src.app.clone(),
            source_version: src.version.clone(),
            source_cluster: src.cluster.clone(),
            destination_workload: UNKNOWN.into(),
            destination_workload_namespace: UNKNOWN.into(),
            destination_principal: UNKNOWN.into(),
            destination_app: UNKNOWN.into(),
            destination_version: UNKNOWN.into(),
            destination_service: dst.service.clone(),
            destination_canonical_service: UNKNOWN.into(),
            destination_canonical_revision: UNKNOWN.into(),
            destination_service_name: dst.service_name.clone(),
            destination_service_namespace: dst.service_namespace.clone(),
            destination_cluster: UNKNOWN.into(),
            request_protocol: request_protocol.into(),
            response_flags: response_flags.into(),
            connection_security_policy: UNKNOWN.into(),
        }
    }
}

/// Labels of `istio_requests_total` and the request histograms: the TCP set plus the response.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub istio: IstioLabels,
    pub response_code: String,
    /// The gRPC status; empty for plain HTTP, as Envoy reports it.
    pub grpc_response_status: String,
}

impl RequestLabels {
    /// An HTTP request (`request_protocol="http"`). Envoy leaves `grpc_response_status` empty for
    /// non-gRPC requests; so do we.
    pub fn new(src: &Source, dst: &Destination, code: u16, response_flags: &str) -> Self {
        Self {
            istio: IstioLabels::new(src, dst, "http", response_flags),
            response_code: code.to_string(),
            grpc_response_status: String::new(),
        }
    }
}
