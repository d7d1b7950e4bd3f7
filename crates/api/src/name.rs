//! `NamespacedName`: the one identity of a namespaced object (an InferenceModel, a CanaryRelease) across the
//! controller, the dashboard and their stores.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::dir::DEFAULT_NAMESPACE;

/// `namespace/name` of a Kubernetes object. Ordered by namespace, then name, as the pages list objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> NamespacedName {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The identity of an object as read; one without a namespace is in [`DEFAULT_NAMESPACE`], as both gateway
    /// providers assume.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> NamespacedName {
        NamespacedName {
            namespace: meta
                .namespace
                .clone()
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_show_and_sort_by_namespace_first() {
        let mut names = [NamespacedName::new("prod", "a"), NamespacedName::new("dev", "b")];
        names.sort();
        let shown: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["dev/b", "prod/a"]);
        let meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("m".into()),
            ..Default::default()
        };
        assert_eq!(NamespacedName::of(&meta), NamespacedName::new("default", "m"));
    }
}
