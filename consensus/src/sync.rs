//! Sync messages. A member asks a peer for what it lacks by sending its vector clock (per
//! creator, how many events of that creator's chain it holds); the peer answers with the
//! missing events, parents first, bounded in number.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::SignedEvent;
use crate::ids::PeerId;

/// "Send me what I lack": per member (in member-list order), the number of events of that
/// member's chain the requester holds (its next expected index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Entry `i` is the next index the requester expects from member `i`.
    pub known: Vec<u64>,
}

/// The events the requester lacks, parents before children, at most `events_per_sync_max`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Events in a topological order.
    pub events: Vec<Arc<SignedEvent>>,
}

/// A message the caller must deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The member to send to.
    pub to: PeerId,
    /// The request to send; its answer goes to `Consensus::handle_sync_response`.
    pub request: SyncRequest,
}

/// What handling a sync response did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Events that entered the graph.
    pub inserted: usize,
    /// Events already held.
    pub duplicates: usize,
    /// Events rejected, with the reason.
    pub rejected: Vec<crate::error::EventError>,
    /// Whether we created (and must persist) a new event of our own.
    pub created_event: bool,
}
