//! Reads: streams forward and backward, the global order (`$all`), categories and event types
//! from a position, listings, and the records of snapshots, checkpoints and commands.
//!
//! A [`ReadView`] is one read transaction: every read through it sees the same state, however
//! many pages it takes (a repository loads a snapshot and the events after it through one
//! view). The `EventStore` methods of the same names open a view per call.
//!
//! Every read returns at most `count` events, with `count` clamped to `1..=READ_COUNT_MAX`,
//! and a `next` number to continue from (`None` at the end).
//!
//! Reads for clients pass through the visibility rules (soft delete, `truncate_before`,
//! `max_count`, `max_age_ms`, corrections). The change feed ([`ReadView::read_log`], which
//! subscriptions, projections and process managers use) does not: it delivers every committed
//! event, so what a subscriber sees depends only on the log, never on when it reads.

use redb::{ReadTransaction, ReadableDatabase, ReadableTable};

use super::reader::{Boxed, Reader, corrupt_name, info};
use super::{
    CATEGORIES, CHECKPOINTS, COMMANDS, CommandRecord, DATABASES, EVENTS, EventStore, SNAPSHOTS,
    STREAMS, SnapshotRecord, TYPE_EVENTS, TYPES, write::stream_record,
};
use crate::codec::{DiskEvent, decode_record};
use crate::envelope::{AppendOutcome, Filter, RecordedEvent, StreamInfo};
use crate::error::StoreError;
use crate::ids::CommandId;
use crate::limits::{LIST_COUNT_MAX, READ_COUNT_MAX};
use crate::names::{CategoryName, DatabaseName, StreamKey, TypeName};

/// Most index entries one read scans past hidden events before it returns what it has, so a
/// read over a long hidden stretch is bounded and pages on.
pub(super) const READ_SCAN_MAX: usize = 10 * READ_COUNT_MAX;

/// What an index scan yields per entry: the number to page on, the event's position, and its
/// record when the scan read it already (the `$all` scan is the events table itself).
pub(super) type IndexEntry = Result<(u64, u64, Option<DiskEvent>), StoreError>;

/// Which way a read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first, from the given number up.
    Forward,
    /// Newest first, from the given number down.
    Backward,
}

/// A page of one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSlice {
    /// The visible events, in the read's direction.
    pub events: Vec<RecordedEvent>,
    /// The stream's version when it was read (0 when it does not exist).
    pub version: u64,
    /// The sequence number to read from for the next page; `None` at the end.
    pub next: Option<u64>,
}

/// A page of a category, event type or `$all` read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadSlice {
    /// The visible events, in the read's direction.
    pub events: Vec<RecordedEvent>,
    /// The global position to read from for the next page; `None` at the end.
    pub next: Option<u64>,
    /// The store's head position when it was read.
    pub head_position: u64,
}

/// One consistent state of the store (a redb read transaction). Cheap to open; hold it only as
/// long as needed, since it pins the pages it sees.
pub struct ReadView {
    transaction: ReadTransaction,
}

/// Which of the visibility rules a read applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Visibility {
    /// Client reads: soft delete, corrections and the retention rules of the metadata.
    Client,
    /// What an aggregate is built from: soft delete and corrections, which are part of the
    /// domain's history, but not retention, which is an operator's read filter. So an
    /// aggregate's state at a version never depends on its metadata or on the store's clock.
    History,
    /// The change feed: every committed event.
    Log,
}

impl EventStore {
    /// Opens a consistent view of the store for several reads.
    pub fn view(&self) -> Result<ReadView, StoreError> {
        Ok(ReadView {
            transaction: self.database.begin_read()?,
        })
    }

    /// [`ReadView::read_stream`] on a fresh view.
    pub fn read_stream(
        &self,
        stream: &StreamKey,
        from: u64,
        direction: Direction,
        count: usize,
    ) -> Result<StreamSlice, StoreError> {
        self.view()?.read_stream(stream, from, direction, count)
    }

    /// [`ReadView::read`] on a fresh view.
    pub fn read(
        &self,
        filter: &Filter,
        from: u64,
        direction: Direction,
        count: usize,
    ) -> Result<ReadSlice, StoreError> {
        self.view()?.read(filter, from, direction, count)
    }

    /// [`ReadView::digest`] on a fresh view.
    pub fn digest(&self) -> Result<[u8; 32], StoreError> {
        self.view()?.digest()
    }

