//! State transfer, both sides: a member serves the handover fixed at a joiner's admission,
//! a joiner fetches it chunk by chunk, checks its digest and writes it.

use chorus_aggregate::{
    AppendBatch, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError,
};
use chorus_consensus::PeerId;
use tracing::{debug, warn};

use crate::membership::{
    EventlessCommand, Handover, Holding, numbering_of, section_digest, section_events,
};

use super::Engine;
use super::limits::{TRANSFER_CHUNK_BYTES, TRANSFER_CHUNK_COMMANDS, TRANSFER_CHUNK_EVENTS};
use super::wire::{Message, TransferChunk};

/// A joiner's state transfer from one source.
pub(super) struct TransferRun {
    pub(super) source: usize,
    pub(super) next_position: u64,
    /// Payload bytes received so far.
    pub(super) bytes: u64,
    pub(super) events: Vec<RecordedEvent>,
    pub(super) commands: Vec<EventlessCommand>,
    pub(super) requested_at_ms: u64,
}

impl Engine {
    /// Joiner: (re)starts the transfer from the `source`-th member that vouched (cycling).
    pub(super) fn start_transfer(&mut self, source: usize) {
        let Some(target) = self.state.transfer_target() else {
            return;
        };
        if target.sources.is_empty() {
            return;
        }
        let source = source % target.sources.len();
        let peer = target.sources[source];
        let generation = target.welcome.generation;
        self.transfer = Some(TransferRun {
            source,
            next_position: 1,
            bytes: 0,
            events: Vec::new(),
            commands: Vec::new(),
            requested_at_ms: self.now_ms,
        });
        self.send(
            peer,
            &Message::TransferRequest {
                generation,
                position: 1,
            },
        );
    }

    /// Member: serves a joiner's state transfer, from the handover fixed at its admission.
    /// The cursor runs over our store's positions up to the handover's head (the section's
    /// events), then over the handover's eventless commands.
    pub(super) fn on_transfer_request(&mut self, from: PeerId, generation: u64, position: u64) {
        let Some(handover) = self
            .state
            .handovers
            .iter()
            .find(|handover| handover.joiner == from && handover.generation == generation)
            .cloned()
        else {
            debug!(peer = %from, generation, "a transfer request without a handover");
            return;
        };
        let mut chunk = TransferChunk {
            generation,
            position,
            events: Vec::new(),
            commands: Vec::new(),
            next: None,
        };
        let (cursor, bytes) = match fill_events(&self.store, &handover, &mut chunk) {
            Ok(filled) => filled,
            Err(error) => {
                warn!(%error, "the store does not read; transfer chunk not sent");
                return;
            }
        };
        if chunk.next.is_none() {
            fill_commands(&handover, &mut chunk, cursor, bytes);
        }
        self.send(from, &Message::TransferChunk(chunk));
    }

    /// Joiner: a chunk of its state from the source it asked.
    pub(super) fn on_transfer_chunk(&mut self, from: PeerId, chunk: TransferChunk) {
        let Some(target) = self.state.transfer_target() else {
            return;
        };
        let Some(run) = self.transfer.as_mut() else {
            return;
        };
        if target.sources.get(run.source) != Some(&from)
            || chunk.generation != target.welcome.generation
            || chunk.position != run.next_position
        {
            debug!(peer = %from, "a transfer chunk nobody asked this peer for");
            return;
        }
        let events = run.events.len() + chunk.events.len();
        let commands = run.commands.len() + chunk.commands.len();
        let bytes = run.bytes
            + chunk
                .events
                .iter()
                .map(|event| event.payload.len() as u64)
                .sum::<u64>();
        // Honest chunks are never empty unless last; an empty one could stall us forever.
        let empty_and_not_last =
            chunk.events.is_empty() && chunk.commands.is_empty() && chunk.next.is_some();
        if events as u64 > target.welcome.events
            || commands as u64 > target.welcome.commands
            || bytes > target.welcome.bytes
            || empty_and_not_last
        {
            let next = run.source + 1;
            warn!(peer = %from, "a transfer bigger than its welcome promised; asking another member");
            self.start_transfer(next);
            return;
        }
        run.bytes = bytes;
        run.events.extend(chunk.events);
        run.commands.extend(chunk.commands);
        run.requested_at_ms = self.now_ms;
        match chunk.next {
            Some(next) if next > run.next_position => {
                run.next_position = next;
                let generation = chunk.generation;
                self.send(
                    from,
                    &Message::TransferRequest {
                        generation,
                        position: next,
                    },
                );
            }
            Some(_) => {
                let next = run.source + 1;
                debug!(peer = %from, "a transfer chunk that goes backwards; asking another member");
                self.start_transfer(next);
            }
            None => self.finish_transfer(),
        }
    }

