//! Process managers and the event router.
//!
//! A process manager reacts to events by emitting commands ([`CommandRequest`]), each caused by
//! the event and in its correlation, with a command id derived from the manager, the event and
//! the command's index: re-delivering an event (after a crash, the router resumes from its last
//! checkpoint) re-emits the same command ids, which the store executes once.
//!
//! The [`AggregateRegistry`] executes commands whose type is known only at run time (JSON for
//! a category), which is how process managers, and later the HTTP API and the engine, address
//! any aggregate. The [`EventRouter`] feeds each manager from its own checkpoint and executes
//! what it emits until nothing is left to do.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use serde_json::Value;
use tracing::{debug, warn};

use crate::codec::{decode_record, encode_record};
use crate::domain::{Aggregate, decode_event};
use crate::envelope::{
    AppendBatch, AppendOutcome, CommandEnvelope, ExpectedVersion, Filter, RecordedEvent,
};
use crate::error::{CommandError, StoreError};
use crate::ids::{CommandId, MessageId};
use crate::limits::{COMMAND_BYTES_MAX, METADATA_BYTES_MAX};
use crate::names::StreamKey;
use crate::repository::{Base, Repository, decide_batch};
use crate::shape::AggregateShape;
use crate::state_cache::StateCache;
use crate::store::{CommandRecord, EventStore};
use crate::subscription::Subscription;
use crate::system::SystemCommands;

/// Most commands one event may set off through a manager (its own and those of rejections),
/// so a manager that keeps answering rejections with commands cannot loop forever.
pub const COMMANDS_PER_EVENT_MAX: usize = 64;
/// Events a router reads per manager per round.
pub const ROUTER_BATCH_EVENTS_MAX: usize = 1_000;
/// Rounds one `run_until_quiet` makes at most.
pub const ROUTER_ROUNDS_MAX: usize = 10_000;

/// A command addressed to a stream by category, its body as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct CommandRequest {
    /// The command's id.
    pub command_id: CommandId,
    /// The stream addressed.
    pub stream: StreamKey,
    /// The version the stream must be at.
    pub expected: ExpectedVersion,
    /// What caused it.
    pub causation_id: MessageId,
    /// The request it belongs to.
    pub correlation_id: MessageId,
    /// The agreed timestamp it executes at.
    pub timestamp_ms: u64,
    /// The section's agreed domain version it executes under (set by the engine, like the
    /// timestamp; empty outside a section).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain_version: String,
    /// Free-form metadata from the client (a JSON object), stored with its events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// A scheduled command (a deadline, a timeout): it executes only in a block whose agreed
    /// time is at or after this, ms since the Unix epoch. A process manager's scheduled
    /// command waits for that time; one agreed earlier is not applied (and not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// The command, as the aggregate's command type serialises it.
    pub command: Value,
}

impl CommandRequest {
    /// A client's command: any expected version, caused and correlated by itself, time set
    /// when it executes.
    pub fn new(command_id: CommandId, stream: StreamKey, command: Value) -> Self {
        Self {
            command_id,
            stream,
            expected: ExpectedVersion::Any,
            causation_id: command_id.into(),
            correlation_id: command_id.into(),
            timestamp_ms: 0,
            domain_version: String::new(),
            metadata: None,
            not_before_ms: None,
            command,
        }
    }

    /// The same command, scheduled: the section executes it only once its agreed time reaches
    /// `at_ms` (for a timeout, the causing event's `timestamp_ms` plus the delay).
    #[must_use]
    pub fn not_before(mut self, at_ms: u64) -> Self {
        self.not_before_ms = Some(at_ms);
        self
    }

    /// The `index`-th command a manager named `manager` emits for `event`: caused by the event,
    /// in its correlation, at its timestamp, with an id derived from all three.
    pub fn caused_by(
        manager: &str,
        event: &RecordedEvent,
        index: usize,
        stream: StreamKey,
        command: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            command_id: CommandId::derive(&[
                manager.as_bytes(),
                &event.event_id.0,
                &(index as u64).to_le_bytes(),
            ]),
            stream,
            expected: ExpectedVersion::Any,
            causation_id: event.event_id.into(),
            correlation_id: event.correlation_id,
            timestamp_ms: event.timestamp_ms,
            domain_version: String::new(),
            metadata: None,
            not_before_ms: None,
            command: serde_json::to_value(command)?,
        })
    }
}

