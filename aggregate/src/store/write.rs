//! Appends: validate a whole batch against the store (limits, idempotency, expected versions,
//! corrections) before writing any of it, then write its events and every index in the same
//! transaction. Validation reads through the write transaction, so a batch sees the batches
//! before it in the same group.

use std::collections::{BTreeSet, HashMap};

use redb::{ReadableTable, Table, WriteTransaction};

use super::checks::{check_limits, check_system_event};
use super::{
    CATEGORIES, CATEGORY_EVENTS, CATEGORY_STREAMS, CHECKPOINTS, COMMANDS, CommandRecord, Commit,
    DATABASES, EVENTS, EventStore, META, SNAPSHOTS, STREAM_EVENTS, STREAM_NAMES, STREAMS,
    SUPERSEDED, SnapshotRecord, StreamRecord, TYPE_EVENTS, TYPE_NAMES, TYPES, WRITE_IDS, counter,
    read_counter,
};
use crate::codec::{DiskEvent, decode_record, encode_record};
use crate::envelope::{
    AppendBatch, AppendOutcome, ExpectedVersion, NewEvent, StreamMetadata, StreamOutcome,
};
use crate::error::StoreError;
use crate::ids::{CommandId, EventId};
use crate::limits::{GROUP_BATCHES_MAX, REFUSAL_CHARS_MAX};
use crate::names::{StreamKey, TypeName};

/// The result of each batch of a group commit, in the group's order.
pub type GroupOutcome = Vec<Result<AppendOutcome, StoreError>>;

impl EventStore {
    /// Appends one batch atomically: every write of it or none, in one durable transaction.
    /// A repeated command id or a repeat of the same events returns the first outcome, marked
    /// `duplicate`, and writes nothing.
    pub fn append(&self, batch: &AppendBatch) -> Result<AppendOutcome, StoreError> {
        let transaction = self.database.begin_write()?;
        let outcome = {
            let mut writer = Writer::open(&transaction)?;
            let outcome = writer.append(batch)?;
            writer.finish()?;
            outcome
        };
        let head = outcome.last_position;
        transaction.commit()?;
        self.publish_head(head);
        Ok(outcome)
    }

    /// Group commit: appends each batch independently (a batch that fails validation writes
    /// nothing and does not affect the others), all in one durable transaction. The outer error
    /// is a storage failure or a group over [`GROUP_BATCHES_MAX`], in which case nothing at all
    /// was written.
    pub fn append_group(&self, batches: &[AppendBatch]) -> Result<GroupOutcome, StoreError> {
        self.group(batches, &[], 0, Commit::Durable)
    }

    /// [`EventStore::append_group`], committed as `commit` says: a caller that commits several
    /// groups before it acknowledges any defers them and makes them durable together.
    pub fn append_group_with(
        &self,
        batches: &[AppendBatch],
        commit: Commit,
    ) -> Result<GroupOutcome, StoreError> {
        self.group(batches, &[], 0, commit)
    }

    /// A group commit of transferred state, numbered as its source numbered it: each batch's
    /// first event goes at `positions[i]` when that is above the head (the positions skipped
    /// stay empty: the source holds other sections' events there), else at the next free one
    /// (positions never go back); at the end the head is raised to at least `head`, the
    /// source's, so that what this store appends next is numbered as at the source.
    pub fn append_group_at(
        &self,
        batches: &[AppendBatch],
        positions: &[u64],
        head: u64,
    ) -> Result<GroupOutcome, StoreError> {
        self.group(batches, positions, head, Commit::Durable)
    }

