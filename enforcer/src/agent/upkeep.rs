//! The agent's background loop: re-apply when resolved addresses change, map new cgroups of
//! workload policies, expire learned entries. Every change goes through the agent's single apply
//! path under the control lock, so the upkeep can never apply a view older than a reload.

use std::time::{Duration, Instant};

use super::Agent;

pub(super) async fn run(agent: Agent) {
    let mut changes = agent.refresher().subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                // Debounce a burst of refreshes into one apply.
                tokio::time::sleep(Duration::from_millis(50)).await;
                changes.borrow_and_update();
                match agent.recompute().await {
                    Ok(s) if s.upserts + s.removals > 0 => {
                        tracing::info!(added = s.upserts, removed = s.removals, "resolved addresses changed; maps updated")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!("applying resolved addresses failed: {e:#}"),
                }
            }
            _ = tick.tick() => {
                if let Err(e) = agent.sync_workload_cgroups().await {
                    tracing::error!("mapping workload cgroups failed: {e:#}");
                }
                super::dns_bridge::keep_zombies(&agent);
                let r = agent.maps().sweep(Instant::now());
                match r {
                    Ok(n) if n > 0 => tracing::debug!(expired = n, "learned DNS entries expired"),
                    Ok(_) => {}
                    Err(e) => tracing::error!("expiring learned entries failed: {e:#}"),
                }
            }
        }
    }
}
