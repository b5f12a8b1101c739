//! What the flow-event tests (`events_test_run.rs`, `lab_events.rs`) share.

use dataplane_core::{DropReason, EventKind, EventVerdict, FlowEvent};

/// The one event of `got`, checked to be of `kind` with `verdict` and `reason`.
pub fn the_one(
    got: &[FlowEvent],
    kind: EventKind,
    verdict: EventVerdict,
    reason: Option<DropReason>,
) -> &FlowEvent {
    assert_eq!(got.len(), 1, "exactly one event: {got:#?}");
    let e = &got[0];
    assert_eq!(
        (e.kind, e.verdict, e.reason),
        (kind, verdict, reason),
        "{e:#?}"
    );
    e
}
