//! `DestinationRule`: Istio's `ValidateDestinationRule` and the CRD schema's rules, into
//! [`DestinationRule`]. The traffic policy itself is in `traffic_policy.rs`.

use std::collections::HashSet;

use super::field::Field;
use super::loader::{Ctx, FileLoader};
use super::model::*;
use super::validate;
use super::yaml::Node;

const SPEC_FIELDS: [&str; 5] = ["host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"];

impl FileLoader<'_> {
    pub(super) fn destination_rule(&mut self, ctx: &Ctx, node: &Node<'_>) {
        let errors_before = self.errors.len();
        let meta = self.metadata(ctx, node);
        let sf = Field::ROOT.key("spec");
        let Some(spec) = node.get("spec").filter(|s| !s.is_null()) else {
            self.error(ctx, node.line, &sf, "missing spec", "add spec.host");
            return;
        };
        if !self.is_map(ctx, spec, &sf) {
            return;
        }
        self.known_fields(ctx, spec, &sf, &SPEC_FIELDS);
        let host = self.dr_host(ctx, spec);
        let policy = match spec.get("trafficPolicy").filter(|t| !t.is_null()) {
            Some(tp) => self.traffic_policy(ctx, tp, &sf.key("trafficPolicy")),
            None => Default::default(),
        };
        let subsets = self.dr_subsets(ctx, spec);
        let selector = self.workload_selector(
            ctx,
            spec,
            "matchLabels",
            "DestinationRule",
            "workload selector specified without labels",
        );
        let export_to = self.export_to(ctx, spec, false, selector.is_some());
        self.dr_notes(ctx, spec, host.as_deref(), &policy);

        if self.errors.len() > errors_before {
            return;
        }
        let (Some(name), Some(host)) = (meta.name, host) else { return };
        let source = self.src(ctx, node.line);
        self.registry.destination_rules.push(DestinationRule {
            name,
            namespace: meta.namespace,
            host,
            tls: policy.tls,
            port_tls: policy.port_tls,
            connect_timeout: policy.connect_timeout,
            export_to,
            workload_selector: selector,
            subsets,
            source,
        });
    }

    /// `spec.host`: required; a DNS name, a short name, `*.suffix` or `*`.
    fn dr_host(&mut self, ctx: &Ctx, spec: &Node<'_>) -> Option<String> {
        let sf = Field::ROOT.key("spec");
        let hf = sf.key("host");
        let Some(h) = spec.get("host").filter(|h| !h.is_null()) else {
            self.error(
                ctx,
                spec.line,
                &hf,
                "destination rule must have a host",
                "add spec.host: <host of a ServiceEntry>",
            );
            return None;
        };
        let s = self.str_of(ctx, h, &hf)?;
        if let Err(msg) = validate::wildcard_domain(&s) {
            self.error(
                ctx,
                h.line,
                &hf,
                format!("invalid host {s}: {msg}"),
                "use a DNS name (or short name), optionally with a leading `*.` label, e.g. api.example.com",
            );
            return None;
        }
        Some(super::host::normalize(&s).into_owned())
    }

    /// `spec.subsets[]`: unique DNS-1123 names, valid labels, their own traffic policy.
    fn dr_subsets(&mut self, ctx: &Ctx, spec: &Node<'_>) -> Vec<String> {
        let sf = Field::ROOT.key("spec");
        let subf = sf.key("subsets");
        let mut names = Vec::new();
        let Some(s) = spec.get("subsets") else { return names };
        let mut seen = HashSet::new();
        let items = self.seq_of(ctx, s, &subf);
        for (_, f, item) in
            self.map_items(ctx, items, &subf, "subset may not be null", &["name", "labels", "trafficPolicy"])
        {
            let nf = f.key("name");
            let name = match item.get("name").filter(|n| !n.is_null()) {
                Some(n) => self.str_of(ctx, n, &nf).map(|s| (s.into_owned(), n.line)),
                None => Some((String::new(), item.line)),
            };
            if let Some((name, line)) = name {
                if name.is_empty() {
                    self.error(ctx, line, &nf, "subset name cannot be empty", "give the subset a name, e.g. v1");
                } else if !validate::is_dns1123_label(&name) {
                    self.error(
                        ctx,
                        line,
                        &nf,
                        format!("subset name is invalid: {name}"),
                        "use a DNS-1123 label: letters, digits and '-'",
                    );
                } else if !seen.insert(name.clone()) {
                    self.error(
                        ctx,
                        line,
                        &nf,
                        format!("duplicate subset names: {name}"),
                        "give every subset a unique name",
                    );
                }
                names.push(name);
            }
            if let Some(l) = item.get("labels").filter(|l| !l.is_null()) {
                self.labels(ctx, l, &f.key("labels"));
            }
            if let Some(tp) = item.get("trafficPolicy").filter(|t| !t.is_null()) {
                self.traffic_policy(ctx, tp, &f.key("trafficPolicy"));
            }
        }
        names
    }

    /// What enforcer does not act on.
    fn dr_notes(&mut self, ctx: &Ctx, spec: &Node<'_>, host: Option<&str>, policy: &super::traffic_policy::PolicyOut) {
        let sf = Field::ROOT.key("spec");
        let host = host.unwrap_or("?");
        let tp = sf.key("trafficPolicy");
        let line = spec.key_line("trafficPolicy");
        let tls_note = |this: &mut Self, t: &TlsSettings, f: &Field<'_>| {
            if !matches!(t.mode, TlsMode::Simple | TlsMode::Disable) {
                this.note(
                    ctx,
                    line,
                    f,
                    format!("tls.mode {} for {host} is not supported by enforcer (only SIMPLE origination and DISABLE): connections go out as the application makes them", t.mode),
                    "use mode SIMPLE for TLS origination, or remove the setting",
                );
            }
        };
        if let Some(t) = &policy.tls {
            tls_note(self, t, &tp.key("tls").key("mode"));
        }
        for t in policy.port_tls.values() {
            tls_note(self, t, &tp.key("portLevelSettings"));
        }
        self.note_if_set(
            ctx,
            spec,
            "exportTo",
            "exportTo is applied in Kubernetes mode only; from files the rule applies to every workload",
            "nothing to do for a single-namespace registry",
        );
        self.note_if_set(
            ctx,
            spec,
            "subsets",
            "subsets are not used by enforcer (it does not route between versions); ignored",
            "nothing to do",
        );
    }
}
