//! rustls client configurations for TLS origination (ring provider, set explicitly so no
//! process-wide default provider is needed).

use std::{
    path::Path,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};
use tracing::{info, warn};

use super::TlsOrigination;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// The system trust anchors (rustls-native-certs), loaded once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                warn!(error = %e, "proxy: loading system CA certificates");
            }
            let mut store = RootCertStore::empty();
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            info!(added, ignored, "proxy: system CA certificates loaded");
            Arc::new(store)
        })
        .clone()
}

fn load_ca_file(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read caCertificates {}: {e}", path.display()))?;
    for cert in iter {
        let cert = cert.map_err(|e| format!("bad PEM in caCertificates {}: {e}", path.display()))?;
        store.add(cert).map_err(|e| format!("bad certificate in caCertificates {}: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!("no certificate in caCertificates {}", path.display()));
    }
    Ok(Arc::new(store))
}

/// A client config for one TlsOrigination. Err: the configuration itself is unusable (e.g. the
/// CA file is missing); the text is meant for the 503 body and the log.
pub(crate) fn client_config(tls: &TlsOrigination, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(InsecureVerifier { algs: provider.signature_verification_algorithms })
    } else {
        let roots = match &tls.ca_certificates {
            Some(path) => load_ca_file(path)?,
            None => system_roots(),
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("cannot build a certificate verifier: {e}"))?;
        if tls.subject_alt_names.is_empty() {
            webpki
        } else {
            let sans: Vec<ServerName<'static>> = tls
                .subject_alt_names
                .iter()
                .filter_map(|s| match ServerName::try_from(s.clone()) {
                    Ok(n) => Some(n),
                    Err(_) => {
                        warn!(san = %s, "proxy: subjectAltName is not a DNS name or IP; ignored");
                        None
                    }
                })
                .collect();
            Arc::new(SanVerifier { inner: webpki, sans })
        }
    };
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Verifies the chain against the roots and requires the certificate to be valid for one of the
/// DestinationRule's subjectAltNames (instead of the SNI name, as Istio does).
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    sans: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut first_err = None;
        for san in &self.sans {
            match self.inner.verify_server_cert(end_entity, intermediates, san, ocsp_response, now) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // No usable SAN at all: nothing the certificate could be valid for.
        Err(first_err.unwrap_or(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

static INSECURE_WARNED: AtomicBool = AtomicBool::new(false);

/// insecureSkipVerify: any certificate is accepted (handshake signatures are still checked, so
/// the peer must hold the key of the certificate it shows).
#[derive(Debug)]
struct InsecureVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for InsecureVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !INSECURE_WARNED.swap(true, Ordering::Relaxed) {
            warn!(server = ?server_name,
                "proxy: insecureSkipVerify: upstream certificates are NOT verified (logged once)");
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Whether a rustls error means the server's certificate was not accepted.
pub(crate) fn is_verify_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_)
    )
}
