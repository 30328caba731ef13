//! Membership: how a section's member list changes, and what a new member receives.
//!
//! A change (a node joins, a member leaves) is an agreed observation of the section's current
//! consensus instance, like a command. Its block is the deterministic point where it takes
//! effect: every member applies the blocks before it, then ends that instance (blocks after
//! it in the old instance are never applied, on any member) and starts the next *generation*,
//! a new consensus instance with the new member list, or two if the section splits. Each
//! instance signs its own group id into every event (`Config::group`, from the prefix and the
//! generation), so no event, vote or fork evidence of one generation counts in another.
//!
//! A joiner catches up by state transfer, not by replaying gossip history: at the switch every
//! member fixes its store's head and the section's eventless commands (a *handover*) and sends
//! the joiner a `Welcome` with the digest of that state. The joiner accepts the welcome once
//! `f + 1` members of the section it knew sent the same one (so at least one honest member
//! vouches for the digest), fetches the events from one of them, checks the digest, writes
//! them, and only then applies the new generation's blocks, which start exactly where the
//! transferred state ends.
//!
//! A member that fell behind by more than the consensus prune window (it was down or cut off
//! too long) cannot catch up by gossip: the history it lacks is pruned everywhere. A member
//! that sees this in its own graph (`Consensus::lags_beyond_window`) tells it (`Behind`); the
//! laggard asks to join again, and each member that sees the lag itself votes a `Refresh`:
//! the same members in a new generation, the laggard welcomed and transferred like a joiner
//! (its transferred writes that it already holds are duplicates, written once).

use chorus_aggregate::{CommandId, EventStore, Filter, StoreError, StreamKey};
use chorus_consensus::PeerId;
use chorus_routing::{Prefix, XorName};
use serde::{Deserialize, Serialize};

use crate::domain::SectionDomain;
use crate::proposal::{ProposalError, decode_tagged, encode_tagged};

/// First byte of an encoded membership proposal (command proposals start with their version
/// byte, 1).
pub const MEMBERSHIP_TAG: u8 = b'M';
/// Encoding version of membership proposals, after the tag.
pub const MEMBERSHIP_VERSION: u8 = 1;
/// Handovers a member keeps to serve joiners (the latest ones).
pub const HANDOVERS_MAX: usize = 8;

/// A change to a section's member list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberChange {
    /// The node joins the section that covers its name.
    Join(PeerId),
    /// The member leaves.
    Leave(PeerId),
    /// The member stays, but is brought back by state transfer: it fell behind by more than
    /// the consensus prune window (a long crash or partition), so gossip can no longer catch
    /// it up. The members stay the same; the generation changes, and the member is welcomed
    /// and fetches the section state like a joiner.
    Refresh(PeerId),
}

impl MemberChange {
    /// The node that joins or leaves.
    pub fn node(&self) -> PeerId {
        match self {
            Self::Join(node) | Self::Leave(node) | Self::Refresh(node) => *node,
        }
    }
}

/// A membership change proposed in one generation of a section; agreed in another generation
/// (a late block), it does nothing.
///
/// A change takes effect once more than two thirds of the members voted for it, in either
/// block mode. In Supermajority mode one block proves that (`voter` is `None`, and every
/// member proposes the same bytes). In Single mode a block carries one vote, so each member
/// proposes its own observation (`voter` is itself) and the engine counts the blocks whose
/// proof is signed by the member they name: one faulty member cannot add or remove anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MembershipProposal {
    /// The generation it was proposed in.
    pub generation: u64,
    /// The change.
    pub change: MemberChange,
    /// Single mode: the member whose vote this is.
    pub voter: Option<PeerId>,
}

impl MembershipProposal {
    /// The observation bytes: tag, version, JSON (deterministic, so every member proposing
    /// the same change produces the same bytes and their votes add up).
    pub fn encode(&self) -> Vec<u8> {
        // A struct of integers and fixed arrays always serialises.
        encode_tagged(MEMBERSHIP_TAG, MEMBERSHIP_VERSION, self)
    }

    /// Decodes untrusted observation bytes; `None` if they are not tagged as a membership
    /// proposal (they may be a command proposal).
    pub fn decode(bytes: &[u8]) -> Option<Result<Self, ProposalError>> {
        decode_tagged(bytes, MEMBERSHIP_TAG, MEMBERSHIP_VERSION)
    }
}

