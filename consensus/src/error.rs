//! Error values. Anything from a peer or a caller that is wrong becomes one of these, never a
//! panic; the state is left unchanged by the input that caused the error.

use thiserror::Error;

use crate::ids::{EventHash, PeerId};

/// Bytes that are not a valid wire message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// The message exceeds its size limit.
    #[error("message of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the message.
        bytes: usize,
        /// The limit it broke.
        max: usize,
    },
    /// The version byte is not one this build understands.
    #[error("unknown wire version {0}")]
    UnknownVersion(u8),
    /// The body does not decode.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes follow a complete message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Why a received gossip event was rejected. A rejected event never enters the graph.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    /// The creator is not a member of this group.
    #[error("creator {0} is not a member")]
    NotAMember(PeerId),
    /// The signature does not match the event's hash and creator.
    #[error("bad signature on event {0}")]
    BadSignature(EventHash),
    /// The event belongs to another consensus instance (`Config::group`).
    #[error("event {0} belongs to another consensus group")]
    WrongGroup(EventHash),
    /// A parent is not in the graph (it may arrive later, or never existed).
    #[error("event {event} names unknown parent {parent}")]
    UnknownParent {
        /// The rejected event.
        event: EventHash,
        /// The parent that is missing.
        parent: EventHash,
    },
    /// The self-parent was pruned here: an honest creator builds on its latest event, which
    /// pruning keeps, so this is a fork or a replay. (A pruned other-parent is fine.)
    #[error("event {event} builds on pruned self-parent {parent}")]
    StaleParent {
        /// The rejected event.
        event: EventHash,
        /// The pruned parent.
        parent: EventHash,
    },
    /// The creator's events up to `floor` were pruned here: this is a replay of pruned
    /// history, or a fork below it. Refused either way, so nothing is ordered twice.
    #[error("event {event} at index {index} is at or below the pruned floor {floor}")]
    Ancient {
        /// The refused event.
        event: EventHash,
        /// Its index.
        index: u64,
        /// The creator's highest pruned index.
        floor: u64,
    },
    /// The parents are all of rounds whose witnesses we forgot, so the event's round cannot
    /// be told here: its creator lags more than two prune windows behind (`Graph`, "exact
    /// or refused").
    #[error(
        "event {event} builds on round {round} only; rounds below {kept_from} are forgotten here"
    )]
    BeyondHorizon {
        /// The refused event.
        event: EventHash,
        /// Its highest parent round.
        round: u64,
        /// The lowest round we still hold.
        kept_from: u64,
    },
    /// The index is not the self-parent's index plus one.
    #[error("event {event} has index {index}, expected {expected}")]
    WrongIndex {
        /// The rejected event.
        event: EventHash,
        /// The index it carries.
        index: u64,
        /// Self-parent's index + 1 (or 0 without a self-parent).
        expected: u64,
    },
    /// The self-parent was created by someone else.
    #[error("event {0} has a self-parent by another creator")]
    ForeignSelfParent(EventHash),
    /// A first event (index 0) with an other-parent, or a later event without a self-parent.
    #[error("event {0} has malformed parents")]
    MalformedParents(EventHash),
    /// Creation time is earlier than the self-parent's.
    #[error("event {0} is older than its self-parent")]
    TimeRegressed(EventHash),
    /// The event is larger than allowed.
    #[error("event of about {bytes} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Estimated encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Too many votes in one event.
    #[error("event carries {count} votes, more than {max}")]
    TooManyVotes {
        /// Votes carried.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An observation payload is larger than allowed.
    #[error("observation of {bytes} bytes exceeds the limit of {max}")]
    ObservationTooLarge {
        /// Size of the payload.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The header's vote count or Merkle root does not match the votes carried.
    #[error("event {0} carries votes that do not match its header")]
    VotesMismatch(EventHash),
}

impl EventError {
    /// True when the error proves the sender or creator misbehaved (an honest peer never
    /// forwards such an event); false for errors an honest peer can cause by timing.
    pub fn is_misbehaviour(&self) -> bool {
        !matches!(
            self,
            Self::UnknownParent { .. }
                | Self::StaleParent { .. }
                | Self::Ancient { .. }
                | Self::BeyondHorizon { .. }
        )
    }
}

/// A vote the caller asked for could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VoteError {
    /// Too many votes are waiting for an event (`votes_pending_max`); retry after gossip.
    #[error("{0} votes already pending")]
    Backpressure(usize),
    /// `vote_for_hash` names an observation no event in our graph carries.
    #[error("no event in the graph carries observation {0}")]
    UnknownObservation(crate::ids::ObservationHash),
    /// The observation is larger than `OBSERVATION_BYTES_MAX`.
    #[error("observation of {bytes} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size of the payload.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// A sync message that cannot be handled at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SyncError {
    /// The peer is not a member of this group.
    #[error("peer {0} is not a member")]
    NotAMember(PeerId),
    /// The request's vector clock does not have one entry per member.
    #[error("request knows {got} creators, the group has {expected}")]
    WrongClockLength {
        /// Entries in the request.
        got: usize,
        /// Members in the group.
        expected: usize,
    },
    /// The request asks for more events by hash than allowed.
    #[error("request wants {got} events by hash, more than {max}")]
    TooManyWanted {
        /// Hashes in the request.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The response carries more events than allowed.
    #[error("response carries {got} events, more than {max}")]
    TooManyEvents {
        /// Events carried.
        got: usize,
        /// The limit.
        max: usize,
    },
}

/// A consensus instance could not be created.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SetupError {
    /// The configuration breaks a limit relation.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The member list is empty, too long, or has duplicates.
    #[error("invalid member list: {0}")]
    Members(String),
    /// Our own key is not in the member list.
    #[error("our key {0} is not in the member list")]
    NotAMember(PeerId),
    /// A record of the replay log does not replay: the log is corrupt or not ours.
    #[error("replay log record {record}: {reason}")]
    CorruptLog {
        /// Position of the record in the log.
        record: usize,
        /// What failed.
        reason: String,
    },
}