    fn group(
        &self,
        batches: &[AppendBatch],
        positions: &[u64],
        head: u64,
        commit: Commit,
    ) -> Result<GroupOutcome, StoreError> {
        if batches.len() > GROUP_BATCHES_MAX {
            return Err(StoreError::LimitExceeded {
                what: "the group's number of batches",
                value: batches.len(),
                max: GROUP_BATCHES_MAX,
            });
        }
        let transaction = self.database.begin_write()?;
        let (outcomes, head) = {
            let mut writer = Writer::open(&transaction)?;
            let mut outcomes = Vec::with_capacity(batches.len());
            for (index, batch) in batches.iter().enumerate() {
                if let Some(&position) = positions.get(index) {
                    writer.head_position = writer.head_position.max(position.saturating_sub(1));
                }
                match writer.append(batch) {
                    Err(StoreError::Storage(error)) => return Err(StoreError::Storage(error)),
                    Err(StoreError::Corrupt(reason)) => return Err(StoreError::Corrupt(reason)),
                    other => outcomes.push(other),
                }
            }
            writer.head_position = writer.head_position.max(head);
            let head = writer.head_position;
            writer.finish()?;
            (outcomes, head)
        };
        self.commit_as(transaction, commit)?;
        self.publish_head(head);
        Ok(outcomes)
    }

    /// Gives a stream new metadata (retention rules), by appending a `$metadata` system event
    /// when the stream is at `expected`. Creates the stream if it has no event yet.
    pub fn set_metadata(
        &self,
        stream: &StreamKey,
        expected: ExpectedVersion,
        metadata: &StreamMetadata,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_system_event(stream, expected, |event_id| {
            NewEvent::set_metadata(event_id, metadata)
        })
    }

    /// Soft-deletes a stream when it is at `expected`, by appending a `$deleted` system event:
    /// reads no longer show its events and listings omit it. A later append continues the
    /// numbering and makes it visible again, with only the new events.
    pub fn soft_delete(
        &self,
        stream: &StreamKey,
        expected: ExpectedVersion,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_system_event(stream, expected, NewEvent::soft_delete)
    }

    /// Records that a command was refused, so that executing its id again returns the same
    /// refusal instead of deciding anew on a state that may have changed (which could let a
    /// compensated step succeed after all). Durable. If the id is known already, nothing is
    /// written and its record is returned: an execution of the same id that appended
    /// meanwhile wins, and the caller must not report (or compensate) a refusal.
    pub fn record_refusal(
        &self,
        command_id: CommandId,
        stream: &StreamKey,
        reason: &str,
    ) -> Result<Option<CommandRecord>, StoreError> {
        self.record_refusal_with(command_id, stream, reason, Commit::Durable)
    }

    /// [`EventStore::record_refusal`], committed as `commit` says.
    pub fn record_refusal_with(
        &self,
        command_id: CommandId,
        stream: &StreamKey,
        reason: &str,
        commit: Commit,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let transaction = self.database.begin_write()?;
        let existing = {
            let mut commands = transaction.open_table(COMMANDS)?;
            let existing = match commands.get(command_id.0)? {
                Some(guard) => Some(decode_record::<CommandRecord>("command", guard.value())?),
                None => None,
            };
            if existing.is_none() {
                let record = CommandRecord::Refused {
                    stream: stream.clone(),
                    reason: reason.chars().take(REFUSAL_CHARS_MAX).collect(),
                };
                commands.insert(command_id.0, encode_record(&record)?.as_slice())?;
            }
            existing
        };
        self.commit_as(transaction, commit)?;
        Ok(existing)
    }

