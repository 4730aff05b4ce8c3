//! A TLS probe: one handshake with a server, then a greeting and the first bytes of its answer,
//! to say precisely why a TLS connection fails. It exists for what a client library reports
//! poorly: under TLS 1.3 a server refuses a client certificate only after the client considers
//! the handshake done, and lapin then sees "Connection reset by peer" instead of the server's
//! alert. The probe reads the alert and names it. It trusts what lapin trusts for `amqps://`
//! (the system roots plus the configured CA) and presents the same client certificate.

use std::{sync::Arc, time::Duration};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server gets to refuse our certificate before we greet it.
const LISTEN_FIRST: Duration = Duration::from_millis(1500);

/// What the probe found.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The server took the handshake and answered the greeting.
    Accepted,
    /// TLS failed, for this reason ("TLS handshake failed: …").
    Refused(String),
    /// Something else (no connection, a timeout, a silent close): no verdict on TLS.
    Inconclusive(String),
}

/// Connects to `host:port`, handshakes with `config`'s trust and identity, writes `greeting`
/// and waits for the first bytes of the answer.
pub async fn probe(host: &str, port: u16, config: &OwnedTLSConfig, greeting: &[u8]) -> ProbeOutcome {
    let client = match client_config(config) {
        Ok(c) => c,
        Err(e) => return ProbeOutcome::Inconclusive(e),
    };
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        return ProbeOutcome::Inconclusive(format!("{host} is not a valid TLS server name"));
    };
    let tcp = match tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return ProbeOutcome::Inconclusive(e.to_string()),
        Err(_) => return ProbeOutcome::Inconclusive("connect timed out".into()),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let exchange = async {
        let mut tls = connector.connect(name, tcp).await?;
        let mut first = [0u8; 1];
        // A server refusing our certificate says so right after the handshake. Listen before
        // writing: data sent to a server that has closed draws a reset, which can discard the
        // alert before it is read.
        if let Ok(heard) = tokio::time::timeout(LISTEN_FIRST, tls.read(&mut first)).await {
            return heard;
        }
        tls.write_all(greeting).await?;
        tls.flush().await?;
        tls.read(&mut first).await
    };
    match tokio::time::timeout(STEP_TIMEOUT * 2, exchange).await {
        Ok(Ok(n)) if n > 0 => ProbeOutcome::Accepted,
        Ok(Ok(_)) => ProbeOutcome::Inconclusive("the server closed the connection after the TLS handshake".into()),
        Ok(Err(e)) => match super::tls_cause(&e) {
            Some(tls) => ProbeOutcome::Refused(format!("TLS handshake failed: {tls}")),
            None => ProbeOutcome::Inconclusive(e.to_string()),
        },
        Err(_) => ProbeOutcome::Inconclusive("no answer in time".into()),
    }
}

fn client_config(config: &OwnedTLSConfig) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(chain) = &config.cert_chain {
        let extra = CertificateDer::pem_slice_iter(chain.as_bytes()).filter_map(Result::ok);
        roots.add_parsable_certificates(extra);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match &config.identity {
        Some(OwnedIdentity::PKCS8 { pem, key }) => {
            let certs =
                CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(certs, key).map_err(|e| e.to_string())
        }
        Some(OwnedIdentity::PKCS12 { .. }) => Err("PKCS#12 identities are not probed".into()),
        None => Ok(builder.with_no_client_auth()),
    }
}