    /// [`ReadView::read_history`] on a fresh view.
    pub fn read_history(
        &self,
        stream: &StreamKey,
        from: u64,
        count: usize,
    ) -> Result<StreamSlice, StoreError> {
        self.view()?.read_history(stream, from, count)
    }

    /// [`ReadView::read_log`] on a fresh view.
    pub fn read_log(
        &self,
        filter: &Filter,
        from: u64,
        count: usize,
    ) -> Result<ReadSlice, StoreError> {
        self.view()?.read_log(filter, from, count)
    }

    /// [`ReadView::stream_info`] on a fresh view.
    pub fn stream_info(&self, stream: &StreamKey) -> Result<Option<StreamInfo>, StoreError> {
        self.view()?.stream_info(stream)
    }

    /// [`ReadView::list_databases`] on a fresh view.
    pub fn list_databases(&self) -> Result<Vec<DatabaseName>, StoreError> {
        self.view()?.list_databases()
    }

    /// [`ReadView::list_categories`] on a fresh view.
    pub fn list_categories(
        &self,
        database: &DatabaseName,
    ) -> Result<Vec<CategoryName>, StoreError> {
        self.view()?.list_categories(database)
    }

    /// [`ReadView::list_streams`] on a fresh view.
    pub fn list_streams(
        &self,
        database: &DatabaseName,
        category: &CategoryName,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        self.view()?.list_streams(database, category, after, count)
    }

    /// [`ReadView::list_event_types`] on a fresh view.
    pub fn list_event_types(&self) -> Result<Vec<TypeName>, StoreError> {
        self.view()?.list_event_types()
    }

    /// [`ReadView::command_record`] on a fresh view.
    pub fn command_record(
        &self,
        command_id: CommandId,
    ) -> Result<Option<CommandRecord>, StoreError> {
        self.view()?.command_record(command_id)
    }

    /// The outcome of an earlier append with this command id; `None` if the id is unknown or
    /// was refused (see [`EventStore::command_record`]).
    pub fn command_outcome(
        &self,
        command_id: CommandId,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        Ok(match self.command_record(command_id)? {
            Some(CommandRecord::Appended(outcome)) => Some(outcome),
            _ => None,
        })
    }

    /// [`ReadView::read_snapshot`] on a fresh view.
    pub fn read_snapshot(&self, stream: &StreamKey) -> Result<Option<SnapshotRecord>, StoreError> {
        self.view()?.read_snapshot(stream)
    }

    /// [`ReadView::eventless_commands`] on a fresh view.
    pub fn eventless_commands(
        &self,
    ) -> Result<Vec<(CommandId, StreamKey, Option<String>)>, StoreError> {
        self.view()?.eventless_commands()
    }

    /// [`ReadView::load_checkpoint`] on a fresh view.
    pub fn load_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.view()?.load_checkpoint(name)
    }
}

impl ReadView {
    /// Reads up to `count` events of a stream from sequence number `from` (inclusive), forward
    /// or backward. `Direction::Backward` from `u64::MAX` reads the newest events.
    pub fn read_stream(
        &self,
        stream: &StreamKey,
        from: u64,
        direction: Direction,
        count: usize,
    ) -> Result<StreamSlice, StoreError> {
        self.read_stream_with(stream, from, direction, count, Visibility::Client)
    }

    /// Reads a stream forward the way an aggregate sees it: soft delete and corrections apply,
    /// the retention rules of its metadata (`max_count`, `max_age_ms`, `truncate_before`) do
    /// not. Repositories load aggregates with this.
    pub fn read_history(
        &self,
        stream: &StreamKey,
        from: u64,
        count: usize,
    ) -> Result<StreamSlice, StoreError> {
        self.read_stream_with(stream, from, Direction::Forward, count, Visibility::History)
    }