/// A command whose fate no event shows: refused, or appended with no event. Part of a
/// section's state (a command id has one fate: a refused one stays refused, a done one is
/// not done again), so it travels with state transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventlessCommand {
    /// The command.
    pub command_id: CommandId,
    /// Its stream.
    pub stream: StreamKey,
    /// Why it was refused; `None`: it was appended, with no event.
    pub refusal: Option<String>,
}

/// What a member serves a joiner: the section's state when the joiner's generation started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The joiner.
    pub joiner: PeerId,
    /// The generation the joiner joined.
    pub generation: u64,
    /// The joiner's section in that generation (the events of its streams are transferred).
    pub prefix: Prefix,
    /// Its members in that generation, in name order.
    pub members: Vec<PeerId>,
    /// The member's store head when the generation started: the events at or below it are
    /// the state (the member's later events belong to the new generation's blocks).
    pub head: u64,
    /// The commands of the joiner's section recorded when the generation started.
    pub commands: Vec<EventlessCommand>,
    /// The number of events in that state.
    pub events: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// [`section_digest`] of that state.
    pub digest: [u8; 32],
    /// How this member numbers that state (absent in handovers saved by earlier releases).
    #[serde(default)]
    pub numbering: Option<Numbering>,
    /// The domain the section had agreed on when the generation started (absent in
    /// handovers saved by earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<SectionDomain>,
}

/// How a member numbers the state it hands over: its store's head when the generation
/// started and a digest of the events' positions. Members that applied the same agreed
/// sequence since their section began number alike, and a joiner keeps that numbering when
/// `f + 1` of them vouch for it, so positions (and `supersedes`, which names a position)
/// mean the same at every member. After a merge each former section numbered its own
/// history; the members then differ, and a joiner numbers the state afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Numbering {
    /// The head: the joiner's store continues from here.
    pub head: u64,
    /// [`numbering_digest`] of the events' positions and the head.
    pub digest: [u8; 32],
}

/// The numbering of `events` (a section's state, in store order) at a store of head `head`.
pub fn numbering_of<'a>(
    events: impl IntoIterator<Item = &'a chorus_aggregate::RecordedEvent>,
    head: u64,
) -> Numbering {
    let mut hasher = blake3::Hasher::new_derive_key("chorus engine section numbering v1");
    for event in events {
        hasher.update(&event.position.to_le_bytes());
    }
    hasher.update(&head.to_le_bytes());
    Numbering {
        head,
        digest: *hasher.finalize().as_bytes(),
    }
}

/// What a welcome promises a joiner: its section in the new generation and the digest of the
/// state it starts from. Equal welcomes from `f + 1` members are believed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Welcome {
    /// The generation the joiner is a member of.
    pub generation: u64,
    /// The joiner's section.
    pub prefix: Prefix,
    /// Its members, the joiner included, in name order.
    pub members: Vec<PeerId>,
    /// The number of events and of eventless commands in that state (a transfer that brings
    /// more is cut short: a faulty source cannot make the joiner hold more than promised).
    pub events: u64,
    /// See `events`.
    pub commands: u64,
    /// The events' payload bytes (a bound like the counts).
    pub bytes: u64,
    /// [`section_digest`] of the state the generation starts from.
    pub digest: [u8; 32],
    /// How the sender numbers that state. Not part of what `f + 1` must agree on (after a
    /// merge honest members differ); kept only when `f + 1` of them agree on it.
    #[serde(default)]
    pub numbering: Option<Numbering>,
    /// The domain the section had agreed on when the generation started: the joiner applies
    /// the generation's blocks from there, upgrades included. Part of what `f + 1` agree on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<SectionDomain>,
}

impl Welcome {
    /// Whether `other` promises the same state (the numbering aside).
    pub fn same_state(&self, other: &Welcome) -> bool {
        Welcome {
            numbering: None,
            ..self.clone()
        } == Welcome {
            numbering: None,
            ..other.clone()
        }
    }
}

/// What a joiner fetches: the state `welcome` promises, from one of `sources`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferTarget {
    /// The welcome believed.
    pub welcome: Welcome,
    /// The members that sent it.
    pub sources: Vec<PeerId>,
}