/// Why a type-erased command failed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No aggregate is registered for the stream's category.
    #[error("no aggregate handles category {category:?}")]
    UnknownCategory {
        /// The category.
        category: String,
    },
    /// The command cannot be executed as it is: it does not decode for its aggregate, it is
    /// too large, its pinned expected version has passed, its events break a store rule, or a
    /// stored event of the stream does not decode.
    #[error("invalid command: {0}")]
    Invalid(String),
    /// The aggregate refused the command (now or, for the same command id, before).
    #[error("refused: {0}")]
    Refused(String),
    /// Other writers kept moving the stream (an `Any` command gave up after its retries):
    /// executing it later may succeed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store failed to read or write, or found itself corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DispatchError {
    /// Whether this is an answer about the command itself (unknown category, invalid,
    /// refused), which a process manager compensates and which is recorded against the
    /// command id so that it stands; otherwise the failure is the system's (contention,
    /// storage) and the command must be tried again later.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::UnknownCategory { .. } | Self::Invalid(_) | Self::Refused(_)
        )
    }
}

/// Executes a JSON command for one aggregate type.
pub(crate) trait ErasedAggregate: Send + Sync {
    fn canonical(&self, command: &Value) -> Result<Value, DispatchError>;

    /// Decides and appends. By default the decision's batch as it is (what an aggregate
    /// with no state of its own needs: system commands, emitted events); `Typed` executes
    /// through its repository (snapshots, contention retries).
    fn execute(
        &self,
        store: &EventStore,
        request: &CommandRequest,
    ) -> Result<AppendOutcome, DispatchError> {
        let decision = self.decide(store, request)?;
        crate::system::append_decided(store, &decision.batch)
    }

    fn decide(
        &self,
        store: &EventStore,
        request: &CommandRequest,
    ) -> Result<Decision, DispatchError>;

    fn shape(&self) -> AggregateShape;

    /// A batch this type decided was appended (`AggregateRegistry::appended`). Nothing to do
    /// by default: only `Typed` keeps states.
    fn appended(&self, _store: &EventStore, _batch: &AppendBatch) {}

    /// Whether this is a stream projection's output category (`emit`).
    fn is_emitted(&self) -> bool {
        false
    }
}

/// What executing a command on the current state would append, without appending it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The batch, pinned to the version it was decided at.
    pub batch: AppendBatch,
    /// That version.
    pub version: u64,
    /// The agreed timestamp of the stream's last event at that version (0 for a new stream).
    pub stream_timestamp_ms: u64,
}

/// One aggregate type, with the states its decisions built (`state_cache`).
struct Typed<A> {
    cache: StateCache<A>,
}

impl<A: Aggregate> Typed<A> {
    fn envelope(request: &CommandRequest) -> Result<CommandEnvelope<A::Command>, DispatchError> {
        let size = serde_json::to_vec(&request.command).map_or(usize::MAX, |bytes| bytes.len());
        if size > COMMAND_BYTES_MAX {
            return Err(DispatchError::Invalid(format!(
                "the command is {size} bytes; at most {COMMAND_BYTES_MAX} are allowed"
            )));
        }
        let command: A::Command =
            serde_json::from_value(request.command.clone()).map_err(|error| {
                DispatchError::Invalid(format!("not a {} command: {error}", A::CATEGORY))
            })?;
        let metadata = metadata_bytes(request)?;
        Ok(CommandEnvelope {
            command_id: request.command_id,
            stream: request.stream.clone(),
            expected: request.expected,
            correlation_id: request.correlation_id,
            causation_id: request.causation_id,
            timestamp_ms: request.timestamp_ms,
            domain_version: request.domain_version.clone(),
            metadata,
            command,
        })
    }
}