    fn read_stream_with(
        &self,
        stream: &StreamKey,
        from: u64,
        direction: Direction,
        count: usize,
        visibility: Visibility,
    ) -> Result<StreamSlice, StoreError> {
        let transaction = &self.transaction;
        let mut reader = Reader::new(transaction, visibility)?;
        let Some(record) = stream_record(&reader.streams, stream)? else {
            return Ok(StreamSlice {
                events: Vec::new(),
                version: 0,
                next: None,
            });
        };
        let stream_no = record.stream_no;
        let version = record.version;
        reader
            .known_streams
            .insert(stream_no, (stream.clone(), record));
        let positions: Box<dyn Iterator<Item = _>> = match direction {
            Direction::Forward => Box::new(
                reader
                    .stream_events
                    .range((stream_no, from.max(1))..=(stream_no, u64::MAX))?,
            ),
            Direction::Backward => Box::new(
                reader
                    .stream_events
                    .range((stream_no, 0)..=(stream_no, from))?
                    .rev(),
            ),
        };
        let positions = positions.map(|entry| {
            let (key, position) = entry?;
            Ok((key.value().1, position.value(), None))
        });
        let (events, next) = reader.collect(positions, count)?;
        Ok(StreamSlice {
            events,
            version,
            next,
        })
    }

    /// Reads up to `count` visible events matching `filter` from global position `from`
    /// (inclusive), forward or backward. Pages through `$all`, a category, an event type or (by
    /// position) a stream.
    pub fn read(
        &self,
        filter: &Filter,
        from: u64,
        direction: Direction,
        count: usize,
    ) -> Result<ReadSlice, StoreError> {
        self.read_with(filter, from, direction, count, Visibility::Client)
    }

    /// A blake3 digest of every committed event with its whole envelope, in global order: two
    /// stores with equal digests hold the same events at the same positions. Reads the whole
    /// log; for checkers and tests.
    pub fn digest(&self) -> Result<[u8; 32], StoreError> {
        let mut hasher = blake3::Hasher::new();
        let mut from = 1;
        loop {
            let slice = self.read_log(&Filter::All, from, READ_COUNT_MAX)?;
            for event in &slice.events {
                let stream = event.stream.qualified();
                let fields: [&[u8]; 12] = [
                    &event.position.to_le_bytes(),
                    stream.as_bytes(),
                    &event.sequence.to_le_bytes(),
                    &event.event_id.0,
                    event.event_type.as_str().as_bytes(),
                    &event.event_version.to_le_bytes(),
                    &event.payload,
                    &event.command_id.map_or([0; 16], |id| id.0),
                    &event.causation_id.0,
                    &event.correlation_id.0,
                    &event.timestamp_ms.to_le_bytes(),
                    &event
                        .supersedes
                        .map_or(u64::MAX, |sequence| sequence)
                        .to_le_bytes(),
                ];
                for field in fields {
                    hasher.update(&(field.len() as u64).to_le_bytes());
                    hasher.update(field);
                }
                // Only when present, so a store without metadata digests as it did.
                if let Some(metadata) = &event.metadata {
                    hasher.update(b"metadata");
                    hasher.update(&(metadata.len() as u64).to_le_bytes());
                    hasher.update(metadata);
                }
            }
            match slice.next {
                Some(next) => from = next,
                None => return Ok(*hasher.finalize().as_bytes()),
            }
        }
    }

    /// The change feed: up to `count` committed events matching `filter` from global position
    /// `from`, forward, whatever the visibility rules hide (a correction is delivered as an
    /// event with `supersedes` set, after the event it supersedes).
    pub fn read_log(
        &self,
        filter: &Filter,
        from: u64,
        count: usize,
    ) -> Result<ReadSlice, StoreError> {
        self.read_with(filter, from, Direction::Forward, count, Visibility::Log)
    }

    fn read_with(
        &self,
        filter: &Filter,
        from: u64,
        direction: Direction,
        count: usize,
        visibility: Visibility,
    ) -> Result<ReadSlice, StoreError> {
        let mut reader = Reader::new(&self.transaction, visibility)?;
        let head_position = reader.head_position;
        let bounds = match direction {
            Direction::Forward => (from, u64::MAX),
            Direction::Backward => (0, from),
        };
        let positions = index_positions(&self.transaction, &mut reader, filter, bounds, direction)?;
        let (events, next) = match positions {
            Some(positions) => reader.collect(positions, count)?,
            None => (Vec::new(), None),
        };
        Ok(ReadSlice {
            events,
            next,
            head_position,
        })
    }

    /// What the store knows about a stream; `None` if it never had an event.
    pub fn stream_info(&self, stream: &StreamKey) -> Result<Option<StreamInfo>, StoreError> {
        let transaction = &self.transaction;
        let streams = transaction.open_table(STREAMS)?;
        Ok(stream_record(&streams, stream)?.map(|record| info(stream.clone(), record)))
    }