    /// Joiner: all chunks are in. If they have the digest the welcome promised, they are
    /// written (one write per original command, expected versions checked) and the joiner
    /// starts applying its generation's blocks; otherwise it asks another member.
    pub(super) fn finish_transfer(&mut self) {
        let (Some(target), Some(run)) =
            (self.state.transfer_target().cloned(), self.transfer.take())
        else {
            return;
        };
        if section_digest(&run.events, &run.commands) != target.welcome.digest {
            warn!("transferred state does not match the welcome's digest; asking another member");
            self.start_transfer(run.source + 1);
            return;
        }
        // The members' numbering, when f + 1 vouched for it and the events carry it; else
        // the joiner numbers the state afresh.
        let numbering = target
            .welcome
            .numbering
            .filter(|numbering| numbering_of(&run.events, numbering.head) == *numbering);
        let head = numbering.map(|numbering| numbering.head);
        if let Err(error) = self.write_transferred(&run.events, &run.commands, head) {
            warn!(%error, "transferred state not written; asking again");
            self.start_transfer(run.source + 1);
            return;
        }
        let mut state = self.state.clone();
        state.holding = Holding::Complete;
        if let Err(error) = state.save(&self.store) {
            // The data is written (idempotently): fetch it again and save then.
            warn!(%error, "section state not saved after the transfer; asking again");
            self.start_transfer(run.source + 1);
            return;
        }
        self.state = state;
        debug!(events = run.events.len(), "state transfer done");
        // Proposals deferred while the state was coming can be judged now.
        self.after_blocks();
    }

    /// Writes transferred events as the writes they were (consecutive events of one command
    /// on one stream), with the original ids, times and expected versions, then the eventless
    /// commands (refusals, and appends without events). With the source's `head` (its
    /// numbering vouched for), each write keeps its position and the store continues from
    /// that head.
    pub(super) fn write_transferred(
        &self,
        events: &[RecordedEvent],
        commands: &[EventlessCommand],
        head: Option<u64>,
    ) -> Result<(), StoreError> {
        let (mut batches, positions) = transferred_writes(events);
        for command in commands.iter().filter(|command| command.refusal.is_none()) {
            batches.push(AppendBatch {
                command_id: Some(command.command_id),
                causation_id: command.command_id.into(),
                correlation_id: command.command_id.into(),
                timestamp_ms: 0,
                metadata: None,
                writes: vec![chorus_aggregate::StreamWrite {
                    stream: command.stream.clone(),
                    expected: ExpectedVersion::Any,
                    events: Vec::new(),
                }],
            });
        }
        const GROUP: usize = chorus_aggregate::limits::GROUP_BATCHES_MAX;
        let groups = batches.len().div_ceil(GROUP).max(1);
        for index in 0..groups {
            let group = batches.get(index * GROUP..).unwrap_or(&[]);
            let group = &group[..group.len().min(GROUP)];
            let outcome = match head {
                Some(head) => {
                    let numbered = positions.get(index * GROUP..).unwrap_or(&[]);
                    let numbered = &numbered[..numbered.len().min(group.len())];
                    // The head is raised once everything is in.
                    let raise = if index + 1 == groups { head } else { 0 };
                    self.store.append_group_at(group, numbered, raise)?
                }
                None => self.store.append_group(group)?,
            };
            if let Some(error) = outcome.into_iter().find_map(Result::err) {
                return Err(error);
            }
        }
        for command in commands {
            if let Some(reason) = &command.refusal {
                self.store
                    .record_refusal(command.command_id, &command.stream, reason)?;
            }
        }
        Ok(())
    }
}

