//! `dataplane-agent`: a node agent that keeps this node's dataplane in sync with Kubernetes
//! objects read from the API server or from a directory of manifests (a kube-proxy
//! replacement). The binary (`src/main.rs`) only parses the command line and calls
//! [`run`](crate); the parts are public so that tests and benchmarks drive them directly.
#![warn(missing_docs)]

pub mod kube_source;
pub mod source;
