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
//! Parsing checks syntax and types only; call [`crate::validate`] for semantics.

use crate::model::DesiredState;

/// A document that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// YAML syntax or type error, with its location.
    #[error("yaml: {0}")]
    Yaml(String),
    /// JSON syntax or type error, with its location.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Parses a YAML document.
pub fn from_yaml(text: &str) -> Result<DesiredState, FormatError> {
    serde_saphyr::from_str(text).map_err(|e| FormatError::Yaml(one_line(&e.to_string())))
}

/// Parses a JSON document.
pub fn from_json(text: &str) -> Result<DesiredState, FormatError> {
    Ok(serde_json::from_str(text)?)
}

/// Serialises to YAML.
pub fn to_yaml(state: &DesiredState) -> Result<String, FormatError> {
    serde_saphyr::to_string(state).map_err(|e| FormatError::Yaml(one_line(&e.to_string())))
}

/// Serialises to pretty JSON.
pub fn to_json(state: &DesiredState) -> Result<String, FormatError> {
    Ok(serde_json::to_string_pretty(state)?)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
