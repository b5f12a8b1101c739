//! What the sources (the Kubernetes API watchers, a manifest directory) hand to the reconcile
//! loop: one channel of [`SourceEvent`]s, whatever the source.

use dataplane_kube::{Kind, Object, ObjectKey};

/// One change seen by a source, sent over a `tokio::sync::mpsc::Sender<SourceEvent>`.
///
/// A source sends [`SourceEvent::Listed`] for every kind it watches before any
/// [`SourceEvent::Applied`] or [`SourceEvent::Deleted`] of that kind, and `Listed` again after
/// a relist (a watch that expired with 410 Gone, a directory rescanned). The reconcile loop
/// does not sync until all kinds (`Kind::ALL`) have listed once: a half-known cluster would remove
/// services that merely were not listed yet.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// Part of a listing of `kind` in progress: these objects are stored at once (the store
    /// trims them on the way in), the listing's closing `Listed` deletes what no part nor the
    /// `Listed` itself named. A source streams a big listing in parts so that the objects are
    /// never all held at once.
    ListPart {
        /// The kind being listed.
        kind: Kind,
        /// Some of its objects.
        objects: Vec<Object>,
    },
    /// Every object of `kind` as of now (possibly none), besides those of the `ListPart`s of
    /// `kind` since the last `Listed` of it: the store replaces what it holds of that kind,
    /// deleting the objects that are missing.
    Listed {
        /// The kind listed.
        kind: Kind,
        /// All its objects.
        objects: Vec<Object>,
    },
    /// An object was added or changed.
    Applied(Object),
    /// An object was deleted.
    Deleted(ObjectKey),
    /// The source hit a problem it keeps going after (a file that fails to parse, a watch
    /// error before a retry): logged and counted, the store keeps what it had.
    Error {
        /// The kind concerned, when the error is about one.
        kind: Option<Kind>,
        /// What went wrong, naming the file, document or object.
        message: String,
    },
}

impl SourceEvent {
    /// The kind this event is about (`None` for an error about no kind in particular).
    pub fn kind(&self) -> Option<Kind> {
        match self {
            SourceEvent::Listed { kind, .. } | SourceEvent::ListPart { kind, .. } => Some(*kind),
            SourceEvent::Applied(object) => Some(object.kind()),
            SourceEvent::Deleted(key) => Some(key.kind),
            SourceEvent::Error { kind, .. } => *kind,
        }
    }
}
