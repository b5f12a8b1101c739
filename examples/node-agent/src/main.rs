//! `dataplane-agent`: the example node agent (work in progress on a branch).

fn main() {}
