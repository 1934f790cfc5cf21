//! Loading the enforcer's registry from Istio YAML.
//!
//! Input is ordinary Istio configuration: `ServiceEntry`, `DestinationRule` and `Sidecar`
//! objects (`networking.istio.io/v1alpha3`, `v1beta1`, `v1`), `List`s of them, and the mesh's
//! `outboundTrafficPolicy.mode` taken from a plain MeshConfig document, the `istio` ConfigMap's
//! `data.mesh`, or an `IstioOperator`'s `spec.meshConfig`.
//!
//! Validation is Istio's: the webhook's rules (istio/istio `pkg/config/validation`:
//! `ValidateServiceEntry`, `ValidateDestinationRule`, `ValidateSidecar`) and the CRD schemas'
//! enums and CEL rules (istio/api). Every problem is reported (not just the first) as a
//! [`Diagnostic`] carrying file, document, line, dotted field path and a suggested fix, with a
//! [`Severity`]: errors where Istio rejects, warnings where Istio warns, notes for valid
//! configuration enforcer does not act on (ignored kinds and fields), never silently dropped.
//!
//! Layout: `loader.rs` (documents, kinds, shared accessors), one file per kind
//! (`service_entry/`, `destination_rule.rs` with `traffic_policy.rs`, `load_balancer.rs` and
//! `client_tls.rs`, `sidecar/`, `mesh.rs`),
//! `validate.rs` (Istio's value validators), `host.rs` (the one host matcher), `capacity.rs`
//! (kernel map entries a registry needs), `yaml.rs` (the line-aware YAML tree).

pub mod capacity;
mod client_tls;
mod destination_rule;
mod field;
pub mod host;
mod load_balancer;
mod loader;
mod mesh;
mod model;
mod service_entry;
mod sidecar;
mod traffic_policy;
pub mod validate;
mod yaml;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use host::HostPattern;
pub use model::{
    DestinationRule, Diagnostic, EgressHost, EgressListener, EgressNamespace, Endpoint, EndpointAddress, Host,
    Location, Mode, ParseModeError, Port, Protocol, Registry, Resolution, ServiceEntry, Severity, Sidecar, SidecarPort,
    SourceRef, TlsMode, TlsSettings,
};
pub use yaml::{DEFAULT_MAX_NODES as YAML_DEFAULT_MAX_NODES, MAX_NODES_ENV as YAML_MAX_NODES_ENV};

/// The apiVersions accepted for ServiceEntry, DestinationRule and Sidecar.
pub const SUPPORTED_API_VERSIONS: [&str; 3] = loader::API_VERSIONS;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// All problems found, not just the first.
    #[error("{}", InvalidDisplay(errors))]
    Invalid { errors: Vec<Diagnostic> },
    /// No configuration file was found in the given paths.
    #[error("no configuration files found in {}", paths_list(paths))]
    NoInput { paths: Vec<PathBuf> },
}

struct InvalidDisplay<'a>(&'a [Diagnostic]);

impl fmt::Display for InvalidDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "invalid configuration ({n} problem{}):", if n == 1 { "" } else { "s" })?;
        for d in self.0 {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

fn paths_list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

impl ConfigError {
    /// The diagnostics of an `Invalid` error (empty otherwise).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { errors } => errors,
            _ => &[],
        }
    }
}

/// Load every document of `text` (as if read from `file`).
pub fn load_str(text: &str, file: &Path) -> Result<Registry, ConfigError> {
    let (reg, errors) = load_str_inner(text, file);
    if errors.is_empty() { Ok(reg) } else { Err(ConfigError::Invalid { errors }) }
}

/// Files with at least this many documents are parsed on several threads.
const PARALLEL_DOCUMENTS: usize = 2_000;

fn load_str_inner(text: &str, file: &Path) -> (Registry, Vec<Diagnostic>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let docs = yaml::split_documents(text);
    let threads = if docs.len() >= PARALLEL_DOCUMENTS {
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
    } else {
        1
    };
    let load = |chunk: &[yaml::RawDoc<'_>]| {
        let mut loader = loader::FileLoader::new(file, text);
        loader.load(chunk);
        (loader.registry, loader.errors)
    };
    let (mut registry, mut errors) = if threads <= 1 {
        load(&docs)
    } else {
        // Documents are independent; each chunk keeps its documents' indices and lines, and the
        // chunks are merged in file order.
        let size = docs.len().div_ceil(threads);
        let parts: Vec<(Registry, Vec<Diagnostic>)> = std::thread::scope(|s| {
            let handles: Vec<_> = docs.chunks(size).map(|c| s.spawn(move || load(c))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let total: usize = parts.iter().map(|(r, _)| r.services.len()).sum();
        let mut registry = Registry::default();
        let mut errors = Vec::new();
        for (i, (reg, errs)) in parts.into_iter().enumerate() {
            errors.extend(errs);
            if let Err(conflict) = registry.try_merge(reg) {
                errors.push(conflict);
            }
            if i == 0 {
                registry.services.reserve_exact(total - registry.services.len());
            }
        }
        (registry, errors)
    };
    registry.services.shrink_to_fit();
    // Report in file order (kinds check their fields in groups, not in document order).
    errors.sort_by_key(|d| (d.source.document, d.source.line));
    registry.warnings.sort_by_key(|d| (d.source.document, d.source.line));
    (registry, errors)
}

/// Load one object given as a JSON value (a Kubernetes object as the API server sent it) through
/// the same validation as a file, without serializing it back to text. `file` names it in
/// diagnostics (e.g. `kubernetes:ServiceEntry/ns/name`).
pub fn load_json(value: &serde_json::Value, file: &Path) -> Result<Registry, ConfigError> {
    let mut loader = loader::FileLoader::new(file, "");
    loader.load_node(&yaml::Node::from_json(value));
    if loader.errors.is_empty() { Ok(loader.registry) } else { Err(ConfigError::Invalid { errors: loader.errors }) }
}

/// Load files and directories. A directory is searched recursively for
/// `*.yaml` / `*.yml` files (sorted by path for determinism); a file given
/// explicitly is read whatever its extension (JSON is YAML too).
/// Problems from all files are collected and reported together.
pub fn load_paths(paths: &[impl AsRef<Path>]) -> Result<Registry, ConfigError> {
    let mut files = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let meta = std::fs::metadata(p).map_err(|e| ConfigError::Io { path: p.to_path_buf(), source: e })?;
        if meta.is_dir() {
            collect_dir(p, &mut files)?;
        } else {
            files.push(p.to_path_buf());
        }
    }
    if files.is_empty() {
        return Err(ConfigError::NoInput { paths: paths.iter().map(|p| p.as_ref().to_path_buf()).collect() });
    }
    let mut registry = Registry::default();
    let mut errors = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ConfigError::Io { path: file.clone(), source: e })?;
        let (reg, errs) = load_str_inner(&text, &file);
        errors.extend(errs);
        if let Err(conflict) = registry.try_merge(reg) {
            errors.push(conflict);
        }
    }
    if errors.is_empty() { Ok(registry) } else { Err(ConfigError::Invalid { errors }) }
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ConfigError> {
    let io = |e| ConfigError::Io { path: dir.to_path_buf(), source: e };
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(io)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(io)?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_dir(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
        {
            out.push(path);
        }
    }
    Ok(())
}
