//! The mesh config: a plain MeshConfig document, the `istio` ConfigMap's `data.mesh`, or an
//! `IstioOperator`'s `spec.meshConfig`. Read: `outboundTrafficPolicy.mode` (the registry's mode)
//! and, type-checked for Kubernetes mode, `rootNamespace`, `defaultServiceExportTo`,
//! `defaultDestinationRuleExportTo`.

use super::field::Field;
use super::loader::{Ctx, FileLoader, object_label};
use super::model::*;
use super::yaml::{self, Node};

/// MeshConfig's `outboundTrafficPolicy.mode` values (istio/api mesh/v1alpha1/config.proto), plus
/// enforcer's AUDIT.
const MODES: [&str; 4] = ["REGISTRY_ONLY", "ALLOW_ANY", "ALLOW_ANY_DYNAMIC_DNS", "AUDIT"];

/// Keys that mark a kind-less document as a MeshConfig.
const MESH_KEYS: [&str; 6] = [
    "outboundTrafficPolicy",
    "rootNamespace",
    "defaultServiceExportTo",
    "defaultDestinationRuleExportTo",
    "defaultVirtualServiceExportTo",
    "meshMTLS",
];

/// Does a kind-less document look like a MeshConfig?
pub(crate) fn looks_like_mesh_config(node: &Node<'_>) -> bool {
    node.entries().iter().any(|e| MESH_KEYS.contains(&&*e.key))
}

