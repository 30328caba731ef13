//! Events and commands as the API carries them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ClientError;

/// An event as a node returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its stream (`Category@id`).
    pub stream: String,
    /// Its number in the stream, from 1 (the same on every member of its section).
    pub sequence: u64,
    /// Its position in the answering node's store, from 1.
    pub position: u64,
    /// Its id (hex).
    pub event_id: String,
    /// Its type name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The schema version of its payload.
    pub version: u16,
    /// Its payload (JSON).
    pub payload: Value,
    /// The command that produced it (hex), if any.
    pub command_id: Option<String>,
    /// The request it belongs to (hex).
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// What caused it (hex).
    #[serde(default)]
    pub causation_id: Option<String>,
    /// The free-form metadata of the command that wrote it.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Its agreed timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

impl Event {
    /// The payload as a typed value.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_value(self.payload.clone()).map_err(|error| {
            ClientError::Unexpected(format!("{} payload: {error}", self.event_type))
        })
    }
}

/// The version a stream must be at for a command to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Whatever it is (the default).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// Exactly this version.
    Exact(u64),
}

/// A command to send: its stream, its body, and the id that makes sending it again safe.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// The stream (`Category@id`).
    pub stream: String,
    /// The command as its aggregate's JSON.
    pub command: Value,
    /// 32 hex digits; a new random one unless set.
    pub command_id: String,
    /// The version the stream must be at.
    pub expected: ExpectedVersion,
    /// The request it belongs to (32 hex digits); the command id when `None`.
    pub correlation_id: Option<String>,
    /// What caused it (32 hex digits); the command id when `None`.
    pub causation_id: Option<String>,
    /// Free-form metadata (a JSON object), kept with its events.
    pub metadata: Option<Value>,
}

impl Command {
    /// A command with a new random id and any expected version.
    pub fn new(stream: &str, command: &impl Serialize) -> Result<Self, ClientError> {
        let command = serde_json::to_value(command)
            .map_err(|error| ClientError::Usage(format!("the command does not encode: {error}")))?;
        Ok(Self {
            stream: stream.to_owned(),
            command,
            command_id: new_command_id(),
            expected: ExpectedVersion::Any,
            correlation_id: None,
            causation_id: None,
            metadata: None,
        })
    }

    /// The same command under `command_id` (32 hex digits).
    #[must_use]
    pub fn with_id(mut self, command_id: &str) -> Self {
        command_id.clone_into(&mut self.command_id);
        self
    }

    /// The same command, to run only at `expected`.
    #[must_use]
    pub fn expecting(mut self, expected: ExpectedVersion) -> Self {
        self.expected = expected;
        self
    }

    /// The same command, in the correlation of a request (32 hex digits).
    #[must_use]
    pub fn correlated_with(mut self, correlation_id: &str) -> Self {
        self.correlation_id = Some(correlation_id.to_owned());
        self
    }

    /// The same command, caused by an event or command (32 hex digits).
    #[must_use]
    pub fn caused_by(mut self, causation_id: &str) -> Self {
        self.causation_id = Some(causation_id.to_owned());
        self
    }

    /// The same command with free-form metadata (a JSON object; the node refuses anything
    /// else, and more than 4 KiB).
    #[must_use]
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// The request body the API takes.
    pub(crate) fn body(&self) -> Value {
        let mut body = serde_json::json!({
            "command": self.command,
            "command_id": self.command_id,
        });
        let expected = match self.expected {
            ExpectedVersion::Any => None,
            ExpectedVersion::NoStream => Some(Value::from("no_stream")),
            ExpectedVersion::Exact(version) => Some(Value::from(version)),
        };
        if let Some(expected) = expected {
            body["expected_version"] = expected;
        }
        if let Some(id) = &self.correlation_id {
            body["correlation_id"] = Value::from(id.as_str());
        }
        if let Some(id) = &self.causation_id {
            body["causation_id"] = Value::from(id.as_str());
        }
        if let Some(metadata) = &self.metadata {
            body["metadata"] = metadata.clone();
        }
        body
    }
}

/// A random command id: 16 bytes, 32 hex digits.
pub fn new_command_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What a committed command did.
#[derive(Clone, Debug, PartialEq)]
pub struct Receipt {
    /// The command's id.
    pub command_id: String,
    /// Whether the node had committed it before (a retry of a command that went through).
    pub duplicate: bool,
    /// The node's outcome, as it answered it (`{"Committed": {...}}`).
    pub outcome: Value,
}
