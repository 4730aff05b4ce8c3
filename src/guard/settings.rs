//! The guard's settings (rate limits, shedding bounds, server timeouts, connection cap).

use std::collections::HashMap;

use crate::config::ConfigError;

#[derive(Debug, Clone, Default)]
pub struct GuardSettings {}

impl GuardSettings {
    pub fn from_vars(_vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Ok(Self::default())
    }
}
