//! A test PKI made with the openssl CLI.

use std::path::{Path, PathBuf};

use crate::{TempDir, sh};

/// A CA and one server certificate signed by it, made at test time with the `openssl` CLI
/// (ECDSA P-256, valid for one day). All paths are PEM files in the [`TempDir`] given.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// `prefix`-ca.pem (CN `<prefix> test CA`, CA:TRUE) and `prefix`-server.pem, whose SANs are
    /// `names` (DNS names; `*.x` wildcards allowed; IP addresses become IP SANs).
    pub fn new(dir: &TempDir, prefix: &str, names: &[&str]) -> Self {
        assert!(!names.is_empty());
        let ca = dir.join(&format!("{prefix}-ca.pem"));
        let ca_key = dir.join(&format!("{prefix}-ca.key"));
        let cert = dir.join(&format!("{prefix}-server.pem"));
        let key = dir.join(&format!("{prefix}-server.key"));
        let csr = dir.join(&format!("{prefix}-server.csr"));
        let ext = dir.write(
            &format!("{prefix}-server.ext"),
            &format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                names
                    .iter()
                    .map(|n| if n.parse::<std::net::IpAddr>().is_ok() { format!("IP:{n}") } else { format!("DNS:{n}") })
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        );
        let p = |p: &Path| p.display().to_string();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        let (ca_s, ca_key_s, cert_s, key_s, csr_s, ext_s) = (p(&ca), p(&ca_key), p(&cert), p(&key), p(&csr), p(&ext));
        let subj_ca = format!("/CN={prefix} test CA");
        a.extend(["-keyout", &ca_key_s, "-out", &ca_s, "-days", "1", "-subj", &subj_ca]);
        a.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        sh("openssl", &a);
        let subj = format!("/CN={}", names[0]);
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-keyout", &key_s, "-out", &csr_s, "-subj", &subj]);
        sh("openssl", &a);
        sh(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr_s,
                "-CA",
                &ca_s,
                "-CAkey",
                &ca_key_s,
                "-CAcreateserial",
                "-out",
                &cert_s,
                "-days",
                "1",
                "-extfile",
                &ext_s,
            ],
        );
        Self { ca, ca_key, cert, key }
    }
}
