//! TLS for the gateway's clients. HTTP (Camunda, `http` handlers): reqwest on rustls trusting the
//! system roots plus `CA_BUNDLE_FILE`, with an optional client certificate. AMQP: lapin's TLS
//! configuration for `amqps://`, trusting the system roots plus `RABBITMQ_CA_FILE` (or
//! `CA_BUNDLE_FILE`). MongoDB takes its TLS settings from its URI; nothing here touches it.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

use super::{CertKeyFiles, TlsSettings};

/// A reqwest builder that trusts the system roots plus `CA_BUNDLE_FILE` (and not reqwest's
/// bundled web roots, so what is trusted is what the host's store and the operator say) and
/// presents `identity` when a server asks for a client certificate. Callers add their own
/// options and build. The error names the variable or field of the file at fault.
pub fn http_client_builder(
    settings: &TlsSettings,
    identity: Option<&CertKeyFiles>,
) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder().tls_built_in_webpki_certs(false).tls_built_in_native_certs(true);
    if let Some(path) = &settings.ca_bundle_file {
        for der in super::pem::read_certs(path).map_err(|e| format!("CA_BUNDLE_FILE: {e}"))? {
            let cert = reqwest::Certificate::from_der(&der)
                .map_err(|e| format!("CA_BUNDLE_FILE ({}): {e}", path.display()))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(files) = identity {
        files.check().map_err(|(var, message)| format!("{var}: {message}"))?;
        let pem = files.combined_pem()?;
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("{} / {}: not a usable certificate and key: {e}", files.cert_var, files.key_var))?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

/// A reqwest client as [`http_client_builder`] makes it, built.
pub fn http_client(settings: &TlsSettings, identity: Option<&CertKeyFiles>) -> Result<reqwest::Client, String> {
    http_client_builder(settings, identity)?.build().map_err(|e| format!("HTTP client: {}", super::reason(&e)))
}

/// lapin's TLS settings for `amqps://` (ignored on `amqp://`): `RABBITMQ_CA_FILE`, else
/// `CA_BUNDLE_FILE`, added to the system roots; the client certificate when configured. Holds
/// the client's private key: never log it.
pub fn amqp_tls_config(settings: &TlsSettings) -> Result<OwnedTLSConfig, String> {
    let ca = match (&settings.rabbitmq_ca_file, &settings.ca_bundle_file) {
        (Some(path), _) => Some(("RABBITMQ_CA_FILE", path)),
        (None, Some(path)) => Some(("CA_BUNDLE_FILE", path)),
        (None, None) => None,
    };
    let cert_chain = match ca {
        Some((var, path)) => {
            super::pem::read_certs(path).map_err(|e| format!("{var}: {e}"))?;
            let text = std::fs::read_to_string(path).map_err(|e| format!("{var} ({}): {e}", path.display()))?;
            Some(text)
        }
        None => None,
    };
    let identity = match &settings.rabbitmq_client {
        Some(files) => {
            files.check().map_err(|(var, message)| format!("{var}: {message}"))?;
            let (pem, key) = files.read()?;
            Some(OwnedIdentity::PKCS8 { pem, key })
        }
        None => None,
    };
    Ok(OwnedTLSConfig { identity, cert_chain })
}
