//! Resolving registry hosts with hickory-resolver (at load; TTL refresh is not implemented yet).

use std::{collections::HashMap, net::IpAddr, time::Duration};

use hickory_resolver::{Resolver, TokioResolver};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("reading the system DNS configuration: {0}")]
    Config(#[source] hickory_resolver::ResolveError),
}

pub struct HostResolver {
    inner: TokioResolver,
    timeout: Duration,
}

impl HostResolver {
    /// A resolver using the host's resolv.conf.
    pub fn from_system() -> Result<Self, ResolveError> {
        let inner = Resolver::builder_tokio().map_err(ResolveError::Config)?.build();
        Ok(Self { inner, timeout: Duration::from_secs(5) })
    }

    /// Resolve every name (A and AAAA) concurrently. Names that fail are missing from the map;
    /// their errors are returned beside it.
    pub async fn resolve_all(&self, names: impl IntoIterator<Item = String>) -> (HashMap<String, Vec<IpAddr>>, Vec<String>) {
        let mut set = tokio::task::JoinSet::new();
        for name in names {
            let r = self.inner.clone();
            let timeout = self.timeout;
            set.spawn(async move {
                // Trailing dot: registry hosts are fully qualified, no search-domain expansion.
                let fqdn = format!("{}.", name.trim_end_matches('.'));
                let res = tokio::time::timeout(timeout, r.lookup_ip(fqdn)).await;
                (name, res)
            });
        }
        let mut out = HashMap::new();
        let mut errors = Vec::new();
        while let Some(joined) = set.join_next().await {
            let Ok((name, res)) = joined else { continue };
            match res {
                Ok(Ok(lookup)) => {
                    let mut ips: Vec<IpAddr> = lookup.iter().collect();
                    ips.sort();
                    ips.dedup();
                    out.insert(name, ips);
                }
                Ok(Err(e)) => errors.push(format!("{name}: {e}")),
                Err(_) => errors.push(format!("{name}: timed out after {:?}", self.timeout)),
            }
        }
        errors.sort();
        (out, errors)
    }
}
