//! The domain fingerprint: what members must share to run the same application. A member
//! lacking a category or an event type would record `Invalid` where the others append, and
//! the stores would diverge silently; so a section agrees on one fingerprint, kept in the
//! store, checked at start, carried by join requests and by every sync request.
//!
//! A domain upgrade is agreed like a membership change: code that stands in for the agreed
//! domain (`NodeDomain::upgrades_from`) may take part, votes for its own domain
//! (`UpgradeProposal`), and the section switches at the block where more than two thirds
//! of its members voted for the same one (`docs/design-notes.md`, "Domain upgrades").

use chorus_aggregate::{AggregateRegistry, AggregateShape, EventStore, StoreError};
use chorus_consensus::PeerId;
use serde::{Deserialize, Serialize};

use crate::proposal::{ProposalError, decode_tagged, encode_tagged};

/// Longest domain version string (bytes).
pub const DOMAIN_VERSION_BYTES_MAX: usize = 64;

/// Checkpoint name the section's domain fingerprint is saved under in the event store.
pub const DOMAIN_CHECKPOINT: &str = "$engine/domain";

/// An application's domain, as members compare it: its version string (set by the
/// application) and a digest of that version and of every aggregate's category, state
/// version, event types and their schema versions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
}

/// The domain a node runs, and the agreed domains its code stands in for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDomain {
    /// What this node's code is.
    pub runs: DomainFingerprint,
    /// Domain versions this code decides exactly as their own code did (new behaviour only
    /// from the agreed upgrade on, through `CommandContext::domain_version`). A section
    /// whose agreed domain has one of these versions takes this node in.
    #[serde(default)]
    pub upgrades_from: Vec<String>,
}

impl NodeDomain {
    /// Whether this node can take part in a section that agreed on `section`.
    pub fn can_run(&self, section: &DomainFingerprint) -> bool {
        *section == self.runs || self.upgrades_from.contains(&section.version)
    }
}

/// Most earlier agreed domains a section remembers (members still on one of them are caught
/// up to the upgrade, not turned away).
pub const EARLIER_DOMAINS_MAX: usize = 8;

/// The domain a section agreed on, and the digests of those it agreed on before (latest
/// last). Saved in the store; the same on every member at the same point of the order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SectionDomain {
    /// The agreed domain.
    #[serde(flatten)]
    pub agreed: DomainFingerprint,
    /// Earlier agreed domains, at most `EARLIER_DOMAINS_MAX`, oldest first.
    #[serde(default)]
    pub earlier: Vec<[u8; 32]>,
}

impl SectionDomain {
    /// A section that agreed on `agreed` and nothing before.
    pub fn new(agreed: DomainFingerprint) -> Self {
        Self {
            agreed,
            earlier: Vec::new(),
        }
    }

    /// Whether `digest` is the agreed domain's or an earlier one's.
    pub fn knows(&self, digest: &[u8; 32]) -> bool {
        self.agreed.digest == *digest || self.earlier.contains(digest)
    }

    /// The section after it agreed on `next`.
    pub fn upgraded(&self, next: DomainFingerprint) -> Self {
        let mut earlier = self.earlier.clone();
        earlier.push(self.agreed.digest);
        let excess = earlier.len().saturating_sub(EARLIER_DOMAINS_MAX);
        earlier.drain(..excess);
        Self {
            agreed: next,
            earlier,
        }
    }

    /// What the store holds for its section, if anything (a fingerprint saved alone, as
    /// before upgrades, reads as a section with no earlier domain).
    pub fn load(store: &EventStore) -> Result<Option<Self>, StoreError> {
        let Some(bytes) = store.load_checkpoint(DOMAIN_CHECKPOINT)? else {
            return Ok(None);
        };
        Self::decode(&bytes).map(Some)
    }

    /// Decodes saved bytes, untrusted (a damaged file is an error, never a panic).
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let section: Self = serde_json::from_slice(bytes)
            .map_err(|error| StoreError::Corrupt(format!("engine domain: {error}")))?;
        if section.earlier.len() > EARLIER_DOMAINS_MAX {
            return Err(StoreError::Corrupt(format!(
                "engine domain: {} earlier domains; at most {EARLIER_DOMAINS_MAX}",
                section.earlier.len()
            )));
        }
        Ok(section)
    }

    /// Saves it durably as the section's.
    pub fn save(&self, store: &EventStore) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(self)
            .map_err(|error| StoreError::Corrupt(format!("engine domain: {error}")))?;
        store.save_checkpoint_durable(DOMAIN_CHECKPOINT, &bytes)
    }
}

