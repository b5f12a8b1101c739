//! `--backend auto` with an earlier agent's state in place: the kind that left it must open,
//! or the agent refuses to start (unprivileged: a fake pin directory and a fake opener).

use std::cell::RefCell;

use dataplane::testing::FakeDataplane;
use dataplane::{DataplaneKind, OpenError, Opened, Options, Selection};
use dataplane_agent::leftovers::{ebpf_leftover, open_checked, Leftover};

/// An opener where only `opens` opens; it records what it was asked.
fn opener(
    opens: Option<DataplaneKind>,
    asked: &RefCell<Vec<Selection>>,
) -> impl Fn(Selection, &Options) -> Result<Opened, OpenError> + '_ {
    move |selection, _| {
        asked.borrow_mut().push(selection);
        let kind = match selection {
            Selection::Only(kind) => kind,
            // What auto would pick here.
            Selection::Auto => DataplaneKind::Nftables,
        };
        if Some(kind) == opens || selection == Selection::Auto {
            Ok(Opened {
                dataplane: Box::new(FakeDataplane::new()),
                kind,
                reason: "test".to_owned(),
            })
        } else {
            Err(OpenError::Unusable {
                kind,
                reason: "the kernel refuses the programs".to_owned(),
            })
        }
    }
}

#[test]
fn a_pin_directory_with_objects_is_an_ebpf_leftover() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(ebpf_leftover(&dir.path().join("missing")), None);
    assert_eq!(ebpf_leftover(dir.path()), None, "empty");
    std::fs::write(dir.path().join("conntrack"), "").unwrap();
    let found = ebpf_leftover(dir.path()).unwrap();
    assert_eq!(found.kind, DataplaneKind::Ebpf);
    assert!(found.what.contains(&dir.path().display().to_string()));
}

#[test]
fn auto_refuses_to_run_another_kind_beside_pins_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("services"), "").unwrap();
    let leftovers = [ebpf_leftover(dir.path()).unwrap()];
    let asked = RefCell::new(Vec::new());
    let error = open_checked(
        Selection::Auto,
        &leftovers,
        &Options::default(),
        opener(None, &asked),
    )
    .expect_err("refused");
    let message = format!("{error:#}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("--cleanup"), "{message}");
    assert!(message.contains("kernel refuses"), "{message}");
    // Auto's own choice (nftables) was never opened.
    assert_eq!(
        *asked.borrow(),
        [Selection::Only(DataplaneKind::Ebpf)],
        "only the owner of the pins is tried"
    );
}

#[test]
fn auto_adopts_the_kind_whose_state_is_in_place() {
    let leftovers = [Leftover {
        kind: DataplaneKind::Iptables,
        what: "iptables chains DP-*".to_owned(),
    }];
    let asked = RefCell::new(Vec::new());
    let opened = open_checked(
        Selection::Auto,
        &leftovers,
        &Options::default(),
        opener(Some(DataplaneKind::Iptables), &asked),
    )
    .unwrap();
    assert_eq!(opened.kind, DataplaneKind::Iptables);
    assert!(opened.reason.contains("DP-*"), "{}", opened.reason);
}

#[test]
fn auto_refuses_the_state_of_several_kinds_and_opens_freely_without_any() {
    let leftovers = [
        Leftover {
            kind: DataplaneKind::Ebpf,
            what: "pinned eBPF objects under /sys/fs/bpf/dataplane".to_owned(),
        },
        Leftover {
            kind: DataplaneKind::Nftables,
            what: "the nftables table inet dataplane".to_owned(),
        },
    ];
    let asked = RefCell::new(Vec::new());
    let all = Some(DataplaneKind::Ebpf);
    let error = open_checked(
        Selection::Auto,
        &leftovers,
        &Options::default(),
        opener(all, &asked),
    )
    .expect_err("refused");
    assert!(format!("{error:#}").contains("several"), "{error:#}");
    assert!(asked.borrow().is_empty());
    let opened = open_checked(
        Selection::Auto,
        &[],
        &Options::default(),
        opener(all, &asked),
    )
    .unwrap();
    assert_eq!(opened.kind, DataplaneKind::Nftables);
    // A kind asked by name is opened as asked, whatever is in place.
    let opened = open_checked(
        Selection::Only(DataplaneKind::Ebpf),
        &leftovers,
        &Options::default(),
        opener(all, &asked),
    )
    .unwrap();
    assert_eq!(opened.kind, DataplaneKind::Ebpf);
}
