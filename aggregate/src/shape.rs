//! What an aggregate is, as far as two nodes must agree on it to run the same domain: its
//! category, the version of its state's encoding, and its event types with their schema
//! versions. The node compares these (through a digest) before it lets a member take part:
//! a member lacking a category or an event type would record `Invalid` where the others
//! append, and the stores would diverge silently.

use serde::Serialize;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use crate::domain::{Aggregate, DomainEvent, current_version};

/// One event type of an aggregate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct EventShape {
    /// Its type name (the variant's name as serde writes it).
    pub event_type: String,
    /// Its current schema version (1 plus its upcasters).
    pub version: u16,
}

/// One aggregate, as [`crate::AggregateRegistry::shapes`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct AggregateShape {
    /// Its category.
    pub category: String,
    /// Its `SCHEMA_VERSION`.
    pub schema_version: u32,
    /// Its event types, in the order the enum declares them.
    pub events: Vec<EventShape>,
}

impl AggregateShape {
    /// The shape of aggregate `A`.
    pub fn of<A: Aggregate>() -> Self {
        Self {
            category: A::CATEGORY.to_owned(),
            schema_version: A::SCHEMA_VERSION,
            events: event_types::<A::Event>()
                .iter()
                .map(|name| EventShape {
                    event_type: (*name).to_owned(),
                    version: current_version::<A::Event>(name),
                })
                .collect(),
        }
    }
}

/// The type names of an event enum's variants, asked of serde itself: its derived
/// `Deserialize` names every variant to `deserialize_enum`. Empty for a type that is not an
/// externally tagged enum (which the store refuses to encode anyway).
pub fn event_types<E: DomainEvent>() -> &'static [&'static str] {
    variants_of::<E>()
}

fn variants_of<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(Probe) {
        Err(Stop::Variants(variants)) => variants,
        _ => &[],
    }
}

/// Why the probe stopped: it saw the variants, or anything else.
#[derive(Debug)]
enum Stop {
    Variants(&'static [&'static str]),
    Other,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("variant probe")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_message: T) -> Self {
        Stop::Other
    }
}

/// A deserializer that answers every request with an error, and the variant list of an enum
/// with that list.
struct Probe;

impl<'de> Deserializer<'de> for Probe {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop::Other)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        Err(Stop::Variants(variants))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Sample {
        First {
            value: u8,
        },
        #[serde(rename = "Renamed")]
        Second,
        Third(u8),
    }

    impl DomainEvent for Sample {
        const UPCASTERS: &'static [crate::Upcaster] = &[crate::Upcaster {
            event_type: "First",
            from_version: 1,
            upcast: Ok,
        }];
    }

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(tag = "type")]
    enum InternallyTagged {
        Only,
    }

    impl DomainEvent for InternallyTagged {}

    #[test]
    fn variants_are_listed_as_serde_names_them() {
        assert_eq!(event_types::<Sample>(), ["First", "Renamed", "Third"]);
        assert!(event_types::<InternallyTagged>().is_empty());
    }

    #[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
    struct Counter;

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Aggregate for Counter {
        const CATEGORY: &'static str = "Counter";
        const SCHEMA_VERSION: u32 = 3;
        type Command = ();
        type Event = Sample;
        type Error = Never;

        fn handle(&self, _: &(), _: &crate::CommandContext) -> Result<Vec<Sample>, Never> {
            Ok(Vec::new())
        }

        fn apply(self, _: &Sample) -> Self {
            self
        }
    }

    #[test]
    fn a_shape_names_the_category_and_each_event_type_at_its_version() {
        let shape = AggregateShape::of::<Counter>();
        assert_eq!(shape.category, "Counter");
        assert_eq!(shape.schema_version, 3);
        let versions: Vec<(&str, u16)> = shape
            .events
            .iter()
            .map(|event| (event.event_type.as_str(), event.version))
            .collect();
        assert_eq!(versions, [("First", 2), ("Renamed", 1), ("Third", 1)]);
    }
}
