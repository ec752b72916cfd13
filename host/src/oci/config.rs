//! The `[[rules.sources]]` entries of the configuration. Apart from the
//! pollers (`source.rs`) so the configuration can hold them without
//! importing the rule registry those feed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{RegistryOptions, parse_reference};

/// One `[[rules.sources]]` entry; `type` selects the kind.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RuleSourceConfig {
    Oci(OciSourceConfig),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OciSourceConfig {
    /// `REGISTRY/REPOSITORY:TAG` (followed) or `REGISTRY/REPOSITORY@sha256:...` (pinned).
    pub reference: String,
    /// Docker config file with the registry's credentials.
    #[serde(default)]
    pub docker_config: Option<PathBuf>,
    /// PEM CA certificates trusted for the registry, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Plain HTTP to a registry that is not on loopback.
    #[serde(default)]
    pub plain_http: bool,
    /// How often a tag is checked for a new manifest, in seconds.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
}

fn default_poll_interval() -> u64 {
    300
}

impl OciSourceConfig {
    pub fn validate(&self) -> Result<(), String> {
        parse_reference(&self.reference).map_err(|e| format!("rules.sources: {e}"))?;
        if self.poll_interval_secs == 0 {
            return Err(format!(
                "rules.sources `{}`: poll_interval_secs must be positive",
                self.reference
            ));
        }
        Ok(())
    }

    pub(super) fn options(&self) -> RegistryOptions {
        RegistryOptions {
            docker_config: self.docker_config.clone(),
            ca_file: self.ca_file.clone(),
            plain_http: self.plain_http,
        }
    }
}