/// How much of its section's state this node's store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holding {
    /// All of it: a founding member, or a joiner whose transfer is done.
    Complete,
    /// Admitted: fetching the state the believed welcome promises, from the members that
    /// vouched for it.
    Fetching(Box<TransferTarget>),
    /// Nothing yet: a joiner not welcomed.
    Nothing,
}

/// The engine's durable view of its own section, saved whenever it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SavedSectionState", try_from = "SavedSectionState")]
pub struct SectionState {
    /// Generation of the section's consensus instance (0 at the network's start).
    pub generation: u64,
    /// The section's prefix.
    pub prefix: Prefix,
    /// Its members in name order; empty when this node is no member (it left, or has not been
    /// welcomed yet).
    pub members: Vec<PeerId>,
    /// Every member of every section as this node knows them (the section map is a function
    /// of this set).
    pub network: Vec<PeerId>,
    /// How much of the section's state the store holds.
    pub holding: Holding,
    /// The store's head when this generation started: the events above it were written in
    /// this generation (for checkers; 0 for a joiner, whose transferred events are all its
    /// section's).
    pub start_head: u64,
    /// Handovers to serve to joiners, latest last.
    pub handovers: Vec<Handover>,
}

impl SectionState {
    /// Whether the store holds the section's state.
    pub fn holds_state(&self) -> bool {
        self.holding == Holding::Complete
    }

    /// The transfer a joiner is fetching, if any.
    pub fn transfer_target(&self) -> Option<&TransferTarget> {
        match &self.holding {
            Holding::Fetching(target) => Some(target),
            Holding::Complete | Holding::Nothing => None,
        }
    }
}

/// `SectionState` as it is saved (the format of the first releases: a flag and an optional
/// transfer, which `Holding` now says in one value).
#[derive(Serialize, Deserialize)]
struct SavedSectionState {
    generation: u64,
    prefix: Prefix,
    members: Vec<PeerId>,
    network: Vec<PeerId>,
    transferred: bool,
    start_head: u64,
    transfer: Option<TransferTarget>,
    handovers: Vec<Handover>,
}

impl From<SectionState> for SavedSectionState {
    fn from(state: SectionState) -> Self {
        let (transferred, transfer) = match state.holding {
            Holding::Complete => (true, None),
            Holding::Fetching(target) => (false, Some(*target)),
            Holding::Nothing => (false, None),
        };
        Self {
            generation: state.generation,
            prefix: state.prefix,
            members: state.members,
            network: state.network,
            transferred,
            start_head: state.start_head,
            transfer,
            handovers: state.handovers,
        }
    }
}

impl TryFrom<SavedSectionState> for SectionState {
    type Error = String;

    fn try_from(saved: SavedSectionState) -> Result<Self, Self::Error> {
        let holding = match (saved.transferred, saved.transfer) {
            (true, None) => Holding::Complete,
            (false, Some(target)) => Holding::Fetching(Box::new(target)),
            (false, None) => Holding::Nothing,
            (true, Some(_)) => return Err("transferred, yet with a transfer to fetch".into()),
        };
        Ok(Self {
            generation: saved.generation,
            prefix: saved.prefix,
            members: saved.members,
            network: saved.network,
            holding,
            start_head: saved.start_head,
            handovers: saved.handovers,
        })
    }
}

/// Checkpoint name the section state is saved under in the event store.
pub const SECTION_STATE_CHECKPOINT: &str = "$engine/section";

impl SectionState {
    /// Loads the saved state, if any.
    pub fn load(store: &EventStore) -> Result<Option<Self>, StoreError> {
        let Some(bytes) = store.load_checkpoint(SECTION_STATE_CHECKPOINT)? else {
            return Ok(None);
        };
        Self::decode(&bytes).map(Some)
    }

    /// Decodes a saved state from untrusted bytes (a damaged file is an error, never a panic).
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes)
            .map_err(|error| StoreError::Corrupt(format!("engine section state: {error}")))
    }

    /// Saves it durably.
    pub fn save(&self, store: &EventStore) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(self)
            .map_err(|error| StoreError::Corrupt(format!("engine section state: {error}")))?;
        store.save_checkpoint_durable(SECTION_STATE_CHECKPOINT, &bytes)
    }
}

