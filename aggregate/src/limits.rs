//! Every size limit of the crate, in one place. Input over a limit is refused with a typed
//! error before anything is written.

/// Longest database name, in bytes.
pub const DATABASE_NAME_BYTES_MAX: usize = 64;
/// Longest category name, in bytes.
pub const CATEGORY_NAME_BYTES_MAX: usize = 64;
/// Longest stream id (the part after `@`), in bytes.
pub const STREAM_ID_BYTES_MAX: usize = 128;
/// Longest event or command type name, in bytes.
pub const TYPE_NAME_BYTES_MAX: usize = 128;
/// Largest event payload, in bytes.
pub const EVENT_PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// Most events in one append batch (all streams together).
pub const BATCH_EVENTS_MAX: usize = 10_000;
/// Most payload bytes in one append batch (all streams together).
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// Most batches in one group commit.
pub const GROUP_BATCHES_MAX: usize = 10_000;
/// Longest refusal reason kept for a refused command id, in characters.
pub const REFUSAL_CHARS_MAX: usize = 1_000;
/// Most streams written by one append batch.
pub const BATCH_STREAMS_MAX: usize = 1_000;
/// Most events one read returns; larger requests are cut to this and page on.
pub const READ_COUNT_MAX: usize = 10_000;
/// Most entries one listing (databases, categories, streams) returns.
pub const LIST_COUNT_MAX: usize = 10_000;
/// Largest encoded record the store decodes from its own file (an event with its envelope, a
/// snapshot or a projection state).
pub const RECORD_BYTES_MAX: usize = 64 << 20;
/// Largest free-form metadata of a command (JSON), in bytes; stored with each of its events.
pub const METADATA_BYTES_MAX: usize = 4 << 10;
/// Largest serialized command accepted by the type-erased command path, in bytes.
pub const COMMAND_BYTES_MAX: usize = 1 << 20;

const _: () = assert!(EVENT_PAYLOAD_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX < RECORD_BYTES_MAX);
const _: () = assert!(BATCH_STREAMS_MAX <= BATCH_EVENTS_MAX);
/// Most streams per aggregate type whose state the command path keeps in memory between
/// decisions (`state_cache`); the least recently used goes first.
pub const STATE_CACHE_STREAMS_MAX: usize = 4_096;
