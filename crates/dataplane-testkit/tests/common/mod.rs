//! What several of the testkit's table tests share.

use dataplane_core::{Capabilities, Dataplane, FakeDataplane};
use dataplane_testkit::conformance::{Report, RowOutcome};
use dataplane_testkit::LabNode;

/// A table's cases run by `run` against fakes claiming `claims` (a capability the table needs
/// turned off) are each one visible skipped row, in order (`names`), whose reason names the
/// missing `capability`; nothing is applied and nothing fails.
pub fn assert_skipped_without(
    claims: &Capabilities,
    capability: &str,
    names: &[&str],
    run: impl FnOnce(&mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>) -> Report,
) {
    let mut made = Vec::new();
    let report = run(&mut |_node| {
        let fake = FakeDataplane::with_capabilities(claims.clone());
        made.push(fake.clone());
        Box::new(fake)
    });
    report.assert_ok();
    assert_eq!(report.rows.len(), names.len(), "{report}");
    for (row, name) in report.rows.iter().zip(names) {
        assert_eq!(row.name, *name);
        let RowOutcome::Skipped { reason } = &row.outcome else {
            panic!("not skipped: {report}")
        };
        assert!(reason.contains(capability), "{reason}");
    }
    assert!(made.iter().all(|f| f.calls().applies == 0));
}
