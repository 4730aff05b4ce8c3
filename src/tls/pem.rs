//! Reading PEM files: certificates (a CA bundle, a chain) and one private key. Errors name the
//! file and what is wrong with it, never its contents.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Every certificate in a PEM file; at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a valid PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate (BEGIN CERTIFICATE) found", path.display()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    // The parser's error says which PEM section failed, not the key itself.
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}", path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}
