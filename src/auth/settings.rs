//! `AUTH_MODE`, `API_KEYS_FILE`, `ANONYMOUS_SCOPES`, `METRICS_AUTH`.

use std::{collections::HashMap, path::PathBuf};

use super::Scope;
use crate::config::{ConfigError, Reader};

/// `AUTH_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Every route but `/live`, `/health` and the API's documentation needs a key, or a scope
    /// granted to anonymous callers by `ANONYMOUS_SCOPES`.
    #[default]
    Keys,
    /// No checks at all; only when said explicitly, and shown in `/health`.
    Open,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Keys => "keys",
            AuthMode::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// `AUTH_MODE` (keys): keys | open.
    pub mode: AuthMode,
    /// `API_KEYS_FILE` (unset): the TOML key file; reloaded on SIGHUP.
    pub keys_file: Option<PathBuf>,
    /// `ANONYMOUS_SCOPES` (none): scopes granted to callers without a key, e.g. `submit,read`
    /// for the seed's workers on a private network.
    pub anonymous_scopes: Vec<Scope>,
    /// `METRICS_AUTH` (admin): the scope `/metrics` needs, or `none` for a scraper without a key.
    pub metrics_scope: Option<Scope>,
}

/// Parses `submit,read` (commas and/or spaces).
pub fn parse_scopes(s: &str) -> Option<Vec<Scope>> {
    let mut scopes = Vec::new();
    for name in s.split([',', ' ']).map(str::trim).filter(|n| !n.is_empty()) {
        scopes.push(Scope::parse(name)?);
    }
    scopes.sort();
    scopes.dedup();
    Some(scopes)
}

impl AuthSettings {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let r = Reader(vars);
        let mode = r.parse_or("AUTH_MODE", AuthMode::Keys, |s| match s {
            "keys" => Some(AuthMode::Keys),
            "open" => Some(AuthMode::Open),
            _ => None,
        })?;
        let settings = Self {
            mode,
            keys_file: r.get("API_KEYS_FILE").map(PathBuf::from),
            anonymous_scopes: r.parse_or("ANONYMOUS_SCOPES", Vec::new(), parse_scopes)?,
            metrics_scope: r.parse_or("METRICS_AUTH", Some(Scope::Admin), |s| match s {
                "none" => Some(None),
                other => Scope::parse(other).map(Some),
            })?,
        };
        if mode == AuthMode::Keys && settings.keys_file.is_none() && settings.anonymous_scopes.is_empty() {
            return Err(ConfigError {
                var: "API_KEYS_FILE",
                message: "AUTH_MODE=keys (the default) needs a key file, or ANONYMOUS_SCOPES for callers \
                          without a key; AUTH_MODE=open turns checks off"
                    .into(),
            });
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keys_mode_is_the_default_and_needs_keys_or_anonymous_scopes() {
        let e = AuthSettings::from_vars(&vars(&[])).err().map(|e| e.var);
        assert_eq!(e, Some("API_KEYS_FILE"));
        let s = AuthSettings::from_vars(&vars(&[("ANONYMOUS_SCOPES", "read, submit")])).expect("valid");
        assert_eq!((s.mode, s.anonymous_scopes), (AuthMode::Keys, vec![Scope::Submit, Scope::Read]));
        let open = AuthSettings::from_vars(&vars(&[("AUTH_MODE", "open")])).expect("valid");
        assert_eq!(open.mode, AuthMode::Open);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let e = AuthSettings::from_vars(&vars(&[("AUTH_MODE", "off")])).err().map(|e| e.var);
        assert_eq!(e, Some("AUTH_MODE"));
        let e = AuthSettings::from_vars(&vars(&[("ANONYMOUS_SCOPES", "submit,root")])).err().map(|e| e.var);
        assert_eq!(e, Some("ANONYMOUS_SCOPES"));
        let s = AuthSettings::from_vars(&vars(&[("AUTH_MODE", "open"), ("METRICS_AUTH", "none")])).expect("valid");
        assert_eq!(s.metrics_scope, None);
    }
}
