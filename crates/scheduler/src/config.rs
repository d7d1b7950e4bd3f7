//! The scheduler's YAML configuration: which profile runs, admission thresholds, prefix hashing, and
//! user-defined profiles.
//!
//! ```yaml
//! profile: default            # a built-in (default, decision-tree) or a key of `profiles`
//! fallbacks: 2
//! saturation: { queueDepthThreshold: 5, kvCacheThreshold: 0.8, metricsStalenessMs: 200, unansweredAfterMs: 1000 }
//! prefix: { blockSizeChars: 64, maxBlocks: 256, lruCapacityPerEndpoint: 31250 }
//! profiles:
//!   prefix-heavy:             # a pipeline: `type: pipeline` may be left out
//!     filters: [ { type: fresh-metrics, stalenessMs: 200 } ]
//!     scorers: [ { type: queue, weight: 2 }, { type: kv-cache, weight: 2 }, { type: prefix-cache, weight: 5 } ]
//!     picker: { type: max-score }
//!   strict-tree:
//!     type: decision-tree
//!     hasCapacity: { queueThreshold: 5, kvCacheThreshold: 0.8 }
//!     lowQueue: { threshold: 128 }
//!     loraAffinity: { threshold: 0.999 }
//! ```
//!
//! Every key is optional; unknown keys are errors. A profile defined under `profiles` with a built-in's
//! name replaces the built-in.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    prefix::PrefixConfig,
    profile::{DECISION_TREE_PROFILE, DEFAULT_PROFILE, Profile, ProfileConfig},
    saturation::SaturationDetector,
};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SchedulerConfig {
    /// Name of the profile to run.
    pub profile: String,
    /// Alternative endpoints to return after the pick, for the proxy to retry on.
    pub fallbacks: usize,
    pub saturation: SaturationDetector,
    pub prefix: PrefixConfig,
    pub profiles: BTreeMap<String, ProfileConfig>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            profile: DEFAULT_PROFILE.to_owned(),
            fallbacks: 2,
            saturation: SaturationDetector::default(),
            prefix: PrefixConfig::default(),
            profiles: BTreeMap::new(),
        }
    }
}

impl SchedulerConfig {
    /// Parses and checks a config; an empty document is the default config.
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        let config: Self = if yaml.trim().is_empty() {
            Self::default()
        } else {
            serde_saphyr::from_str(yaml).map_err(Box::new)?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot: the selected profile exists and thresholds are in range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let kv = self.saturation.kv_cache_threshold;
        if !(0.0..=1.0).contains(&kv) {
            return Err(ConfigError::OutOfRange {
                field: "saturation.kvCacheThreshold",
                value: kv,
            });
        }
        self.selected_profile().map(drop)
    }

    /// The profile named by `profile`, user-defined first, then built-in.
    pub fn selected_profile(&self) -> Result<Profile, ConfigError> {
        let config = match self.profiles.get(&self.profile) {
            Some(config) => config.clone(),
            None => ProfileConfig::builtin(&self.profile).ok_or_else(|| ConfigError::UnknownProfile {
                name: self.profile.clone(),
                known: self.profile_names().join(", "),
            })?,
        };
        Ok(Profile::new(&self.profile, config))
    }

    /// Every profile name that can be selected, built-ins first.
    pub fn profile_names(&self) -> Vec<&str> {
        let builtins = [DEFAULT_PROFILE, DECISION_TREE_PROFILE];
        let user = self
            .profiles
            .keys()
            .map(String::as_str)
            .filter(|name| !builtins.contains(name));
        builtins.into_iter().chain(user).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid scheduler config: {0}")]
    Yaml(#[from] Box<serde_saphyr::Error>),
    #[error("unknown profile `{name}`, expected one of: {known}")]
    UnknownProfile { name: String, known: String },
    #[error("invalid scheduler config: {field} must be within 0..=1, got {value}")]
    OutOfRange { field: &'static str, value: f64 },
}

#[cfg(test)]
mod tests;
