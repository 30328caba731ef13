//! What goes into the store and what comes out: new events, append batches, recorded events
//! with their full envelope, and the outcome of an append.
//!
//! Numbering: a stream's events have sequence numbers 1, 2, 3, …; a stream's *version* is the
//! sequence number of its last event, so a stream that never had an event is at version 0.
//! Global positions count every event of the store from 1, in commit order.

use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, EventId, MessageId};
use crate::names::{StreamKey, TypeName};

/// What the writer expects a stream's version to be; the append fails, writing nothing, when
/// the stream is elsewhere (optimistic concurrency).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the version.
    Any,
    /// The stream must not have had any event yet.
    NoStream,
    /// The stream must be at exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `version` satisfies this expectation.
    pub fn admits(self, version: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => version == 0,
            Self::Exact(expected) => version == expected,
        }
    }
}

/// An event to append: its id, type, schema version and payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unique id; appending the same id again is idempotent.
    pub event_id: EventId,
    /// Stable type name.
    pub event_type: TypeName,
    /// Schema version of the payload, for upcasting.
    pub event_version: u16,
    /// Opaque payload (JSON for the domain types of this crate).
    pub payload: Vec<u8>,
    /// A correction: the sequence number of an earlier event of the same stream that this one
    /// supersedes. History is never rewritten; reads skip superseded events.
    pub supersedes: Option<u64>,
}

/// The events to append to one stream, with the version the writer expects it at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamWrite {
    /// The stream appended to.
    pub stream: StreamKey,
    /// The version the stream must be at.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

/// One atomic append: writes to one or more streams that all succeed or all fail, stamped with
/// the command that caused them and the agreed timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendBatch {
    /// The command that produced the batch; a second batch with the same command id writes
    /// nothing and returns the first outcome.
    pub command_id: Option<CommandId>,
    /// What caused the batch (usually the command id).
    pub causation_id: MessageId,
    /// The request the batch belongs to.
    pub correlation_id: MessageId,
    /// The agreed timestamp, in ms since the Unix epoch: from the block, never a local clock.
    pub timestamp_ms: u64,
    /// The command's free-form metadata (a JSON object's bytes, at most
    /// `METADATA_BYTES_MAX`), stored with each event of the batch.
    #[serde(default)]
    pub metadata: Option<Vec<u8>>,
    /// The streams written.
    pub writes: Vec<StreamWrite>,
}

impl AppendBatch {
    /// A batch writing to one stream, caused and correlated by its own command id.
    pub fn single(
        command_id: CommandId,
        stream: StreamKey,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        timestamp_ms: u64,
    ) -> Self {
        Self {
            command_id: Some(command_id),
            causation_id: command_id.into(),
            correlation_id: command_id.into(),
            timestamp_ms,
            metadata: None,
            writes: vec![StreamWrite {
                stream,
                expected,
                events,
            }],
        }
    }

    /// Number of events over all writes.
    pub fn event_count(&self) -> usize {
        self.writes.iter().map(|write| write.events.len()).sum()
    }
}

/// A stored event with its whole envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Unique id.
    pub event_id: EventId,
    /// The stream it belongs to.
    pub stream: StreamKey,
    /// Its number in the stream, from 1.
    pub sequence: u64,
    /// Its position in the whole store, from 1.
    pub position: u64,
    /// Stable type name.
    pub event_type: TypeName,
    /// Schema version of the payload as written (reads do not upcast; the domain layer does).
    pub event_version: u16,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// The command that produced it, if any.
    pub command_id: Option<CommandId>,
    /// What caused it.
    pub causation_id: MessageId,
    /// The request it belongs to.
    pub correlation_id: MessageId,
    /// Agreed timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The earlier event of the same stream this one corrects, if it is a correction.
    pub supersedes: Option<u64>,
    /// The free-form metadata of the command that wrote it (a JSON object's bytes), if any.
    pub metadata: Option<Vec<u8>>,
}

/// Where one write of a batch landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOutcome {
    /// The stream written.
    pub stream: StreamKey,
    /// The stream's version after the write.
    pub version: u64,
}

/// The outcome of an append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    /// Global position of the first event written. When nothing was written, one more than
    /// `last_position` (an empty range).
    pub first_position: u64,
    /// Global position of the last event written.
    pub last_position: u64,
    /// The version each stream reached, in the order of the batch's writes.
    pub streams: Vec<StreamOutcome>,
    /// True when the batch had been written before (same command id or same event ids) and this
    /// call wrote nothing.
    pub duplicate: bool,
}

