//! The domain fingerprint: what members must share to run the same application. A member
//! lacking a category or an event type would record `Invalid` where the others append, and
//! the stores would diverge silently; so a section's members all run one fingerprint, kept
//! in the store, checked at start, carried by join requests and by every sync request.

use chorus_aggregate::{AggregateRegistry, AggregateShape, EventStore, StoreError};
use serde::{Deserialize, Serialize};

/// Longest domain version string (bytes).
pub const DOMAIN_VERSION_BYTES_MAX: usize = 64;

/// Checkpoint name the section's domain fingerprint is saved under in the event store.
pub const DOMAIN_CHECKPOINT: &str = "$engine/domain";

/// An application's domain, as members compare it: its version string (set by the
/// application) and a digest of that version and of every aggregate's category, state
/// version, event types and their schema versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedFingerprint")]
pub struct DomainFingerprint {
    /// The application's domain version.
    pub version: String,
    /// blake3 of the version and the aggregates' shapes.
    pub digest: [u8; 32],
}

#[derive(Deserialize)]
struct UncheckedFingerprint {
    version: String,
    digest: [u8; 32],
}

impl TryFrom<UncheckedFingerprint> for DomainFingerprint {
    type Error = String;

    fn try_from(unchecked: UncheckedFingerprint) -> Result<Self, String> {
        if unchecked.version.len() > DOMAIN_VERSION_BYTES_MAX {
            return Err(format!(
                "a domain version of {} bytes; at most {DOMAIN_VERSION_BYTES_MAX}",
                unchecked.version.len()
            ));
        }
        Ok(Self {
            version: unchecked.version,
            digest: unchecked.digest,
        })
    }
}

impl DomainFingerprint {
    /// The fingerprint of the aggregates in `registry` under domain version `version`, or why
    /// the version cannot be one (too long).
    pub fn of(version: &str, registry: &AggregateRegistry) -> Result<Self, String> {
        if version.len() > DOMAIN_VERSION_BYTES_MAX {
            return Err(format!(
                "the domain version is {} bytes; at most {DOMAIN_VERSION_BYTES_MAX}",
                version.len()
            ));
        }
        Ok(Self::of_shapes(version, &registry.shapes()))
    }

    /// The fingerprint of these shapes under `version` (callers keep the version short).
    pub fn of_shapes(version: &str, shapes: &[AggregateShape]) -> Self {
        // JSON of plain structs, vectors and strings is canonical: one value, one encoding.
        let shape_bytes = serde_json::to_vec(shapes).unwrap_or_default();
        let mut hasher = blake3::Hasher::new_derive_key("chorus domain fingerprint v1");
        hasher.update(&(version.len() as u64).to_le_bytes());
        hasher.update(version.as_bytes());
        hasher.update(&shape_bytes);
        Self {
            version: version.to_owned(),
            digest: *hasher.finalize().as_bytes(),
        }
    }

    /// The digest's first 8 bytes in hex: enough for a person to tell two domains apart.
    pub fn short(&self) -> String {
        self.digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// The fingerprint the store holds for its section, if any.
    pub fn load(store: &EventStore) -> Result<Option<Self>, StoreError> {
        let Some(bytes) = store.load_checkpoint(DOMAIN_CHECKPOINT)? else {
            return Ok(None);
        };
        Self::decode(&bytes).map(Some)
    }

    /// Decodes a saved fingerprint from untrusted bytes (a damaged file is an error, never a
    /// panic).
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes)
            .map_err(|error| StoreError::Corrupt(format!("engine domain fingerprint: {error}")))
    }

    /// Saves it durably as the section's.
    pub fn save(&self, store: &EventStore) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(self)
            .map_err(|error| StoreError::Corrupt(format!("engine domain fingerprint: {error}")))?;
        store.save_checkpoint_durable(DOMAIN_CHECKPOINT, &bytes)
    }
}

impl std::fmt::Display for DomainFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "version {:?} fingerprint {}", self.version, self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_aggregate::EventShape;

    fn shape(category: &str, events: &[(&str, u16)]) -> AggregateShape {
        AggregateShape {
            category: category.to_owned(),
            schema_version: 1,
            events: events
                .iter()
                .map(|(event_type, version)| EventShape {
                    event_type: (*event_type).to_owned(),
                    version: *version,
                })
                .collect(),
        }
    }

    #[test]
    fn any_difference_in_version_category_event_or_event_version_changes_the_digest() {
        let base = [shape("Order", &[("Placed", 1), ("Confirmed", 1)])];
        let reference = DomainFingerprint::of_shapes("1", &base);
        assert_eq!(reference, DomainFingerprint::of_shapes("1", &base));
        let others = [
            DomainFingerprint::of_shapes("2", &base),
            DomainFingerprint::of_shapes(
                "1",
                &[shape("Orders", &[("Placed", 1), ("Confirmed", 1)])],
            ),
            DomainFingerprint::of_shapes("1", &[shape("Order", &[("Placed", 1)])]),
            DomainFingerprint::of_shapes(
                "1",
                &[shape("Order", &[("Placed", 2), ("Confirmed", 1)])],
            ),
            DomainFingerprint::of_shapes("1", &[]),
        ];
        for other in others {
            assert_ne!(other.digest, reference.digest, "{other}");
        }
    }

    #[test]
    fn a_long_version_is_refused_when_made_and_when_decoded() {
        let long = "v".repeat(DOMAIN_VERSION_BYTES_MAX + 1);
        assert!(DomainFingerprint::of(&long, &AggregateRegistry::new()).is_err());
        let forged = serde_json::json!({"version": long, "digest": vec![0u8; 32]});
        assert!(serde_json::from_value::<DomainFingerprint>(forged).is_err());
        let fine = DomainFingerprint::of("1", &AggregateRegistry::new()).expect("short");
        let bytes = serde_json::to_vec(&fine).expect("encodes");
        assert_eq!(
            serde_json::from_slice::<DomainFingerprint>(&bytes).expect("decodes"),
            fine
        );
    }
}
