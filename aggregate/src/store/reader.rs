//! The reading machinery under `read.rs`: a `Reader` over one read transaction that resolves
//! numbers to names, applies the visibility rules (retention, soft delete, superseded events)
//! and finds positions, and the small helpers reads share.

use std::collections::HashMap;

use redb::ReadTransaction;

use super::{
    CATEGORIES, CATEGORY_EVENTS, CATEGORY_STREAMS, EVENTS, META, STREAM_EVENTS, STREAM_NAMES,
    STREAMS, SUPERSEDED, StreamRecord, TYPE_NAMES, counter, read_counter, write::stream_record,
};
use crate::codec::DiskEvent;
use crate::envelope::{RecordedEvent, StreamInfo};
use crate::error::StoreError;
use crate::ids::{CommandId, EventId, MessageId};
use crate::limits::READ_COUNT_MAX;
use crate::names::{CategoryName, DatabaseName, StreamKey, TypeName};

use super::read::{IndexEntry, READ_SCAN_MAX, Visibility};

pub(super) trait Boxed<'a, T> {
    fn boxed(self) -> Box<dyn Iterator<Item = T> + 'a>;
}

impl<'a, T, I: Iterator<Item = T> + 'a> Boxed<'a, T> for I {
    fn boxed(self) -> Box<dyn Iterator<Item = T> + 'a> {
        Box::new(self)
    }
}

pub(super) fn info(stream: StreamKey, record: StreamRecord) -> StreamInfo {
    StreamInfo {
        stream,
        version: record.version,
        metadata: record.metadata,
        deleted: record.deleted,
        last_timestamp_ms: record.last_timestamp_ms,
        epoch: record.epoch,
    }
}

/// The retention rules of a stream's metadata.
pub(super) fn retained(event: &DiskEvent, record: &StreamRecord, now_ms: u64) -> bool {
    let metadata = &record.metadata;
    metadata
        .truncate_before
        .is_none_or(|before| event.sequence >= before)
        && metadata
            .max_count
            .is_none_or(|max| event.sequence > record.version.saturating_sub(max))
        && metadata
            .max_age_ms
            .is_none_or(|age| event.timestamp_ms.saturating_add(age) >= now_ms)
}

pub(super) fn corrupt_name(error: crate::error::NameError) -> StoreError {
    StoreError::Corrupt(format!("a stored name does not parse: {error}"))
}

/// The tables and caches of one read: stream and type numbers resolve to names once per read.
pub(super) struct Reader {
    pub(super) events: redb::ReadOnlyTable<u64, &'static [u8]>,
    pub(super) streams: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    pub(super) stream_names: redb::ReadOnlyTable<u64, &'static str>,
    pub(super) stream_events: redb::ReadOnlyTable<(u64, u64), u64>,
    pub(super) categories: redb::ReadOnlyTable<(&'static str, &'static str), u64>,
    pub(super) category_streams: redb::ReadOnlyTable<(u64, &'static str), u64>,
    pub(super) category_events: redb::ReadOnlyTable<(u64, u64), ()>,
    pub(super) type_names: redb::ReadOnlyTable<u64, &'static str>,
    pub(super) superseded: redb::ReadOnlyTable<u64, u64>,
    pub(super) head_position: u64,
    pub(super) latest_timestamp_ms: u64,
    pub(super) known_streams: HashMap<u64, (StreamKey, StreamRecord)>,
    pub(super) known_types: HashMap<u64, TypeName>,
    pub(super) visibility: Visibility,
}

impl Reader {
    pub(super) fn new(
        transaction: &ReadTransaction,
        visibility: Visibility,
    ) -> Result<Self, StoreError> {
        let meta = transaction.open_table(META)?;
        Ok(Self {
            events: transaction.open_table(EVENTS)?,
            streams: transaction.open_table(STREAMS)?,
            stream_names: transaction.open_table(STREAM_NAMES)?,
            stream_events: transaction.open_table(STREAM_EVENTS)?,
            categories: transaction.open_table(CATEGORIES)?,
            category_streams: transaction.open_table(CATEGORY_STREAMS)?,
            category_events: transaction.open_table(CATEGORY_EVENTS)?,
            type_names: transaction.open_table(TYPE_NAMES)?,
            superseded: transaction.open_table(SUPERSEDED)?,
            head_position: read_counter(&meta, counter::HEAD_POSITION)?,
            latest_timestamp_ms: read_counter(&meta, counter::LATEST_TIMESTAMP_MS)?,
            known_streams: HashMap::new(),
            known_types: HashMap::new(),
            visibility,
        })
    }

    pub(super) fn category_number(
        &self,
        database: &DatabaseName,
        category: &CategoryName,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self
            .categories
            .get((database.as_str(), category.as_str()))?
            .map(|guard| guard.value()))
    }