/// Type of the system event that sets a stream's metadata (payload: the JSON of
/// [`StreamMetadata`]). System events go through batches like any event, so they are ordered
/// with them, take a sequence number and move the stream's version.
pub const METADATA_EVENT_TYPE: &str = "$metadata";
/// Type of the system event that soft-deletes a stream (empty payload): reads hide it and every
/// event before it.
pub const DELETED_EVENT_TYPE: &str = "$deleted";

impl NewEvent {
    /// The system event that gives a stream new metadata.
    pub fn set_metadata(event_id: EventId, metadata: &StreamMetadata) -> Self {
        Self {
            event_id,
            event_type: TypeName::system(METADATA_EVENT_TYPE),
            event_version: 1,
            // Plain structs of integers always serialise.
            payload: serde_json::to_vec(metadata).unwrap_or_default(),
            supersedes: None,
        }
    }

    /// The system event that soft-deletes a stream.
    pub fn soft_delete(event_id: EventId) -> Self {
        Self {
            event_id,
            event_type: TypeName::system(DELETED_EVENT_TYPE),
            event_version: 1,
            payload: Vec::new(),
            supersedes: None,
        }
    }

    /// Whether this is a system event (its type starts with `$`).
    pub fn is_system(&self) -> bool {
        self.event_type.is_system()
    }
}

/// A stream's metadata: retention rules that reads honour. Unknown fields are refused, so a
/// misspelt rule is an error rather than no rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamMetadata {
    /// Reads show at most this many of the newest events.
    pub max_count: Option<u64>,
    /// Reads hide events older than this, measured against the newest agreed timestamp in the
    /// store (never a local clock, so every member hides the same events).
    pub max_age_ms: Option<u64>,
    /// Reads hide events with a smaller sequence number.
    pub truncate_before: Option<u64>,
}

/// What the store knows about a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The stream.
    pub stream: StreamKey,
    /// Its version (the sequence number of its last event).
    pub version: u64,
    /// Its metadata.
    pub metadata: StreamMetadata,
    /// Whether it was soft-deleted: reads show none of its events up to the deletion, and
    /// listings omit it until a new event is appended.
    pub deleted: bool,
    /// Agreed timestamp of its last event.
    pub last_timestamp_ms: u64,
    /// Changes whenever what its aggregate is built from changes other than by appending (a
    /// correction, a soft delete); snapshots are valid for one epoch.
    pub epoch: u64,
}

/// Which events a category, type or global read, or a subscription, covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filter {
    /// Every event of the store (`$all`).
    All,
    /// Every event of one stream.
    Stream(StreamKey),
    /// Every event of one category of one database.
    Category(crate::names::DatabaseName, crate::names::CategoryName),
    /// Every event of one type.
    EventType(TypeName),
}

/// A command on its way to an aggregate, with the ids that make it idempotent and traceable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandEnvelope<C> {
    /// Chosen by the client; executing the same id twice has the effect of once.
    pub command_id: CommandId,
    /// The stream (aggregate instance) addressed.
    pub stream: StreamKey,
    /// The version the client expects the stream at.
    pub expected: ExpectedVersion,
    /// The request it belongs to.
    pub correlation_id: MessageId,
    /// What caused it: the command itself for a client's command, an event for a process
    /// manager's.
    pub causation_id: MessageId,
    /// The agreed timestamp it executes at (from the block), ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The section's agreed domain version it executes under (`CommandContext`).
    pub domain_version: String,
    /// Free-form metadata (a JSON object's bytes), stored with its events.
    pub metadata: Option<Vec<u8>>,
    /// The command.
    pub command: C,
}

impl<C> CommandEnvelope<C> {
    /// A client's command: any expected version, caused and correlated by itself.
    pub fn new(command_id: CommandId, stream: StreamKey, command: C) -> Self {
        Self {
            command_id,
            stream,
            expected: ExpectedVersion::Any,
            correlation_id: command_id.into(),
            causation_id: command_id.into(),
            timestamp_ms: 0,
            domain_version: String::new(),
            metadata: None,
            command,
        }
    }

    /// Sets the expected version.
    pub fn expecting(mut self, expected: ExpectedVersion) -> Self {
        self.expected = expected;
        self
    }

    /// Sets the agreed timestamp.
    pub fn at(mut self, timestamp_ms: u64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Marks the command as caused by `event`, in the event's correlation.
    pub fn caused_by(mut self, event: &RecordedEvent) -> Self {
        self.causation_id = event.event_id.into();
        self.correlation_id = event.correlation_id;
        self
    }
}