/// A request's metadata as the store keeps it: a JSON object's bytes, at most
/// `METADATA_BYTES_MAX`.
pub(crate) fn metadata_bytes(request: &CommandRequest) -> Result<Option<Vec<u8>>, DispatchError> {
    match &request.metadata {
        None => Ok(None),
        Some(object @ Value::Object(_)) => {
            let bytes = serde_json::to_vec(object).unwrap_or_default();
            if bytes.len() > METADATA_BYTES_MAX {
                return Err(DispatchError::Invalid(format!(
                    "the metadata is {} bytes; at most {METADATA_BYTES_MAX} are allowed",
                    bytes.len()
                )));
            }
            Ok(Some(bytes))
        }
        Some(_) => Err(DispatchError::Invalid(
            "the metadata must be a JSON object".to_owned(),
        )),
    }
}

/// Sorts a command's failure into what it means for the caller.
fn dispatch_error<E: std::error::Error>(error: CommandError<E>) -> DispatchError {
    match error {
        CommandError::Store(error @ (StoreError::Storage(_) | StoreError::Corrupt(_))) => {
            DispatchError::Store(error)
        }
        CommandError::Domain(error) => DispatchError::Refused(error.to_string()),
        CommandError::AlreadyRefused { reason, .. } => DispatchError::Refused(reason),
        error @ CommandError::Contention { .. } => DispatchError::Conflict(error.to_string()),
        // A pinned version that has passed never comes back (versions only grow), and the
        // store's other refusals depend only on the command and the history.
        error @ (CommandError::WrongExpectedVersion { .. }
        | CommandError::Decode { .. }
        | CommandError::BadCommand(_)
        | CommandError::Store(_)) => DispatchError::Invalid(error.to_string()),
    }
}

impl<A: Aggregate> ErasedAggregate for Typed<A> {
    fn shape(&self) -> AggregateShape {
        AggregateShape::of::<A>()
    }

    fn appended(&self, store: &EventStore, batch: &AppendBatch) {
        let [write] = batch.writes.as_slice() else {
            return;
        };
        let ExpectedVersion::Exact(at) = write.expected else {
            return;
        };
        if write.events.iter().any(|event| event.supersedes.is_some()) {
            return; // a correction starts a new epoch: the cached state is left behind
        }
        let key = (store.instance(), write.stream.qualified());
        self.cache
            .advance(&key, at, write.events.len() as u64, |state| {
                // As `Repository::load_over` builds it: system events count in the version
                // but do not change the state.
                write
                    .events
                    .iter()
                    .filter(|event| !event.event_type.is_system())
                    .try_fold(state, |state, event| {
                        decode_event::<A::Event>(
                            event.event_type.as_str(),
                            event.event_version,
                            &event.payload,
                        )
                        .ok()
                        .map(|typed| state.apply(&typed))
                    })
            });
    }

    fn canonical(&self, command: &Value) -> Result<Value, DispatchError> {
        let typed: A::Command = serde_json::from_value(command.clone()).map_err(|error| {
            DispatchError::Invalid(format!("not a {} command: {error}", A::CATEGORY))
        })?;
        let canonical = serde_json::to_value(&typed).map_err(|error| {
            DispatchError::Invalid(format!(
                "a {} command does not encode: {error}",
                A::CATEGORY
            ))
        })?;
        match dropped_field(command, &canonical, "") {
            Some(path) => Err(DispatchError::Invalid(format!(
                "a {} command has no field {path}",
                A::CATEGORY
            ))),
            None => Ok(canonical),
        }
    }

    fn execute(
        &self,
        store: &EventStore,
        request: &CommandRequest,
    ) -> Result<AppendOutcome, DispatchError> {
        let envelope = Self::envelope(request)?;
        Repository::<A>::new(store)
            .execute(&envelope)
            .map_err(dispatch_error)
    }

