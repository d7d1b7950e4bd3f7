//! Profiles: what runs after admission. A pipeline (filters → weighted scorers → picker) or the seed-era
//! decision tree, both built once from the config and run per request.

mod decision_tree;
mod pipeline;

use std::fmt::Write;

use rand::RngCore;
use serde::{Deserialize, Deserializer, de::Error as _};

pub use self::{decision_tree::DecisionTree, pipeline::Pipeline};
use crate::cycle::Cycle;

/// Name of the built-in scored pipeline, the default profile.
pub const DEFAULT_PROFILE: &str = "default";
/// Name of the built-in upstream v0.3 filter tree.
pub const DECISION_TREE_PROFILE: &str = "decision-tree";

/// A profile as written under `profiles:`. The variant is the runtime profile itself.
///
/// `type: decision-tree` selects the tree; `type: pipeline`, or no `type` at all, a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub enum ProfileConfig {
    Pipeline(Pipeline),
    DecisionTree(DecisionTree),
}

impl ProfileConfig {
    /// The built-in profiles, by name.
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            DEFAULT_PROFILE => Some(Self::Pipeline(Pipeline::default())),
            DECISION_TREE_PROFILE => Some(Self::DecisionTree(DecisionTree::default())),
            _ => None,
        }
    }
}

// Internally tagged, except that the tag may be left out for a pipeline, which serde's derive cannot
// express; the map goes through a JSON value and on to the variant's own derived (and strict) impl.
impl<'de> Deserialize<'de> for ProfileConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut map = serde_json::Map::deserialize(deserializer)?;
        let kind = match map.remove("type") {
            None => "pipeline".to_owned(),
            Some(serde_json::Value::String(kind)) => kind,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "profile `type` must be a string, got {other}"
                )));
            }
        };
        let body = serde_json::Value::Object(map);
        match kind.as_str() {
            "pipeline" => Pipeline::deserialize(body).map(Self::Pipeline),
            "decision-tree" => DecisionTree::deserialize(body).map(Self::DecisionTree),
            _ => {
                return Err(D::Error::unknown_variant(&kind, &["pipeline", "decision-tree"]));
            }
        }
        .map_err(D::Error::custom)
    }
}

/// A profile ready to run: its name and its configuration, which is also its runtime form.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    name: String,
    config: ProfileConfig,
}

impl Profile {
    pub fn new(name: &str, config: ProfileConfig) -> Self {
        Self {
            name: name.to_owned(),
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &ProfileConfig {
        &self.config
    }

    /// Runs the profile, ranking at most `limit` survivors (the pick and its fallbacks).
    pub(crate) fn run(&self, cycle: &Cycle<'_>, limit: usize, rng: &mut dyn RngCore) -> Run {
        match &self.config {
            ProfileConfig::Pipeline(pipeline) => pipeline.run(cycle, limit, rng),
            ProfileConfig::DecisionTree(tree) => tree.run(cycle, limit, rng),
        }
    }
}

/// What a profile made of one cycle; vectors named per endpoint are indexed like `Cycle::endpoints`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Run {
    /// The best survivors, first the pick, then fallback candidates. Empty when the filters left nothing.
    pub(crate) ranked: Vec<usize>,
    /// Per endpoint, the filter that removed it.
    pub(crate) filtered_by: Vec<Option<&'static str>>,
    /// Per scorer, its unweighted rating of each endpoint (meaningful for survivors only).
    pub(crate) ratings: Vec<Ratings>,
    /// Per endpoint, the weighted sum of its ratings.
    pub(crate) totals: Vec<f64>,
    pub(crate) reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ratings {
    pub(crate) scorer: &'static str,
    pub(crate) weight: f64,
    pub(crate) values: Vec<f64>,
}

/// Appends "; 3 of 8 endpoints passed the filters" when filters removed any.
fn note_filtered(reason: &mut String, survivors: usize, n_endpoints: usize) {
    if survivors < n_endpoints {
        let _ = write!(reason, "; {survivors} of {n_endpoints} endpoints passed the filters");
    }
}

#[cfg(test)]
mod tests;
