//! Identities shared by every layer: the endpoint a request went to and the pod behind it.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

/// `ip:port` of a model server; the identity the proxy or Envoy connects to.
///
/// Identities are `Arc<str>` because every decision copies them into each candidate's audit record;
/// a reference-count bump instead of a string copy is a large part of keeping a decision in microseconds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EndpointId(Arc<str>);

/// `namespace/name` of the pod behind an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PodName(Arc<str>);

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn new(value: impl Into<Arc<str>>) -> $name {
                $name(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> $name {
                $name(value.into())
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> $name {
                $name(value.into())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }
    };
}

string_newtype!(EndpointId);
string_newtype!(PodName);

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