/// The consensus group id of a section's generation: every event of that instance signs it.
pub fn group_id(prefix: &Prefix, generation: u64) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("chorus engine section group v1");
    hasher.update(prefix.to_string().as_bytes());
    hasher.update(&[0]);
    hasher.update(&generation.to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// A node's name.
pub fn name_of(node: &PeerId) -> XorName {
    XorName::from_public_key(&node.0)
}

/// Sorts members in name order, the order every member agrees on.
pub fn sort_members(members: &mut Vec<PeerId>) {
    members.sort_by_key(name_of);
    members.dedup();
}

/// The section `node` is in once a section with `prefix` has `members`: the section splits
/// while both halves keep `section_size_min` members (the section map's rule). `None` if
/// `node` is not among `members`.
pub fn section_after(
    prefix: Prefix,
    members: &[PeerId],
    node: &PeerId,
    section_size_min: usize,
) -> Option<(Prefix, Vec<PeerId>)> {
    if !members.contains(node) {
        return None;
    }
    let mut prefix = prefix;
    let mut members: Vec<PeerId> = members.to_vec();
    sort_members(&mut members);
    loop {
        let bit = prefix.len();
        let (Some(zero), Some(one)) = (prefix.pushed(false), prefix.pushed(true)) else {
            break;
        };
        let (in_zero, in_one): (Vec<PeerId>, Vec<PeerId>) =
            members.iter().partition(|member| !name_of(member).bit(bit));
        if in_zero.len() < section_size_min.max(1) || in_one.len() < section_size_min.max(1) {
            break;
        }
        let ours = name_of(node).bit(bit);
        (prefix, members) = if ours { (one, in_one) } else { (zero, in_zero) };
    }
    Some((prefix, members))
}

/// Whether a change may apply to a section with `prefix` and `members`: a join of a node
/// whose name the prefix covers and that is no member yet; a leave of a member that leaves
/// the section at least `section_size_min` strong (or the root section with one member at
/// least). A leave that would make the section merge with its sibling is refused: merging
/// needs the sibling's agreement too, which is not built (ARCHITECTURE.md).
pub fn change_allowed(
    prefix: &Prefix,
    members: &[PeerId],
    change: &MemberChange,
    section_size_min: usize,
) -> bool {
    match change {
        MemberChange::Join(node) => !members.contains(node) && prefix.matches(&name_of(node)),
        MemberChange::Refresh(node) => members.contains(node),
        MemberChange::Leave(node) => {
            let left = members.len().saturating_sub(1);
            members.contains(node) && left >= 1 && (prefix.is_empty() || left >= section_size_min)
        }
    }
}

/// The eventless commands the store recorded for streams under `prefix`, in command-id order.
pub fn section_commands(
    store: &EventStore,
    prefix: &Prefix,
) -> Result<Vec<EventlessCommand>, StoreError> {
    Ok(store
        .eventless_commands()?
        .into_iter()
        .filter(|(_, stream, _)| prefix.matches(&XorName::from_stream_key(&stream.qualified())))
        .map(|(command_id, stream, refusal)| EventlessCommand {
            command_id,
            stream,
            refusal,
        })
        .collect())
}

/// The events of streams under `prefix`, in the store's order, up to global position `head`
/// (all if `None`).
pub fn section_events(
    store: &EventStore,
    prefix: &Prefix,
    from: u64,
    head: Option<u64>,
    count: usize,
) -> Result<(Vec<chorus_aggregate::RecordedEvent>, Option<u64>), StoreError> {
    let slice = store.read_log(&Filter::All, from, count)?;
    let mut events = Vec::new();
    for event in slice.events {
        if head.is_some_and(|head| event.position > head) {
            return Ok((events, None));
        }
        if prefix.matches(&XorName::from_stream_key(&event.stream.qualified())) {
            events.push(event);
        }
    }
    let next = slice
        .next
        .filter(|next| head.is_none_or(|head| *next <= head));
    Ok((events, next))
}

/// A digest of a section's state: its streams' events (every envelope field but the global
/// position, which can differ between members: see [`Numbering`]), in the store's order, and
/// its commands. Two
/// members that applied the same agreed sequence have equal digests, whatever else their
/// stores hold (streams of a former section, say).
pub fn section_digest<'a>(
    events: impl IntoIterator<Item = &'a chorus_aggregate::RecordedEvent>,
    commands: &[EventlessCommand],
) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("chorus engine section digest v1");
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for event in events {
        field(b"event");
        field(event.stream.qualified().as_bytes());
        field(&event.sequence.to_le_bytes());
        field(&event.event_id.0);
        field(event.event_type.as_str().as_bytes());
        field(&event.event_version.to_le_bytes());
        field(&event.payload);
        field(&event.command_id.map_or([0; 16], |id| id.0));
        field(&event.causation_id.0);
        field(&event.correlation_id.0);
        field(&event.timestamp_ms.to_le_bytes());
        field(&event.supersedes.unwrap_or(u64::MAX).to_le_bytes());
        // Only when present: the digest of a state without metadata stays what it was.
        if let Some(metadata) = &event.metadata {
            field(b"metadata");
            field(metadata);
        }
    }
    for command in commands {
        field(b"command");
        field(&command.command_id.0);
        field(command.stream.qualified().as_bytes());
        match &command.refusal {
            Some(reason) => {
                field(b"refused");
                field(reason.as_bytes());
            }
            None => field(b"appended"),
        }
    }
    *hasher.finalize().as_bytes()
}

