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
/// [`CommandContext`], never from the machine. States are plain data (`Send`): the node keeps
/// them between decisions.
pub trait Aggregate: Default + Clone + Debug + Serialize + DeserializeOwned + Send {
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

/// What a command knows besides its own fields: which stream, which command, the agreed
/// time it executes at, and the domain version its section agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandContext {
    /// The stream the command addresses.
    pub stream: StreamKey,
    /// The command's id.
    pub command_id: CommandId,
    /// The agreed timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The domain version the section agreed on where the command executes. During a
    /// rolling upgrade, a node running new code that stands in for the old version decides
    /// here as the old code did until the section agrees on the new one (an empty string
    /// outside a section: tests, a single-process repository).
    pub domain_version: String,
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

/// Encodes a domain event: its variant name, current version and JSON fields. The encoding is
/// decoded again and compared, so an event that would not survive the store (a serde attribute
/// that changes the enum's shape, a field that does not round-trip) is refused here, before it
/// is proposed, rather than blocking its stream when loaded.
pub fn encode_event<E: DomainEvent>(event: &E) -> Result<EncodedEvent, EventDecodeError> {
    let encoded = encode_unchecked(event)?;
    let decoded = decode_event::<E>(
        encoded.event_type.as_str(),
        encoded.event_version,
        &encoded.payload,
    );
    match decoded {
        Ok(decoded) if &decoded == event => Ok(encoded),
        Ok(decoded) => Err(EventDecodeError::Payload {
            event_type: encoded.event_type.to_string(),
            reason: format!("does not round-trip: {event:?} came back as {decoded:?}"),
        }),
        Err(error) => Err(error),
    }
}

fn encode_unchecked<E: DomainEvent>(event: &E) -> Result<EncodedEvent, EventDecodeError> {
    let fail = |reason: String| EventDecodeError::Payload {
        event_type: format!("{event:?}").chars().take(40).collect(),
        reason,
    };
    let not_an_enum =
        || fail("domain events must be externally tagged enums (serde's default)".to_owned());
    // The type name is the variant serde names, asked of serde itself: the shape of the JSON
    // alone cannot tell an externally tagged enum from an internally tagged one.
    let variant = variant_name::of(event).ok_or_else(not_an_enum)?;
    let body = match serde_json::to_value(event).map_err(|error| fail(error.to_string()))? {
        Value::String(name) if name == variant => Value::Null,
        Value::Object(mut map) if map.len() == 1 => map.remove(variant).ok_or_else(not_an_enum)?,
        _ => return Err(not_an_enum()),
    };
    let event_type = TypeName::new(variant).map_err(|error| fail(error.to_string()))?;
    let payload = serde_json::to_vec(&body).map_err(|error| fail(error.to_string()))?;
    Ok(EncodedEvent {
        event_version: current_version::<E>(event_type.as_str()),
        event_type,
        payload,
    })
}

/// Finds the name of the enum variant a value serialises as, with a serializer that stops at
/// the first call: a `*_variant` call answers with the variant's name, anything else means the
/// value is not serialised as an externally tagged enum variant.
mod variant_name {
    use serde::Serialize;
    use serde::ser::{Error, Impossible, Serializer};

    /// The variant's name, or `None` if `value` is not an enum variant.
    pub fn of(value: &impl Serialize) -> Option<&'static str> {
        match value.serialize(Probe) {
            Err(Stop::Variant(name)) => Some(name),
            _ => None,
        }
    }

    #[derive(Debug)]
    enum Stop {
        Variant(&'static str),
        Other,
    }

    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("variant probe")
        }
    }

    impl std::error::Error for Stop {}

    impl Error for Stop {
        fn custom<T: std::fmt::Display>(_message: T) -> Self {
            Stop::Other
        }
    }

    struct Probe;

    macro_rules! not_a_variant {
        ($($method:ident($($argument:ty),*) -> $out:ty;)*) => {$(
            fn $method(self, $(_: $argument),*) -> Result<$out, Stop> {
                Err(Stop::Other)
            }
        )*};
    }

    impl Serializer for Probe {
        type Ok = ();
        type Error = Stop;
        type SerializeSeq = Impossible<(), Stop>;
        type SerializeTuple = Impossible<(), Stop>;
        type SerializeTupleStruct = Impossible<(), Stop>;
        type SerializeTupleVariant = Impossible<(), Stop>;
        type SerializeMap = Impossible<(), Stop>;
        type SerializeStruct = Impossible<(), Stop>;
        type SerializeStructVariant = Impossible<(), Stop>;

        not_a_variant! {
            serialize_bool(bool) -> ();
            serialize_i8(i8) -> ();
            serialize_i16(i16) -> ();
            serialize_i32(i32) -> ();
            serialize_i64(i64) -> ();
            serialize_u8(u8) -> ();
            serialize_u16(u16) -> ();
            serialize_u32(u32) -> ();
            serialize_u64(u64) -> ();
            serialize_f32(f32) -> ();
            serialize_f64(f64) -> ();
            serialize_char(char) -> ();
            serialize_str(&str) -> ();
            serialize_bytes(&[u8]) -> ();
            serialize_none() -> ();
            serialize_unit() -> ();
            serialize_unit_struct(&'static str) -> ();
            serialize_seq(Option<usize>) -> Self::SerializeSeq;
            serialize_tuple(usize) -> Self::SerializeTuple;
            serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
            serialize_map(Option<usize>) -> Self::SerializeMap;
            serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        }

        fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), Stop> {
            Err(Stop::Other)
        }

        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<(), Stop> {
            Err(Stop::Other)
        }

        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
        ) -> Result<(), Stop> {
            Err(Stop::Variant(variant))
        }

        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: &T,
        ) -> Result<(), Stop> {
            Err(Stop::Variant(variant))
        }

        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Stop> {
            Err(Stop::Variant(variant))
        }

        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Stop> {
            Err(Stop::Variant(variant))
        }
    }
}

