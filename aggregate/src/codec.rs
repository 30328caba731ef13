//! The one place where the store's records become bytes and back: a fixed layout for the hot
//! event record, bincode (pinned to 2.x, used nowhere else in the crate) for the rest. Every
//! record starts with a version byte. Decoding never trusts the file: lengths are checked, and a
//! bad record is a [`StoreError::Corrupt`], never a panic.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StoreError;
use crate::limits::RECORD_BYTES_MAX;

/// Version byte in front of every record; bump it when a layout changes.
pub const DISK_VERSION: u8 = 1;

type RecordConfig = Configuration<LittleEndian, Fixint, Limit<RECORD_BYTES_MAX>>;

const RECORD: RecordConfig = bincode::config::standard()
    .with_fixed_int_encoding()
    .with_limit::<RECORD_BYTES_MAX>();

/// An event as laid out in the events table. Names are numbers here (stream and type numbers
/// the store assigns); reads turn them back into names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiskEvent {
    pub event_id: [u8; 16],
    pub stream_no: u64,
    pub sequence: u64,
    pub type_no: u64,
    pub event_version: u16,
    pub command_id: Option<[u8; 16]>,
    pub causation_id: [u8; 16],
    pub correlation_id: [u8; 16],
    pub timestamp_ms: u64,
    pub supersedes: Option<u64>,
    /// The command's free-form metadata (JSON), if it had any.
    pub metadata: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Fixed part of an event record: version, id, stream, sequence, type, schema version, flags,
/// command id, causation, correlation, timestamp, supersedes; then, when `FLAG_METADATA` is
/// set, the metadata's length (4 bytes) and bytes; then the payload. Records written before
/// metadata existed have no such flag and read as they did.
const EVENT_HEADER_BYTES: usize = 1 + 16 + 8 + 8 + 8 + 2 + 1 + 16 + 16 + 16 + 8 + 8;
const FLAG_COMMAND_ID: u8 = 1;
const FLAG_SUPERSEDES: u8 = 2;
const FLAG_METADATA: u8 = 4;

impl DiskEvent {
    /// Writes the record: the fixed header, then the payload bytes.
    pub fn encode_into(&self, bytes: &mut Vec<u8>) {
        bytes.clear();
        bytes.reserve(EVENT_HEADER_BYTES + self.payload.len());
        bytes.push(DISK_VERSION);
        bytes.extend_from_slice(&self.event_id);
        bytes.extend_from_slice(&self.stream_no.to_le_bytes());
        bytes.extend_from_slice(&self.sequence.to_le_bytes());
        bytes.extend_from_slice(&self.type_no.to_le_bytes());
        bytes.extend_from_slice(&self.event_version.to_le_bytes());
        let flags = if self.command_id.is_some() {
            FLAG_COMMAND_ID
        } else {
            0
        } | if self.supersedes.is_some() {
            FLAG_SUPERSEDES
        } else {
            0
        } | if self.metadata.is_some() {
            FLAG_METADATA
        } else {
            0
        };
        bytes.push(flags);
        bytes.extend_from_slice(&self.command_id.unwrap_or_default());
        bytes.extend_from_slice(&self.causation_id);
        bytes.extend_from_slice(&self.correlation_id);
        bytes.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        bytes.extend_from_slice(&self.supersedes.unwrap_or_default().to_le_bytes());
        debug_assert_eq!(bytes.len(), EVENT_HEADER_BYTES);
        if let Some(metadata) = &self.metadata {
            // Callers bound metadata far below 4 GiB (`METADATA_BYTES_MAX`).
            let length = u32::try_from(metadata.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&length.to_le_bytes());
            bytes.extend_from_slice(&metadata[..length as usize]);
        }
        bytes.extend_from_slice(&self.payload);
    }

