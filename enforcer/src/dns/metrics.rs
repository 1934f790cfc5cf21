//! The forwarder registers its counters (`enforcer_dns_*`) into the agent's registry once, when it
//! starts; they are read from [`Stats`] at scrape time.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use super::Stats;
use crate::metrics::{ValueCollector, load};

impl Stats {
    /// Register every forwarder counter under `enforcer_dns_`.
    pub fn register(self: &Arc<Self>, reg: &mut Registry) {
        let s = |f: fn(&Stats) -> u64| {
            let st = Arc::clone(self);
            move || f(&st)
        };
        let queries = Arc::clone(self);
        let c = ValueCollector::new()
            .counters("queries", "Queries received by the DNS forwarder", move || {
                vec![
                    (vec![("transport", "udp".to_string())], load(&queries.queries_udp)),
                    (vec![("transport", "tcp".to_string())], load(&queries.queries_tcp)),
                ]
            })
            .counter("answered", "Upstream answers released to clients", s(|s| load(&s.answered)))
            .counter(
                "learned_addresses",
                "Addresses put into the ALLOW map from DNS answers",
                s(|s| load(&s.learned_addrs)),
            )
            .counter(
                "blocked",
                "Queries for names outside the registry answered NXDOMAIN/REFUSED",
                s(|s| load(&s.blocked)),
            )
            .counter(
                "servfail",
                "SERVFAIL answers (upstream failure, map insert failure, overload)",
                s(|s| load(&s.servfail)),
            )
            .counter("upstream_timeouts", "Upstream attempts that timed out", s(|s| load(&s.upstream_timeouts)))
            .counter(
                "rebinding_dropped",
                "Answer addresses dropped by the DNS-rebinding filter",
                s(|s| load(&s.rebinding_dropped)),
            )
            .counter(
                "learn_failures",
                "Answers whose addresses could not be put into the map",
                s(|s| load(&s.learn_failures)),
            )
            .counters("refused", "Queries the DNS forwarder answered itself (REFUSED/NXDOMAIN), by reason", {
                let st = Arc::clone(self);
                move || {
                    vec![
                        (vec![("reason", "not_in_registry".to_string())], load(&st.refused_not_in_registry)),
                        (vec![("reason", "search_expansion".to_string())], load(&st.refused_search_expansion)),
                        (vec![("reason", "multi_question".to_string())], load(&st.refused_multi_question)),
                        (vec![("reason", "opcode".to_string())], load(&st.refused_opcode)),
                        (vec![("reason", "search_miss".to_string())], load(&st.search_miss)),
                    ]
                }
            })
            .counter(
                "audit_would_refuse",
                "AUDIT: queries forwarded that REGISTRY_ONLY would have refused",
                s(|s| load(&s.audit_would_refuse)),
            )
            .counter(
                "stripped",
                "EDNS options and query records not forwarded upstream (REGISTRY_ONLY)",
                s(|s| load(&s.stripped)),
            )
            .counter("formerr", "FORMERR answers to malformed queries", s(|s| load(&s.formerr)))
            .counter(
                "overloaded",
                "Queries refused with SERVFAIL because too many were in flight (also in servfail)",
                s(|s| load(&s.overloaded)),
            );
        reg.sub_registry_with_prefix("enforcer_dns").register_collector(Box::new(c));
    }
}
