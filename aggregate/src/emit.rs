//! Projections as streams: a projection that writes what it derives as events of streams of
//! its own category (an index of orders by article, a stream per customer), readable and
//! subscribable like any stream.
//!
//! What a [`StreamProjection`] emits goes through the command path like a process manager's
//! commands ([`Emitter`] runs it as one): each emitted event is an [`Emit`] command on its
//! output stream, with an id derived from the source event, so in a cluster the section
//! agrees on it once and every member holds the same output streams. An emission derives
//! from one source event alone (the projection keeps no state across events: a restart
//! resumes from a checkpoint, and a replay must emit the same again). The output category
//! has no aggregate: [`EmittedStreams`] appends what `Emit` carries, and clients are not
//! meant to write there (the node's HTTP API refuses them).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

use crate::envelope::{Filter, NewEvent, RecordedEvent};
use crate::ids::EventId;
use crate::limits::COMMAND_BYTES_MAX;
use crate::names::{StreamKey, TypeName};
use crate::process::{CommandRequest, Decision, DispatchError, ErasedAggregate, ProcessManager};
use crate::shape::{AggregateShape, EventShape};
use crate::store::EventStore;
use crate::system::decide_one_event;

/// A projection whose output is streams of its own category.
pub trait StreamProjection: Send {
    /// A stable name: it keys the projection's checkpoint and derives the ids of what it
    /// emits. Never rename it in a running cluster.
    fn name(&self) -> &str;
    /// The category of the streams it writes (no aggregate may have it).
    const CATEGORY: &'static str;
    /// The events it reads.
    fn filter(&self) -> Filter;
    /// What `event` adds to its streams, derived from that event alone.
    fn emit(&self, event: &RecordedEvent) -> Vec<Emitted>;
}

/// One event a projection emits.
#[derive(Clone, Debug, PartialEq)]
pub struct Emitted {
    /// The id of the output stream within the projection's category.
    pub stream_id: String,
    /// The event's type name.
    pub event_type: String,
    /// Its data (stored as its JSON).
    pub data: Value,
}

/// The command that appends one emitted event to an output stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Emit {
    /// The event's type name.
    pub event_type: String,
    /// Its data.
    pub data: Value,
}

/// Runs a [`StreamProjection`] as a process manager (in the engine, or in an `EventRouter`).
pub struct Emitter<P>(pub P);

impl<P: StreamProjection> ProcessManager for Emitter<P> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn filter(&self) -> Filter {
        self.0.filter()
    }

    fn handle(&mut self, event: &RecordedEvent) -> Vec<CommandRequest> {
        // Its own output feeds nothing back.
        if event.stream.category().as_str() == P::CATEGORY {
            return Vec::new();
        }
        let mut commands = Vec::new();
        for (index, emitted) in self.0.emit(event).into_iter().enumerate() {
            let command = Emit {
                event_type: emitted.event_type,
                data: emitted.data,
            };
            let request = StreamKey::new(P::CATEGORY, &emitted.stream_id)
                .map_err(|error| error.to_string())
                .and_then(|stream| {
                    CommandRequest::caused_by(self.0.name(), event, index, stream, &command)
                        .map_err(|error| error.to_string())
                });
            match request {
                Ok(request) => commands.push(request),
                Err(error) => {
                    warn!(projection = self.0.name(), %error, "an emitted event left out");
                }
            }
        }
        commands
    }
}

/// The output category of a stream projection, as the registry runs it: it takes `Emit`
/// commands and appends their event at the stream's version.
pub(crate) struct EmittedStreams {
    pub(crate) category: &'static str,
}

impl EmittedStreams {
    fn parse(command: &Value) -> Result<(Emit, TypeName, Vec<u8>), DispatchError> {
        let emit: Emit = serde_json::from_value(command.clone())
            .map_err(|error| DispatchError::Invalid(format!("not an emitted event: {error}")))?;
        let event_type = TypeName::new(emit.event_type.clone())
            .map_err(|error| DispatchError::Invalid(error.to_string()))?;
        if event_type.is_system() {
            return Err(DispatchError::Invalid(format!(
                "{event_type}: a projection emits no system event"
            )));
        }
        let payload = serde_json::to_vec(&emit.data).unwrap_or_default();
        if payload.len() > COMMAND_BYTES_MAX {
            return Err(DispatchError::Invalid(format!(
                "an emitted event of {} bytes; at most {COMMAND_BYTES_MAX}",
                payload.len()
            )));
        }
        Ok((emit, event_type, payload))
    }
}

impl ErasedAggregate for EmittedStreams {
    fn canonical(&self, command: &Value) -> Result<Value, DispatchError> {
        let (emit, _, _) = Self::parse(command)?;
        serde_json::to_value(emit).map_err(|error| DispatchError::Invalid(error.to_string()))
    }

    fn decide(
        &self,
        store: &EventStore,
        request: &CommandRequest,
    ) -> Result<Decision, DispatchError> {
        let (_, event_type, payload) = Self::parse(&request.command)?;
        let event = NewEvent {
            event_id: EventId::for_command(request.command_id, 0),
            event_type,
            event_version: 1,
            payload,
            supersedes: None,
        };
        decide_one_event(store, request, event)
    }

    fn is_emitted(&self) -> bool {
        true
    }

    fn shape(&self) -> AggregateShape {
        // Marked so that an aggregate of the same category is another domain.
        AggregateShape {
            category: self.category.to_owned(),
            schema_version: 0,
            events: vec![EventShape {
                event_type: "$emitted".to_owned(),
                version: 1,
            }],
        }
    }
}
