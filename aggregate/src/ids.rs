//! 128-bit identifiers of events, commands and the causal chains between them. Aggregate code
//! is deterministic, so ids never come from a random source inside the crate: a command id comes
//! from the client, and the ids of the events a command produces are derived from it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::NameError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The id whose bytes are the first 16 bytes of blake3 over `parts`, each
            /// length-prefixed so that different splits never collide.
            pub fn derive(parts: &[&[u8]]) -> Self {
                let mut hasher = blake3::Hasher::new();
                hasher.update(stringify!($name).as_bytes());
                for part in parts {
                    hasher.update(&(part.len() as u64).to_le_bytes());
                    hasher.update(part);
                }
                let mut bytes = [0; 16];
                bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
                Self(bytes)
            }

            /// The id as 32 lower-case hex digits.
            pub fn to_hex(&self) -> String {
                self.0.iter().map(|byte| format!("{byte:02x}")).collect()
            }

            /// Parses 32 hex digits.
            pub fn from_hex(text: &str) -> Result<Self, NameError> {
                // Only hex digits: `from_str_radix` alone would also take a '+' sign, and an
                // id must have exactly one text form.
                if text.len() != 32 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                    return Err(NameError::BadId { text: text.chars().take(80).collect() });
                }
                let mut bytes = [0; 16];
                for (index, byte) in bytes.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16)
                        .map_err(|_| NameError::BadId { text: text.to_owned() })?;
                }
                Ok(Self(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.to_hex()[..8])
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(text: &str) -> Result<Self, NameError> {
                Self::from_hex(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(text: String) -> Result<Self, NameError> {
                Self::from_hex(&text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.to_hex()
            }
        }
    };
}

id_type!(
    /// Identifies one event, unique in the store. Appending an event id again is idempotent.
    EventId
);
id_type!(
    /// Identifies one command, chosen by the client. Executing a command id again returns the
    /// first outcome and writes nothing.
    CommandId
);
id_type!(
    /// A link in a causal chain: the id of the command or event that caused something, or the
    /// id shared by everything one request set in motion (correlation).
    MessageId
);

impl EventId {
    /// The id of the `index`-th event produced by `command`: deterministic, so every member
    /// that executes the same command produces the same events.
    pub fn for_command(command: CommandId, index: usize) -> Self {
        Self::derive(&[&command.0, &(index as u64).to_le_bytes()])
    }
}

impl From<EventId> for MessageId {
    fn from(id: EventId) -> Self {
        Self(id.0)
    }
}

impl From<CommandId> for MessageId {
    fn from(id: CommandId) -> Self {
        Self(id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex_and_refuse_garbage() {
        let id = CommandId::derive(&[b"client", b"1"]);
        assert_eq!(CommandId::from_hex(&id.to_hex()).expect("valid hex"), id);
        for bad in [
            "",
            "xyz",
            &"g".repeat(32),
            &"0".repeat(31),
            "é".repeat(16).as_str(),
        ] {
            assert!(CommandId::from_hex(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn derived_ids_depend_on_every_part_and_its_boundaries() {
        let a = EventId::derive(&[b"ab", b"c"]);
        assert_ne!(a, EventId::derive(&[b"a", b"bc"]));
        assert_ne!(a, EventId::derive(&[b"ab", b"d"]));
        let command = CommandId::derive(&[b"x"]);
        assert_ne!(
            EventId::for_command(command, 0),
            EventId::for_command(command, 1)
        );
        assert_eq!(
            EventId::for_command(command, 3),
            EventId::for_command(command, 3)
        );
    }
}
