//! The commands every stream takes, whatever its aggregate: `{"$metadata": {"max_count": N,
//! "max_age_ms": M}}` sets its retention rules, `{"$delete": {}}` soft-deletes it. They go
//! through the command path like any command (so in a cluster they are agreed, and every
//! member hides the same events) and append a system event at the stream's version.

use serde_json::{Value, json};

use crate::envelope::{
    AppendBatch, AppendOutcome, ExpectedVersion, NewEvent, StreamMetadata, StreamWrite,
};
use crate::error::StoreError;
use crate::ids::EventId;
use crate::process::{CommandRequest, Decision, DispatchError, ErasedAggregate, metadata_bytes};
use crate::shape::AggregateShape;
use crate::store::EventStore;

/// The command name that sets a stream's metadata.
pub const SET_METADATA: &str = "$metadata";
/// The command name that soft-deletes a stream.
pub const DELETE: &str = "$delete";

/// The system commands, as one type-erased "aggregate" of every stream.
pub(crate) struct SystemCommands;

enum SystemCommand {
    SetMetadata(StreamMetadata),
    Delete,
}

impl SystemCommands {
    /// Whether `command` is a system command (an object whose one key starts with `$`).
    pub(crate) fn handles(command: &Value) -> bool {
        command.as_object().is_some_and(|object| {
            object.len() == 1 && object.keys().all(|key| key.starts_with('$'))
        })
    }

    fn parse(command: &Value) -> Result<SystemCommand, DispatchError> {
        let invalid = |reason: String| DispatchError::Invalid(reason);
        match command.as_object().and_then(|object| object.iter().next()) {
            Some((name, body)) if name == SET_METADATA => serde_json::from_value(body.clone())
                .map(SystemCommand::SetMetadata)
                .map_err(|error| invalid(format!("{SET_METADATA}: {error}"))),
            Some((name, body)) if name == DELETE => match body {
                Value::Null => Ok(SystemCommand::Delete),
                Value::Object(fields) if fields.is_empty() => Ok(SystemCommand::Delete),
                _ => Err(invalid(format!("{DELETE} takes no fields"))),
            },
            Some((name, _)) => Err(invalid(format!(
                "{name}: no such system command (use {SET_METADATA} or {DELETE})"
            ))),
            None => Err(invalid("an empty command".to_owned())),
        }
    }

    /// The system event that carries the command out.
    fn event(request: &CommandRequest) -> Result<NewEvent, DispatchError> {
        let event_id = EventId::for_command(request.command_id, 0);
        Ok(match Self::parse(&request.command)? {
            SystemCommand::SetMetadata(metadata) => NewEvent::set_metadata(event_id, &metadata),
            SystemCommand::Delete => NewEvent::soft_delete(event_id),
        })
    }
}

/// The decision of a command whose one event is known without an aggregate (a system
/// command, an emitted event): appended at the stream's version as it is now.
pub(crate) fn decide_one_event(
    store: &EventStore,
    request: &CommandRequest,
    event: NewEvent,
) -> Result<Decision, DispatchError> {
    let info = store.stream_info(&request.stream)?;
    let version = info.as_ref().map_or(0, |info| info.version);
    if !request.expected.admits(version) {
        return Err(DispatchError::Invalid(format!(
            "the stream is at version {version}, not {:?}",
            request.expected
        )));
    }
    let batch = AppendBatch {
        command_id: Some(request.command_id),
        causation_id: request.causation_id,
        correlation_id: request.correlation_id,
        timestamp_ms: request.timestamp_ms,
        metadata: metadata_bytes(request)?,
        writes: vec![StreamWrite {
            stream: request.stream.clone(),
            expected: ExpectedVersion::Exact(version),
            events: vec![event],
        }],
    };
    Ok(Decision {
        batch,
        version,
        stream_timestamp_ms: info.map_or(0, |info| info.last_timestamp_ms),
    })
}

/// Appends a decided batch, sorting the store's refusals into what they mean for the caller.
pub(crate) fn append_decided(
    store: &EventStore,
    batch: &AppendBatch,
) -> Result<AppendOutcome, DispatchError> {
    store.append(batch).map_err(|error| match error {
        error @ (StoreError::Storage(_) | StoreError::Corrupt(_)) => DispatchError::Store(error),
        error @ StoreError::WrongExpectedVersion { .. } => {
            DispatchError::Conflict(error.to_string())
        }
        error => DispatchError::Invalid(error.to_string()),
    })
}

impl ErasedAggregate for SystemCommands {
    fn canonical(&self, command: &Value) -> Result<Value, DispatchError> {
        Ok(match Self::parse(command)? {
            SystemCommand::SetMetadata(metadata) => json!({ SET_METADATA: metadata }),
            SystemCommand::Delete => json!({ DELETE: {} }),
        })
    }

    fn decide(
        &self,
        store: &EventStore,
        request: &CommandRequest,
    ) -> Result<Decision, DispatchError> {
        decide_one_event(store, request, Self::event(request)?)
    }

    fn shape(&self) -> AggregateShape {
        AggregateShape {
            category: "$system".to_owned(),
            schema_version: 1,
            events: Vec::new(),
        }
    }
}
