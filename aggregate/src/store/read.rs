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

use std::collections::HashMap;

use redb::{ReadTransaction, ReadableDatabase, ReadableTable};

use super::{
    CATEGORIES, CATEGORY_EVENTS, CATEGORY_STREAMS, CHECKPOINTS, COMMANDS, CommandRecord, DATABASES,
    EVENTS, EventStore, META, SNAPSHOTS, STREAM_EVENTS, STREAM_NAMES, STREAMS, SUPERSEDED,
    SnapshotRecord, StreamRecord, TYPE_EVENTS, TYPE_NAMES, TYPES, counter, read_counter,
    write::stream_record,
};
use crate::codec::{DiskEvent, decode_record};
use crate::envelope::{AppendOutcome, Filter, RecordedEvent, StreamInfo};
use crate::error::StoreError;
use crate::ids::{CommandId, EventId, MessageId};
use crate::limits::{LIST_COUNT_MAX, READ_COUNT_MAX};
use crate::names::{CategoryName, DatabaseName, StreamKey, TypeName};

/// Most index entries one read scans past hidden events before it returns what it has, so a
/// read over a long hidden stretch is bounded and pages on.
const READ_SCAN_MAX: usize = 10 * READ_COUNT_MAX;

/// What an index scan yields per entry: the number to page on, the event's position, and its
/// record when the scan read it already (the `$all` scan is the events table itself).
type IndexEntry = Result<(u64, u64, Option<DiskEvent>), StoreError>;

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
enum Visibility {
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
        let transaction = &self.transaction;
        let mut reader = Reader::new(transaction, visibility)?;
        let head_position = reader.head_position;
        let (low, high) = match direction {
            Direction::Forward => (from, u64::MAX),
            Direction::Backward => (0, from),
        };
        fn ordered<'a, T: 'a>(
            range: impl DoubleEndedIterator<Item = T> + 'a,
            direction: Direction,
        ) -> Box<dyn Iterator<Item = T> + 'a> {
            match direction {
                Direction::Forward => Box::new(range),
                Direction::Backward => Box::new(range.rev()),
            }
        }
        let empty = || ReadSlice {
            events: Vec::new(),
            next: None,
            head_position,
        };
        // Each index yields (the number to page on, the event's position).
        let positions: Box<dyn Iterator<Item = IndexEntry>> = match filter {
            Filter::All => {
                let range = transaction.open_table(EVENTS)?.range(low..=high)?;
                // The global order is the events table itself: decode what the range returns
                // instead of looking each event up again.
                ordered(range, direction)
                    .map(|entry| {
                        let (key, value) = entry?;
                        let position = key.value();
                        Ok((position, position, Some(DiskEvent::decode(value.value())?)))
                    })
                    .boxed()
            }
            Filter::Category(database, category) => {
                let Some(category_no) = reader.category_number(database, category)? else {
                    return Ok(empty());
                };
                let range = reader
                    .category_events
                    .range((category_no, low)..=(category_no, high))?;
                ordered(range, direction)
                    .map(|entry| {
                        let position = entry?.0.value().1;
                        Ok((position, position, None))
                    })
                    .boxed()
            }
            Filter::EventType(event_type) => {
                let types = transaction.open_table(TYPES)?;
                let Some(type_no) = types.get(event_type.as_str())?.map(|guard| guard.value())
                else {
                    return Ok(empty());
                };
                let range = transaction
                    .open_table(TYPE_EVENTS)?
                    .range((type_no, low)..=(type_no, high))?;
                ordered(range, direction)
                    .map(|entry| {
                        let position = entry?.0.value().1;
                        Ok((position, position, None))
                    })
                    .boxed()
            }
            Filter::Stream(stream) => {
                let Some(record) = stream_record(&reader.streams, stream)? else {
                    return Ok(empty());
                };
                let stream_no = record.stream_no;
                let first = reader.first_sequence_at_or_after(stream_no, record.version, low)?;
                let last = reader.last_sequence_at_or_before(stream_no, record.version, high)?;
                reader
                    .known_streams
                    .insert(stream_no, (stream.clone(), record));
                if first > last {
                    return Ok(empty());
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
        let (events, next) = reader.collect(positions, count)?;
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

trait Boxed<'a, T> {
    fn boxed(self) -> Box<dyn Iterator<Item = T> + 'a>;
}

impl<'a, T, I: Iterator<Item = T> + 'a> Boxed<'a, T> for I {
    fn boxed(self) -> Box<dyn Iterator<Item = T> + 'a> {
        Box::new(self)
    }
}

fn info(stream: StreamKey, record: StreamRecord) -> StreamInfo {
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
fn retained(event: &DiskEvent, record: &StreamRecord, now_ms: u64) -> bool {
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

fn corrupt_name(error: crate::error::NameError) -> StoreError {
    StoreError::Corrupt(format!("a stored name does not parse: {error}"))
}

/// The tables and caches of one read: stream and type numbers resolve to names once per read.
struct Reader {
    events: redb::ReadOnlyTable<u64, &'static [u8]>,
    streams: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    stream_names: redb::ReadOnlyTable<u64, &'static str>,
    stream_events: redb::ReadOnlyTable<(u64, u64), u64>,
    categories: redb::ReadOnlyTable<(&'static str, &'static str), u64>,
    category_streams: redb::ReadOnlyTable<(u64, &'static str), u64>,
    category_events: redb::ReadOnlyTable<(u64, u64), ()>,
    type_names: redb::ReadOnlyTable<u64, &'static str>,
    superseded: redb::ReadOnlyTable<u64, u64>,
    head_position: u64,
    latest_timestamp_ms: u64,
    known_streams: HashMap<u64, (StreamKey, StreamRecord)>,
    known_types: HashMap<u64, TypeName>,
    visibility: Visibility,
}

impl Reader {
    fn new(transaction: &ReadTransaction, visibility: Visibility) -> Result<Self, StoreError> {
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

    fn category_number(
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
    fn collect(
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
    fn visible_event(
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
        }))
    }

    fn stream(&mut self, stream_no: u64) -> Result<&(StreamKey, StreamRecord), StoreError> {
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

    fn type_name(&mut self, type_no: u64) -> Result<TypeName, StoreError> {
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
    fn first_sequence_at_or_after(
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
    fn last_sequence_at_or_before(
        &self,
        stream_no: u64,
        version: u64,
        position: u64,
    ) -> Result<u64, StoreError> {
        let first_after =
            self.first_sequence_at_or_after(stream_no, version, position.saturating_add(1))?;
        Ok(first_after - 1)
    }

    fn position_of(&self, stream_no: u64, sequence: u64) -> Result<u64, StoreError> {
        Ok(self
            .stream_events
            .get((stream_no, sequence))?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("stream number {stream_no} has no event {sequence}"))
            })?
            .value())
    }
}
