//! Loading aggregates (snapshot + tail) and executing commands against the local store.
//!
//! [`decide`] is the pure step the engine shares: state and version in, the batch to propose
//! out. [`Repository::execute`] is the whole local path: idempotency check, load, decide,
//! append with the version the decision was made at, retry when another writer got there first
//! (only if the client did not pin a version), snapshot every N events.

use std::marker::PhantomData;

use tracing::debug;

use crate::domain::{Aggregate, CommandContext, decode_event, encode_event};
use crate::envelope::{
    AppendBatch, AppendOutcome, CommandEnvelope, ExpectedVersion, NewEvent, StreamWrite,
};
use crate::error::{CommandError, StoreError};
use crate::ids::EventId;
use crate::limits::READ_COUNT_MAX;
use crate::names::StreamKey;
use crate::store::{CommandRecord, EventStore, ReadView, SnapshotRecord};

/// Default number of events between two snapshots of a stream.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 100;
/// Default number of attempts of a command whose stream keeps changing under it.
pub const ATTEMPTS_MAX_DEFAULT: u32 = 5;

/// An aggregate's state at a version, and how it was built.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version it reflects.
    pub version: u64,
    /// The stream's epoch in the view it was loaded from.
    pub epoch: u64,
    /// The version of the snapshot it started from, if one was used.
    pub snapshot_version: Option<u64>,
    /// How many events were applied on top of the snapshot (or of the empty state).
    pub events_applied: u64,
}

/// A state of a stream built earlier (kept in memory: `state_cache`), at `version` in
/// `epoch`; usable as a load's starting point while the stream is in that epoch.
#[derive(Clone, Debug)]
pub(crate) struct Base<A> {
    pub(crate) state: A,
    pub(crate) version: u64,
    pub(crate) epoch: u64,
}

/// Loads and executes aggregates of type `A` against one store.
pub struct Repository<'s, A> {
    store: &'s EventStore,
    snapshot_every: Option<u64>,
    attempts_max: u32,
    aggregate: PhantomData<A>,
}

impl<'s, A: Aggregate> Repository<'s, A> {
    /// A repository with snapshots every [`SNAPSHOT_EVERY_DEFAULT`] events.
    pub fn new(store: &'s EventStore) -> Self {
        Self {
            store,
            snapshot_every: Some(SNAPSHOT_EVERY_DEFAULT),
            attempts_max: ATTEMPTS_MAX_DEFAULT,
            aggregate: PhantomData,
        }
    }

    /// Snapshots every `events` events (`None`: never, and loads ignore snapshots).
    pub fn with_snapshots_every(mut self, events: Option<u64>) -> Self {
        self.snapshot_every = events.filter(|&events| events > 0);
        self
    }