/// First byte of an encoded domain upgrade vote (command proposals start with their
/// version byte, 1; membership proposals with `M`).
pub const UPGRADE_TAG: u8 = b'D';
/// Encoding version of upgrade votes, after the tag.
pub const UPGRADE_VERSION: u8 = 1;

/// A member's vote, in one generation, that its section run `domain` from now on. Counted
/// like a membership change: in Supermajority mode every voter proposes the same bytes
/// (`voter` is `None`) and one block proves more than two thirds; in Single mode each
/// member proposes its own (`voter` is itself) and the engine counts the blocks. A member
/// votes again every `UPGRADE_VOTE_PERIOD_MS` until the section agrees (`period`): consensus
/// forgets a tally that gathered too few votes within its window, and members upgraded
/// minutes apart must still add up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeProposal {
    /// The generation it was proposed in (a late block of another one does nothing).
    pub generation: u64,
    /// The domain to run.
    pub domain: DomainFingerprint,
    /// Single mode: the member whose vote this is.
    pub voter: Option<PeerId>,
    /// The voter's clock in `UPGRADE_VOTE_PERIOD_MS` periods: members voting in one period
    /// propose the same bytes.
    pub period: u64,
}

/// How often a member votes again for an upgrade not agreed yet (ms).
pub const UPGRADE_VOTE_PERIOD_MS: u64 = 10_000;

impl UpgradeProposal {
    /// The observation bytes: tag, version, JSON (deterministic).
    pub fn encode(&self) -> Vec<u8> {
        // Integers, a short string and fixed arrays always serialise.
        encode_tagged(UPGRADE_TAG, UPGRADE_VERSION, self)
    }

    /// Decodes untrusted observation bytes; `None` if they are not tagged as an upgrade vote.
    pub fn decode(bytes: &[u8]) -> Option<Result<Self, ProposalError>> {
        decode_tagged(bytes, UPGRADE_TAG, UPGRADE_VERSION)
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
    fn a_section_domain_remembers_earlier_ones_within_its_bound_and_reads_old_saves() {
        let first = DomainFingerprint::of_shapes("1", &[]);
        let old_save = serde_json::to_vec(&first).expect("encodes");
        let loaded = SectionDomain::decode(&old_save).expect("a saved fingerprint reads");
        assert_eq!(loaded, SectionDomain::new(first.clone()));
        let mut section = loaded;
        for version in 2..20 {
            section = section.upgraded(DomainFingerprint::of_shapes(&version.to_string(), &[]));
        }
        assert_eq!(section.agreed.version, "19");
        assert_eq!(section.earlier.len(), EARLIER_DOMAINS_MAX);
        assert!(section.knows(&DomainFingerprint::of_shapes("18", &[]).digest));
        assert!(!section.knows(&first.digest));
        let bytes = serde_json::to_vec(&section).expect("encodes");
        assert_eq!(SectionDomain::decode(&bytes).expect("decodes"), section);
        assert!(SectionDomain::decode(b"{\"version\":1}").is_err());
    }

    #[test]
    fn upgrade_votes_round_trip_and_other_bytes_are_not_taken_for_one() {
        let vote = UpgradeProposal {
            generation: 3,
            domain: DomainFingerprint::of_shapes("2", &[]),
            voter: None,
            period: 177_000_000,
        };
        let bytes = vote.encode();
        assert_eq!(UpgradeProposal::decode(&bytes), Some(Ok(vote)));
        assert_eq!(UpgradeProposal::decode(b"M\x01{}"), None);
        assert_eq!(UpgradeProposal::decode(&[]), None);
        assert!(matches!(
            UpgradeProposal::decode(&[UPGRADE_TAG, 9]),
            Some(Err(ProposalError::UnknownVersion(9)))
        ));
        assert!(matches!(
            UpgradeProposal::decode(&[UPGRADE_TAG, UPGRADE_VERSION, b'x']),
            Some(Err(ProposalError::Malformed(_)))
        ));
    }

    #[test]
    fn a_node_runs_its_own_domain_and_those_it_stands_in_for_only() {
        let node = NodeDomain {
            runs: DomainFingerprint::of_shapes("2", &[]),
            upgrades_from: vec!["1".to_owned()],
        };
        assert!(node.can_run(&DomainFingerprint::of_shapes("2", &[])));
        assert!(node.can_run(&DomainFingerprint::of_shapes("1", &[])));
        assert!(!node.can_run(&DomainFingerprint::of_shapes("0", &[])));
        assert!(!node.can_run(&DomainFingerprint::of_shapes(
            "2",
            &[shape("Order", &[("Placed", 1)])]
        )));
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