impl FileLoader<'_> {
    /// `kind: ConfigMap`: only Istio's mesh ConfigMap (with `data.mesh`) is read.
    pub(super) fn config_map(&mut self, ctx: &Ctx, node: &Node<'_>) {
        let mut c = ctx.clone();
        c.object = Some(object_label("ConfigMap", node));
        let mf = Field::ROOT.key("data");
        let mf = mf.key("mesh");
        let Some(mesh) = node.get("data").and_then(|d| d.get("mesh")) else {
            self.note(
                &c,
                node.line,
                &Field::ROOT.key("kind"),
                "kind ConfigMap is not used by enforcer (no data.mesh); ignored",
                "only Istio's mesh ConfigMap (istio-system/istio with data.mesh) is read",
            );
            return;
        };
        let Some(text) = mesh.as_str() else {
            self.error(
                &c,
                mesh.line,
                &mf,
                format!("expected string, got {}", mesh.value.describe()),
                "data.mesh must be a YAML document in a string (use `mesh: |`)",
            );
            return;
        };
        // For block scalars (`mesh: |`) the content starts on the next line.
        let raw_line = self.text.lines().nth(mesh.line.saturating_sub(1)).unwrap_or("");
        let after_colon = raw_line.split_once("mesh:").map(|(_, r)| r.trim()).unwrap_or("");
        let base = if after_colon.starts_with('|') || after_colon.starts_with('>') { mesh.line + 1 } else { mesh.line };
        match yaml::parse_embedded(text, base, self.limits) {
            Ok(inner) => {
                let mut ic = c.clone();
                ic.prefix = format!("{}data.mesh.", ctx.prefix);
                if inner.get("outboundTrafficPolicy").is_some() || looks_like_mesh_config(&inner) {
                    self.mesh_config(&ic, &inner, "ConfigMap");
                }
                if inner.get("outboundTrafficPolicy").is_none() {
                    self.note(
                        &ic,
                        base,
                        &Field::ROOT.key("outboundTrafficPolicy").key("mode"),
                        "mesh config sets no outbound traffic policy (Istio's default is ALLOW_ANY)",
                        "add outboundTrafficPolicy: {mode: REGISTRY_ONLY} to data.mesh to restrict egress",
                    );
                }
            }
            Err(e) => self.error(
                &c,
                e.line,
                &mf,
                format!("YAML syntax error in embedded mesh config at line {}: {}", e.line, e.message),
                "fix the YAML inside data.mesh",
            ),
        }
    }

    /// `kind: IstioOperator`: its `spec.meshConfig`.
    pub(super) fn istio_operator(&mut self, ctx: &Ctx, node: &Node<'_>) {
        let mut c = ctx.clone();
        c.object = Some(object_label("IstioOperator", node));
        match node.get("spec").and_then(|s| s.get("meshConfig")).filter(|m| !m.is_null()) {
            Some(mc) => {
                c.prefix = format!("{}spec.meshConfig.", ctx.prefix);
                if self.is_map(&c, mc, &Field::ROOT) {
                    self.mesh_config(&c, mc, "IstioOperator");
                }
                if mc.get("outboundTrafficPolicy").is_none() {
                    self.note(
                        &c,
                        mc.line,
                        &Field::ROOT.key("outboundTrafficPolicy").key("mode"),
                        "IstioOperator sets no outbound traffic policy; ignored",
                        "set spec.meshConfig.outboundTrafficPolicy.mode to ALLOW_ANY or REGISTRY_ONLY",
                    );
                }
            }
            None => self.note(
                &c,
                node.line,
                &Field::ROOT.key("spec").key("meshConfig").key("outboundTrafficPolicy").key("mode"),
                "IstioOperator sets no outbound traffic policy; ignored",
                "set spec.meshConfig.outboundTrafficPolicy.mode to ALLOW_ANY or REGISTRY_ONLY",
            ),
        }
    }

    /// The MeshConfig fields enforcer reads.
    pub(super) fn mesh_config(&mut self, ctx: &Ctx, mc: &Node<'_>, origin: &str) {
        let mut c = ctx.clone();
        if c.object.is_none() {
            c.object = Some(origin.to_string());
        }
        let root = Field::ROOT;
        if let Some(r) = mc.get("rootNamespace").filter(|r| !r.is_null()) {
            let _ = self.str_of(&c, r, &root.key("rootNamespace"));
        }
        for k in ["defaultServiceExportTo", "defaultDestinationRuleExportTo", "defaultVirtualServiceExportTo"] {
            if let Some(l) = mc.get(k).filter(|l| !l.is_null()) {
                let _ = self.string_list(&c, l, &root.key(k));
            }
        }
        let Some(otp) = mc.get("outboundTrafficPolicy").filter(|o| !o.is_null()) else {
            return;
        };
        let of = root.key("outboundTrafficPolicy");
        if !self.is_map(&c, otp, &of) {
            return;
        }
        let mf = of.key("mode");
        let Some(mode_node) = otp.get("mode").filter(|m| !m.is_null()) else {
            self.note(
                &c,
                otp.line,
                &mf,
                "outboundTrafficPolicy has no mode (Istio's default is ALLOW_ANY)",
                "set mode: ALLOW_ANY or mode: REGISTRY_ONLY",
            );
            return;
        };
        let Some(s) = self.enum_of(&c, mode_node, &mf, "outbound traffic policy mode", &MODES) else {
            return;
        };
        let mode = match s {
            "REGISTRY_ONLY" => Mode::RegistryOnly,
            "AUDIT" => {
                self.warn(
                    &c,
                    mode_node.line,
                    &mf,
                    "AUDIT is an enforcer extension: Istio rejects this mesh config",
                    "keep AUDIT only in configuration read by enforcer, or pass --mode AUDIT instead",
                );
                Mode::Audit
            }
            "ALLOW_ANY_DYNAMIC_DNS" => {
                self.note(
                    &c,
                    mode_node.line,
                    &mf,
                    "ALLOW_ANY_DYNAMIC_DNS is enforced as ALLOW_ANY (unknown destinations are allowed)",
                    "nothing to do",
                );
                Mode::AllowAny
            }
            _ => Mode::AllowAny,
        };
        let src = self.src(&c, mode_node.line);
        match &self.registry.mode {
            None => self.registry.mode = Some((mode, src)),
            Some((m, first)) if *m != mode => {
                let mut d = mode_conflict(*m, first, mode, &src);
                d.object = c.object.clone();
                d.field = format!("{}outboundTrafficPolicy.mode", c.prefix);
                self.errors.push(d);
            }
            Some(_) => {}
        }
    }
}