    fn decide(
        &self,
        store: &EventStore,
        request: &CommandRequest,
    ) -> Result<Decision, DispatchError> {
        let envelope = Self::envelope(request)?;
        // The state this type built for the stream last time, brought up to date (only the
        // events since are read), and kept again for the next decision.
        let key = (store.instance(), envelope.stream.qualified());
        let base = self.cache.take(&key);
        let (loaded, stream_timestamp_ms) = Repository::<A>::new(store)
            .load_over(&envelope.stream, base)
            .map_err(dispatch_error)?;
        let decided = decide_batch(&loaded.state, loaded.version, &envelope);
        let version = loaded.version;
        let base = Base {
            state: loaded.state,
            version,
            epoch: loaded.epoch,
        };
        self.cache.put(key, base);
        let (batch, _) = decided.map_err(dispatch_error)?;
        Ok(Decision {
            batch,
            version,
            stream_timestamp_ms,
        })
    }
}

/// The aggregates a node knows, by category.
#[derive(Default)]
pub struct AggregateRegistry {
    aggregates: BTreeMap<&'static str, Box<dyn ErasedAggregate>>,
}

impl AggregateRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers aggregate type `A` for its category.
    pub fn register<A: Aggregate + 'static>(mut self) -> Self {
        self.aggregates.insert(
            A::CATEGORY,
            Box::new(Typed::<A> {
                cache: StateCache::new(),
            }),
        );
        self
    }

    /// Registers `category` as the output of a stream projection (`emit`): its streams take
    /// only `Emit` commands, which append the event they carry.
    pub fn emitted_category(mut self, category: &'static str) -> Self {
        self.aggregates
            .insert(category, Box::new(crate::emit::EmittedStreams { category }));
        self
    }

    /// Whether `category` is a stream projection's output (clients do not write there).
    pub fn is_emitted_category(&self, category: &str) -> bool {
        self.aggregates
            .get(category)
            .is_some_and(|aggregate| aggregate.is_emitted())
    }

    /// Decides a command on the current state of its stream without appending: the pure step
    /// of the engine's command path (every member decides, the agreed order appends).
    pub fn decide(
        &self,
        store: &EventStore,
        request: &CommandRequest,
    ) -> Result<Decision, DispatchError> {
        self.aggregate(request)?.decide(store, request)
    }

    /// Tells the aggregate that `batch`, decided for `request` on its stream's current
    /// state, was appended: the state its decision cached moves on over the batch's events,
    /// so the stream's next decision reads nothing back from the store. The engine calls it
    /// after each group commit of agreed batches.
    pub fn appended(&self, store: &EventStore, request: &CommandRequest, batch: &AppendBatch) {
        if let Ok(aggregate) = self.aggregate(request) {
            aggregate.appended(store, batch);
        }
    }

    fn aggregate(&self, request: &CommandRequest) -> Result<&dyn ErasedAggregate, DispatchError> {
        if SystemCommands::handles(&request.command) {
            return Ok(&SystemCommands);
        }
        let category = request.stream.category().as_str();
        self.aggregates
            .get(category)
            .map(|aggregate| aggregate.as_ref())
            .ok_or_else(|| DispatchError::UnknownCategory {
                category: category.to_owned(),
            })
    }

    /// The command in the one form every member proposes, compares and stores: parsed into
    /// its aggregate's command type and written back. A field the type does not know is
    /// refused rather than dropped, so what a client sent is what the store shows (numbers
    /// aside: they are the type's, an `f64` keeps what an `f64` can).
    pub fn canonical_command(&self, request: &CommandRequest) -> Result<Value, DispatchError> {
        self.aggregate(request)?.canonical(&request.command)
    }

    /// What each registered aggregate is (category, state version, event types and their
    /// versions), by category: what two nodes must share to run the same domain.
    pub fn shapes(&self) -> Vec<AggregateShape> {
        self.aggregates
            .values()
            .map(|aggregate| aggregate.shape())
            .collect()
    }

    /// Executes a command on the aggregate of its stream's category.
    pub fn execute(
        &self,
        store: &EventStore,
        request: &CommandRequest,
    ) -> Result<AppendOutcome, DispatchError> {
        self.aggregate(request)?.execute(store, request)
    }
}

