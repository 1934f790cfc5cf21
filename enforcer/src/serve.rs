//! The agent's servers (DNS forwarder, L7 proxy, admin listener): started in one place, stopped by
//! one switch, and drained — awaited up to a grace period — before the process exits (the shape
//! of linkerd2-proxy's main: build, spawn, wait for shutdown, `timeout(grace, drain)`).
//! `run` and `daemon` share it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use crate::{admin, agent::Started, dns, proxy};

/// One switch that stops every server.
pub struct Shutdown {
    tx: tokio::sync::watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { tx: tokio::sync::watch::channel(false).0 }
    }
}

impl Shutdown {
    /// A future that completes once `trigger` is called.
    pub fn signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

/// The running servers.
pub struct Servers {
    shutdown: Shutdown,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The forwarder runs: port-53 traffic is steered to it (attach the DNS restore hooks).
    pub steering: bool,
    /// The proxy runs: connections can be steered to it.
    pub proxying: bool,
}

impl Servers {
    /// Run the forwarder and proxy `Agent::start` bound.
    pub fn start(forwarder: Option<dns::Forwarder>, proxy: Option<proxy::Proxy>) -> Self {
        let mut s = Self {
            shutdown: Shutdown::default(),
            tasks: Vec::new(),
            steering: forwarder.is_some(),
            proxying: proxy.is_some(),
        };
        if let Some(f) = forwarder {
            s.tasks.push(("DNS forwarder", tokio::spawn(f.run(s.shutdown.signal()))));
        }
        if let Some(p) = proxy {
            s.tasks.push(("L7 proxy", tokio::spawn(p.run(s.shutdown.signal()))));
        }
        s
    }

    /// [`Servers::start`] on what [`crate::agent::Agent::start`] returned.
    pub fn start_for(started: &mut Started) -> Self {
        Self::start(started.forwarder.take(), started.proxy.take())
    }

    /// Serve the admin API on `addr` as the listener `name` (`admin listener`, `public
    /// listener`: its task and log lines say which); returns the bound address (port 0 picks a
    /// free one).
    pub async fn admin(
        &mut self,
        name: &'static str,
        addr: SocketAddr,
        source: Arc<dyn admin::AdminSource>,
    ) -> anyhow::Result<SocketAddr> {
        let listener = admin::bind(addr).await?;
        let local = listener.local_addr()?;
        let shutdown = self.shutdown.signal();
        self.tasks.push((
            name,
            tokio::spawn(async move {
                if let Err(e) = admin::serve(name, listener, source, shutdown).await {
                    tracing::error!("{name} failed: {e}");
                }
            }),
        ));
        Ok(local)
    }

    /// Run `work` (the upkeep loop, the registry watcher, the Kubernetes controller) until the
    /// switch: it is stopped at its next await, never inside a map write, and [`Servers::drain`]
    /// waits for it like for a server. (A task left running while the runtime shuts down would
    /// find its timers gone, and an apply cut short would leave the pinned maps half-written.)
    pub fn background(&mut self, name: &'static str, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let stop = self.shutdown.signal();
        self.tasks.push((
            name,
            tokio::spawn(async move {
                tokio::select! {
                    () = stop => {}
                    () = work => {}
                }
            }),
        ));
    }

    /// Stop every server and wait up to `grace` for each to finish its in-flight work.
    pub async fn drain(self, grace: Duration) {
        self.shutdown.trigger();
        let deadline = tokio::time::Instant::now() + grace;
        for (name, task) in self.tasks {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(())) => tracing::debug!("{name} drained"),
                Ok(Err(e)) => tracing::warn!("{name} ended abnormally: {e}"),
                Err(_) => tracing::warn!("{name} still busy after {grace:?}; dropping it"),
            }
        }
    }
}