    /// Loads the aggregate of `stream` from one consistent view of the store: from its
    /// snapshot when a valid one exists, then the events after it, as
    /// [`ReadView::read_history`] shows them (corrections and soft delete apply, retention
    /// does not). System events (`$metadata`, `$deleted`) are not the aggregate's and are
    /// skipped.
    pub fn load(&self, stream: &StreamKey) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_over(stream, None).map(|(loaded, _)| loaded)
    }

    /// `load`, starting from `base` when it is still valid (the stream's epoch, a version it
    /// has), as from a snapshot: only the events after it are read. Also returns the agreed
    /// timestamp of the stream's last event (0 for a new stream).
    pub(crate) fn load_over(
        &self,
        stream: &StreamKey,
        base: Option<Base<A>>,
    ) -> Result<(Loaded<A>, u64), CommandError<A::Error>> {
        check_category::<A>(stream)?;
        let view = self.store.view()?;
        let info = view.stream_info(stream)?;
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
            epoch: info.as_ref().map_or(0, |info| info.epoch),
            snapshot_version: None,
            events_applied: 0,
        };
        let base = base.filter(|base| {
            info.as_ref().map_or(base.version == 0, |info| {
                base.epoch == info.epoch && base.version <= info.version
            })
        });
        if let Some(base) = base {
            loaded.state = base.state;
            loaded.version = base.version;
        } else if self.snapshot_every.is_some() {
            if let Some((state, version)) = usable_snapshot::<A>(&view, stream)? {
                loaded.state = state;
                loaded.version = version;
                loaded.snapshot_version = Some(version);
            }
        }
        // Nothing to read when the starting state is at the stream's head (the usual case
        // with a cached state); otherwise every page after it (`slice.version` is the
        // stream's version: the pages end on `slice.next`).
        let head = info.as_ref().map_or(0, |info| info.version);
        let mut from = loaded.version + 1;
        while from <= head {
            let slice = view.read_history(stream, from, READ_COUNT_MAX)?;
            for event in slice
                .events
                .iter()
                .filter(|event| !event.event_type.is_system())
            {
                let typed = decode_event::<A::Event>(
                    event.event_type.as_str(),
                    event.event_version,
                    &event.payload,
                )
                .map_err(|error| CommandError::Decode {
                    stream: stream.clone(),
                    sequence: event.sequence,
                    error: Box::new(error),
                })?;
                loaded.state = std::mem::take(&mut loaded.state).apply(&typed);
                loaded.events_applied += 1;
            }
            // Hidden (superseded, deleted) and system events count towards the version.
            loaded.version = slice.version;
            match slice.next {
                Some(next) => from = next,
                None => break,
            }
        }
        let timestamp_ms = info.map_or(0, |info| info.last_timestamp_ms);
        Ok((loaded, timestamp_ms))
    }

    /// Executes a command: returns the outcome of its append (marked `duplicate` when the
    /// command id was executed before). A refusal by the aggregate is recorded, so the same
    /// command id is refused again ([`CommandError::AlreadyRefused`]) even if the state has
    /// changed since: retry a refused command with a new id.
    pub fn execute(
        &self,
        envelope: &CommandEnvelope<A::Command>,
    ) -> Result<AppendOutcome, CommandError<A::Error>> {
        check_category::<A>(&envelope.stream)?;
        match self.store.command_record(envelope.command_id)? {
            Some(CommandRecord::Appended(mut outcome)) => {
                outcome.duplicate = true;
                return Ok(outcome);
            }
            Some(CommandRecord::Refused { stream, reason }) => {
                return Err(CommandError::AlreadyRefused { stream, reason });
            }
            None => {}
        }
        for _attempt in 0..self.attempts_max {
            let loaded = self.load(&envelope.stream)?;
            let (batch, state) = match decide(&loaded.state, loaded.version, envelope) {
                Ok(decided) => decided,
                Err(CommandError::Domain(error)) => {
                    let existing = self.store.record_refusal(
                        envelope.command_id,
                        &envelope.stream,
                        &error.to_string(),
                    )?;
                    // A concurrent execution of the same id appended first: it stands, and
                    // this refusal (decided on an older state) is not reported.
                    if let Some(CommandRecord::Appended(mut outcome)) = existing {
                        outcome.duplicate = true;
                        return Ok(outcome);
                    }
                    return Err(CommandError::Domain(error));
                }
                Err(other) => return Err(other),
            };
            match self.store.append(&batch) {
                Ok(outcome) => {
                    self.maybe_snapshot(&envelope.stream, &loaded, &outcome, state);
                    return Ok(outcome);
                }
                // Another writer moved the stream between load and append; a command that
                // accepts any version decides again on the new state.
                Err(StoreError::WrongExpectedVersion { .. })
                    if envelope.expected == ExpectedVersion::Any => {}
                Err(StoreError::CommandRefused { stream, reason }) => {
                    return Err(CommandError::AlreadyRefused { stream, reason });
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(CommandError::Contention {
            stream: envelope.stream.clone(),
            attempts: self.attempts_max,
        })
    }

    /// Saves a snapshot when the append crossed a multiple of `snapshot_every`. A failure to
    /// save one (for instance because the stream was corrected meanwhile, which makes it
    /// stale) costs only speed, so it is logged, not returned.
    fn maybe_snapshot(
        &self,
        stream: &StreamKey,
        loaded: &Loaded<A>,
        outcome: &AppendOutcome,
        state: A,
    ) {
        let Some(every) = self.snapshot_every else {
            return;
        };
        let Some(after) = outcome.streams.first().map(|written| written.version) else {
            return;
        };
        if outcome.duplicate || after / every == loaded.version / every {
            return;
        }
        let snapshot = serde_json::to_vec(&state).map(|bytes| SnapshotRecord {
            schema_version: A::SCHEMA_VERSION,
            version: after,
            // The append succeeded at the loaded version, and every epoch change moves the
            // version, so the stream was still at the loaded epoch when it committed.
            epoch: loaded.epoch,
            state: bytes,
        });
        let result = match snapshot {
            Ok(snapshot) => self.store.write_snapshot(stream, &snapshot),
            Err(error) => Err(StoreError::Corrupt(error.to_string())),
        };
        if let Err(error) = result {
            debug!(%stream, %error, "snapshot not saved");
        }
    }
}

/// A snapshot the view holds for the stream that this code can use: same schema version, and a
/// state that decodes. Anything else means "rebuild from the events".
fn usable_snapshot<A: Aggregate>(
    view: &ReadView,
    stream: &StreamKey,
) -> Result<Option<(A, u64)>, StoreError> {
    let Some(snapshot) = view.read_snapshot(stream)? else {
        return Ok(None);
    };
    if snapshot.schema_version != A::SCHEMA_VERSION {
        debug!(%stream, snapshot.schema_version, "snapshot of another schema ignored");
        return Ok(None);
    }
    match serde_json::from_slice::<A>(&snapshot.state) {
        Ok(state) => Ok(Some((state, snapshot.version))),
        Err(error) => {
            debug!(%stream, %error, "snapshot does not decode; rebuilding from events");
            Ok(None)
        }
    }
}

/// The pure decision step: executes `envelope` on `state` (at stream `version`) and returns the
/// batch to append — pinned to `version`, so that it applies only to the state it was decided
/// on — and the state after its events.
pub fn decide<A: Aggregate>(
    state: &A,
    version: u64,
    envelope: &CommandEnvelope<A::Command>,
) -> Result<(AppendBatch, A), CommandError<A::Error>> {
    let (batch, events) = decide_batch(state, version, envelope)?;
    let next_state = events
        .iter()
        .fold(state.clone(), |state, event| state.apply(event));
    Ok((batch, next_state))
}

/// A decided batch and the domain events it encodes.
pub(crate) type Decided<A> = (AppendBatch, Vec<<A as Aggregate>::Event>);

/// `decide` without the state after: the batch, and the domain events it encodes. The
/// engine's path needs only the batch (it never keeps a state that is not stored), so it
/// does not pay for a copy of the state.
pub(crate) fn decide_batch<A: Aggregate>(
    state: &A,
    version: u64,
    envelope: &CommandEnvelope<A::Command>,
) -> Result<Decided<A>, CommandError<A::Error>> {
    check_category::<A>(&envelope.stream)?;
    if !envelope.expected.admits(version) {
        return Err(CommandError::WrongExpectedVersion {
            stream: envelope.stream.clone(),
            expected: envelope.expected,
            actual: version,
        });
    }
    let context = CommandContext {
        stream: envelope.stream.clone(),
        command_id: envelope.command_id,
        timestamp_ms: envelope.timestamp_ms,
        domain_version: envelope.domain_version.clone(),
    };
    let events = state
        .handle(&envelope.command, &context)
        .map_err(CommandError::Domain)?;
    let mut new_events = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let encoded = encode_event(event).map_err(|error| CommandError::Decode {
            stream: envelope.stream.clone(),
            sequence: version + 1 + index as u64,
            error: Box::new(error),
        })?;
        new_events.push(NewEvent {
            event_id: EventId::for_command(envelope.command_id, index),
            event_type: encoded.event_type,
            event_version: encoded.event_version,
            payload: encoded.payload,
            supersedes: None,
        });
    }
    let batch = AppendBatch {
        command_id: Some(envelope.command_id),
        causation_id: envelope.causation_id,
        correlation_id: envelope.correlation_id,
        timestamp_ms: envelope.timestamp_ms,
        metadata: envelope.metadata.clone(),
        writes: vec![StreamWrite {
            stream: envelope.stream.clone(),
            expected: ExpectedVersion::Exact(version),
            events: new_events,
        }],
    };
    Ok((batch, events))
}

fn check_category<A: Aggregate>(stream: &StreamKey) -> Result<(), CommandError<A::Error>> {
    if stream.category().as_str() == A::CATEGORY {
        Ok(())
    } else {
        Err(CommandError::BadCommand(format!(
            "stream {stream} is not of category {}",
            A::CATEGORY
        )))
    }
}
