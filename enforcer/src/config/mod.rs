//! Loading the enforcer's registry from Istio YAML.
//!
//! Input is ordinary Istio configuration: `ServiceEntry` and
//! `DestinationRule` objects (`networking.istio.io/v1alpha3`, `v1beta1`,
//! `v1`), `List`s of them, and the mesh's `outboundTrafficPolicy.mode` taken
//! from a plain MeshConfig document, the `istio` ConfigMap's `data.mesh`, or
//! an `IstioOperator`'s `spec.meshConfig`.
//!
//! Validation mirrors Istio's `ValidateServiceEntry`. Every problem is
//! reported (not just the first) as a [`Diagnostic`] carrying file, document,
//! line, dotted field path and a suggested fix. Fields and kinds the enforcer
//! does not use are reported as warnings, never silently dropped.

mod convert;
mod model;
mod yaml;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::{
    DestinationRule, Diagnostic, Endpoint, EndpointAddress, Host, Location, Mode, ParseModeError, Port, Protocol,
    Registry, Resolution, ServiceEntry, SourceRef, TlsMode, TlsSettings,
};

/// The apiVersions accepted for ServiceEntry and DestinationRule.
pub const SUPPORTED_API_VERSIONS: [&str; 3] = convert::API_VERSIONS;

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

fn load_str_inner(text: &str, file: &Path) -> (Registry, Vec<Diagnostic>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut loader = convert::FileLoader::new(file, text);
    loader.load(text);
    (loader.registry, loader.errors)
}

/// Load one object given as a JSON value (a Kubernetes object as the API server sent it) through
/// the same validation as a file, without serializing it back to text. `file` names it in
/// diagnostics (e.g. `kubernetes:ServiceEntry/ns/name`).
pub fn load_json(value: &serde_json::Value, file: &Path) -> Result<Registry, ConfigError> {
    let mut loader = convert::FileLoader::new(file, "");
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
