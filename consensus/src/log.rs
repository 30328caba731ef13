//! The replay log: what changed a member's graph, in order, so that a member that crashed can
//! rebuild exactly the state it had made durable (`Consensus::restore`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::SignedEvent;

/// One step that changed the graph: the events a sync response inserted (in insertion order)
/// and the event of ours created after them, if any. `Consensus::new` logs our first event as
/// a record with nothing received.
///
/// Replaying the records in order repeats the same insertions with the same consensus steps
/// between them, so the restored member reaches the state it had (same rounds, same pruning,
/// same blocks in the same order). Our own events in the log are durable by contract: the
/// caller makes a record durable before it reports the record's event persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Peers' events inserted, parents first.
    pub received: Vec<Arc<SignedEvent>>,
    /// Our event created after them.
    pub created: Option<Arc<SignedEvent>>,
}
