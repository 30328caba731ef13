//! The crate's errors: one enum per boundary. Every error that stems from outside input is a
//! value naming what was wrong; none of them leaves anything half written.

use crate::envelope::ExpectedVersion;
use crate::ids::EventId;
use crate::names::StreamKey;

/// A name (database, category, stream key, type or id) that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of name.
        what: &'static str,
    },
    /// The name is too long.
    #[error("{what} is {bytes} bytes long; at most {max} are allowed")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
        /// Its length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The name contains a character outside its alphabet.
    #[error("{what} contains {character:?}; allowed are {allowed}")]
    BadCharacter {
        /// Which kind of name.
        what: &'static str,
        /// The first offending character.
        character: char,
        /// The alphabet.
        allowed: &'static str,
    },
    /// The name does not start with a letter.
    #[error("{what} {name:?} must start with a letter")]
    BadStart {
        /// Which kind of name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A stream key without the `@` between category and id.
    #[error("stream key {text:?} is missing '@': write Category@id or database/Category@id")]
    MissingAt {
        /// The text, shortened.
        text: String,
    },
    /// An id that is not 32 hex digits.
    #[error("id {text:?} is not 32 hex digits")]
    BadId {
        /// The text, shortened.
        text: String,
    },
}

/// An event store operation that failed. Nothing of a failed append is written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A name in the request does not parse.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The stream is not at the version the writer expected.
    #[error("stream {stream} is at version {actual}, but the writer expected {expected:?}")]
    WrongExpectedVersion {
        /// The stream.
        stream: StreamKey,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's version.
        actual: u64,
    },
    /// The stream has no event and no record.
    #[error("stream {stream} does not exist")]
    StreamNotFound {
        /// The stream.
        stream: StreamKey,
    },
    /// A batch, event or read over one of the limits in [`crate::limits`].
    #[error("{what} is {value}; at most {max} is allowed")]
    LimitExceeded {
        /// What was too large.
        what: &'static str,
        /// Its size.
        value: usize,
        /// The limit.
        max: usize,
    },
    /// One batch writes the same stream twice.
    #[error("the batch writes stream {stream} twice; put its events in one write")]
    StreamWrittenTwice {
        /// The stream.
        stream: StreamKey,
    },
    /// Some event ids of the batch exist in the store already, but the batch is not a repeat of
    /// the batch that wrote them.
    #[error("event id {event_id} is already in the store for other events")]
    EventIdConflict {
        /// The first conflicting id.
        event_id: EventId,
    },
    /// A correction names an event that is not an earlier, current event of its stream.
    #[error("event {sequence} of stream {stream} cannot be superseded: {reason}")]
    BadCorrection {
        /// The stream.
        stream: StreamKey,
        /// The sequence number named.
        sequence: u64,
        /// Why not.
        reason: &'static str,
    },
    /// A system event (`$…` type) that the store does not know, or whose payload is wrong.
    #[error("bad system event {event_type:?}: {reason}")]
    BadSystemEvent {
        /// Its type.
        event_type: String,
        /// What is wrong.
        reason: String,
    },
    /// The command id was refused before; the refusal stands.
    #[error("command refused earlier on stream {stream}: {reason}")]
    CommandRefused {
        /// The stream it addressed.
        stream: StreamKey,
        /// The refusal.
        reason: String,
    },
    /// A snapshot that no longer fits its stream (another epoch, or a version the stream does
    /// not have); it was not saved.
    #[error("snapshot of {stream} is stale: {reason}")]
    StaleSnapshot {
        /// The stream.
        stream: StreamKey,
        /// Why.
        reason: &'static str,
    },
    /// The store file could not be read or written.
    #[error("storage: {0}")]
    Storage(#[from] Box<redb::Error>),
    /// The store file holds a record that does not decode: the file is damaged or was written by
    /// an incompatible version.
    #[error("the store is corrupt: {0}")]
    Corrupt(String),
}

macro_rules! storage_error_from {
    ($($source:ty),*) => {$(
        impl From<$source> for StoreError {
            fn from(error: $source) -> Self {
                Self::Storage(Box::new(error.into()))
            }
        }
    )*};
}

storage_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// An event that does not decode into its domain type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    /// The type name is not one of the domain's event types.
    #[error("unknown event type {event_type:?}")]
    UnknownType {
        /// The type name.
        event_type: String,
    },
    /// The event was written by a newer schema than this code knows.
    #[error("event type {event_type:?} has version {version}, newer than this code's {current}")]
    FutureVersion {
        /// The type name.
        event_type: String,
        /// The version written.
        version: u16,
        /// The version this code knows.
        current: u16,
    },
    /// An old version with no upcaster to the next one.
    #[error("no upcaster for event type {event_type:?} from version {version}")]
    MissingUpcaster {
        /// The type name.
        event_type: String,
        /// The version that cannot be upcast.
        version: u16,
    },
    /// An upcaster refused the payload.
    #[error("upcasting {event_type:?} from version {version} failed: {reason}")]
    UpcastFailed {
        /// The type name.
        event_type: String,
        /// The version being upcast.
        version: u16,
        /// The upcaster's reason.
        reason: String,
    },
    /// The payload is not a valid encoding of the type.
    #[error("payload of event type {event_type:?} does not decode: {reason}")]
    Payload {
        /// The type name.
        event_type: String,
        /// The decoder's reason.
        reason: String,
    },
}

/// A command that could not be executed. `E` is the aggregate's own domain error.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command (a business rule).
    #[error("refused: {0}")]
    Domain(#[source] E),
    /// The stream is not at the version the command expected.
    #[error("stream {stream} is at version {actual}, but the command expected {expected:?}")]
    WrongExpectedVersion {
        /// The stream.
        stream: StreamKey,
        /// What the command expected.
        expected: ExpectedVersion,
        /// The stream's version.
        actual: u64,
    },
    /// A stored event of the stream does not decode.
    #[error("stream {stream}, event {sequence}: {error}")]
    Decode {
        /// The stream.
        stream: StreamKey,
        /// The event's sequence number.
        sequence: u64,
        /// What is wrong with it.
        error: Box<EventDecodeError>,
    },
    /// The command id was refused before; the refusal stands (retry with a new id).
    #[error("refused earlier on stream {stream}: {reason}")]
    AlreadyRefused {
        /// The stream.
        stream: StreamKey,
        /// The first refusal.
        reason: String,
    },
    /// The command's category is not the aggregate's, or the command does not decode.
    #[error("bad command: {0}")]
    BadCommand(String),
    /// Writers kept racing for the stream and the command gave up.
    #[error("stream {stream} kept changing; gave up after {attempts} attempts")]
    Contention {
        /// The stream.
        stream: StreamKey,
        /// How many times it tried.
        attempts: u32,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
