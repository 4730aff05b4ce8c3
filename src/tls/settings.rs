//! `CA_BUNDLE_FILE`, client certificates, and the API's own certificate. Every file is read and
//! parsed once here, so a missing or malformed one stops start-up with a message naming its
//! variable; the clients and the listener read them again when they are built.

use std::{collections::HashMap, path::PathBuf};

use super::pem::{read_certs, read_key};
use crate::config::{ConfigError, Reader};

/// A certificate chain and its private key, both PEM files, and the variables (or topic-file
/// fields) that named them, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_var: &'static str,
    pub key_var: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// `CA_BUNDLE_FILE` (unset): PEM file of one or more CA certificates trusted in addition to
    /// the system roots by the Camunda client, the `http` handlers, and RabbitMQ (unless
    /// `RABBITMQ_CA_FILE` is set).
    pub ca_bundle_file: Option<PathBuf>,
    /// `RABBITMQ_CA_FILE` (unset): PEM CA(s) trusted for `amqps://` in addition to the system
    /// roots, instead of `CA_BUNDLE_FILE`.
    pub rabbitmq_ca_file: Option<PathBuf>,
    /// `RABBITMQ_CLIENT_CERT_FILE` / `RABBITMQ_CLIENT_KEY_FILE` (unset): client certificate
    /// (chain) and key, PEM, presented to RabbitMQ over `amqps://`.
    pub rabbitmq_client: Option<CertKeyFiles>,
    /// `CAMUNDA_CLIENT_CERT_FILE` / `CAMUNDA_CLIENT_KEY_FILE` (unset): client certificate and
    /// key, PEM, presented to Camunda over `https://`.
    pub camunda_client: Option<CertKeyFiles>,
    /// `TLS_CERT_FILE` / `TLS_KEY_FILE` (unset: plain HTTP): the API's certificate chain and
    /// key, PEM; when set the API speaks only HTTPS (HTTP/2 or HTTP/1.1 by ALPN).
    pub server: Option<CertKeyFiles>,
}

impl TlsSettings {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        let ca_file = |var: &'static str| -> Result<Option<PathBuf>, ConfigError> {
            let Some(path) = r.get(var).map(PathBuf::from) else { return Ok(None) };
            read_certs(&path).map_err(|message| ConfigError { var, message })?;
            Ok(Some(path))
        };
        Ok(Self {
            ca_bundle_file: ca_file("CA_BUNDLE_FILE")?,
            rabbitmq_ca_file: ca_file("RABBITMQ_CA_FILE")?,
            rabbitmq_client: pair(&r, "RABBITMQ_CLIENT_CERT_FILE", "RABBITMQ_CLIENT_KEY_FILE")?,
            camunda_client: pair(&r, "CAMUNDA_CLIENT_CERT_FILE", "CAMUNDA_CLIENT_KEY_FILE")?,
            server: pair(&r, "TLS_CERT_FILE", "TLS_KEY_FILE")?,
        })
    }
}

/// A certificate and key given together or not at all, each loadable.
fn pair(r: &Reader<'_>, cert_var: &'static str, key_var: &'static str) -> Result<Option<CertKeyFiles>, ConfigError> {
    let files = match (r.get(cert_var), r.get(key_var)) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(ConfigError { var: key_var, message: format!("must be set with {cert_var}") }),
        (None, Some(_)) => return Err(ConfigError { var: cert_var, message: format!("must be set with {key_var}") }),
        (Some(cert), Some(key)) => CertKeyFiles { cert: cert.into(), key: key.into(), cert_var, key_var },
    };
    files.check().map_err(|(var, message)| ConfigError { var, message })?;
    Ok(Some(files))
}

impl CertKeyFiles {
    /// Both files load: a certificate in one, a private key in the other. The error names the
    /// variable (or field) of the file at fault.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        read_certs(&self.cert).map_err(|m| (self.cert_var, m))?;
        read_key(&self.key).map_err(|m| (self.key_var, m))?;
        Ok(())
    }

    /// The certificate chain then the key, in one PEM buffer (what reqwest's `Identity` and the
    /// MongoDB driver's `tlsCertificateKeyFile` take). Holds the private key: never log it.
    pub fn combined_pem(&self) -> Result<Vec<u8>, String> {
        let (cert, key) = self.read()?;
        let mut pem = cert;
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(&key);
        Ok(pem)
    }

    /// The certificate file's and the key file's bytes, errors naming variable and file.
    pub fn read(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        let read = |var: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("{var} ({}): cannot read: {e}", path.display()))
        };
        Ok((read(self.cert_var, &self.cert)?, read(self.key_var, &self.key)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn nothing_set_means_no_tls_settings() {
        let s = TlsSettings::from_vars(&HashMap::new()).expect("empty is valid");
        assert!(s.ca_bundle_file.is_none() && s.server.is_none() && s.camunda_client.is_none());
    }

    #[test]
    fn a_certificate_without_its_key_names_the_missing_variable() {
        let e = TlsSettings::from_vars(&vars(&[("TLS_CERT_FILE", "/x/cert.pem")])).err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("configuration: TLS_KEY_FILE: must be set with TLS_CERT_FILE")
        );
        let e = TlsSettings::from_vars(&vars(&[("CAMUNDA_CLIENT_KEY_FILE", "/x/key.pem")])).err();
        assert_eq!(e.map(|e| e.var), Some("CAMUNDA_CLIENT_CERT_FILE"));
    }

    #[test]
    fn an_unreadable_or_empty_file_names_its_variable_and_path() {
        let e = TlsSettings::from_vars(&vars(&[("CA_BUNDLE_FILE", "/nonexistent/ca.pem")])).err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("CA_BUNDLE_FILE") && msg.contains("/nonexistent/ca.pem"), "{msg}");
        let empty = std::env::temp_dir().join(format!("empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("temp dir is writable");
        let e = TlsSettings::from_vars(&vars(&[("RABBITMQ_CA_FILE", empty.to_str().unwrap_or_default())])).err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("RABBITMQ_CA_FILE") && msg.contains("no PEM certificate"), "{msg}");
        let _ = std::fs::remove_file(empty);
    }
}