    /// Reads a record written by [`DiskEvent::encode_into`].
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() < EVENT_HEADER_BYTES {
            return Err(corrupt(format!(
                "event record of {} bytes is shorter than its {EVENT_HEADER_BYTES}-byte header",
                bytes.len()
            )));
        }
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(corrupt(format!("event record of {} bytes", bytes.len())));
        }
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.array::<1>()[0];
        if version != DISK_VERSION {
            return Err(corrupt(format!(
                "event record has unknown version {version}"
            )));
        }
        let event_id = reader.array::<16>();
        let stream_no = u64::from_le_bytes(reader.array());
        let sequence = u64::from_le_bytes(reader.array());
        let type_no = u64::from_le_bytes(reader.array());
        let event_version = u16::from_le_bytes(reader.array());
        let flags = reader.array::<1>()[0];
        if flags & !(FLAG_COMMAND_ID | FLAG_SUPERSEDES | FLAG_METADATA) != 0 {
            return Err(corrupt(format!(
                "event record has unknown flags {flags:#x}"
            )));
        }
        let command_id = reader.array::<16>();
        let causation_id = reader.array::<16>();
        let correlation_id = reader.array::<16>();
        let timestamp_ms = u64::from_le_bytes(reader.array());
        let supersedes = u64::from_le_bytes(reader.array());
        let (metadata, payload) = if flags & FLAG_METADATA != 0 {
            let rest = &bytes[EVENT_HEADER_BYTES..];
            let Some((length, rest)) = rest.split_first_chunk::<4>() else {
                return Err(corrupt(
                    "event record cut in its metadata length".to_owned(),
                ));
            };
            let length = u32::from_le_bytes(*length) as usize;
            if length > rest.len() {
                return Err(corrupt(format!(
                    "event record promises {length} bytes of metadata; {} follow",
                    rest.len()
                )));
            }
            let (metadata, payload) = rest.split_at(length);
            (Some(metadata.to_vec()), payload)
        } else {
            (None, &bytes[EVENT_HEADER_BYTES..])
        };
        Ok(Self {
            event_id,
            stream_no,
            sequence,
            type_no,
            event_version,
            command_id: (flags & FLAG_COMMAND_ID != 0).then_some(command_id),
            causation_id,
            correlation_id,
            timestamp_ms,
            supersedes: (flags & FLAG_SUPERSEDES != 0).then_some(supersedes),
            metadata,
            payload: payload.to_vec(),
        })
    }
}

/// Reads fixed-size fields from a slice whose length was checked against the header size.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut array = [0; N];
        // The caller checked that the whole header is present, so this slice is in bounds.
        array.copy_from_slice(&self.bytes[self.at..self.at + N]);
        self.at += N;
        array
    }
}

/// Encodes any other record: the version byte, then bincode.
pub(crate) fn encode_record<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = vec![DISK_VERSION];
    bincode::serde::encode_into_std_write(record, &mut bytes, RECORD)
        .map_err(|error| corrupt(format!("cannot encode a record: {error}")))?;
    Ok(bytes)
}

/// Decodes a record written by [`encode_record`], refusing unknown versions and trailing bytes.
pub(crate) fn decode_record<T: DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt(format!("empty {what} record")))?;
    if version != DISK_VERSION {
        return Err(corrupt(format!(
            "{what} record has unknown version {version}"
        )));
    }
    let (record, read) = bincode::serde::decode_from_slice(body, RECORD)
        .map_err(|error| corrupt(format!("{what} record does not decode: {error}")))?;
    if read != body.len() {
        return Err(corrupt(format!(
            "{what} record has {} trailing bytes",
            body.len() - read
        )));
    }
    Ok(record)
}

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn disk_event() -> impl Strategy<Value = DiskEvent> {
        (
            any::<[u8; 16]>(),
            any::<(u64, u64, u64, u16, u64)>(),
            any::<Option<[u8; 16]>>(),
            any::<([u8; 16], [u8; 16])>(),
            any::<Option<u64>>(),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
        )
            .prop_map(
                |(
                    event_id,
                    (stream_no, sequence, type_no, event_version, timestamp_ms),
                    command_id,
                    (causation_id, correlation_id),
                    supersedes,
                    payload,
                    metadata,
                )| DiskEvent {
                    event_id,
                    stream_no,
                    sequence,
                    type_no,
                    event_version,
                    command_id,
                    causation_id,
                    correlation_id,
                    timestamp_ms,
                    supersedes,
                    metadata,
                    payload,
                },
            )
    }

    proptest! {
        #[test]
        fn event_records_round_trip(event in disk_event()) {
            let mut bytes = Vec::new();
            event.encode_into(&mut bytes);
            prop_assert_eq!(DiskEvent::decode(&bytes).expect("own encoding decodes"), event);
        }

        #[test]
        fn damaged_event_records_are_errors_not_panics(
            event in disk_event(),
            cut in 0usize..EVENT_HEADER_BYTES,
            flip in 0usize..EVENT_HEADER_BYTES,
        ) {
            let mut bytes = Vec::new();
            event.encode_into(&mut bytes);
            prop_assert!(DiskEvent::decode(&bytes[..cut]).is_err());
            bytes[flip] ^= 0xff;
            // A flipped byte may still decode (into other values), but must never panic; a
            // flipped version byte or flag byte must be refused.
            let decoded = DiskEvent::decode(&bytes);
            if flip == 0 {
                prop_assert!(decoded.is_err());
            }
        }
    }

    #[test]
    fn other_records_refuse_versions_and_trailing_bytes() {
        let bytes = encode_record(&(7u64, String::from("x"))).expect("encodes");
        assert_eq!(
            decode_record::<(u64, String)>("test", &bytes).expect("decodes"),
            (7, "x".to_owned())
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_record::<(u64, String)>("test", &trailing).is_err());
        let mut versioned = bytes;
        versioned[0] = 9;
        assert!(decode_record::<(u64, String)>("test", &versioned).is_err());
        assert!(decode_record::<(u64, String)>("test", &[]).is_err());
    }
}
