//! The domain model: aggregates, their typed events, and how events become payloads and back
//! (with upcasting of old schema versions).
//!
//! Events are serde enums. An event's *type name* is its variant name (stable as long as the
//! variant is not renamed; `#[serde(rename)]` keeps an old name), its payload is the JSON of the
//! variant's fields, and its schema version is 1 plus the number of upcasters the type has: an
//! event written at version 1 of a type with two upcasters is lifted 1 → 2 → 3 before it is
//! decoded. Payloads are JSON so that upcasters can edit them without the old Rust types, and so
//! that operators can read them; domain types must keep their encoding deterministic (use
//! `BTreeMap`, not `HashMap`).

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::EventDecodeError;
use crate::ids::CommandId;
use crate::names::{StreamKey, TypeName};

/// An event-sourced aggregate: a state built by applying events, and a decision function that
/// turns a command into new events or refuses it.
///
/// Both functions must be deterministic: every member of a group executes the same command on
/// the same state and must produce byte-identical events. Time and ids come from the
/// [`CommandContext`], never from the machine.
pub trait Aggregate: Default + Clone + Debug + Serialize + DeserializeOwned {
    /// The category of this aggregate's streams (`Category@id`).
    const CATEGORY: &'static str;
    /// Version of the state's encoding. Snapshots taken under another version are ignored and
    /// the state is rebuilt from the events.
    const SCHEMA_VERSION: u32;
    /// What the aggregate can be asked to do.
    type Command: Clone + Debug + Serialize + DeserializeOwned;
    /// What can happen to it.
    type Event: DomainEvent;
    /// Why it may refuse a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides what a command does to the current state.
    fn handle(
        &self,
        command: &Self::Command,
        context: &CommandContext,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// Applies one event to the state. Must accept every event `handle` can produce, and never
    /// fail: events are facts.
    fn apply(self, event: &Self::Event) -> Self;
}

/// What a command knows besides its own fields: which stream, which command, and the agreed
/// time it executes at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandContext {
    /// The stream the command addresses.
    pub stream: StreamKey,
    /// The command's id.
    pub command_id: CommandId,
    /// The agreed timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A typed domain event: a serde enum whose variants are the event types.
pub trait DomainEvent: Clone + Debug + PartialEq + Serialize + DeserializeOwned {
    /// Upcasters for old schema versions of this enum's types. Each lifts one type from one
    /// version to the next; a type's current version is 1 plus the number of its upcasters.
    const UPCASTERS: &'static [Upcaster] = &[];
}

/// Lifts the JSON payload of one event type from `from_version` to `from_version + 1`.
#[derive(Clone, Copy, Debug)]
pub struct Upcaster {
    /// The event type.
    pub event_type: &'static str,
    /// The version it reads.
    pub from_version: u16,
    /// The transformation.
    pub upcast: fn(Value) -> Result<Value, String>,
}

/// An event encoded for the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedEvent {
    /// Its type name (the variant name).
    pub event_type: TypeName,
    /// The current schema version of the type.
    pub event_version: u16,
    /// JSON of the variant's fields.
    pub payload: Vec<u8>,
}

/// The current schema version of an event type.
pub fn current_version<E: DomainEvent>(event_type: &str) -> u16 {
    let upcasters = E::UPCASTERS
        .iter()
        .filter(|upcaster| upcaster.event_type == event_type)
        .count();
    1 + u16::try_from(upcasters).unwrap_or(u16::MAX - 1)
}

/// Encodes a domain event: its variant name, current version and JSON fields.
pub fn encode_event<E: DomainEvent>(event: &E) -> Result<EncodedEvent, EventDecodeError> {
    let fail = |reason: String| EventDecodeError::Payload {
        event_type: format!("{event:?}").chars().take(40).collect(),
        reason,
    };
    let value = serde_json::to_value(event).map_err(|error| fail(error.to_string()))?;
    let (name, body) = match value {
        Value::String(name) => (name, Value::Null),
        Value::Object(map) if map.len() == 1 => map
            .into_iter()
            .next()
            .ok_or_else(|| fail("an empty object".to_owned()))?,
        _ => {
            return Err(fail(
                "domain events must be externally tagged enums (serde's default)".to_owned(),
            ));
        }
    };
    let event_type = TypeName::new(name).map_err(|error| fail(error.to_string()))?;
    let payload = serde_json::to_vec(&body).map_err(|error| fail(error.to_string()))?;
    Ok(EncodedEvent {
        event_version: current_version::<E>(event_type.as_str()),
        event_type,
        payload,
    })
}

