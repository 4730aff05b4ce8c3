//! Saying why a connection failed, with the peer named: "127.0.0.1:5671: TLS handshake failed:
//! invalid peer certificate: UnknownIssuer". Client libraries bury the TLS reason several
//! sources deep (reqwest's own message is "error sending request"); this digs it out. Only the
//! host and port are named, never a URL's path, query or userinfo.

use std::error::Error as StdError;

/// The TLS error somewhere in `err`'s source chain, if any.
pub fn tls_cause<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the error it wraps (which may be another io::Error, as
        // hyper-rustls wraps tokio-rustls's): look inside instead.
        current = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Why `err` happened, in a few words: the TLS reason when there is one, else the innermost
/// cause's message (e.g. "Connection refused (os error 111)").
pub fn reason(err: &(dyn StdError + 'static)) -> String {
    if let Some(tls) = tls_cause(err) {
        return format!("TLS handshake failed: {tls}");
    }
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// `host:port` of a URL (the scheme's default port when none is written).
pub fn peer_of(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// A failed reqwest call: "host:port: reason", or "timed out" style reasons with the peer.
pub fn request_error(err: &reqwest::Error) -> String {
    let reason = if err.is_timeout() && tls_cause(err).is_none() { "timed out".to_owned() } else { reason(err) };
    match err.url() {
        Some(url) => format!("{}: {reason}", peer_of(url)),
        None => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_tls_reason_is_found_inside_an_io_error() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let err = Outer(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        assert_eq!(reason(&err), "TLS handshake failed: invalid peer certificate: UnknownIssuer");
    }

    #[test]
    fn the_tls_reason_is_found_inside_nested_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let err = Outer(std::io::Error::other(inner));
        assert!(tls_cause(&err).is_some());
    }

    #[test]
    fn without_tls_the_innermost_cause_is_the_reason() {
        let err = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
        assert_eq!(reason(&err), "connection refused");
    }

    #[test]
    fn the_peer_is_host_and_port_only() {
        let url = url::Url::parse("https://user:secret@camunda.internal/engine-rest?token=x").expect("valid");
        assert_eq!(peer_of(&url), "camunda.internal:443");
    }
}
