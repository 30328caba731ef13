//! The one place where bytes are produced and parsed: canonical encodings for hashing and the
//! versioned wire format of sync messages. bincode is pinned to 2.x and used nowhere else.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{EVENT_BYTES_MAX, SYNC_BYTES_MAX};
use crate::error::DecodeError;
use crate::log::LogRecord;

/// Largest encoded replay-log record: a whole sync response's events plus our own event, and
/// the framing around them.
pub const LOG_RECORD_BYTES_MAX: usize = SYNC_BYTES_MAX + EVENT_BYTES_MAX + 1024;

/// Version byte in front of every wire message; bump it when the encoding changes.
pub const WIRE_VERSION: u8 = 1;

const _: () = assert!(
    WIRE_VERSION == 1,
    "bump deliberately, with a migration note"
);

type CanonicalConfig = Configuration<LittleEndian, Fixint, bincode::config::NoLimit>;
type LimitedConfig = Configuration<LittleEndian, Fixint, Limit<SYNC_BYTES_MAX>>;
type LogConfig = Configuration<LittleEndian, Fixint, Limit<LOG_RECORD_BYTES_MAX>>;

// Fixed-width integers, not varints: a varint decoder accepts over-long forms of one value,
// and a message must have exactly one encoding.
const CANONICAL: CanonicalConfig = bincode::config::standard().with_fixed_int_encoding();
const LIMITED: LimitedConfig = bincode::config::standard()
    .with_fixed_int_encoding()
    .with_limit::<SYNC_BYTES_MAX>();
const LOG: LogConfig = bincode::config::standard()
    .with_fixed_int_encoding()
    .with_limit::<LOG_RECORD_BYTES_MAX>();

/// The canonical encoding of a value whose hash is signed (event headers). Deterministic:
/// fixed field order, fixed-width integers, no maps.
pub(crate) fn canonical_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain structs of integers and byte arrays into a Vec cannot fail; if it ever
    // did, an empty encoding would only make every signature check fail, never pass.
    bincode::serde::encode_to_vec(value, CANONICAL).unwrap_or_default()
}

/// A version byte, then the bincode body under `config`; at most `max` bytes in all.
fn encode_versioned<T: Serialize, C: bincode::config::Config>(
    value: &T,
    config: C,
    max: usize,
) -> Result<Vec<u8>, DecodeError> {
    let mut bytes = vec![WIRE_VERSION];
    let body = bincode::serde::encode_to_vec(value, config)
        .map_err(|error| DecodeError::Malformed(error.to_string()))?;
    if body.len() + 1 > max {
        return Err(DecodeError::TooLarge {
            bytes: body.len() + 1,
            max,
        });
    }
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Decodes what `encode_versioned` wrote, from untrusted bytes: size limit and version first,
/// no trailing bytes, so a value has exactly one encoding.
fn decode_versioned<T: DeserializeOwned, C: bincode::config::Config>(
    bytes: &[u8],
    config: C,
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            bytes: bytes.len(),
            max,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (value, read) = bincode::serde::decode_from_slice(body, config)
        .map_err(|error| DecodeError::Malformed(error.to_string()))?;
    if read != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - read));
    }
    Ok(value)
}

/// Encodes a wire message: one version byte, then the bincode body.
pub fn encode_message<T: Serialize>(message: &T) -> Result<Vec<u8>, DecodeError> {
    encode_versioned(message, LIMITED, SYNC_BYTES_MAX)
}

/// Decodes a wire message from untrusted bytes: checks the size limit and version first, and
/// refuses trailing bytes, so one message has exactly one encoding.
pub fn decode_message<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_versioned(bytes, LIMITED, SYNC_BYTES_MAX)
}

/// Encodes a replay-log record for disk: the wire version byte, then the bincode body. A
/// record can be larger than a sync message (a whole response plus our event), so it has its
/// own limit. The caller stores each record atomically (one row of a transactional table), so
/// a torn record cannot happen; a damaged one is refused by `decode_log_record`.
pub fn encode_log_record(record: &LogRecord) -> Result<Vec<u8>, DecodeError> {
    encode_versioned(record, LOG, LOG_RECORD_BYTES_MAX)
}

/// Decodes a replay-log record read back from disk (checked like a wire message: size,
/// version, no trailing bytes; the events are checked again when `Consensus::restore` replays
/// them).
pub fn decode_log_record(bytes: &[u8]) -> Result<LogRecord, DecodeError> {
    decode_versioned(bytes, LOG, LOG_RECORD_BYTES_MAX)
}
