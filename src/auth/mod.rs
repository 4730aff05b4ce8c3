//! Who may do what: API keys with scopes, read from `API_KEYS_FILE`, checked in front of every
//! route but `/live` and `/health`. The layer turns a request into a [`Caller`] (stored in the
//! request's extensions) or answers 401/403 itself; handlers that need more (a submission's topic
//! and `worker_id`, the key id for the audit trail) take the [`Caller`] as an extractor.

mod keys;
mod layer;
mod settings;

pub use keys::{ApiKey, KeySet, hash_secret};
pub use layer::{Access, Auth, ROUTES, access, authenticate};
pub use settings::{AuthMode, AuthSettings, parse_scopes};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /tasks/submit`.
    Submit,
    /// Task status, lists, statistics.
    Read,
    /// Cancel, retry, re-send a report.
    Operate,
    /// Topics, metrics, anything that shows configuration.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Submit, Scope::Read, Scope::Operate, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// Requests per second a caller may make, with a burst.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// The caller of one request, as the auth layer established it.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The key's id; `None` for an anonymous caller (`ANONYMOUS_SCOPES`, or `AUTH_MODE=open`).
    pub key_id: Option<String>,
    pub scopes: Vec<Scope>,
    /// Topics the key may submit to; `None`: any.
    pub topics: Option<Vec<String>>,
    /// `worker_id`s the key may act as; `None`: any.
    pub worker_ids: Option<Vec<String>>,
    /// The key's own rate limit, if it has one.
    pub rate: Option<Rate>,
    /// The client's address (for per-address limits of anonymous callers).
    pub addr: Option<std::net::IpAddr>,
}

impl Caller {
    /// How the caller is named in logs and audit records.
    pub fn name(&self) -> &str {
        self.key_id.as_deref().unwrap_or("anonymous")
    }
}