    /// Every database with at least one stream, in name order.
    pub fn list_databases(&self) -> Result<Vec<DatabaseName>, StoreError> {
        let transaction = &self.transaction;
        let databases = transaction.open_table(DATABASES)?;
        let mut names = Vec::new();
        for entry in databases.iter()?.take(LIST_COUNT_MAX) {
            names.push(DatabaseName::new(entry?.0.value()).map_err(corrupt_name)?);
        }
        Ok(names)
    }

    /// Every category of a database, in name order.
    pub fn list_categories(
        &self,
        database: &DatabaseName,
    ) -> Result<Vec<CategoryName>, StoreError> {
        let transaction = &self.transaction;
        let categories = transaction.open_table(CATEGORIES)?;
        let mut names = Vec::new();
        for entry in categories.range((database.as_str(), "")..)? {
            let (key, _) = entry?;
            let (entry_database, category) = key.value();
            if entry_database != database.as_str() || names.len() == LIST_COUNT_MAX {
                break;
            }
            names.push(CategoryName::new(category).map_err(corrupt_name)?);
        }
        Ok(names)
    }

    /// Up to `count` live (not soft-deleted) streams of a category, in id order, starting after
    /// the id `after` (for paging).
    pub fn list_streams(
        &self,
        database: &DatabaseName,
        category: &CategoryName,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        let transaction = &self.transaction;
        let reader = Reader::new(transaction, Visibility::Client)?;
        let Some(category_no) = reader.category_number(database, category)? else {
            return Ok(Vec::new());
        };
        let count = count.min(LIST_COUNT_MAX);
        let mut listed = Vec::new();
        let start = after.unwrap_or("");
        for entry in reader.category_streams.range((category_no, start)..)? {
            let (key, _) = entry?;
            let (entry_category, id) = key.value();
            if entry_category != category_no || listed.len() == count {
                break;
            }
            if after == Some(id) {
                continue;
            }
            let stream = StreamKey::in_database(database.clone(), category.as_str(), id)
                .map_err(corrupt_name)?;
            let record = stream_record(&reader.streams, &stream)?.ok_or_else(|| {
                StoreError::Corrupt(format!("stream {stream} is listed but has no record"))
            })?;
            if !record.deleted {
                listed.push(info(stream, record));
            }
        }
        Ok(listed)
    }

    /// Every event type the store has seen, in name order.
    pub fn list_event_types(&self) -> Result<Vec<TypeName>, StoreError> {
        let transaction = &self.transaction;
        let types = transaction.open_table(TYPES)?;
        let mut names = Vec::new();
        for entry in types.iter()?.take(LIST_COUNT_MAX) {
            names.push(TypeName::new(entry?.0.value()).map_err(corrupt_name)?);
        }
        Ok(names)
    }

    /// What became of an earlier command with this id: its append's outcome, or its refusal.
    pub fn command_record(
        &self,
        command_id: CommandId,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let commands = self.transaction.open_table(COMMANDS)?;
        match commands.get(command_id.0)? {
            Some(guard) => Ok(Some(decode_record("command", guard.value())?)),
            None => Ok(None),
        }
    }

    /// The latest snapshot of a stream's aggregate, if one was saved and still fits the stream:
    /// same epoch (no correction or soft delete since) and a version the stream has.
    pub fn read_snapshot(&self, stream: &StreamKey) -> Result<Option<SnapshotRecord>, StoreError> {
        let streams = self.transaction.open_table(STREAMS)?;
        let Some(record) = stream_record(&streams, stream)? else {
            return Ok(None);
        };
        let snapshots = self.transaction.open_table(SNAPSHOTS)?;
        let Some(guard) = snapshots.get(record.stream_no)? else {
            return Ok(None);
        };
        let snapshot: SnapshotRecord = decode_record("snapshot", guard.value())?;
        let fits = snapshot.epoch == record.epoch && snapshot.version <= record.version;
        Ok(fits.then_some(snapshot))
    }

