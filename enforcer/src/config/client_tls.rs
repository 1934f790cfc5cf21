//! Client `tls` of a traffic policy: Istio's `ValidateTLS` (istio/istio
//! pkg/config/validation/agent) and the CRD's mode enum, into [`TlsSettings`].

use std::path::PathBuf;

use super::field::Field;
use super::loader::{Ctx, FileLoader};
use super::model::*;
use super::yaml::Node;

const TLS_FIELDS: [&str; 9] = [
    "caCertificates",
    "caCrl",
    "clientCertificate",
    "credentialName",
    "insecureSkipVerify",
    "mode",
    "privateKey",
    "sni",
    "subjectAltNames",
];
const TLS_MODES: [&str; 4] = ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"];

fn present<'n, 'y>(n: &'n Node<'y>, key: &str) -> Option<&'n Node<'y>> {
    n.get(key).filter(|v| !v.is_null())
}

impl FileLoader<'_> {
    /// Client `tls` (Istio `ValidateTLS`), into [`TlsSettings`].
    pub(super) fn client_tls(&mut self, ctx: &Ctx, t: &Node<'_>, f: &Field<'_>) -> Option<TlsSettings> {
        self.known_fields(ctx, t, f, &TLS_FIELDS);
        let mut ok = true;
        let mode = match present(t, "mode") {
            None => TlsMode::Disable,
            Some(m) => match self.enum_of(ctx, m, &f.key("mode"), "TLS mode", &TLS_MODES) {
                Some("SIMPLE") => TlsMode::Simple,
                Some("MUTUAL") => TlsMode::Mutual,
                Some("ISTIO_MUTUAL") => TlsMode::IstioMutual,
                Some(_) => TlsMode::Disable,
                None => return None,
            },
        };
        let mut text = |this: &mut Self, k: &str| -> Option<String> {
            let v = present(t, k)?;
            match this.str_of(ctx, v, &f.key(k)) {
                Some(s) if !s.is_empty() => Some(s.into_owned()),
                Some(_) => None,
                None => {
                    ok = false;
                    None
                }
            }
        };
        let sni = text(self, "sni");
        let ca = text(self, "caCertificates");
        let ca_crl = text(self, "caCrl");
        let cert = text(self, "clientCertificate");
        let key = text(self, "privateKey");
        let credential = text(self, "credentialName");
        let insecure = match present(t, "insecureSkipVerify") {
            Some(n) => self.bool_of(ctx, n, &f.key("insecureSkipVerify")).unwrap_or(false),
            None => false,
        };
        let mut sans = Vec::new();
        if let Some(s) = present(t, "subjectAltNames") {
            sans =
                self.string_list(ctx, s, &f.key("subjectAltNames")).into_iter().map(|(v, _)| v.into_owned()).collect();
        }
        if let Some(c) = &credential
            && let Some(rest) = c.strip_prefix("configmap://")
        {
            let ns = rest.split_once('/').map(|(ns, _)| ns);
            if rest.is_empty() || ns.is_some_and(|ns| ns != ctx.namespace) {
                self.error(
                    ctx,
                    t.key_line("credentialName"),
                    &f.key("credentialName"),
                    format!(
                        "invalid configmap:// credentialName: namespace must match the configuration namespace {:?}",
                        ctx.namespace
                    ),
                    "use configmap://<name> for a ConfigMap in the rule's own namespace",
                );
            }
        }
        let line = t.line;
        if insecure {
            if mode == TlsMode::Simple && (ca.is_some() || credential.is_some() || !sans.is_empty()) {
                self.error(
                    ctx,
                    t.key_line("insecureSkipVerify"),
                    &f.key("insecureSkipVerify"),
                    "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
                    "remove insecureSkipVerify to verify the server, or remove caCertificates/credentialName/subjectAltNames",
                );
            }
            if mode == TlsMode::Mutual && (ca.is_some() || !sans.is_empty()) {
                self.error(
                    ctx,
                    t.key_line("insecureSkipVerify"),
                    &f.key("insecureSkipVerify"),
                    "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
                    "remove insecureSkipVerify to verify the server, or remove caCertificates/subjectAltNames",
                );
            }
        }
        if matches!(mode, TlsMode::Simple | TlsMode::Mutual) && credential.is_some() {
            if cert.is_some() || ca.is_some() || key.is_some() || ca_crl.is_some() {
                self.error(
                    ctx,
                    t.key_line("credentialName"),
                    &f.key("credentialName"),
                    "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
                    "take the certificates from the credentialName secret only, or remove credentialName and use file paths",
                );
            }
        } else if mode == TlsMode::Mutual {
            if cert.is_none() {
                self.error(
                    ctx,
                    line,
                    &f.key("clientCertificate"),
                    "client certificate required for mutual tls",
                    "set clientCertificate (a file path) or credentialName",
                );
            }
            if key.is_none() {
                self.error(
                    ctx,
                    line,
                    &f.key("privateKey"),
                    "private key required for mutual tls",
                    "set privateKey (a file path) or credentialName",
                );
            }
        }
        if !ok {
            return None;
        }
        Some(TlsSettings {
            mode,
            sni,
            ca_certificates: ca.map(PathBuf::from),
            insecure_skip_verify: insecure,
            subject_alt_names: sans,
        })
    }
}
