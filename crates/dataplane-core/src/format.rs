//! The file format: a [`DesiredState`] document in YAML or JSON.
//!
//! ```yaml
//! apiVersion: dataplane.rs/v1alpha1
//! kind: DesiredState
//! node:
//!   name: node-a
//!   addresses: [172.18.0.2]
//!   interfaces: { uplink: eth0 }
//! services:
//!   - namespace: default
//!     name: web
//!     clusterIPs: [10.96.0.10]
//!     ports: [{ name: http, protocol: TCP, port: 80, targetPort: 8080 }]
//!     backends: [{ ip: 10.244.1.5, nodeName: node-a }]
//! ```
//!
//! Parsing checks syntax and types only; call [`crate::validate()`] for semantics.

use crate::model::DesiredState;

/// The parser's or serialiser's own error, boxed so that no foreign crate's type is part of
/// this crate's API (a new `serde_json` or `serde-saphyr` release is then no breaking change here).
type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A document that could not be parsed or written.
///
/// The message is the cause's, on one line, with its location; [`std::error::Error::source`]
/// returns the cause itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// YAML syntax or type error, with its location.
    #[error("yaml: {message}")]
    Yaml {
        /// What is wrong and where, on one line.
        message: String,
        /// The YAML library's error.
        #[source]
        source: Cause,
    },
    /// JSON syntax or type error, with its location.
    #[error("json: {message}")]
    Json {
        /// What is wrong and where, on one line.
        message: String,
        /// The JSON library's error.
        #[source]
        source: Cause,
    },
}

impl FormatError {
    fn yaml(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        FormatError::Yaml {
            message: one_line(&e.to_string()),
            source: Box::new(e),
        }
    }

    fn json(e: serde_json::Error) -> Self {
        FormatError::Json {
            message: one_line(&e.to_string()),
            source: Box::new(e),
        }
    }
}

/// Parses a YAML document.
///
/// Booleans are YAML 1.2's (`true` / `false` only): in YAML 1.1 `y`, `n`, `yes`, `no`, `on`
/// and `off` are booleans too, which would turn a namespace label `ns: y` (the Kubernetes
/// NetworkPolicy e2e suite's namespaces are x, y and z) into `true` and fail. Kubernetes reads
/// them as the strings they are where a string is expected, as this does.
pub fn from_yaml(text: &str) -> Result<DesiredState, FormatError> {
    serde_saphyr::from_str_with_options(text, serde_saphyr::options! { strict_booleans: true })
        .map_err(FormatError::yaml)
}

/// Parses a JSON document.
pub fn from_json(text: &str) -> Result<DesiredState, FormatError> {
    serde_json::from_str(text).map_err(FormatError::json)
}

/// Serialises to YAML.
pub fn to_yaml(state: &DesiredState) -> Result<String, FormatError> {
    serde_saphyr::to_string(state).map_err(FormatError::yaml)
}

/// Serialises to pretty JSON.
pub fn to_json(state: &DesiredState) -> Result<String, FormatError> {
    serde_json::to_string_pretty(state).map_err(FormatError::json)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