    /// Saves a snapshot of a stream's aggregate. Snapshots are a cache: the write is not made
    /// durable on its own (a crash may lose it, never corrupt it). A snapshot of another epoch
    /// than the stream's, or of a version the stream does not have, is refused
    /// ([`StoreError::StaleSnapshot`]): the stream was corrected, truncated or deleted since
    /// the state was built.
    pub fn write_snapshot(
        &self,
        stream: &StreamKey,
        snapshot: &SnapshotRecord,
    ) -> Result<(), StoreError> {
        let mut transaction = self.database.begin_write()?;
        transaction.set_durability(redb::Durability::None)?;
        {
            let streams = transaction.open_table(STREAMS)?;
            let Some(record) = stream_record(&streams, stream)? else {
                return Err(StoreError::StreamNotFound {
                    stream: stream.clone(),
                });
            };
            let stale = |reason| StoreError::StaleSnapshot {
                stream: stream.clone(),
                reason,
            };
            if snapshot.epoch != record.epoch {
                return Err(stale("the stream changed epoch since the state was built"));
            }
            if snapshot.version > record.version {
                return Err(stale("the stream has no such version"));
            }
            let mut snapshots = transaction.open_table(SNAPSHOTS)?;
            snapshots.insert(record.stream_no, encode_record(snapshot)?.as_slice())?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Saves a subscriber's checkpoint record (for projections and process managers). Like
    /// snapshots, not durable on its own: after a crash a subscriber resumes from an older
    /// checkpoint whose state was saved with it, and sees some events again.
    pub fn save_checkpoint(&self, name: &str, record: &[u8]) -> Result<(), StoreError> {
        let mut transaction = self.database.begin_write()?;
        transaction.set_durability(redb::Durability::None)?;
        {
            let mut checkpoints = transaction.open_table(CHECKPOINTS)?;
            checkpoints.insert(name, record)?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Saves a checkpoint record durably (one fsync), for state that must survive a crash
    /// exactly, such as the engine's section membership. Read it with `load_checkpoint`.
    pub fn save_checkpoint_durable(&self, name: &str, record: &[u8]) -> Result<(), StoreError> {
        let transaction = self.database.begin_write()?;
        {
            let mut checkpoints = transaction.open_table(CHECKPOINTS)?;
            checkpoints.insert(name, record)?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Appends one system event at the stream's current version, checked against `expected`
    /// in the same write transaction (so two changes racing for one version are ordered: the
    /// second sees the first's version). The event id names the stream, the version it
    /// follows, the type and the payload: only the very same change at the same version is
    /// the same event.
    fn append_system_event(
        &self,
        stream: &StreamKey,
        expected: ExpectedVersion,
        event: impl FnOnce(EventId) -> NewEvent,
    ) -> Result<AppendOutcome, StoreError> {
        let transaction = self.database.begin_write()?;
        let outcome = {
            let mut writer = Writer::open(&transaction)?;
            let version =
                stream_record(&writer.streams, stream)?.map_or(0, |record| record.version);
            if !expected.admits(version) {
                return Err(StoreError::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected,
                    actual: version,
                });
            }
            let probe = event(EventId([0; 16]));
            let event_id = EventId::derive(&[
                b"system",
                stream.qualified().as_bytes(),
                &version.to_le_bytes(),
                probe.event_type.as_str().as_bytes(),
                &probe.payload,
            ]);
            let event = NewEvent { event_id, ..probe };
            let command_id = CommandId::derive(&[b"system", &event_id.0]);
            // Not a domain event: it carries the newest agreed time the store has seen.
            let timestamp_ms = writer.latest_timestamp_ms;
            let batch = AppendBatch::single(
                command_id,
                stream.clone(),
                ExpectedVersion::Exact(version),
                vec![event],
                timestamp_ms,
            );
            let outcome = writer.append(&batch)?;
            writer.finish()?;
            outcome
        };
        transaction.commit()?;
        self.publish_head(outcome.last_position);
        Ok(outcome)
    }
}

pub(crate) fn stream_record(
    streams: &impl ReadableTable<&'static str, &'static [u8]>,
    stream: &StreamKey,
) -> Result<Option<StreamRecord>, StoreError> {
    match streams.get(stream.qualified().as_str())? {
        Some(guard) => Ok(Some(decode_record("stream", guard.value())?)),
        None => Ok(None),
    }
}

/// One write of a batch, validated: where its stream stands before the batch.
struct PlannedWrite {
    record: Option<StreamRecord>,
    version_before: u64,
    /// Positions of the events it supersedes, by their sequence numbers.
    superseded_positions: HashMap<u64, u64>,
    /// The parsed metadata of its `$metadata` events, in order (`None` for `$deleted`).
    metadata: Vec<Option<StreamMetadata>>,
}

/// The tables and counters of one write transaction.
struct Writer<'t> {
    events: Table<'t, u64, &'static [u8]>,
    streams: Table<'t, &'static str, &'static [u8]>,
    stream_names: Table<'t, u64, &'static str>,
    stream_events: Table<'t, (u64, u64), u64>,
    databases: Table<'t, &'static str, ()>,
    categories: Table<'t, (&'static str, &'static str), u64>,
    category_streams: Table<'t, (u64, &'static str), u64>,
    category_events: Table<'t, (u64, u64), ()>,
    types: Table<'t, &'static str, u64>,
    type_names: Table<'t, u64, &'static str>,
    type_events: Table<'t, (u64, u64), ()>,
    write_ids: Table<'t, [u8; 16], u64>,
    commands: Table<'t, [u8; 16], &'static [u8]>,
    superseded: Table<'t, u64, u64>,
    snapshots: Table<'t, u64, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    head_position: u64,
    next_stream_no: u64,
    next_category_no: u64,
    next_type_no: u64,
    latest_timestamp_ms: u64,
    type_numbers: HashMap<TypeName, u64>,
    scratch: Vec<u8>,
}

impl<'t> Writer<'t> {
    fn open(transaction: &'t WriteTransaction) -> Result<Self, StoreError> {
        let meta = transaction.open_table(META)?;
        Ok(Self {
            head_position: read_counter(&meta, counter::HEAD_POSITION)?,
            next_stream_no: read_counter(&meta, counter::NEXT_STREAM_NO)?.max(1),
            next_category_no: read_counter(&meta, counter::NEXT_CATEGORY_NO)?.max(1),
            next_type_no: read_counter(&meta, counter::NEXT_TYPE_NO)?.max(1),
            latest_timestamp_ms: read_counter(&meta, counter::LATEST_TIMESTAMP_MS)?,
            meta,
            events: transaction.open_table(EVENTS)?,
            streams: transaction.open_table(STREAMS)?,
            stream_names: transaction.open_table(STREAM_NAMES)?,
            stream_events: transaction.open_table(STREAM_EVENTS)?,
            databases: transaction.open_table(DATABASES)?,
            categories: transaction.open_table(CATEGORIES)?,
            category_streams: transaction.open_table(CATEGORY_STREAMS)?,
            category_events: transaction.open_table(CATEGORY_EVENTS)?,
            types: transaction.open_table(TYPES)?,
            type_names: transaction.open_table(TYPE_NAMES)?,
            type_events: transaction.open_table(TYPE_EVENTS)?,
            write_ids: transaction.open_table(WRITE_IDS)?,
            commands: transaction.open_table(COMMANDS)?,
            superseded: transaction.open_table(SUPERSEDED)?,
            snapshots: transaction.open_table(SNAPSHOTS)?,
            type_numbers: HashMap::new(),
            scratch: Vec::new(),
        })
    }

    /// Writes the counters back; the caller commits.
    fn finish(mut self) -> Result<(), StoreError> {
        self.meta
            .insert(counter::HEAD_POSITION, self.head_position)?;
        self.meta
            .insert(counter::NEXT_STREAM_NO, self.next_stream_no)?;
        self.meta
            .insert(counter::NEXT_CATEGORY_NO, self.next_category_no)?;
        self.meta.insert(counter::NEXT_TYPE_NO, self.next_type_no)?;
        self.meta
            .insert(counter::LATEST_TIMESTAMP_MS, self.latest_timestamp_ms)?;
        Ok(())
    }

    /// Validates and writes one batch; on a validation error nothing of it is written.
    fn append(&mut self, batch: &AppendBatch) -> Result<AppendOutcome, StoreError> {
        check_limits(batch)?;
        if let Some(command_id) = batch.command_id {
            if let Some(guard) = self.commands.get(command_id.0)? {
                return match decode_record("command", guard.value())? {
                    CommandRecord::Appended(mut outcome) => {
                        outcome.duplicate = true;
                        Ok(outcome)
                    }
                    CommandRecord::Refused { stream, reason } => {
                        Err(StoreError::CommandRefused { stream, reason })
                    }
                };
            }
        }
        if let Some(outcome) = self.repeated_events(batch)? {
            return Ok(outcome);
        }
        let plans = batch
            .writes
            .iter()
            .map(|write| self.plan(&write.stream, write.expected, &write.events))
            .collect::<Result<Vec<_>, _>>()?;
        // Validation is over; from here on only storage can fail, and then the whole
        // transaction is dropped.
        let first_position = self.head_position + 1;
        let mut streams = Vec::with_capacity(batch.writes.len());
        for (write, plan) in batch.writes.iter().zip(plans) {
            let version = self.write_stream(batch, write, plan)?;
            streams.push(StreamOutcome {
                stream: write.stream.clone(),
                version,
            });
        }
        self.latest_timestamp_ms = self.latest_timestamp_ms.max(batch.timestamp_ms);
        let outcome = AppendOutcome {
            first_position,
            last_position: self.head_position,
            streams,
            duplicate: false,
        };
        if let Some(command_id) = batch.command_id {
            let record = CommandRecord::Appended(outcome.clone());
            self.commands
                .insert(command_id.0, encode_record(&record)?.as_slice())?;
        }
        Ok(outcome)
    }

    /// Recognises a repeat of an earlier batch by the id of each write's first event (the
    /// `write_ids` index holds one entry per write, not per event: a random-keyed index of
    /// every event id dirtied one B-tree page per event and cut durable appends by 4x). A
    /// batch whose writes' first ids are all known, and whose every write matches the stored
    /// events of its stream one by one from there, is a repeat: its outcome is rebuilt from the
    /// store. Some first ids known but not all, or a mismatch, is a conflict.
    fn repeated_events(&self, batch: &AppendBatch) -> Result<Option<AppendOutcome>, StoreError> {
        let mut seen = BTreeSet::new();
        for event in batch.writes.iter().flat_map(|write| &write.events) {
            if !seen.insert(event.event_id) {
                return Err(StoreError::EventIdConflict {
                    event_id: event.event_id,
                });
            }
        }
        let mut known = Vec::new();
        let mut unknown = None;
        for write in &batch.writes {
            let Some(first) = write.events.first() else {
                continue;
            };
            match self.write_ids.get(first.event_id.0)? {
                Some(position) => known.push(position.value()),
                None => unknown = Some(first.event_id),
            }
        }
        match (known.is_empty(), unknown) {
            (true, _) => return Ok(None),
            (false, Some(event_id)) => return Err(StoreError::EventIdConflict { event_id }),
            (false, None) => {}
        }
        let mut known = known.into_iter();
        let mut streams = Vec::new();
        let (mut first_position, mut last_position) = (u64::MAX, 0);
        for write in &batch.writes {
            if write.events.is_empty() {
                let version =
                    stream_record(&self.streams, &write.stream)?.map_or(0, |record| record.version);
                streams.push(StreamOutcome {
                    stream: write.stream.clone(),
                    version,
                });
                continue;
            }
            let position = known
                .next()
                .ok_or_else(|| StoreError::Corrupt("a known write id went missing".to_owned()))?;
            let (version, first, last) = self.stored_write(write, position)?;
            first_position = first_position.min(first);
            last_position = last_position.max(last);
            streams.push(StreamOutcome {
                stream: write.stream.clone(),
                version,
            });
        }
        Ok(Some(AppendOutcome {
            first_position,
            last_position,
            streams,
            duplicate: true,
        }))
    }

    /// A repeated (non-empty) write whose first event is stored at `position`: each of its
    /// events must be the stored one at its place in the stream, or it is a conflict.
    /// Returns the stream version after it and its first and last positions.
    fn stored_write(
        &self,
        write: &crate::envelope::StreamWrite,
        position: u64,
    ) -> Result<(u64, u64, u64), StoreError> {
        let conflict = || StoreError::EventIdConflict {
            event_id: write.events[0].event_id,
        };
        let stored_first = self.disk_event(position)?;
        let record = stream_record(&self.streams, &write.stream)?.ok_or_else(conflict)?;
        if record.stream_no != stored_first.stream_no {
            return Err(conflict());
        }
        let (mut first_position, mut last_position) = (u64::MAX, 0);
        let mut sequence = stored_first.sequence;
        for event in &write.events {
            let stored_position = self
                .stream_events
                .get((record.stream_no, sequence))?
                .ok_or_else(conflict)?
                .value();
            if self.disk_event(stored_position)?.event_id != event.event_id.0 {
                return Err(conflict());
            }
            first_position = first_position.min(stored_position);
            last_position = last_position.max(stored_position);
            sequence += 1;
        }
        Ok((sequence - 1, first_position, last_position))
    }

    /// Checks one write against its stream: expected version and corrections.
    fn plan(
        &self,
        stream: &StreamKey,
        expected: ExpectedVersion,
        events: &[crate::envelope::NewEvent],
    ) -> Result<PlannedWrite, StoreError> {
        let record = stream_record(&self.streams, stream)?;
        let version_before = record.as_ref().map_or(0, |record| record.version);
        if !expected.admits(version_before) {
            return Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual: version_before,
            });
        }
        if version_before.checked_add(events.len() as u64).is_none() {
            return Err(StoreError::Corrupt(format!(
                "stream {stream} is at version {version_before}, which cannot grow"
            )));
        }
        let mut superseded_positions = HashMap::new();
        let mut metadata = Vec::new();
        for event in events {
            if event.is_system() {
                metadata.push(check_system_event(event)?);
            }
            let Some(target) = event.supersedes else {
                continue;
            };
            let bad = |reason| StoreError::BadCorrection {
                stream: stream.clone(),
                sequence: target,
                reason,
            };
            if target == 0 || target > version_before {
                return Err(bad("no such event in the stream before this batch"));
            }
            let record = record
                .as_ref()
                .ok_or_else(|| bad("the stream does not exist"))?;
            if target <= record.hidden_through {
                return Err(bad("it was soft-deleted"));
            }
            let position = self
                .stream_events
                .get((record.stream_no, target))?
                .ok_or_else(|| bad("the stream has no such event"))?
                .value();
            if self.superseded.get(position)?.is_some()
                || superseded_positions.insert(target, position).is_some()
            {
                return Err(bad("it is superseded already"));
            }
            if event.is_system() || self.disk_event_type(position)?.starts_with('$') {
                return Err(bad("system events neither correct nor get corrected"));
            }
        }
        Ok(PlannedWrite {
            record,
            version_before,
            superseded_positions,
            metadata,
        })
    }

    /// Writes one validated write's events and indexes; returns the stream's new version.
    fn write_stream(
        &mut self,
        batch: &AppendBatch,
        write: &crate::envelope::StreamWrite,
        plan: PlannedWrite,
    ) -> Result<u64, StoreError> {
        if write.events.is_empty() {
            return Ok(plan.version_before);
        }
        let mut record = match plan.record {
            Some(record) => record,
            None => self.create_stream(&write.stream)?,
        };
        let mut sequence = plan.version_before;
        let mut system_events = plan.metadata.into_iter();
        for event in &write.events {
            // `plan` checked the stream's numbers can grow; the head counter is checked here.
            sequence += 1;
            let position = self.insert_event(batch, &record, event, sequence)?;
            if sequence == plan.version_before + 1 {
                self.write_ids.insert(event.event_id.0, position)?;
            }
            if let Some(target) = event.supersedes {
                let target_position = plan.superseded_positions[&target];
                self.superseded.insert(target_position, position)?;
                record.corrected = true;
                self.change_epoch(&mut record)?;
            }
            // Any event after a soft delete makes the stream visible again (listings and
            // reads agree), except the `$deleted` event itself.
            record.deleted = false;
            if event.is_system() {
                match system_events.next().flatten() {
                    // Retention is a client read filter; aggregates and snapshots ignore it.
                    Some(metadata) => record.metadata = metadata,
                    None => {
                        record.hidden_through = sequence;
                        record.deleted = true;
                        self.change_epoch(&mut record)?;
                    }
                }
            }
        }
        record.version = sequence;
        record.last_timestamp_ms = batch.timestamp_ms;
        self.streams.insert(
            write.stream.qualified().as_str(),
            encode_record(&record)?.as_slice(),
        )?;
        Ok(sequence)
    }

    /// Stores `event` at the next head position as event `sequence` of the stream of
    /// `record`, with its stream, category and type indexes; returns the position.
    fn insert_event(
        &mut self,
        batch: &AppendBatch,
        record: &StreamRecord,
        event: &crate::envelope::NewEvent,
        sequence: u64,
    ) -> Result<u64, StoreError> {
        self.head_position = self
            .head_position
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("the head position cannot grow".to_owned()))?;
        let position = self.head_position;
        let type_no = self.type_number(&event.event_type)?;
        let disk = DiskEvent {
            event_id: event.event_id.0,
            stream_no: record.stream_no,
            sequence,
            type_no,
            event_version: event.event_version,
            command_id: batch.command_id.map(|id| id.0),
            causation_id: batch.causation_id.0,
            correlation_id: batch.correlation_id.0,
            timestamp_ms: batch.timestamp_ms,
            supersedes: event.supersedes,
            metadata: batch.metadata.clone(),
            payload: Vec::new(),
        };
        encode_event(&disk, &event.payload, &mut self.scratch);
        self.events.insert(position, self.scratch.as_slice())?;
        self.stream_events
            .insert((record.stream_no, sequence), position)?;
        self.category_events
            .insert((record.category_no, position), ())?;
        self.type_events.insert((type_no, position), ())?;
        Ok(position)
    }