/// The first field (as a path such as `Deposit.note`) that `sent` has and `canonical`, its
/// typed form, does not: a field the command type ignored.
fn dropped_field(sent: &Value, canonical: &Value, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (sent, canonical) {
        (Value::Object(sent), Value::Object(canonical)) => {
            sent.iter()
                .find_map(|(key, value)| match canonical.get(key) {
                    Some(kept) => dropped_field(value, kept, &join(key)),
                    None => Some(join(key)),
                })
        }
        (Value::Array(sent), Value::Array(canonical)) => sent
            .iter()
            .zip(canonical)
            .enumerate()
            .find_map(|(index, (value, kept))| {
                dropped_field(value, kept, &join(&index.to_string()))
            }),
        _ => None,
    }
}

/// Reacts to events with commands.
pub trait ProcessManager {
    /// A stable name: it keys the manager's checkpoint and derives its command ids.
    fn name(&self) -> &str;
    /// The events it wants.
    fn filter(&self) -> Filter;
    /// The commands an event sets off (build them with [`CommandRequest::caused_by`]).
    fn handle(&mut self, event: &RecordedEvent) -> Vec<CommandRequest>;
    /// The commands to send when one of its commands was rejected (compensation).
    fn on_rejected(
        &mut self,
        event: &RecordedEvent,
        request: &CommandRequest,
        reason: &str,
    ) -> Vec<CommandRequest> {
        let _ = (event, request, reason);
        Vec::new()
    }
}

/// What one run of the router did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouterReport {
    /// Events delivered to managers.
    pub events_delivered: u64,
    /// Commands executed (including repeats of already executed ids).
    pub commands_executed: u64,
    /// Commands refused or invalid (the manager's `on_rejected` saw each).
    pub commands_rejected: u64,
    /// Managers stopped at an event whose command failed for a reason that may pass
    /// (contention, storage): the next run delivers that event again.
    pub stalled: Vec<StalledRoute>,
    /// False when the run stopped at [`ROUTER_ROUNDS_MAX`] with work left (managers that keep
    /// reacting to each other's commands); the next run goes on from the checkpoints.
    pub quiet: bool,
    /// Scheduled commands (`not_before_ms`) the managers emitted: this in-process router has
    /// no agreed time, so it hands them back for the caller to execute when due (in a
    /// cluster, the engine holds them and the section fires them at its agreed time).
    pub scheduled: Vec<CommandRequest>,
}

/// A manager the router could not take past an event in this run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StalledRoute {
    /// The manager's name.
    pub manager: String,
    /// The global position of the event it stopped at.
    pub position: u64,
    /// Why.
    pub error: String,
}

struct Route {
    manager: Box<dyn ProcessManager>,
    subscription: Subscription,
}

/// Delivers events to process managers, each from its own checkpoint, and executes the
/// commands they emit.
pub struct EventRouter {
    registry: AggregateRegistry,
    routes: Vec<Route>,
}

impl EventRouter {
    /// A router executing commands through `registry`.
    pub fn new(registry: AggregateRegistry) -> Self {
        Self {
            registry,
            routes: Vec::new(),
        }
    }

    /// Adds a manager; it resumes from its saved checkpoint, or from the start of the store.
    /// A checkpoint that does not decode is an error, not a silent replay from the start.
    pub fn add(
        &mut self,
        store: &EventStore,
        manager: Box<dyn ProcessManager>,
    ) -> Result<(), StoreError> {
        let next_position = match store.load_checkpoint(&checkpoint_name(manager.name()))? {
            Some(bytes) => decode_record::<u64>("router checkpoint", &bytes)?,
            None => 1,
        };
        self.add_from(manager, next_position);
        Ok(())
    }

    /// Adds a manager that starts at global position `from`, ignoring any checkpoint (to
    /// replay history). The commands it re-sends have the ids they had, so an executed one
    /// returns its first outcome and a refused one its first refusal: a replay changes nothing.
    pub fn add_from(&mut self, manager: Box<dyn ProcessManager>, from: u64) {
        let filter = manager.filter();
        self.routes.push(Route {
            manager,
            subscription: Subscription::new(filter, from, ROUTER_BATCH_EVENTS_MAX),
        });
    }

