//! The key file (`API_KEYS_FILE`, TOML) and the lookup of a presented secret. The file holds a
//! SHA-256 of each secret, never the secret: a secret is a long random string the gateway only
//! hashes and compares, so a leaked file does not let anyone call the API.
//!
//! ```toml
//! [[keys]]
//! id = "billing-workers"                   # shown in logs and audit records
//! hash = "sha256:9f86d08…"                 # hex SHA-256 of the secret
//! scopes = ["submit", "read"]              # submit | read | operate | admin
//! topics = ["say_hello"]                   # optional: topics it may submit to
//! worker_ids = ["billing-1", "billing-2"]  # optional: worker ids it may act as
//! rate = { per_second = 50, burst = 100 }  # optional
//! ```

use std::{collections::HashMap, path::Path};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Rate, Scope};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: String,
    pub hash: String,
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    #[serde(default)]
    pub worker_ids: Option<Vec<String>>,
    #[serde(default)]
    pub rate: Option<Rate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    keys: Vec<ApiKey>,
}

/// Every key, by the hex SHA-256 of its secret.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    by_hash: HashMap<String, ApiKey>,
}

/// The hex SHA-256 of a secret, as the key file stores it (after `sha256:`).
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl KeySet {
    /// Reads and checks a key file; the error names the file and what is wrong (never a secret:
    /// the file holds none).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: KeyFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let mut by_hash = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for key in file.keys {
            let Some(hex) = key.hash.strip_prefix("sha256:") else {
                return Err(format!("key {:?}: `hash` must be \"sha256:<64 hex digits>\"", key.id));
            };
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("key {:?}: `hash` must be \"sha256:<64 hex digits>\"", key.id));
            }
            if key.id.is_empty() || !ids.insert(key.id.clone()) {
                return Err(format!("key id {:?} is empty or used twice", key.id));
            }
            if key.scopes.is_empty() {
                return Err(format!("key {:?}: `scopes` is empty", key.id));
            }
            if let Some(rate) = key.rate
                && !(rate.per_second > 0.0 && rate.per_second.is_finite() && rate.burst > 0)
            {
                return Err(format!("key {:?}: `rate` needs per_second > 0 and burst > 0", key.id));
            }
            if by_hash.insert(hex.to_ascii_lowercase(), key.clone()).is_some() {
                return Err(format!("key {:?}: the same secret hash appears twice", key.id));
            }
        }
        Ok(Self { by_hash })
    }

    /// The key whose secret this is. The lookup is by the secret's hash, so how long it takes
    /// says nothing about how close a guess came.
    pub fn find(&self, secret: &str) -> Option<&ApiKey> {
        self.by_hash.get(&hash_secret(secret))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_finds_its_key_by_hash() {
        let text = format!(
            "[[keys]]\nid = \"ops\"\nhash = \"sha256:{}\"\nscopes = [\"read\", \"operate\"]\nworker_ids = [\"w1\"]\n",
            hash_secret("s3cret")
        );
        let set = KeySet::parse(&text).expect("valid");
        let key = set.find("s3cret").expect("found");
        assert_eq!((key.id.as_str(), key.scopes.as_slice()), ("ops", &[Scope::Read, Scope::Operate][..]));
        assert_eq!(key.worker_ids.as_deref(), Some(&["w1".to_owned()][..]));
        assert!(set.find("s3cret ").is_none() && set.find("").is_none());
    }

    #[test]
    fn mistakes_are_refused_with_the_key_named() {
        let h = hash_secret("x");
        for (text, needle) in [
            (format!("[[keys]]\nid = \"a\"\nhash = \"{h}\"\nscopes = [\"read\"]"), "sha256:"),
            (format!("[[keys]]\nid = \"a\"\nhash = \"sha256:{h}\"\nscopes = []"), "scopes"),
            (format!("[[keys]]\nid = \"a\"\nhash = \"sha256:{h}\"\nscopes = [\"root\"]"), "root"),
            (format!("[[keys]]\nid = \"a\"\nhash = \"sha256:{h}\"\nscopes = [\"read\"]\nsecret = \"x\""), "secret"),
            (
                format!(
                    "[[keys]]\nid = \"a\"\nhash = \"sha256:{h}\"\nscopes = [\"read\"]\n\
                     [[keys]]\nid = \"a\"\nhash = \"sha256:{}\"\nscopes = [\"read\"]",
                    hash_secret("y")
                ),
                "twice",
            ),
        ] {
            let e = KeySet::parse(&text).err().unwrap_or_default();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }
}