    /// What the stream's aggregate is built from changed other than by appending (a
    /// correction, a soft delete): snapshots of the old epoch are stale, the stored one goes.
    fn change_epoch(&mut self, record: &mut StreamRecord) -> Result<(), StoreError> {
        record.epoch += 1;
        self.snapshots.remove(record.stream_no)?;
        Ok(())
    }

    fn disk_event_type(&self, position: u64) -> Result<String, StoreError> {
        let type_no = self.disk_event(position)?.type_no;
        let name = self
            .type_names
            .get(type_no)?
            .ok_or_else(|| StoreError::Corrupt(format!("type number {type_no} has no name")))?;
        Ok(name.value().to_owned())
    }

    fn create_stream(&mut self, stream: &StreamKey) -> Result<StreamRecord, StoreError> {
        let database = stream.database().as_str();
        let category = stream.category().as_str();
        self.databases.insert(database, ())?;
        let existing = self
            .categories
            .get((database, category))?
            .map(|guard| guard.value());
        let category_no = match existing {
            Some(number) => number,
            None => {
                let number = self.next_category_no;
                self.next_category_no += 1;
                self.categories.insert((database, category), number)?;
                number
            }
        };
        let stream_no = self.next_stream_no;
        self.next_stream_no += 1;
        self.stream_names
            .insert(stream_no, stream.qualified().as_str())?;
        self.category_streams
            .insert((category_no, stream.id()), stream_no)?;
        Ok(StreamRecord {
            stream_no,
            category_no,
            version: 0,
            metadata: StreamMetadata::default(),
            hidden_through: 0,
            deleted: false,
            last_timestamp_ms: 0,
            corrected: false,
            epoch: 0,
        })
    }

    fn type_number(&mut self, name: &TypeName) -> Result<u64, StoreError> {
        if let Some(&number) = self.type_numbers.get(name) {
            return Ok(number);
        }
        let existing = self.types.get(name.as_str())?.map(|guard| guard.value());
        let number = match existing {
            Some(number) => number,
            None => {
                let number = self.next_type_no;
                self.next_type_no += 1;
                self.types.insert(name.as_str(), number)?;
                self.type_names.insert(number, name.as_str())?;
                number
            }
        };
        self.type_numbers.insert(name.clone(), number);
        Ok(number)
    }

    fn disk_event(&self, position: u64) -> Result<DiskEvent, StoreError> {
        let guard = self.events.get(position)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "event index names position {position}, which is empty"
            ))
        })?;
        DiskEvent::decode(guard.value())
    }
}

/// Encodes an event record without copying the payload into the `DiskEvent` first.
fn encode_event(header: &DiskEvent, payload: &[u8], bytes: &mut Vec<u8>) {
    debug_assert!(header.payload.is_empty());
    header.encode_into(bytes);
    bytes.extend_from_slice(payload);
}