    /// Delivers every pending event and executes what it sets off, round after round, until
    /// no manager has anything left (or [`ROUTER_ROUNDS_MAX`] rounds). A manager whose command
    /// fails for a reason that may pass (contention, storage) stops at that event for this
    /// run and is reported in `stalled`; the others go on. The error is the store failing to
    /// read the log or to save a checkpoint.
    pub fn run_until_quiet(&mut self, store: &EventStore) -> Result<RouterReport, StoreError> {
        let mut report = RouterReport::default();
        let mut stalled = vec![false; self.routes.len()];
        for _round in 0..ROUTER_ROUNDS_MAX {
            let mut delivered_this_round = 0;
            for (route, stalled) in self.routes.iter_mut().zip(&mut stalled) {
                if *stalled {
                    continue;
                }
                let start = route.subscription.next_position();
                let events = route.subscription.poll(store)?;
                for event in &events {
                    let delivered = deliver(
                        &self.registry,
                        store,
                        route.manager.as_mut(),
                        event,
                        &mut report,
                    );
                    if let Err(error) = delivered {
                        // Resume at the failing event: everything before it is done.
                        let filter = route.subscription.filter().clone();
                        route.subscription =
                            Subscription::new(filter, event.position, ROUTER_BATCH_EVENTS_MAX);
                        report.stalled.push(StalledRoute {
                            manager: route.manager.name().to_owned(),
                            position: event.position,
                            error: error.to_string(),
                        });
                        *stalled = true;
                        break;
                    }
                    delivered_this_round += 1;
                }
                if route.subscription.next_position() != start {
                    save_route(store, route)?;
                }
            }
            report.events_delivered += delivered_this_round;
            if delivered_this_round == 0 {
                report.quiet = true;
                return Ok(report);
            }
        }
        Ok(report)
    }
}

fn save_route(store: &EventStore, route: &Route) -> Result<(), StoreError> {
    store.save_checkpoint(
        &checkpoint_name(route.manager.name()),
        &encode_record(&route.subscription.next_position())?,
    )
}

/// Hands one event to a manager and executes what it emits, answering refusals with
/// `on_rejected`. Transient failures are returned for the caller to retry the event.
fn deliver(
    registry: &AggregateRegistry,
    store: &EventStore,
    manager: &mut dyn ProcessManager,
    event: &RecordedEvent,
    report: &mut RouterReport,
) -> Result<(), DispatchError> {
    let mut pending: VecDeque<CommandRequest> = manager.handle(event).into();
    let mut sent = 0;
    while let Some(request) = pending.pop_front() {
        if request.not_before_ms.is_some() {
            report.scheduled.push(request);
            continue;
        }
        sent += 1;
        if sent > COMMANDS_PER_EVENT_MAX {
            warn!(
                manager = manager.name(),
                event = %event.event_id,
                dropped = pending.len() + 1,
                "process manager exceeded {COMMANDS_PER_EVENT_MAX} commands for one event"
            );
            break;
        }
        match registry.execute(store, &request) {
            Ok(_) => report.commands_executed += 1,
            Err(error) if !error.is_final() => return Err(error),
            Err(rejection) => {
                report.commands_rejected += 1;
                let reason = rejection.to_string();
                // The rejection is about to be compensated: record it against the command id
                // so that a re-delivery gets the same answer, even after the cause is gone (a
                // corrected event, a newly registered category), and never both the
                // compensation and the command's effect.
                if let Some(CommandRecord::Appended(_)) =
                    store.record_refusal(request.command_id, &request.stream, &reason)?
                {
                    // Another execution of the same id went through meanwhile: it is done,
                    // and compensating it would undo a step that happened.
                    report.commands_executed += 1;
                    continue;
                }
                debug!(manager = manager.name(), stream = %request.stream, %reason, "command rejected");
                pending.extend(manager.on_rejected(event, &request, &reason));
            }
        }
    }
    Ok(())
}

fn checkpoint_name(manager: &str) -> String {
    format!("process-manager:{manager}")
}