    /// Every command whose fate the events do not show, in command-id order: refusals
    /// (command id, stream, `Some(reason)`) and commands appended with no event (`None`). With
    /// the events, they are a store's whole record of which commands ran. Scans the whole
    /// command index (one entry per command ever executed): for state transfer, which is
    /// rare, not for a hot path.
    pub fn eventless_commands(
        &self,
    ) -> Result<Vec<(CommandId, StreamKey, Option<String>)>, StoreError> {
        let commands = self.transaction.open_table(COMMANDS)?;
        let mut found = Vec::new();
        for entry in commands.iter()? {
            let (key, value) = entry?;
            match decode_record::<CommandRecord>("command", value.value())? {
                CommandRecord::Refused { stream, reason } => {
                    found.push((CommandId(key.value()), stream, Some(reason)));
                }
                CommandRecord::Appended(outcome)
                    if outcome.first_position > outcome.last_position =>
                {
                    if let Some(write) = outcome.streams.first() {
                        found.push((CommandId(key.value()), write.stream.clone(), None));
                    }
                }
                CommandRecord::Appended(_) => {}
            }
        }
        Ok(found)
    }

    /// A subscriber's checkpoint record, if one was saved.
    pub fn load_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let transaction = &self.transaction;
        let checkpoints = transaction.open_table(CHECKPOINTS)?;
        Ok(checkpoints.get(name)?.map(|guard| guard.value().to_vec()))
    }
}

/// An entry of the events table, decoded: the position is both the number to page on and
/// the event's.
fn decoded_entry(
    entry: Result<
        (
            redb::AccessGuard<'static, u64>,
            redb::AccessGuard<'static, &'static [u8]>,
        ),
        redb::StorageError,
    >,
) -> IndexEntry {
    let (key, value) = entry?;
    let position = key.value();
    Ok((position, position, Some(DiskEvent::decode(value.value())?)))
}

/// `range` in `direction`.
fn ordered<'a, T: 'a>(
    range: impl DoubleEndedIterator<Item = T> + 'a,
    direction: Direction,
) -> Box<dyn Iterator<Item = T> + 'a> {
    match direction {
        Direction::Forward => Box::new(range),
        Direction::Backward => Box::new(range.rev()),
    }
}

/// The index entries `filter` selects between the bounds (positions, or a stream's
/// sequences), in `direction`: each gives the number to page on, the event's position, and
/// the event itself when the index holds it. `None` when the filter names a category, type or
/// stream the store never had.
fn index_positions(
    transaction: &ReadTransaction,
    reader: &mut Reader,
    filter: &Filter,
    (low, high): (u64, u64),
    direction: Direction,
) -> Result<Option<Box<dyn Iterator<Item = IndexEntry>>>, StoreError> {
    // A category's or a type's index: keys (number, position), no values.
    let by_position = |range: redb::Range<'static, (u64, u64), ()>| {
        ordered(range, direction).map(|entry| {
            let position = entry?.0.value().1;
            Ok((position, position, None))
        })
    };
    let positions = match filter {
        Filter::All => {
            let range = transaction.open_table(EVENTS)?.range(low..=high)?;
            // The global order is the events table itself: decode what the range returns
            // instead of looking each event up again.
            ordered(range, direction).map(decoded_entry).boxed()
        }
        Filter::Category(database, category) => {
            let Some(category_no) = reader.category_number(database, category)? else {
                return Ok(None);
            };
            let range = reader
                .category_events
                .range((category_no, low)..=(category_no, high))?;
            by_position(range).boxed()
        }
        Filter::EventType(event_type) => {
            let types = transaction.open_table(TYPES)?;
            let Some(type_no) = types.get(event_type.as_str())?.map(|guard| guard.value()) else {
                return Ok(None);
            };
            let range = transaction
                .open_table(TYPE_EVENTS)?
                .range((type_no, low)..=(type_no, high))?;
            by_position(range).boxed()
        }
        Filter::Stream(stream) => {
            let Some(record) = stream_record(&reader.streams, stream)? else {
                return Ok(None);
            };
            let stream_no = record.stream_no;
            let first = reader.first_sequence_at_or_after(stream_no, record.version, low)?;
            let last = reader.last_sequence_at_or_before(stream_no, record.version, high)?;
            reader
                .known_streams
                .insert(stream_no, (stream.clone(), record));
            if first > last {
                return Ok(None);
            }
            let range = reader
                .stream_events
                .range((stream_no, first)..=(stream_no, last))?;
            ordered(range, direction)
                .map(|entry| {
                    let position = entry?.1.value();
                    Ok((position, position, None))
                })
                .boxed()
        }
    };
    Ok(Some(positions))
}