/// Decodes a stored event into its domain type, upcasting old versions first.
pub fn decode_event<E: DomainEvent>(
    event_type: &str,
    event_version: u16,
    payload: &[u8],
) -> Result<E, EventDecodeError> {
    let current = current_version::<E>(event_type);
    if event_version == 0 {
        return Err(EventDecodeError::Payload {
            event_type: event_type.to_owned(),
            reason: "schema versions start at 1".to_owned(),
        });
    }
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
    let classify = |error: serde_json::Error| {
        let reason = error.to_string();
        // Only the outer enum's "unknown variant" means an unknown type; the same message
        // from a nested enum field is a payload error.
        if reason.starts_with(&format!("unknown variant `{event_type}`")) {
            EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
            }
        } else {
            payload_error(reason)
        }
    };
    // Stored payloads are untrusted bytes: they must be exactly one JSON value before they
    // are wrapped as `{"Type": payload}`, or a payload such as `1},"Other":{…` could close the
    // object early and be read as something else.
    serde_json::from_slice::<serde::de::IgnoredAny>(payload)
        .map_err(|error| payload_error(error.to_string()))?;
    if event_version == current {
        // The common case, nothing to upcast: decode straight from the bytes, without
        // building a `serde_json::Value` first (a third of a load's time).
        return decode_tagged(event_type, payload).map_err(classify);
    }
    let mut body: Value =
        serde_json::from_slice(payload).map_err(|error| payload_error(error.to_string()))?;
    for version in event_version..current {
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
    // The upcast payload goes through the same byte decoder as a current one, so both paths
    // accept and refuse the same things.
    let upcast = serde_json::to_vec(&body).map_err(|error| payload_error(error.to_string()))?;
    decode_tagged(event_type, &upcast).map_err(classify)
}

/// Decodes `{"Type": payload}`: every kind of variant, a unit variant from `{"Type": null}`,
/// and a newtype variant whose content is `null` too (`"Type"` alone would not). `payload`
/// must be one JSON value (checked by the caller).
fn decode_tagged<E: DomainEvent>(event_type: &str, payload: &[u8]) -> serde_json::Result<E> {
    let mut tagged = Vec::with_capacity(payload.len() + event_type.len() + 8);
    tagged.push(b'{');
    serde_json::to_writer(&mut tagged, event_type)?;
    tagged.push(b':');
    tagged.extend_from_slice(payload);
    tagged.push(b'}');
    serde_json::from_slice(&tagged)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Opened { owner: String, currency: String },
        Closed,
        Noted(Option<String>),
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind")]
    enum InternallyTagged {
        Started,
        Stopped,
    }

    impl DomainEvent for InternallyTagged {}

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
            Sample::Noted(None),
            Sample::Noted(Some("x".into())),
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
    fn events_that_would_not_survive_the_store_are_refused_at_encoding() {
        let error = encode_event(&InternallyTagged::Stopped).expect_err("not externally tagged");
        assert!(matches!(error, EventDecodeError::Payload { .. }), "{error}");
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
        let cases: [Case; 7] = [
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
            ("Closed", 0, b"null", |e| {
                matches!(e, EventDecodeError::Payload { .. })
            }),
            // A payload that would close the tag object early is not one JSON value.
            ("Noted", 1, br#""x"},"Closed":{"#, |e| {
                matches!(e, EventDecodeError::Payload { .. })
            }),
        ];
        for (event_type, version, payload, expected) in cases {
            let error = decode_event::<Sample>(event_type, version, payload).expect_err("refused");
            assert!(expected(&error), "{event_type} v{version}: {error}");
        }
    }
}
