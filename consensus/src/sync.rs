//! Sync messages. A member asks a peer for what it lacks by sending its vector clock (per
//! creator, how many events of that creator's chain it holds); the peer answers with the
//! missing events, parents first, bounded in number.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::SignedEvent;
use crate::ids::{EventHash, PeerId};

/// "Send me what I lack": per member (in member-list order), the number of events of that
/// member's chain the requester holds (its next expected index), plus events asked for by
/// hash.
///
/// Indices alone cannot describe a forked chain: a requester holding one branch up to index
/// 9 looks complete to a responder holding the other branch up to 7. Events that name a
/// parent the requester lacks are therefore rejected as `UnknownParent`, and the requester
/// asks for that parent by hash in its next request; each such round trip fetches one more
/// level of the missing branch, and the normal index-based sync re-sends the rejected
/// children afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Entry `i` is the next index the requester expects from member `i`.
    pub known: Vec<u64>,
    /// Events wanted by hash, at most `WANTED_PER_SYNC_MAX`.
    pub wanted: Vec<EventHash>,
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

/// Events pushed to a peer without its asking (`Config::push_new_events`): deliver like a
/// sync response; the peer hands it to `Consensus::handle_sync_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The member to send to.
    pub to: PeerId,
    /// What it lacks by our estimate, parents first.
    pub response: SyncResponse,
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