/// Decodes a stored event into its domain type, upcasting old versions first.
pub fn decode_event<E: DomainEvent>(
    event_type: &str,
    event_version: u16,
    payload: &[u8],
) -> Result<E, EventDecodeError> {
    let current = current_version::<E>(event_type);
    if event_version > current {
        return Err(EventDecodeError::FutureVersion {
            event_type: event_type.to_owned(),
            version: event_version,
            current,
        });
    }
    let payload_error = |reason: String| EventDecodeError::Payload {
        event_type: event_type.to_owned(),
        reason,
    };
    let mut body: Value =
        serde_json::from_slice(payload).map_err(|error| payload_error(error.to_string()))?;
    for version in event_version.max(1)..current {
        let upcaster = E::UPCASTERS
            .iter()
            .find(|upcaster| upcaster.event_type == event_type && upcaster.from_version == version)
            .ok_or_else(|| EventDecodeError::MissingUpcaster {
                event_type: event_type.to_owned(),
                version,
            })?;
        body = (upcaster.upcast)(body).map_err(|reason| EventDecodeError::UpcastFailed {
            event_type: event_type.to_owned(),
            version,
            reason,
        })?;
    }
    let tagged = if body.is_null() {
        Value::String(event_type.to_owned())
    } else {
        Value::Object([(event_type.to_owned(), body)].into_iter().collect())
    };
    serde_json::from_value(tagged).map_err(|error| {
        let reason = error.to_string();
        if reason.starts_with("unknown variant") {
            EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
            }
        } else {
            payload_error(reason)
        }
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Opened { owner: String, currency: String },
        Closed,
    }

    impl DomainEvent for Sample {
        const UPCASTERS: &'static [Upcaster] = &[Upcaster {
            event_type: "Opened",
            from_version: 1,
            upcast: |mut body| {
                body.as_object_mut()
                    .ok_or("Opened v1 is not an object")?
                    .insert("currency".to_owned(), Value::from("EUR"));
                Ok(body)
            },
        }];
    }

    #[test]
    fn events_round_trip_at_their_current_version() {
        for event in [
            Sample::Opened {
                owner: "ada".into(),
                currency: "CHF".into(),
            },
            Sample::Closed,
        ] {
            let encoded = encode_event(&event).expect("encodes");
            let decoded: Sample = decode_event(
                encoded.event_type.as_str(),
                encoded.event_version,
                &encoded.payload,
            )
            .expect("decodes");
            assert_eq!(decoded, event);
        }
        let encoded = encode_event(&Sample::Opened {
            owner: "x".into(),
            currency: "y".into(),
        })
        .expect("encodes");
        assert_eq!(
            (encoded.event_type.as_str(), encoded.event_version),
            ("Opened", 2)
        );
        assert_eq!(current_version::<Sample>("Closed"), 1);
    }

    #[test]
    fn old_versions_are_upcast() {
        let decoded: Sample = decode_event("Opened", 1, br#"{"owner":"ada"}"#).expect("upcasts");
        assert_eq!(
            decoded,
            Sample::Opened {
                owner: "ada".into(),
                currency: "EUR".into()
            }
        );
    }

    #[test]
    fn undecodable_events_are_typed_errors() {
        type Case = (
            &'static str,
            u16,
            &'static [u8],
            fn(&EventDecodeError) -> bool,
        );
        let cases: [Case; 5] = [
            ("Renamed", 1, b"{}", |e| {
                matches!(e, EventDecodeError::UnknownType { .. })
            }),
            ("Opened", 3, b"{}", |e| {
                matches!(e, EventDecodeError::FutureVersion { .. })
            }),
            ("Opened", 2, b"{\"owner\":", |e| {
                matches!(e, EventDecodeError::Payload { .. })
            }),
            ("Opened", 2, b"{\"owner\":7}", |e| {
                matches!(e, EventDecodeError::Payload { .. })
            }),
            ("Opened", 1, b"[1]", |e| {
                matches!(e, EventDecodeError::UpcastFailed { .. })
            }),
        ];
        for (event_type, version, payload, expected) in cases {
            let error = decode_event::<Sample>(event_type, version, payload).expect_err("refused");
            assert!(expected(&error), "{event_type} v{version}: {error}");
        }
    }
}
