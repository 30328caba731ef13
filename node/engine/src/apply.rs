//! Applying agreed proposals to the event store, in block order.
//!
//! Every member runs this on the same agreed sequence and must end with the same store. For
//! each proposal, in order:
//!
//! 1. a command id the store knows gets its first fate again (`Duplicate`, or the recorded
//!    refusal): a command is applied once;
//! 2. the command is decided on the stream's current state (`AggregateRegistry::decide`): in
//!    Single mode at the block's agreed time; in Supermajority mode the proposal must still be
//!    at the version its proposer decided at (else `Stale`: it lost a race, and its originator
//!    proposes again), and the events decided now must be the proposed ones (else `Forged`:
//!    they are never applied);
//! 3. a refusal (the aggregate's, or a command that can never execute) is recorded against the
//!    command id, so every later attempt gets the same answer;
//! 4. decided batches are appended by group commit: one transaction per *wave*, a run
//!    of proposals with distinct streams and distinct command ids, within `GROUP_BATCHES_MAX`
//!    batches and `WAVE_BYTES_MAX` payload bytes. A proposal whose stream or command id is
//!    already in the wave closes the wave first, so that it is decided on the state the
//!    earlier one produced. The waves depend only on the sequence, so every member cuts the
//!    same ones; and since each proposal is decided on the state all earlier ones produced,
//!    the results do not depend on the cuts either (property test).
//!
//! Every write here is committed deferred ([`Commit::Deferred`]): durable at the store's next
//! durable commit, usually the node's next replay-log append. A crash before it loses whole
//! waves, which the restarted member applies again from its replay log, on the same state, to
//! the same result; so with a replay log answers need not wait for it, and without one the
//! engine makes the store durable before any answer or message leaves (`Engine::poll_reply`).

use std::collections::BTreeSet;

use chorus_aggregate::limits::GROUP_BATCHES_MAX;
use chorus_aggregate::{
    AggregateRegistry, AppendBatch, AppendOutcome, CommandRecord, CommandRequest, Commit,
    DispatchError, EventStore, StoreError,
};

use crate::proposal::Proposal;

/// A proposal the section agreed on, with the block's agreed time.
#[derive(Clone, Debug, PartialEq)]
pub struct AgreedProposal {
    /// The block's consensus timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// What was agreed.
    pub proposal: Proposal,
}

/// What became of one agreed proposal. Every member computes the same value for the same
/// agreed sequence on the same store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Its events were appended.
    Appended(AppendOutcome),
    /// The command id was applied before; nothing new was written.
    Duplicate(AppendOutcome),
    /// The aggregate refused the command (now or, for this command id, before).
    Refused(String),
    /// The command can never execute as it is (unknown category, undecodable, a pinned
    /// version that has passed, a store rule); recorded like a refusal.
    Invalid(String),
    /// Supermajority mode: the stream left the version the events were decided at. Not
    /// recorded: the originator decides again and proposes anew.
    Stale {
        /// The version the proposal was decided at.
        decided_at: u64,
        /// The stream's version when it was agreed.
        actual: u64,
    },
    /// Supermajority mode: the proposed events are not what the command decides (a faulty or
    /// lying proposer). Not recorded (an honest proposal of the same command may follow) and
    /// never applied.
    Forged(String),
    /// A scheduled command agreed before its time (the block's agreed time is earlier than
    /// its `not_before_ms`). Not recorded: it is proposed again, and applies in the first
    /// block at or after its time.
    Early {
        /// When it may execute.
        not_before_ms: u64,
        /// The block's agreed time.
        agreed_ms: u64,
    },
}

