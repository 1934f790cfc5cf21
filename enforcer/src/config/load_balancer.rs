//! A traffic policy's `loadBalancer`: Istio's `validateLoadBalancer`, `ValidateLocalityLbSetting`,
//! `ValidateZoneAwareLbSetting` and the CRD's oneOf rules. Validated only; enforcer does not
//! balance load.

use std::collections::HashSet;

use super::field::Field;
use super::loader::{Ctx, FileLoader};
use super::validate;
use super::yaml::{Node, Yaml};

const LB_SIMPLE: [&str; 6] = ["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"];

fn has_any(n: &Node<'_>, keys: &[&str]) -> bool {
    keys.iter().any(|k| n.get(k).is_some_and(|v| !v.is_null()))
}

fn present<'n, 'y>(n: &'n Node<'y>, key: &str) -> Option<&'n Node<'y>> {
    n.get(key).filter(|v| !v.is_null())
}

impl FileLoader<'_> {
    /// `loadBalancer`: simple or consistentHash; locality/zone-aware settings; warmup.
    pub(super) fn load_balancer(&mut self, ctx: &Ctx, lb: &Node<'_>, f: &Field<'_>, has_outlier: bool) {
        self.known_fields(
            ctx,
            lb,
            f,
            &["simple", "consistentHash", "localityLbSetting", "warmup", "warmupDurationSecs", "zoneAwareLbSetting"],
        );
        if has_any(lb, &["simple"]) && has_any(lb, &["consistentHash"]) {
            self.error(
                ctx,
                lb.line,
                f,
                "only one of simple or consistentHash can be set",
                "keep one of loadBalancer.simple, loadBalancer.consistentHash",
            );
        }
        if let Some(s) = present(lb, "simple") {
            self.enum_of(ctx, s, &f.key("simple"), "load balancer", &LB_SIMPLE);
        }
        if let Some(ch) = self.map_child(ctx, lb, "consistentHash", f) {
            self.consistent_hash(ctx, ch, &f.key("consistentHash"));
        }
        if has_any(lb, &["localityLbSetting"]) && has_any(lb, &["zoneAwareLbSetting"]) {
            self.error(
                ctx,
                lb.line,
                f,
                "only one of localityLbSetting and zoneAwareLbSetting can be set",
                "keep one of them",
            );
        }
        if let Some(l) = self.map_child(ctx, lb, "localityLbSetting", f) {
            self.locality_lb(ctx, l, &f.key("localityLbSetting"), has_outlier, false);
        }
        if let Some(z) = self.map_child(ctx, lb, "zoneAwareLbSetting", f) {
            self.locality_lb(ctx, z, &f.key("zoneAwareLbSetting"), has_outlier, true);
        }
        if let Some(d) = present(lb, "warmupDurationSecs") {
            self.ms_duration(ctx, d, &f.key("warmupDurationSecs"));
        }
        if let Some(w) = self.map_child(ctx, lb, "warmup", f) {
            let wf = f.key("warmup");
            self.known_fields(ctx, w, &wf, &["aggression", "duration", "minimumPercent"]);
            match present(w, "duration") {
                Some(d) => {
                    self.ms_duration(ctx, d, &wf.key("duration"));
                }
                None => self.error(
                    ctx,
                    w.line,
                    &wf.key("duration"),
                    "duration is required",
                    "set warmup.duration, e.g. 60s",
                ),
            }
            if let Some(m) = present(w, "minimumPercent")
                && let Some(v) = self.number_of(ctx, m, &wf.key("minimumPercent"))
                && !(0.0..=100.0).contains(&v)
            {
                self.error(
                    ctx,
                    m.line,
                    &wf.key("minimumPercent"),
                    "minimumPercent value should be less than or equal to 100",
                    "use a percentage between 0 and 100",
                );
            }
            if let Some(a) = present(w, "aggression")
                && let Some(v) = self.number_of(ctx, a, &wf.key("aggression"))
                && v <= 0.0
            {
                self.error(
                    ctx,
                    a.line,
                    &wf.key("aggression"),
                    "aggression should be greater than 0",
                    "use a value above 0 (1 is linear)",
                );
            }
        }
    }

    pub(super) fn consistent_hash(&mut self, ctx: &Ctx, ch: &Node<'_>, f: &Field<'_>) {
        let keys = ["httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName"];
        self.known_fields(
            ctx,
            ch,
            f,
            &[
                "httpHeaderName",
                "httpCookie",
                "useSourceIp",
                "httpQueryParameterName",
                "ringHash",
                "maglev",
                "minimumRingSize",
            ],
        );
        if keys.iter().filter(|k| has_any(ch, &[**k])).count() > 1 {
            self.error(
                ctx,
                ch.line,
                f,
                "only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName can be set",
                "keep one hash key",
            );
        }
        if has_any(ch, &["ringHash"]) && has_any(ch, &["maglev"]) {
            self.error(ctx, ch.line, f, "only one of ringHash or maglev can be set", "keep one hash algorithm");
        }
        if let Some(c) = self.map_child(ctx, ch, "httpCookie", f) {
            let cf = f.key("httpCookie");
            self.known_fields(ctx, c, &cf, &["attributes", "name", "path", "ttl"]);
            if present(c, "name").and_then(Node::as_str).is_none_or(|s| s.is_empty()) {
                self.error(ctx, c.line, &cf.key("name"), "name required for HttpCookie", "set httpCookie.name");
            }
            if let Some(t) = present(c, "ttl") {
                self.duration_of(ctx, t, &cf.key("ttl"));
            }
            if let Some(attrs) = present(c, "attributes") {
                let af = cf.key("attributes");
                let mut seen = HashSet::new();
                for (i, a) in self.seq_of(ctx, attrs, &af).iter().enumerate() {
                    let ai = af.idx(i);
                    let name = a.get("name").and_then(Node::as_str).unwrap_or("");
                    if name.is_empty() {
                        self.error(
                            ctx,
                            a.line,
                            &ai.key("name"),
                            "cookie attribute name cannot be empty",
                            "give the attribute a name",
                        );
                    } else if !seen.insert(name.to_string()) {
                        self.error(
                            ctx,
                            a.line,
                            &ai.key("name"),
                            format!("duplicate cookie attribute name: {name}"),
                            "give each attribute a unique name",
                        );
                    }
                }
            }
        }
        let legacy = match present(ch, "minimumRingSize") {
            Some(m) => self.ranged_int(ctx, m, &f.key("minimumRingSize"), 0, u64::MAX as i128).unwrap_or(0),
            None => 0,
        };
        if legacy != 0 {
            self.warn(
                ctx,
                ch.key_line("minimumRingSize"),
                &f.key("minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
                "move it to consistentHash.ringHash.minimumRingSize",
            );
            if has_any(ch, &["maglev", "ringHash"]) {
                self.error(
                    ctx,
                    ch.line,
                    &f.key("minimumRingSize"),
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                    "remove minimumRingSize",
                );
            }
        }
        if let Some(m) = self.map_child(ctx, ch, "maglev", f) {
            let mf = f.key("maglev");
            self.known_fields(ctx, m, &mf, &["tableSize"]);
            let size = match present(m, "tableSize") {
                Some(t) => self.ranged_int(ctx, t, &mf.key("tableSize"), 0, u64::MAX as i128),
                None => Some(0),
            };
            if let Some(size) = size {
                let tf = mf.key("tableSize");
                if size == 0 {
                    self.error(
                        ctx,
                        m.line,
                        &tf,
                        "tableSize must be set for maglev",
                        "set a prime tableSize, e.g. 65537",
                    );
                }
                if size >= 5_000_011 {
                    self.error(
                        ctx,
                        m.line,
                        &tf,
                        "tableSize must be less than 5000011 for maglev",
                        "use a prime below 5000011, e.g. 65537",
                    );
                }
                if !validate::is_prime(size as u64) {
                    self.error(
                        ctx,
                        m.line,
                        &tf,
                        "tableSize must be a prime number for maglev",
                        "use a prime, e.g. 65537",
                    );
                }
            }
        }
        if let Some(r) = self.map_child(ctx, ch, "ringHash", f) {
            let rf = f.key("ringHash");
            self.known_fields(ctx, r, &rf, &["minimumRingSize"]);
            if let Some(m) = present(r, "minimumRingSize") {
                self.ranged_int(ctx, m, &rf.key("minimumRingSize"), 0, u64::MAX as i128);
            }
        }
    }

    /// `localityLbSetting` / `zoneAwareLbSetting` (Istio `ValidateLocalityLbSetting`,
    /// `ValidateZoneAwareLbSetting`).
    pub(super) fn locality_lb(&mut self, ctx: &Ctx, l: &Node<'_>, f: &Field<'_>, has_outlier: bool, zone_aware: bool) {
        let topology = ["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"];
        if zone_aware {
            self.known_fields(ctx, l, f, &["enabled", "failover", "failoverPriority", "minClusterSize"]);
        } else {
            self.known_fields(ctx, l, f, &["distribute", "enabled", "failover", "failoverPriority"]);
        }
        if let Some(e) = present(l, "enabled") {
            self.bool_of(ctx, e, &f.key("enabled"));
        }
        let failover = present(l, "failover").map(|n| n.line);
        let priority: Vec<(String, usize)> = match present(l, "failoverPriority") {
            Some(p) => self
                .string_list(ctx, p, &f.key("failoverPriority"))
                .into_iter()
                .map(|(s, l)| (s.into_owned(), l))
                .collect(),
            None => Vec::new(),
        };
        let distribute = present(l, "distribute");
        let has_failover = l.get("failover").is_some_and(|n| matches!(&n.value, Yaml::Seq(s) if !s.is_empty()));
        if !zone_aware && distribute.is_some_and(|d| matches!(&d.value, Yaml::Seq(s) if !s.is_empty())) && has_failover
        {
            self.error(
                ctx,
                l.line,
                f,
                "can not simultaneously specify 'distribute' and 'failover'",
                "keep one of distribute, failover",
            );
            return;
        }
        for (p, line) in &priority {
            if topology.contains(&p.as_str()) && (zone_aware || has_failover) {
                let msg = if zone_aware {
                    format!(
                        "'failover_priority' for zone aware lb must not use topology label '{p}'; region- and zone-level routing are handled automatically"
                    )
                } else {
                    format!("can not simultaneously set 'failover' and topology label '{p}' in 'failover_priority'")
                };
                self.error(
                    ctx,
                    *line,
                    &f.key("failoverPriority"),
                    msg,
                    "remove the topology label from failoverPriority",
                );
            }
        }
        if !zone_aware && let Some(d) = distribute {
            let df = f.key("distribute");
            for (i, item) in self.seq_of(ctx, d, &df).iter().enumerate() {
                let di = df.idx(i);
                let mut total: i128 = 0;
                if let Some(to) = present(item, "to") {
                    for e in to.entries() {
                        if let Some(w) = self.int_of(ctx, &e.value, &di.key("to")) {
                            if !(1..=100).contains(&w) {
                                self.error(
                                    ctx,
                                    e.line,
                                    &di.key("to"),
                                    "locality weight must be in range [1, 100]",
                                    "use weights between 1 and 100",
                                );
                            }
                            total += w;
                        }
                    }
                }
                if total != 100 {
                    self.error(
                        ctx,
                        item.line,
                        &di.key("to"),
                        format!("total locality weight {total} != 100"),
                        "make the weights add up to 100",
                    );
                }
            }
        }
        if (failover.is_some() || !priority.is_empty()) && !has_outlier {
            self.warn(
                ctx,
                l.line,
                f,
                "outlier detection policy must be provided for failover",
                "add trafficPolicy.outlierDetection so unhealthy endpoints are ejected",
            );
        }
        if let Some(fo) = present(l, "failover") {
            let ff = f.key("failover");
            for (i, item) in self.seq_of(ctx, fo, &ff).iter().enumerate() {
                let from = item.get("from").and_then(Node::as_str).unwrap_or("");
                let to = item.get("to").and_then(Node::as_str).unwrap_or("");
                let fi = ff.idx(i);
                if from == to {
                    self.error(
                        ctx,
                        item.line,
                        &fi,
                        "locality lb failover settings must specify different regions",
                        "use different from and to regions",
                    );
                }
                if from.contains('/') || to.contains('/') {
                    self.error(
                        ctx,
                        item.line,
                        &fi,
                        "locality lb failover only specify region",
                        "use region names without '/'",
                    );
                }
                if from.contains('*') || to.contains('*') {
                    self.error(
                        ctx,
                        item.line,
                        &fi,
                        "locality lb failover region should not contain '*' wildcard",
                        "use exact region names",
                    );
                }
            }
        }
        if zone_aware && let Some(m) = present(l, "minClusterSize") {
            self.ranged_int(ctx, m, &f.key("minClusterSize"), 1, u64::MAX as i128);
        }
    }
}
