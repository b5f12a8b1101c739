//! Opening the demo lab's dataplanes with `dataplane::open`: only the lab's naming is here.

use anyhow::Context;
use dataplane::{open, BoxDataplane, DataplaneKind, Options, Selection};
use dataplane_testkit::Lab;

/// The dataplanes of a lab, one per node, of one kind.
pub struct Opened {
    /// The kind on every node.
    pub kind: DataplaneKind,
    /// Why this kind (what `auto` passed over, or that it was asked for).
    pub reason: String,
    /// Node `i`'s dataplane at index `i`.
    pub dataplanes: Vec<BoxDataplane>,
}

/// Opens `selection` on every node of `lab`. `auto` decides on the first node; the others
/// get the same kind, so that the whole lab runs one dataplane.
pub fn open_lab(selection: Selection, lab: &Lab) -> anyhow::Result<Opened> {
    let mut opened = Opened {
        kind: DataplaneKind::Ebpf,
        reason: String::new(),
        dataplanes: Vec::new(),
    };
    for i in 0..lab.nodes().len() {
        let selection = if i == 0 {
            selection
        } else {
            Selection::Only(opened.kind)
        };
        let node = open(selection, &options(lab, i))
            .with_context(|| format!("opening the {selection} dataplane on node-{i}"))?;
        if i == 0 {
            opened.kind = node.kind;
            opened.reason = node.reason;
        }
        opened.dataplanes.push(node.dataplane);
    }
    Ok(opened)
}

/// Node `index`'s options: its namespace, and a bpffs directory of its own for this run
/// (two demos, or a demo and a node agent, never share pinned maps).
fn options(lab: &Lab, index: usize) -> Options {
    let mut options = Options::in_netns(lab.node(index).netns.path());
    options.ebpf.pin_dir = format!("/sys/fs/bpf/dpctl-demo-{}-{index}", std::process::id()).into();
    options
}