/// Every event of streams under `prefix` up to global position `head` (all if `None`), in the
/// store's order.
pub fn all_section_events(
    store: &EventStore,
    prefix: &Prefix,
    head: Option<u64>,
) -> Result<Vec<chorus_aggregate::RecordedEvent>, StoreError> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let (mut slice, next) = section_events(store, prefix, from, head, 1_000)?;
        events.append(&mut slice);
        match next {
            Some(next) => from = next,
            None => return Ok(events),
        }
    }
}

/// [`section_digest`] of everything a store holds for a section now (for checkers and tests).
pub fn store_section_digest(store: &EventStore, prefix: &Prefix) -> Result<[u8; 32], StoreError> {
    let events = all_section_events(store, prefix, None)?;
    Ok(section_digest(&events, &section_commands(store, prefix)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(byte: u8) -> PeerId {
        let key = ed25519_dalek::SigningKey::from_bytes(&[byte; 32]);
        PeerId(key.verifying_key().to_bytes())
    }

    #[test]
    fn the_section_state_keeps_its_saved_format() {
        // As the first releases saved it: `holding` is written as the old flag and transfer.
        let welcome = Welcome {
            generation: 2,
            prefix: Prefix::ROOT,
            members: vec![peer(1)],
            events: 5,
            commands: 1,
            bytes: 40,
            digest: [7; 32],
            numbering: None,
            domain: None,
        };
        let target = TransferTarget {
            welcome,
            sources: vec![peer(1)],
        };
        for (holding, transferred, transfer) in [
            (Holding::Complete, true, None),
            (Holding::Nothing, false, None),
            (
                Holding::Fetching(Box::new(target.clone())),
                false,
                Some(target.clone()),
            ),
        ] {
            let state = SectionState {
                generation: 2,
                prefix: Prefix::ROOT,
                members: vec![peer(1)],
                network: vec![peer(1), peer(2)],
                holding,
                start_head: 9,
                handovers: Vec::new(),
            };
            let saved: serde_json::Value = serde_json::to_value(&state).expect("encodes");
            assert_eq!(saved["transferred"], serde_json::json!(transferred));
            assert_eq!(
                saved["transfer"],
                serde_json::to_value(&transfer).expect("encodes")
            );
            assert!(saved.get("holding").is_none(), "{saved}");
            let loaded: SectionState = serde_json::from_value(saved).expect("decodes");
            assert_eq!(loaded, state);
        }
        // Both a flag saying done and a transfer to fetch cannot be: refused, not guessed.
        let mut contradiction = serde_json::to_value(SectionState {
            generation: 0,
            prefix: Prefix::ROOT,
            members: Vec::new(),
            network: Vec::new(),
            holding: Holding::Fetching(Box::new(target)),
            start_head: 0,
            handovers: Vec::new(),
        })
        .expect("encodes");
        contradiction["transferred"] = serde_json::json!(true);
        assert!(serde_json::from_value::<SectionState>(contradiction).is_err());
    }

    #[test]
    fn a_stored_section_state_with_a_bad_prefix_is_corrupt_not_a_panic() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = EventStore::open(directory.path().join("node.redb")).expect("store");
        let state = SectionState {
            generation: 1,
            prefix: Prefix::ROOT,
            members: vec![peer(1)],
            network: vec![peer(1)],
            holding: Holding::Complete,
            start_head: 0,
            handovers: Vec::new(),
        };
        let mut saved = serde_json::to_value(&state).expect("encodes");
        saved["prefix"]["len"] = serde_json::json!(300);
        let bytes = serde_json::to_vec(&saved).expect("encodes");
        store
            .save_checkpoint_durable(SECTION_STATE_CHECKPOINT, &bytes)
            .expect("saved");
        match SectionState::load(&store) {
            Err(StoreError::Corrupt(reason)) => {
                assert!(reason.contains("at most 256 bits"), "{reason}");
            }
            other => panic!("expected a corrupt section state, got {other:?}"),
        }
    }

    #[test]
    fn membership_proposals_round_trip_and_are_told_apart_from_commands() {
        let proposal = MembershipProposal {
            generation: 3,
            change: MemberChange::Join(peer(1)),
            voter: Some(peer(2)),
        };
        let bytes = proposal.encode();
        assert_eq!(MembershipProposal::decode(&bytes), Some(Ok(proposal)));
        assert_eq!(
            MembershipProposal::decode(&[1, b'{']),
            None,
            "a command proposal"
        );
        assert!(matches!(
            MembershipProposal::decode(&[MEMBERSHIP_TAG, 9]),
            Some(Err(ProposalError::UnknownVersion(9)))
        ));
        assert!(matches!(
            MembershipProposal::decode(&[MEMBERSHIP_TAG, MEMBERSHIP_VERSION, b'x']),
            Some(Err(ProposalError::Malformed(_)))
        ));
    }

    #[test]
    fn a_section_splits_only_when_both_halves_keep_the_minimum() {
        let members: Vec<PeerId> = (1..=40).map(peer).collect();
        let node = members[0];
        let (prefix, ours) = section_after(Prefix::ROOT, &members, &node, 4).expect("a member");
        assert!(!prefix.is_empty(), "40 members split at least once");
        assert!(ours.contains(&node) && ours.len() >= 4);
        assert!(ours.iter().all(|member| prefix.matches(&name_of(member))));
        // The half it did not keep could not split again with its own members: the rule
        // stops where one half would fall below the minimum.
        let zero = ours
            .iter()
            .filter(|m| !name_of(m).bit(prefix.len()))
            .count();
        assert!(zero < 4 || ours.len() - zero < 4);
        // Below twice the minimum nothing splits.
        let few: Vec<PeerId> = members[..7].to_vec();
        assert_eq!(
            section_after(Prefix::ROOT, &few, &node, 4).map(|(prefix, _)| prefix),
            Some(Prefix::ROOT)
        );
        assert_eq!(section_after(Prefix::ROOT, &few, &peer(99), 4), None);
    }

    #[test]
    fn leaves_that_would_force_a_merge_are_refused() {
        let members: Vec<PeerId> = (1..=4).map(peer).collect();
        let child = Prefix::ROOT.pushed(false).expect("a child prefix");
        let leave = MemberChange::Leave(members[0]);
        assert!(!change_allowed(&child, &members, &leave, 4));
        assert!(change_allowed(&Prefix::ROOT, &members, &leave, 4));
        assert!(!change_allowed(
            &Prefix::ROOT,
            &members,
            &MemberChange::Leave(peer(77)),
            4
        ));
        assert!(!change_allowed(
            &Prefix::ROOT,
            &members,
            &MemberChange::Join(members[1]),
            4
        ));
        assert!(change_allowed(
            &Prefix::ROOT,
            &members,
            &MemberChange::Join(peer(77)),
            4
        ));
    }

    #[test]
    fn group_ids_differ_per_prefix_and_generation() {
        let zero = Prefix::ROOT.pushed(false).expect("a child prefix");
        assert_ne!(group_id(&Prefix::ROOT, 0), group_id(&Prefix::ROOT, 1));
        assert_ne!(group_id(&Prefix::ROOT, 1), group_id(&zero, 1));
    }
}