    /// Gathers up to `count` visible events from `positions` (pairs of the number to page on
    /// and the event's position); returns them and the number the next page starts from.
    pub(super) fn collect(
        &mut self,
        positions: impl Iterator<Item = IndexEntry>,
        count: usize,
    ) -> Result<(Vec<RecordedEvent>, Option<u64>), StoreError> {
        // A read of nothing would answer "no more" wrongly; every read returns at least one.
        let count = count.clamp(1, READ_COUNT_MAX);
        let mut events = Vec::with_capacity(count.min(1024));
        for (scanned, entry) in positions.enumerate() {
            let (paging_number, position, record) = entry?;
            if events.len() == count || scanned == READ_SCAN_MAX {
                return Ok((events, Some(paging_number)));
            }
            if let Some(event) = self.visible_event(position, record)? {
                events.push(event);
            }
        }
        Ok((events, None))
    }

    /// The event at `position`, or `None` if the visibility rules hide it.
    /// `record` is the event's record when the caller read it already.
    pub(super) fn visible_event(
        &mut self,
        position: u64,
        record: Option<DiskEvent>,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        let disk = match record {
            Some(disk) => disk,
            None => {
                let guard = self.events.get(position)?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "an index names position {position}, which is empty"
                    ))
                })?;
                DiskEvent::decode(guard.value())?
            }
        };
        let now_ms = self.latest_timestamp_ms;
        let visibility = self.visibility;
        let (stream, record) = self.stream(disk.stream_no)?;
        let shown = match visibility {
            Visibility::Log => true,
            Visibility::History => disk.sequence > record.hidden_through,
            Visibility::Client => {
                disk.sequence > record.hidden_through && retained(&disk, record, now_ms)
            }
        };
        if !shown {
            return Ok(None);
        }
        let corrected = record.corrected && visibility != Visibility::Log;
        let stream = stream.clone();
        if corrected && self.superseded.get(position)?.is_some() {
            return Ok(None);
        }
        let event_type = self.type_name(disk.type_no)?;
        Ok(Some(RecordedEvent {
            event_id: EventId(disk.event_id),
            stream,
            sequence: disk.sequence,
            position,
            event_type,
            event_version: disk.event_version,
            payload: disk.payload,
            command_id: disk.command_id.map(CommandId),
            causation_id: MessageId(disk.causation_id),
            correlation_id: MessageId(disk.correlation_id),
            timestamp_ms: disk.timestamp_ms,
            supersedes: disk.supersedes,
            metadata: disk.metadata,
        }))
    }

    pub(super) fn stream(
        &mut self,
        stream_no: u64,
    ) -> Result<&(StreamKey, StreamRecord), StoreError> {
        if !self.known_streams.contains_key(&stream_no) {
            let name = self
                .stream_names
                .get(stream_no)?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("stream number {stream_no} has no name"))
                })?
                .value()
                .to_owned();
            let stream = StreamKey::parse(&name).map_err(corrupt_name)?;
            let record = stream_record(&self.streams, &stream)?
                .ok_or_else(|| StoreError::Corrupt(format!("stream {stream} has no record")))?;
            self.known_streams.insert(stream_no, (stream, record));
        }
        Ok(&self.known_streams[&stream_no])
    }

    pub(super) fn type_name(&mut self, type_no: u64) -> Result<TypeName, StoreError> {
        if let Some(name) = self.known_types.get(&type_no) {
            return Ok(name.clone());
        }
        let name = self
            .type_names
            .get(type_no)?
            .ok_or_else(|| StoreError::Corrupt(format!("type number {type_no} has no name")))?
            .value()
            .to_owned();
        let name = TypeName::new(name).map_err(corrupt_name)?;
        self.known_types.insert(type_no, name.clone());
        Ok(name)
    }

    /// The smallest sequence number of the stream whose position is at least `position`
    /// (`version + 1` if none): positions grow with sequence numbers, so a binary search.
    pub(super) fn first_sequence_at_or_after(
        &self,
        stream_no: u64,
        version: u64,
        position: u64,
    ) -> Result<u64, StoreError> {
        let (mut low, mut high) = (1, version + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.position_of(stream_no, middle)? >= position {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        Ok(low)
    }

    /// The largest sequence number of the stream whose position is at most `position` (0 if
    /// none).
    pub(super) fn last_sequence_at_or_before(
        &self,
        stream_no: u64,
        version: u64,
        position: u64,
    ) -> Result<u64, StoreError> {
        let first_after =
            self.first_sequence_at_or_after(stream_no, version, position.saturating_add(1))?;
        Ok(first_after - 1)
    }

    pub(super) fn position_of(&self, stream_no: u64, sequence: u64) -> Result<u64, StoreError> {
        Ok(self
            .stream_events
            .get((stream_no, sequence))?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("stream number {stream_no} has no event {sequence}"))
            })?
            .value())
    }
}
