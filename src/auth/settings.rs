//! `AUTH_MODE`, `API_KEYS_FILE`, `ANONYMOUS_SCOPES`, `METRICS_AUTH`.

use std::collections::HashMap;

use crate::config::ConfigError;

/// `AUTH_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Every route but `/live` and `/health` needs a key (or `ANONYMOUS_SCOPES`).
    #[default]
    Keys,
    /// No checks at all; must be said explicitly, and is shown in `/health`.
    Open,
}

#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub mode: AuthMode,
}

impl AuthSettings {
    pub fn from_vars(_vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Ok(Self::default())
    }
}