/// Applies agreed proposals in order, under the section's agreed domain version
/// (`CommandContext::domain_version`: an upgrade agreed between two blocks is applied
/// between two calls); returns what became of each, in the same order. The error is a
/// storage failure: the caller applies the same proposals again after it (those already
/// committed come back as `Duplicate`). The writes are deferred: make the store durable
/// ([`EventStore::make_durable`]) before acknowledging any of them.
pub fn apply_agreed(
    registry: &AggregateRegistry,
    store: &EventStore,
    domain_version: &str,
    agreed: &[AgreedProposal],
) -> Result<Vec<Applied>, StoreError> {
    let mut results: Vec<Option<Applied>> = vec![None; agreed.len()];
    let mut wave = Wave::default();
    for (index, proposal) in agreed.iter().enumerate() {
        let request = proposal.proposal.request();
        if wave.holds(request) || wave.is_full() {
            wave.commit(registry, store, agreed, &mut results)?;
        }
        match store.command_record(request.command_id)? {
            Some(CommandRecord::Appended(outcome)) => {
                results[index] = Some(Applied::Duplicate(outcome));
                continue;
            }
            Some(CommandRecord::Refused { reason, .. }) => {
                results[index] = Some(Applied::Refused(reason));
                continue;
            }
            None => {}
        }
        match judge(registry, store, domain_version, proposal)? {
            Verdict::Append(batch) => wave.add(index, request, batch),
            Verdict::Settled(outcome) => {
                if let Applied::Refused(reason) | Applied::Invalid(reason) = &outcome {
                    store.record_refusal_with(
                        request.command_id,
                        &request.stream,
                        reason,
                        Commit::Deferred,
                    )?;
                }
                results[index] = Some(outcome);
            }
        }
    }
    wave.commit(registry, store, agreed, &mut results)?;
    Ok(results
        .into_iter()
        .map(|result| result.unwrap_or_else(|| unreachable!("every proposal gets a result")))
        .collect())
}

/// What an agreed proposal comes to once judged on the agreed state.
enum Verdict {
    /// The batch to append (with the rest of its wave).
    Append(AppendBatch),
    /// Nothing to append: what it became instead.
    Settled(Applied),
}

/// Judges one agreed proposal on the agreed state: the batch to append, or what it became
/// instead. The error is a storage failure.
fn judge(
    registry: &AggregateRegistry,
    store: &EventStore,
    domain_version: &str,
    agreed: &AgreedProposal,
) -> Result<Verdict, StoreError> {
    let (request, proposed) = match &agreed.proposal {
        Proposal::Command(request) => {
            // Single mode executes at the block's agreed time, under the agreed domain.
            let mut request = request.clone();
            request.timestamp_ms = agreed.timestamp_ms;
            request.domain_version = domain_version.to_owned();
            (request, None)
        }
        Proposal::Decided {
            request,
            version,
            events,
        } => (request.clone(), Some((*version, events))),
    };
    if let Some(settled) = not_yet(store, domain_version, agreed, &request, proposed)? {
        return Ok(Verdict::Settled(settled));
    }
    let decision = match registry.decide(store, &request) {
        Ok(decision) => decision,
        Err(error) => return rejection(error),
    };
    if let Some((decided_at, events)) = proposed {
        if decision.version != decided_at {
            return Ok(Verdict::Settled(Applied::Stale {
                decided_at,
                actual: decision.version,
            }));
        }
        if request.timestamp_ms != decision.stream_timestamp_ms {
            return Ok(Verdict::Settled(Applied::Forged(format!(
                "decided at time {}, but the stream's last event is at {}",
                request.timestamp_ms, decision.stream_timestamp_ms
            ))));
        }
        let decided = decision
            .batch
            .writes
            .first()
            .map(|write| write.events.as_slice())
            .unwrap_or_default();
        if decided != events.as_slice() {
            return Ok(Verdict::Settled(Applied::Forged(format!(
                "the proposal carries {} events that the command does not decide",
                events.len()
            ))));
        }
    }
    let mut batch = decision.batch;
    // The batch is stamped with the block's agreed time, the same on every member (the
    // command itself executed at the time of its stream's last event, which the proposal
    // fixed): time moves on in Supermajority mode as in Single mode.
    batch.timestamp_ms = agreed.timestamp_ms;
    Ok(Verdict::Append(batch))
}

/// What settles an agreed proposal before anything is decided: too early, or decided on
/// another state or domain than the agreed one (`proposed`: the version and events a
/// Supermajority proposal was decided at). The error is a storage failure.
fn not_yet(
    store: &EventStore,
    domain_version: &str,
    agreed: &AgreedProposal,
    request: &CommandRequest,
    proposed: Option<(u64, &Vec<chorus_aggregate::NewEvent>)>,
) -> Result<Option<Applied>, StoreError> {
    // A scheduled command executes from its agreed time on, never earlier, whoever proposed
    // it, as proposed (the block's time is the same on every member, so every member skips
    // it alike; one proposed without its schedule under its id is another command, which
    // its sender learns as `IdTaken`).
    if let Some(not_before_ms) = request.not_before_ms {
        if agreed.timestamp_ms < not_before_ms {
            return Ok(Some(Applied::Early {
                not_before_ms,
                agreed_ms: agreed.timestamp_ms,
            }));
        }
    }
    // A decision made at another version is stale before anything else is asked of it: the
    // aggregate must not run on a state the proposal was not decided on, or a refusal it
    // gives there would be recorded. Versions only grow, so a block stale once is stale
    // whenever it is applied again (after a restore, or after a storage failure), and its
    // fate does not depend on when it is applied.
    let Some((decided_at, _)) = proposed else {
        return Ok(None);
    };
    let actual = store
        .stream_info(&request.stream)?
        .map_or(0, |info| info.version);
    // Decided under a domain the section left (an upgrade came between): stale too, decided
    // again under the agreed one. Upgrades only move forward, so this too holds whenever the
    // block is applied again.
    if actual != decided_at || request.domain_version != domain_version {
        return Ok(Some(Applied::Stale { decided_at, actual }));
    }
    Ok(None)
}