/// Transferred events as the writes they were: consecutive events (by position) of one
/// command on one stream form one write. With each write's first position.
fn transferred_writes(events: &[RecordedEvent]) -> (Vec<AppendBatch>, Vec<u64>) {
    let mut batches: Vec<AppendBatch> = Vec::new();
    let mut positions = Vec::new();
    let mut previous: Option<&RecordedEvent> = None;
    for event in events {
        let new_event = NewEvent {
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            event_version: event.event_version,
            payload: event.payload.clone(),
            supersedes: event.supersedes,
        };
        // Positions come from the source: `checked_add`, as one may be `u64::MAX`.
        let follows =
            previous.is_some_and(|last| last.position.checked_add(1) == Some(event.position));
        previous = Some(event);
        let continues = follows
            && batches.last().is_some_and(|batch| {
                batch.command_id == event.command_id
                    && batch.timestamp_ms == event.timestamp_ms
                    && batch.metadata == event.metadata
                    && batch
                        .writes
                        .first()
                        .is_some_and(|write| write.stream == event.stream)
            });
        match batches.last_mut() {
            Some(batch) if continues => batch.writes[0].events.push(new_event),
            _ => {
                positions.push(event.position);
                batches.push(AppendBatch {
                    command_id: event.command_id,
                    causation_id: event.causation_id,
                    correlation_id: event.correlation_id,
                    timestamp_ms: event.timestamp_ms,
                    metadata: event.metadata.clone(),
                    writes: vec![chorus_aggregate::StreamWrite {
                        stream: event.stream.clone(),
                        expected: if event.sequence <= 1 {
                            ExpectedVersion::NoStream
                        } else {
                            ExpectedVersion::Exact(event.sequence - 1)
                        },
                        events: vec![new_event],
                    }],
                });
            }
        }
    }
    (batches, positions)
}

/// Fills `chunk` with the section's events from its position up to the handover's head,
/// within the chunk limits (setting `next` if they do not all fit). Returns where the cursor
/// stands after them (past the head once every event is in) and the payload bytes taken.
fn fill_events(
    store: &EventStore,
    handover: &Handover,
    chunk: &mut TransferChunk,
) -> Result<(u64, usize), StoreError> {
    let mut bytes = 0;
    let mut cursor = chunk.position.max(1);
    if cursor > handover.head {
        return Ok((cursor, bytes));
    }
    loop {
        let (slice, slice_next) =
            section_events(store, &handover.prefix, cursor, Some(handover.head), 100)?;
        for event in slice {
            if !chunk.events.is_empty()
                && (chunk.events.len() >= TRANSFER_CHUNK_EVENTS
                    || bytes + event.payload.len() > TRANSFER_CHUNK_BYTES)
            {
                chunk.next = Some(event.position);
                return Ok((cursor, bytes));
            }
            bytes += event.payload.len();
            chunk.events.push(event);
        }
        match slice_next {
            Some(next) if next <= handover.head => cursor = next,
            _ => return Ok((handover.head + 1, bytes)),
        }
    }
}

/// Fills the rest of `chunk` with the handover's eventless commands from `cursor` on (their
/// cursor positions follow the head), sharing the byte budget with the events before them.
fn fill_commands(handover: &Handover, chunk: &mut TransferChunk, cursor: u64, mut bytes: usize) {
    let mut index = usize::try_from(cursor.saturating_sub(handover.head + 1)).unwrap_or(usize::MAX);
    while let Some(command) = handover.commands.get(index) {
        let size =
            command.stream.qualified().len() + command.refusal.as_ref().map_or(0, String::len) + 64;
        if (!chunk.events.is_empty() || !chunk.commands.is_empty())
            && (chunk.commands.len() >= TRANSFER_CHUNK_COMMANDS
                || bytes + size > TRANSFER_CHUNK_BYTES)
        {
            chunk.next = Some(handover.head + 1 + index as u64);
            return;
        }
        bytes += size;
        chunk.commands.push(command.clone());
        index += 1;
    }
}
