//! `CA_BUNDLE_FILE`, client certificates, and the API's own certificate.

use std::collections::HashMap;

use crate::config::ConfigError;

#[derive(Debug, Clone, Default)]
pub struct TlsSettings {}

impl TlsSettings {
    pub fn from_vars(_vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Ok(Self::default())
    }
}