/// Sorts a failed decision: final answers become results, storage failures stop the apply.
fn rejection(error: DispatchError) -> Result<Verdict, StoreError> {
    match error {
        DispatchError::Refused(reason) => Ok(Verdict::Settled(Applied::Refused(reason))),
        DispatchError::Store(error) => Err(error),
        // Contention cannot happen here (a decision appends nothing), but if it did, it would
        // say nothing about the command: treat it like any other failure to execute.
        error @ (DispatchError::UnknownCategory { .. }
        | DispatchError::Invalid(_)
        | DispatchError::Conflict(_)) => Ok(Verdict::Settled(Applied::Invalid(error.to_string()))),
    }
}

/// Most payload bytes one wave commits in one transaction (and `GROUP_BATCHES_MAX` batches):
/// a wave that reached either is committed before the next proposal joins. Both limits
/// depend only on the proposals, so every member cuts the same waves.
pub const WAVE_BYTES_MAX: usize = 64 << 20;

/// Decided batches waiting for their group commit.
#[derive(Default)]
struct Wave {
    indexes: Vec<usize>,
    batches: Vec<AppendBatch>,
    streams: BTreeSet<String>,
    commands: BTreeSet<[u8; 16]>,
    bytes: usize,
}

impl Wave {
    fn is_full(&self) -> bool {
        self.batches.len() >= GROUP_BATCHES_MAX || self.bytes >= WAVE_BYTES_MAX
    }

    fn holds(&self, request: &CommandRequest) -> bool {
        self.streams.contains(&request.stream.qualified())
            || self.commands.contains(&request.command_id.0)
    }

    fn add(&mut self, index: usize, request: &CommandRequest, batch: AppendBatch) {
        self.streams.insert(request.stream.qualified());
        self.commands.insert(request.command_id.0);
        self.indexes.push(index);
        self.bytes += batch
            .writes
            .iter()
            .flat_map(|write| &write.events)
            .map(|event| event.payload.len())
            .sum::<usize>();
        self.batches.push(batch);
    }

    /// Appends the wave in one (deferred) transaction and fills in the results; the
    /// aggregates' cached states move on over what was appended (`AggregateRegistry::appended`).
    fn commit(
        &mut self,
        registry: &AggregateRegistry,
        store: &EventStore,
        agreed: &[AgreedProposal],
        results: &mut [Option<Applied>],
    ) -> Result<(), StoreError> {
        if self.batches.is_empty() {
            return Ok(());
        }
        let outcomes = store.append_group_with(&self.batches, Commit::Deferred)?;
        for ((index, batch), outcome) in self.indexes.iter().zip(&self.batches).zip(outcomes) {
            results[*index] = Some(match outcome {
                Ok(outcome) if outcome.duplicate => Applied::Duplicate(outcome),
                Ok(outcome) => {
                    registry.appended(store, agreed[*index].proposal.request(), batch);
                    Applied::Appended(outcome)
                }
                Err(StoreError::CommandRefused { reason, .. }) => Applied::Refused(reason),
                // The batch was decided on the state it is appended to, so only a store rule
                // can refuse it (a limit, an event id): final, and recorded as such.
                Err(error) => {
                    let reason = error.to_string();
                    if let (Some(command_id), Some(write)) =
                        (batch.command_id, batch.writes.first())
                    {
                        store.record_refusal_with(
                            command_id,
                            &write.stream,
                            &reason,
                            Commit::Deferred,
                        )?;
                    }
                    Applied::Invalid(reason)
                }
            });
        }
        *self = Self::default();
        Ok(())
    }
}
