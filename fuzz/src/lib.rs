//! Shared code of the fuzz targets: desired states from fuzzer bytes ([`gen`]), the
//! renderers' checks ([`render`]) and the eBPF test-run harness ([`bpf`]).
#![warn(missing_docs)]

pub mod bpf;
pub mod gen;
pub mod render;
