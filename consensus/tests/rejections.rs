//! Rejection tests: every kind of bad input (events, wire bytes, sync messages, votes, setup)
//! is refused with the matching typed error, and a refused input leaves the receiver's state
//! as it was (a valid input delivered afterwards is still accepted).
//!
//! Layout: a 4-member harness cluster started at `START_MS`; member `RECEIVER` first syncs
//! from every peer, so it holds the four first events. Crafted events are then created with
//! the members' real keys and delivered to it as a sync response from member `SENDER`.

use std::ops::{Add, Mul};
use std::sync::Arc;

use chorus_consensus::codec::{self, WIRE_VERSION};
use chorus_consensus::harness::{Cluster, member_key};
use chorus_consensus::{
    Config, Consensus, DecodeError, EVENT_BYTES_MAX, EventError, EventHash, OBSERVATION_BYTES_MAX,
    Observation, PeerId, SYNC_BYTES_MAX, SetupError, SignedEvent, Stats, SyncError, SyncReport,
    SyncRequest, SyncResponse, VOTES_PER_EVENT_MAX, Vote, VoteError, WANTED_PER_SYNC_MAX,
};
use ed25519_dalek::{Signature, Signer, SigningKey};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const SEED: u64 = 0x5eed;
const MEMBERS: usize = 4;
const START_MS: u64 = 1_000;
const RECEIVER: usize = 0;
const SENDER: usize = 2;

/// A cluster whose `RECEIVER` holds every member's first event, plus the members' keys.
struct Fixture {
    cluster: Cluster,
    keys: Vec<SigningKey>,
    genesis: Vec<EventHash>,
}

impl Fixture {
    fn new(config: &Config) -> Self {
        let mut cluster =
            Cluster::new(MEMBERS, config, SEED, START_MS).expect("a valid 4-member cluster");
        let keys: Vec<SigningKey> = (0..MEMBERS).map(|index| member_key(SEED, index)).collect();
        for (key, id) in keys.iter().zip(&cluster.ids) {
            assert_eq!(
                PeerId(key.verifying_key().to_bytes()),
                *id,
                "harness key order"
            );
        }
        let genesis = cluster
            .nodes
            .iter()
            .map(|node| {
                node.own_event(0)
                    .expect("every member holds its first event")
                    .header
                    .hash()
            })
            .collect();
        for peer in 0..MEMBERS {
            if peer != RECEIVER {
                cluster
                    .sync(RECEIVER, peer, START_MS)
                    .expect("sync between members");
            }
        }
        assert_eq!(
            cluster.nodes[RECEIVER].stats().events_held,
            MEMBERS,
            "setup: the receiver holds the four first events and created none of its own"
        );
        Self {
            cluster,
            keys,
            genesis,
        }
    }

    fn receiver(&self) -> &Consensus {
        &self.cluster.nodes[RECEIVER]
    }

    /// The valid next event (index 1) of `creator`, other-parent the next member's first event.
    fn next_event(&self, creator: usize, votes: Vec<Vote>) -> SignedEvent {
        let other = (creator + 1) % MEMBERS;
        SignedEvent::create(
            &self.keys[creator],
            1,
            Some(self.genesis[creator]),
            Some(self.genesis[other]),
            START_MS + 1,
            votes,
        )
        .0
    }

    /// Delivers `events` to the receiver as one sync response from `SENDER`.
    fn deliver(&mut self, events: Vec<SignedEvent>) -> SyncReport {
        let from = self.cluster.ids[SENDER];
        self.cluster.nodes[RECEIVER]
            .handle_sync_response(
                START_MS + 10,
                &from,
                SyncResponse {
                    events: events.into_iter().map(Arc::new).collect(),
                },
            )
            .expect("a small response from a member is handled")
    }

    /// Delivers one event that must be rejected with exactly `expected`; checks it did not
    /// enter the graph.
    fn assert_rejected(&mut self, event: SignedEvent, expected: EventError) {
        let hash = event.header.hash();
        let report = self.deliver(vec![event]);
        assert_eq!(report.rejected, vec![expected], "rejection reason");
        assert_eq!(report.inserted, 0, "a rejected event is not inserted");
        assert!(
            !report.created_event,
            "a rejection creates no event of ours"
        );
        assert!(
            self.receiver().event_info(&hash).is_none(),
            "a rejected event is not in the graph"
        );
    }

    /// Delivers a valid event and checks that it is accepted.
    fn assert_accepted(&mut self, event: SignedEvent) {
        let hash = event.header.hash();
        let report = self.deliver(vec![event]);
        assert_eq!(report.rejected, Vec::new(), "a valid event is not rejected");
        assert_eq!(report.inserted, 1, "a valid event is inserted");
        assert!(self.receiver().event_info(&hash).is_some());
    }
}

/// What a rejected input must not change: the held events, the vector clock we would send,
/// and every counter except `events_rejected`.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    events_held: usize,
    request: SyncRequest,
    stats: Stats,
}

fn snapshot(node: &Consensus) -> Snapshot {
    let mut stats = node.stats();
    stats.events_rejected = 0;
    Snapshot {
        events_held: node.stats().events_held,
        request: node.sync_request(),
        stats,
    }
}

/// `event` re-signed by `key` after `mutate` changed its header (so only the intended check
/// can fail, never the signature).
fn resign(
    mut event: SignedEvent,
    key: &SigningKey,
    mutate: impl FnOnce(&mut SignedEvent),
) -> SignedEvent {
    mutate(&mut event);
    event.signature = key.sign(&event.header.hash().0);
    event
}

/// A payload observation of `len` bytes, distinct per `tag`.
fn payload(tag: u8, len: usize) -> Observation {
    Observation::Payload(vec![tag; len].into())
}

#[test]
fn bad_signature_is_rejected_and_leaves_state_unchanged() {
    // Proves: an event signed by another key, or with a flipped signature byte, is BadSignature, never enters the graph, changes no state, and the genuine event is accepted afterwards.
    let mut fixture = Fixture::new(&Config::default());
    let before = snapshot(fixture.receiver());

    // Signed by another member's key (member 3 signs member 1's header).
    let genuine = fixture.next_event(1, Vec::new());
    let hash = genuine.header.hash();
    let mut other_key = genuine.clone();
    other_key.signature = fixture.keys[3].sign(&hash.0);
    fixture.assert_rejected(other_key, EventError::BadSignature(hash));

    // One flipped byte, in R (bytes 0..32) and in s (bytes 32..64).
    for position in [0usize, 17, 31, 32, 50, 63] {
        let mut bytes = genuine.signature.to_bytes();
        bytes[position] ^= 0x01;
        let mut flipped = genuine.clone();
        flipped.signature = Signature::from_bytes(&bytes);
        fixture.assert_rejected(flipped, EventError::BadSignature(hash));
    }

    // A bad signature that names an unknown parent is refused for its signature, and its
    // unauthenticated parent is not asked for.
    let phantom = EventHash([0xab; 32]);
    let unknown_parent = fixture.next_event(1, Vec::new());
    let mut unknown_parent = resign(unknown_parent, &fixture.keys[1], |event| {
        event.header.other_parent = Some(phantom);
    });
    let unknown_parent_hash = unknown_parent.header.hash();
    unknown_parent.signature = fixture.keys[2].sign(&unknown_parent_hash.0);
    fixture.assert_rejected(
        unknown_parent,
        EventError::BadSignature(unknown_parent_hash),
    );

    // In one batch with a valid event: the batch check fails, the culprits are found one by
    // one, and the valid event still goes in. (Distinct hashes: a response's events are
    // de-duplicated by hash before signatures are checked.)
    let mut flipped = genuine.clone();
    let mut bytes = flipped.signature.to_bytes();
    bytes[5] ^= 0x80;
    flipped.signature = Signature::from_bytes(&bytes);
    let mut other_creator = fixture.next_event(2, Vec::new());
    let other_creator_hash = other_creator.header.hash();
    other_creator.signature = fixture.keys[1].sign(&other_creator_hash.0);
    let valid_other = fixture.next_event(3, Vec::new());
    let valid_other_hash = valid_other.header.hash();
    let report = fixture.deliver(vec![flipped, other_creator, valid_other]);
    assert_eq!(
        report.rejected,
        vec![
            EventError::BadSignature(hash),
            EventError::BadSignature(other_creator_hash)
        ]
    );
    assert_eq!(report.inserted, 1);
    assert!(fixture.receiver().event_info(&hash).is_none());
    assert!(fixture.receiver().event_info(&other_creator_hash).is_none());
    assert!(fixture.receiver().event_info(&valid_other_hash).is_some());

    // Only the one valid event changed anything: one more event held, one clock entry moved.
    let after = snapshot(fixture.receiver());
    assert_eq!(after.events_held, before.events_held + 1);
    let mut expected_request = before.request.clone();
    expected_request.known[member_position(&fixture.cluster, 3)] += 1;
    assert_eq!(
        after.request, expected_request,
        "only the valid event moved the clock"
    );
    assert_eq!(
        fixture.receiver().stats().events_rejected,
        1 + 6 + 1 + 2,
        "every rejection is counted"
    );

    // The genuine event (same hash as the rejected forgeries) is still accepted.
    fixture.assert_accepted(genuine);
}

#[test]
fn bad_signature_alone_leaves_snapshot_identical() {
    // Proves: after only bad-signature rejections, events_held, sync_request and all other stats are exactly as before, and a valid event is then accepted.
    let mut fixture = Fixture::new(&Config::default());
    let before = snapshot(fixture.receiver());
    let genuine = fixture.next_event(1, vec![Vote::Full(payload(1, 8))]);
    let hash = genuine.header.hash();
    let mut forged = genuine.clone();
    forged.signature = fixture.keys[0].sign(&hash.0);
    fixture.assert_rejected(forged, EventError::BadSignature(hash));
    assert_eq!(snapshot(fixture.receiver()), before, "state unchanged");
    fixture.assert_accepted(genuine);
}

/// Position of cluster member `index` in the sorted member list (the clock's order).
fn member_position(cluster: &Cluster, index: usize) -> usize {
    cluster.nodes[RECEIVER]
        .members()
        .iter()
        .position(|member| *member == cluster.ids[index])
        .expect("a cluster member is in the member list")
}

#[test]
fn unknown_parent_is_rejected_and_leaves_state_unchanged() {
    // Proves: an event naming an other-parent or self-parent the receiver lacks is UnknownParent, is not inserted, changes no held state (the missing parent is only added to `wanted`), and is accepted once its parent arrives.
    let mut fixture = Fixture::new(&Config::default());
    let before = snapshot(fixture.receiver());

    // Unknown other-parent: a hash that names nothing.
    let phantom = EventHash([0xab; 32]);
    let bad_other = resign(
        fixture.next_event(1, Vec::new()),
        &fixture.keys[1],
        |event| {
            event.header.other_parent = Some(phantom);
        },
    );
    let bad_other_hash = bad_other.header.hash();
    fixture.assert_rejected(
        bad_other,
        EventError::UnknownParent {
            event: bad_other_hash,
            parent: phantom,
        },
    );

    // Unknown self-parent: member 3's real index-1 event, which the receiver lacks; the
    // child (index 2) names it.
    let missing = fixture.next_event(3, Vec::new());
    let missing_hash = missing.header.hash();
    let child = SignedEvent::create(
        &fixture.keys[3],
        2,
        Some(missing_hash),
        Some(fixture.genesis[1]),
        START_MS + 2,
        Vec::new(),
    )
    .0;
    let child_hash = child.header.hash();
    fixture.assert_rejected(
        child.clone(),
        EventError::UnknownParent {
            event: child_hash,
            parent: missing_hash,
        },
    );

    // The held state is unchanged: same events, same clock, same counters. By design (see
    // `SyncRequest`), the missing parents are now asked for by hash.
    let after = snapshot(fixture.receiver());
    assert_eq!(after.events_held, before.events_held);
    assert_eq!(after.request.known, before.request.known);
    assert_eq!(after.stats, before.stats);
    assert_eq!(before.request.wanted, Vec::new());
    assert_eq!(after.request.wanted, vec![phantom, missing_hash]);
    assert_eq!(fixture.receiver().stats().events_rejected, 2);

    // A valid event is still accepted, and once the parent arrives the child is too (and the
    // parent is no longer wanted).
    fixture.assert_accepted(fixture.next_event(2, Vec::new()));
    fixture.assert_accepted(missing);
    assert_eq!(fixture.receiver().sync_request().wanted, vec![phantom]);
    fixture.assert_accepted(child);
}

#[test]
fn non_member_creator_is_rejected() {
    // Proves: an event created (and validly signed) by a key outside the member list is NotAMember and does not enter the graph.
    let mut fixture = Fixture::new(&Config::default());
    let before = snapshot(fixture.receiver());
    let outsider = member_key(SEED, 99);
    let outsider_id = PeerId(outsider.verifying_key().to_bytes());
    assert!(!fixture.cluster.ids.contains(&outsider_id));

    let first = SignedEvent::create(&outsider, 0, None, None, START_MS, Vec::new()).0;
    fixture.assert_rejected(first, EventError::NotAMember(outsider_id));

    let later = SignedEvent::create(
        &outsider,
        1,
        Some(fixture.genesis[1]),
        Some(fixture.genesis[2]),
        START_MS,
        vec![Vote::Full(payload(7, 16))],
    )
    .0;
    fixture.assert_rejected(later, EventError::NotAMember(outsider_id));

    assert_eq!(snapshot(fixture.receiver()), before, "state unchanged");
    fixture.assert_accepted(fixture.next_event(1, Vec::new()));
}

#[test]
fn wrong_index_is_rejected() {
    // Proves: an event whose index is not its self-parent's index + 1 is WrongIndex with the expected index.
    let mut fixture = Fixture::new(&Config::default());
    for index in [2u64, 7, u64::MAX] {
        let event = resign(
            fixture.next_event(1, Vec::new()),
            &fixture.keys[1],
            |event| {
                event.header.index = index;
            },
        );
        let hash = event.header.hash();
        fixture.assert_rejected(
            event,
            EventError::WrongIndex {
                event: hash,
                index,
                expected: 1,
            },
        );
    }
    fixture.assert_accepted(fixture.next_event(1, Vec::new()));
}

#[test]
fn foreign_self_parent_is_rejected() {
    // Proves: an event whose self-parent was created by another member is ForeignSelfParent.
    let mut fixture = Fixture::new(&Config::default());
    let event = SignedEvent::create(
        &fixture.keys[1],
        1,
        Some(fixture.genesis[2]),
        Some(fixture.genesis[3]),
        START_MS + 1,
        Vec::new(),
    )
    .0;
    let hash = event.header.hash();
    fixture.assert_rejected(event, EventError::ForeignSelfParent(hash));
    fixture.assert_accepted(fixture.next_event(1, Vec::new()));
}

#[test]
fn malformed_parents_are_rejected() {
    // Proves: index 0 with any parent, index > 0 without both parents, and an other-parent by the creator itself are MalformedParents.
    let mut fixture = Fixture::new(&Config::default());
    let key = fixture.keys[1].clone();
    let own = fixture.genesis[1];
    let other = fixture.genesis[2];
    let shapes: [(u64, Option<EventHash>, Option<EventHash>); 6] = [
        // Index 0 with an other-parent (known, and unknown: the shape check comes first).
        (0, None, Some(other)),
        (0, None, Some(EventHash([0xcd; 32]))),
        // Index 0 with a self-parent.
        (0, Some(own), None),
        // Index > 0 without an other-parent, or without any parent.
        (1, Some(own), None),
        (1, None, None),
        // Index > 0 with an other-parent by the creator itself.
        (1, Some(own), Some(own)),
    ];
    for (index, self_parent, other_parent) in shapes {
        let event = SignedEvent::create(
            &key,
            index,
            self_parent,
            other_parent,
            START_MS + 1,
            Vec::new(),
        )
        .0;
        let hash = event.header.hash();
        fixture.assert_rejected(event, EventError::MalformedParents(hash));
    }
    // Index > 0 with an other-parent but no self-parent.
    let event = SignedEvent::create(&key, 1, None, Some(other), START_MS + 1, Vec::new()).0;
    let hash = event.header.hash();
    fixture.assert_rejected(event, EventError::MalformedParents(hash));

    fixture.assert_accepted(fixture.next_event(1, Vec::new()));
}

#[test]
fn time_regression_is_rejected() {
    // Proves: an event created earlier than its self-parent is TimeRegressed; the same time as the self-parent is accepted.
    let mut fixture = Fixture::new(&Config::default());
    for created_at_ms in [START_MS - 1, 0] {
        let event = resign(
            fixture.next_event(1, Vec::new()),
            &fixture.keys[1],
            |event| {
                event.header.created_at_ms = created_at_ms;
            },
        );
        let hash = event.header.hash();
        fixture.assert_rejected(event, EventError::TimeRegressed(hash));
    }
    let same_time = resign(
        fixture.next_event(1, Vec::new()),
        &fixture.keys[1],
        |event| {
            event.header.created_at_ms = START_MS;
        },
    );
    fixture.assert_accepted(same_time);
}

#[test]
fn oversized_events_are_rejected_in_check_order() {
    // Proves: a payload above OBSERVATION_BYTES_MAX is ObservationTooLarge, more than VOTES_PER_EVENT_MAX votes is TooManyVotes, a total above EVENT_BYTES_MAX is TooLarge, in check_body's order (votes, total, payload).
    let mut fixture = Fixture::new(&Config::default());

    // One payload just over the limit: the total is still small, so the payload check fires.
    let event = fixture.next_event(1, vec![Vote::Full(payload(1, OBSERVATION_BYTES_MAX + 1))]);
    let expected = EventError::ObservationTooLarge {
        bytes: OBSERVATION_BYTES_MAX + 1,
        max: OBSERVATION_BYTES_MAX,
    };
    assert_eq!(event.check_body().err(), Some(expected.clone()));
    fixture.assert_rejected(event, expected);

    // One vote too many (small votes by hash): TooManyVotes.
    let by_hash = Vote::ByHash(payload(2, 4).hash());
    let event = fixture.next_event(1, vec![by_hash.clone(); VOTES_PER_EVENT_MAX + 1]);
    let expected = EventError::TooManyVotes {
        count: VOTES_PER_EVENT_MAX + 1,
        max: VOTES_PER_EVENT_MAX,
    };
    assert_eq!(event.check_body().err(), Some(expected.clone()));
    fixture.assert_rejected(event, expected.clone());

    // Too many votes is checked first, even when a payload is also too large.
    let mut votes = vec![by_hash; VOTES_PER_EVENT_MAX];
    votes.push(Vote::Full(payload(3, OBSERVATION_BYTES_MAX + 1)));
    let event = fixture.next_event(1, votes);
    assert_eq!(event.check_body().err(), Some(expected));

    // Four payloads of exactly the limit are each fine but total above EVENT_BYTES_MAX.
    let votes: Vec<Vote> = (0..4)
        .map(|tag| Vote::Full(payload(10 + tag, OBSERVATION_BYTES_MAX)))
        .collect();
    let event = fixture.next_event(1, votes);
    let bytes = event.encoded_len_max();
    assert!(bytes > EVENT_BYTES_MAX);
    let expected = EventError::TooLarge {
        bytes,
        max: EVENT_BYTES_MAX,
    };
    assert_eq!(event.check_body().err(), Some(expected.clone()));
    fixture.assert_rejected(event, expected);

    // The total is checked before payloads: four oversized payloads are TooLarge.
    let votes: Vec<Vote> = (0..4)
        .map(|tag| Vote::Full(payload(20 + tag, OBSERVATION_BYTES_MAX + 1)))
        .collect();
    let event = fixture.next_event(1, votes);
    assert!(matches!(
        event.check_body().err(),
        Some(EventError::TooLarge { .. })
    ));

    // At the limits: one payload of exactly OBSERVATION_BYTES_MAX is accepted.
    let event = fixture.next_event(1, vec![Vote::Full(payload(30, OBSERVATION_BYTES_MAX))]);
    assert!(event.check_body().is_ok());
    let hash = event.header.hash();
    let report = fixture.deliver(vec![event]);
    assert_eq!(report.rejected, Vec::new());
    assert_eq!(report.inserted, 1);
    assert!(fixture.receiver().event_info(&hash).is_some());
}

#[test]
fn votes_not_matching_header_are_rejected() {
    // Proves: votes changed after signing, or a header whose vote_count is wrong, are VotesMismatch (the signature covers only the header, so the root check must catch it), and the genuine event is still accepted afterwards.
    let mut fixture = Fixture::new(&Config::default());
    let votes = vec![
        Vote::Full(payload(1, 8)),
        Vote::Full(payload(2, 8)),
        Vote::ByHash(payload(3, 8).hash()),
    ];
    let genuine = fixture.next_event(1, votes);
    let hash = genuine.header.hash();
    assert!(genuine.signed_header().verify().is_ok());
    let before = snapshot(fixture.receiver());

    type Mutation = fn(&mut Vec<Vote>);
    let mutations: [(&str, Mutation); 6] = [
        ("vote replaced", |votes| {
            votes[1] = Vote::Full(payload(9, 8))
        }),
        ("vote by hash replaced", |votes| {
            votes[2] = Vote::ByHash(payload(9, 8).hash());
        }),
        ("votes reordered", |votes| votes.swap(0, 1)),
        ("vote removed", |votes| {
            votes.pop();
        }),
        ("vote added", |votes| votes.push(Vote::Full(payload(9, 8)))),
        ("all votes removed", Vec::clear),
    ];
    for (what, mutate) in mutations {
        let mut tampered = genuine.clone();
        mutate(&mut tampered.votes);
        assert_eq!(
            tampered.header.hash(),
            hash,
            "{what}: the header is untouched"
        );
        assert_eq!(
            tampered.check_body().err(),
            Some(EventError::VotesMismatch(hash)),
            "{what}"
        );
        fixture.assert_rejected(tampered, EventError::VotesMismatch(hash));
    }

    // A header whose vote_count lies (re-signed, so only the count is wrong).
    for vote_count in [0u32, 2, 4, u32::MAX] {
        let lying = resign(genuine.clone(), &fixture.keys[1], |event| {
            event.header.vote_count = vote_count;
        });
        let lying_hash = lying.header.hash();
        fixture.assert_rejected(lying, EventError::VotesMismatch(lying_hash));
    }
    // A header whose root lies (re-signed).
    let lying = resign(genuine.clone(), &fixture.keys[1], |event| {
        event.header.votes_root[0] ^= 1;
    });
    let lying_hash = lying.header.hash();
    fixture.assert_rejected(lying, EventError::VotesMismatch(lying_hash));

    assert_eq!(snapshot(fixture.receiver()), before, "state unchanged");
    // The rejected variants shared the genuine event's hash; it is still accepted.
    fixture.assert_accepted(genuine);
}

#[test]
fn full_vote_swapped_for_by_hash_after_signing_is_rejected() {
    // Proves: a relay that strips a Full vote down to ByHash (or the reverse) after signing is caught, because the header commits to which votes are full (`full_votes`). Regression test for a found bug.
    let mut fixture = Fixture::new(&Config::default());
    let observation = payload(42, 64);
    let genuine = fixture.next_event(1, vec![Vote::Full(observation.clone())]);
    let hash = genuine.header.hash();
    let mut stripped = genuine.clone();
    stripped.votes = vec![Vote::ByHash(observation.hash())];
    assert_ne!(
        stripped, genuine,
        "the relayed event differs from the signed one"
    );
    assert_eq!(
        stripped.check_body().err(),
        Some(EventError::VotesMismatch(hash)),
        "BUG: check_body accepts an event whose Full vote was replaced by ByHash after signing; \
         receivers then tally the same event hash differently (a ByHash vote without a carrier \
         never counts), so block sequences can diverge"
    );
    fixture.assert_rejected(stripped, EventError::VotesMismatch(hash));
}

#[test]
fn small_order_r_signature_is_rejected_even_in_a_batch() {
    // Proves: a signature that strict verification refuses (small-order R) is BadSignature whether the event arrives alone or together with a valid event (signatures are never batch-verified). Regression test for a found bug.
    let mut fixture = Fixture::new(&Config::default());
    assert_eq!(
        hex(&sha512(b"abc")),
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
         2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "test helper: SHA-512 test vector"
    );
    let mut forged = fixture.next_event(1, Vec::new());
    let hash = forged.header.hash();
    forged.signature = small_order_r_signature(&fixture.keys[1], &hash.0);
    let valid = fixture.next_event(3, Vec::new());
    let valid_hash = valid.header.hash();

    // What the two ed25519 checks say: strict (used alone and in proofs) refuses it, the
    // batch equation (no small-order check) accepts it.
    assert!(forged.signed_header().verify().is_err());
    let batch_accepts = ed25519_dalek::verify_batch(
        &[hash.0.as_slice(), valid_hash.0.as_slice()],
        &[forged.signature, valid.signature],
        &[
            fixture.keys[1].verifying_key(),
            fixture.keys[3].verifying_key(),
        ],
    )
    .is_ok();
    assert!(
        batch_accepts,
        "test helper: the forgery satisfies the batch equation"
    );

    // Alone: rejected.
    fixture.assert_rejected(forged.clone(), EventError::BadSignature(hash));

    // Batched with a valid event: must be rejected too.
    let report = fixture.deliver(vec![forged, valid]);
    assert_eq!(
        report.rejected,
        vec![EventError::BadSignature(hash)],
        "BUG: verify_signatures (event.rs) accepts a small-order-R signature when it is batch \
         verified with another event, though verify_strict (alone, SignedHeader::verify, block \
         proofs, fork evidence) refuses it"
    );
    assert!(fixture.receiver().event_info(&hash).is_none());
    assert!(fixture.receiver().event_info(&valid_hash).is_some());
}

#[test]
fn decode_rejects_garbage_bytes() {
    // Proves: decode_message refuses empty, wrong-version, trailing, oversized and random bytes with the matching DecodeError and never panics.
    fn both(bytes: &[u8]) -> [Result<(), DecodeError>; 2] {
        [
            codec::decode_message::<SyncResponse>(bytes).map(drop),
            codec::decode_message::<SyncRequest>(bytes).map(drop),
        ]
    }
    assert_eq!(
        both(&[]),
        [Err(DecodeError::Empty), Err(DecodeError::Empty)]
    );
    for version in [0u8, WIRE_VERSION + 1, 0xff] {
        let expected = Err(DecodeError::UnknownVersion(version));
        assert_eq!(both(&[version]), [expected.clone(), expected.clone()]);
        assert_eq!(both(&[version, 0, 0]), [expected.clone(), expected]);
    }
    // A version byte and no body, or a truncated body.
    for bytes in [&[WIRE_VERSION][..], &[WIRE_VERSION, 3][..]] {
        for result in both(bytes) {
            assert!(
                matches!(result, Err(DecodeError::Malformed(_))),
                "{bytes:?}: {result:?}"
            );
        }
    }

    // Trailing bytes after valid messages.
    let request = SyncRequest {
        known: vec![1, 2, 3, 4],
        wanted: vec![EventHash([7; 32])],
    };
    let mut bytes = codec::encode_message(&request).expect("a small request encodes");
    assert_eq!(codec::decode_message::<SyncRequest>(&bytes), Ok(request));
    bytes.extend_from_slice(&[0, 1, 2]);
    assert_eq!(
        codec::decode_message::<SyncRequest>(&bytes),
        Err(DecodeError::TrailingBytes(3))
    );
    let mut bytes =
        codec::encode_message(&SyncResponse { events: Vec::new() }).expect("an empty response");
    bytes.push(0);
    assert_eq!(
        codec::decode_message::<SyncResponse>(&bytes),
        Err(DecodeError::TrailingBytes(1))
    );

    // More than SYNC_BYTES_MAX: refused before any parsing.
    let huge = vec![WIRE_VERSION; SYNC_BYTES_MAX + 1];
    let expected = Err(DecodeError::TooLarge {
        bytes: SYNC_BYTES_MAX + 1,
        max: SYNC_BYTES_MAX,
    });
    assert_eq!(both(&huge), [expected.clone(), expected]);
    drop(huge);

    // Random bytes over many lengths, half of them with a valid version byte.
    let mut rng = StdRng::seed_from_u64(0xdec0de);
    for len in 0..=512usize {
        for round in 0..8 {
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            if len > 0 && round % 2 == 0 {
                bytes[0] = WIRE_VERSION;
            }
            for result in both(&bytes) {
                match (bytes.first(), result) {
                    (None, result) => assert_eq!(result, Err(DecodeError::Empty)),
                    (Some(&version), result) if version != WIRE_VERSION => {
                        assert_eq!(result, Err(DecodeError::UnknownVersion(version)));
                    }
                    (Some(_), Ok(()))
                    | (Some(_), Err(DecodeError::Malformed(_)))
                    | (Some(_), Err(DecodeError::TrailingBytes(_))) => {}
                    (Some(_), other) => panic!("unexpected {other:?} for {len} random bytes"),
                }
            }
        }
    }
    // Long random bodies too (a few, with the version byte set).
    for len in [1_000usize, 10_000, 100_000] {
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        bytes[0] = WIRE_VERSION;
        let _ = both(&bytes);
        bytes[1] = rng.r#gen();
        let _ = both(&bytes);
    }
}

#[test]
fn encode_decode_round_trips_a_real_sync_response() {
    // Proves: a real SyncResponse (with votes) and SyncRequest survive encode/decode unchanged, and the decoded response is accepted by a fresh member.
    let config = Config::default();
    let mut cluster = Cluster::new(MEMBERS, &config, SEED, 0).expect("a valid cluster");
    cluster.vote(0, payload(1, 100));
    cluster.vote(
        1,
        Observation::Accusation {
            offender: cluster.ids[3],
        },
    );
    cluster.vote(2, payload(2, 5));
    let mut now = 0;
    for step in 0..24usize {
        now += 1;
        let requester = step % MEMBERS;
        let responder = (step * 3 + 1) % MEMBERS;
        if requester != responder {
            cluster
                .sync(requester, responder, now)
                .expect("sync between members");
        }
    }
    let request = SyncRequest {
        known: vec![0; MEMBERS],
        wanted: Vec::new(),
    };
    let response = cluster.nodes[0]
        .handle_sync_request(&cluster.ids[1], &request)
        .expect("a member's well-formed request");
    assert!(
        response.events.len() > MEMBERS,
        "the response carries history"
    );
    assert!(
        response.events.iter().any(|event| !event.votes.is_empty()),
        "the response carries votes"
    );

    let bytes = codec::encode_message(&response).expect("a real response encodes");
    assert_eq!(bytes[0], WIRE_VERSION);
    let decoded: SyncResponse = codec::decode_message(&bytes).expect("a real response decodes");
    assert_eq!(decoded, response);
    assert_eq!(
        codec::encode_message(&decoded).expect("re-encodes"),
        bytes,
        "one encoding"
    );

    let own_request = cluster.nodes[2].sync_request();
    let request_bytes = codec::encode_message(&own_request).expect("a request encodes");
    assert_eq!(
        codec::decode_message::<SyncRequest>(&request_bytes),
        Ok(own_request)
    );

    // A fresh member of an identical group (same keys and start) accepts every event.
    let mut fresh = Cluster::new(MEMBERS, &config, SEED, 0).expect("a valid cluster");
    let events = decoded.events.len();
    let report = fresh.nodes[3]
        .handle_sync_response(now, &fresh.ids[0], decoded)
        .expect("a member's response within limits");
    assert_eq!(report.rejected, Vec::new());
    assert_eq!(report.inserted + report.duplicates, events);
}

#[test]
fn sync_level_errors_are_typed() {
    // Proves: sync requests/responses from non-members, with a wrong clock length, too many wanted hashes or too many events are refused with the matching SyncError and change nothing.
    let config = Config {
        events_per_sync_max: 2,
        ..Config::default()
    };
    let mut fixture = Fixture::new(&config);
    let outsider = PeerId(member_key(SEED, 99).verifying_key().to_bytes());
    let member = fixture.cluster.ids[1];
    let node = fixture.receiver();
    let good = node.sync_request();

    assert_eq!(
        node.answer_sync_request(&outsider, &good),
        Err(SyncError::NotAMember(outsider))
    );
    for len in [0usize, MEMBERS - 1, MEMBERS + 1, 1_000] {
        let request = SyncRequest {
            known: vec![0; len],
            wanted: Vec::new(),
        };
        assert_eq!(
            node.answer_sync_request(&member, &request),
            Err(SyncError::WrongClockLength {
                got: len,
                expected: MEMBERS,
            })
        );
    }
    let wanted = |count: usize| SyncRequest {
        known: good.known.clone(),
        wanted: (0..count)
            .map(|index| EventHash([index as u8; 32]))
            .collect(),
    };
    assert_eq!(
        node.answer_sync_request(&member, &wanted(WANTED_PER_SYNC_MAX + 1)),
        Err(SyncError::TooManyWanted {
            got: WANTED_PER_SYNC_MAX + 1,
            max: WANTED_PER_SYNC_MAX,
        })
    );
    assert!(
        node.answer_sync_request(&member, &wanted(WANTED_PER_SYNC_MAX))
            .is_ok(),
        "exactly WANTED_PER_SYNC_MAX is allowed"
    );

    // Responses: from a non-member, and with more than events_per_sync_max events (even if
    // all of them are valid): nothing is inserted.
    let before = snapshot(fixture.receiver());
    let events: Vec<Arc<SignedEvent>> = (1..MEMBERS)
        .map(|creator| Arc::new(fixture.next_event(creator, Vec::new())))
        .collect();
    let node = &mut fixture.cluster.nodes[RECEIVER];
    assert_eq!(
        node.handle_sync_response(
            START_MS + 1,
            &outsider,
            SyncResponse {
                events: events.clone(),
            }
        ),
        Err(SyncError::NotAMember(outsider))
    );
    assert_eq!(
        node.handle_sync_response(
            START_MS + 1,
            &member,
            SyncResponse {
                events: events.clone(),
            }
        ),
        Err(SyncError::TooManyEvents {
            got: events.len(),
            max: 2,
        })
    );
    for event in &events {
        assert!(node.event_info(&event.header.hash()).is_none());
    }
    assert_eq!(snapshot(fixture.receiver()), before, "state unchanged");
    assert_eq!(fixture.receiver().stats().events_rejected, 0);

    // Within the limit, the same events are accepted.
    let report = fixture.cluster.nodes[RECEIVER]
        .handle_sync_response(
            START_MS + 1,
            &member,
            SyncResponse {
                events: events[..2].to_vec(),
            },
        )
        .expect("a response within the limit");
    assert_eq!(report.rejected, Vec::new());
    assert_eq!(report.inserted, 2);
}

#[test]
fn vote_for_refuses_oversized_and_backpressure() {
    // Proves: vote_for refuses a payload above OBSERVATION_BYTES_MAX (TooLarge) and refuses once votes_pending_max votes wait (Backpressure), queueing nothing.
    let config = Config {
        votes_per_event_max: 2,
        votes_pending_max: 2,
        ..Config::default()
    };
    let mut cluster = Cluster::new(MEMBERS, &config, SEED, 0).expect("a valid cluster");
    let node = &mut cluster.nodes[0];

    assert_eq!(
        node.vote_for(payload(1, OBSERVATION_BYTES_MAX + 1)),
        Err(VoteError::TooLarge {
            bytes: OBSERVATION_BYTES_MAX + 1,
            max: OBSERVATION_BYTES_MAX,
        })
    );
    assert_eq!(node.stats().votes_pending, 0);

    let at_limit = payload(2, OBSERVATION_BYTES_MAX);
    assert_eq!(node.vote_for(at_limit.clone()), Ok(at_limit.hash()));
    let small = payload(3, 4);
    assert_eq!(node.vote_for(small.clone()), Ok(small.hash()));
    assert_eq!(node.stats().votes_pending, 2);
    assert_eq!(
        node.vote_for(payload(4, 4)),
        Err(VoteError::Backpressure(2))
    );
    assert_eq!(
        node.stats().votes_pending,
        2,
        "the refused vote is not queued"
    );
}

#[test]
fn setup_errors_are_typed() {
    // Proves: Consensus::new refuses an invalid config, an empty/duplicate/invalid member list, and a key outside the list, with the matching SetupError.
    let keys: Vec<SigningKey> = (0..MEMBERS).map(|index| member_key(SEED, index)).collect();
    let ids: Vec<PeerId> = keys
        .iter()
        .map(|key| PeerId(key.verifying_key().to_bytes()))
        .collect();
    let new = |config: Config, key: &SigningKey, members: &[PeerId]| {
        Consensus::new(config, key.clone(), members, 0).err()
    };

    for config in [
        Config {
            coin_round_period: 2,
            ..Config::default()
        },
        Config {
            events_per_sync_max: 0,
            ..Config::default()
        },
        Config {
            votes_pending_max: 1,
            votes_per_event_max: 2,
            ..Config::default()
        },
    ] {
        let error = new(config, &keys[0], &ids);
        assert!(matches!(error, Some(SetupError::Config(_))), "{error:?}");
    }

    let duplicate = [ids[0], ids[1], ids[1], ids[2]];
    let error = new(Config::default(), &keys[0], &duplicate);
    assert!(matches!(error, Some(SetupError::Members(_))), "{error:?}");

    let error = new(Config::default(), &keys[0], &[]);
    assert!(matches!(error, Some(SetupError::Members(_))), "{error:?}");

    // The identity point is a small-order (weak) key.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = [ids[0], ids[1], PeerId(identity)];
    let error = new(Config::default(), &keys[0], &weak);
    assert!(matches!(error, Some(SetupError::Members(_))), "{error:?}");

    let stranger = member_key(SEED, 99);
    let stranger_id = PeerId(stranger.verifying_key().to_bytes());
    assert_eq!(
        new(Config::default(), &stranger, &ids),
        Some(SetupError::NotAMember(stranger_id))
    );

    assert!(
        new(Config::default(), &keys[0], &ids).is_none(),
        "the valid setup succeeds"
    );
}

// ---- A signature with a small-order R, for the batch-verification test. ----

/// An ed25519 signature by `key` over `message` whose R is the identity point (small order):
/// s = H(R || A || M) * a. It satisfies the verification equation sB = R + kA, so batch
/// verification accepts it, while strict verification refuses small-order R.
fn small_order_r_signature(key: &SigningKey, message: &[u8]) -> Signature {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut transcript = identity.to_vec();
    transcript.extend_from_slice(&key.verifying_key().to_bytes());
    transcript.extend_from_slice(message);
    let secret = key.to_scalar();
    let k = scalar_from_wide(&secret, &sha512(&transcript));
    let s = k * secret;
    Signature::from_components(identity, s.to_bytes())
}

/// A 64-byte little-endian integer reduced modulo the scalar field of `_witness`'s type
/// (the scalar type is not nameable from here: its crate is not a direct dependency).
fn scalar_from_wide<T>(_witness: &T, wide: &[u8; 64]) -> T
where
    T: From<u128> + Add<Output = T> + Mul<Output = T> + Copy,
{
    let two_to_128 = T::from(u128::MAX) + T::from(1u128);
    wide.chunks_exact(16)
        .rev()
        .fold(T::from(0u128), |acc, chunk| {
            let mut limb = [0u8; 16];
            limb.copy_from_slice(chunk);
            acc * two_to_128 + T::from(u128::from_le_bytes(limb))
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// SHA-512 (FIPS 180-4), only for the test above: `sha2` is not a direct dependency.
fn sha512(message: &[u8]) -> [u8; 64] {
    const K: [u64; 80] = [
        0x428a2f98d728ae22,
        0x7137449123ef65cd,
        0xb5c0fbcfec4d3b2f,
        0xe9b5dba58189dbbc,
        0x3956c25bf348b538,
        0x59f111f1b605d019,
        0x923f82a4af194f9b,
        0xab1c5ed5da6d8118,
        0xd807aa98a3030242,
        0x12835b0145706fbe,
        0x243185be4ee4b28c,
        0x550c7dc3d5ffb4e2,
        0x72be5d74f27b896f,
        0x80deb1fe3b1696b1,
        0x9bdc06a725c71235,
        0xc19bf174cf692694,
        0xe49b69c19ef14ad2,
        0xefbe4786384f25e3,
        0x0fc19dc68b8cd5b5,
        0x240ca1cc77ac9c65,
        0x2de92c6f592b0275,
        0x4a7484aa6ea6e483,
        0x5cb0a9dcbd41fbd4,
        0x76f988da831153b5,
        0x983e5152ee66dfab,
        0xa831c66d2db43210,
        0xb00327c898fb213f,
        0xbf597fc7beef0ee4,
        0xc6e00bf33da88fc2,
        0xd5a79147930aa725,
        0x06ca6351e003826f,
        0x142929670a0e6e70,
        0x27b70a8546d22ffc,
        0x2e1b21385c26c926,
        0x4d2c6dfc5ac42aed,
        0x53380d139d95b3df,
        0x650a73548baf63de,
        0x766a0abb3c77b2a8,
        0x81c2c92e47edaee6,
        0x92722c851482353b,
        0xa2bfe8a14cf10364,
        0xa81a664bbc423001,
        0xc24b8b70d0f89791,
        0xc76c51a30654be30,
        0xd192e819d6ef5218,
        0xd69906245565a910,
        0xf40e35855771202a,
        0x106aa07032bbd1b8,
        0x19a4c116b8d2d0c8,
        0x1e376c085141ab53,
        0x2748774cdf8eeb99,
        0x34b0bcb5e19b48a8,
        0x391c0cb3c5c95a63,
        0x4ed8aa4ae3418acb,
        0x5b9cca4f7763e373,
        0x682e6ff3d6b2b8a3,
        0x748f82ee5defb2fc,
        0x78a5636f43172f60,
        0x84c87814a1f0ab72,
        0x8cc702081a6439ec,
        0x90befffa23631e28,
        0xa4506cebde82bde9,
        0xbef9a3f7b2c67915,
        0xc67178f2e372532b,
        0xca273eceea26619c,
        0xd186b8c721c0c207,
        0xeada7dd6cde0eb1e,
        0xf57d4f7fee6ed178,
        0x06f067aa72176fba,
        0x0a637dc5a2c898a6,
        0x113f9804bef90dae,
        0x1b710b35131c471b,
        0x28db77f523047d84,
        0x32caab7b40c72493,
        0x3c9ebe0a15c9bebc,
        0x431d67c49c100d4c,
        0x4cc5d4becb3e42b6,
        0x597f299cfc657e2a,
        0x5fcb6fab3ad6faec,
        0x6c44198c4a475817,
    ];
    let mut state: [u64; 8] = [
        0x6a09e667f3bcc908,
        0xbb67ae8584caa73b,
        0x3c6ef372fe94f82b,
        0xa54ff53a5f1d36f1,
        0x510e527fade682d1,
        0x9b05688c2b3e6c1f,
        0x1f83d9abfb41bd6b,
        0x5be0cd19137e2179,
    ];
    let mut data = message.to_vec();
    data.push(0x80);
    while data.len() % 128 != 112 {
        data.push(0);
    }
    data.extend_from_slice(&((message.len() as u128) * 8).to_be_bytes());
    for block in data.chunks_exact(128) {
        let mut w = [0u64; 80];
        for (word, bytes) in w.iter_mut().zip(block.chunks_exact(8)) {
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            *word = u64::from_be_bytes(be);
        }
        for t in 16..80 {
            let s0 = w[t - 15].rotate_right(1) ^ w[t - 15].rotate_right(8) ^ (w[t - 15] >> 7);
            let s1 = w[t - 2].rotate_right(19) ^ w[t - 2].rotate_right(61) ^ (w[t - 2] >> 6);
            w[t] = w[t - 16]
                .wrapping_add(s0)
                .wrapping_add(w[t - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = state;
        for (k, word) in K.iter().zip(w) {
            let s1 = e.rotate_right(14) ^ e.rotate_right(18) ^ e.rotate_right(41);
            let choice = (e & f) ^ (!e & g);
            let temp1 = h
                .wrapping_add(s1)
                .wrapping_add(choice)
                .wrapping_add(*k)
                .wrapping_add(word);
            let s0 = a.rotate_right(28) ^ a.rotate_right(34) ^ a.rotate_right(39);
            let majority = (a & b) ^ (a & c) ^ (b & c);
            let temp2 = s0.wrapping_add(majority);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(temp1);
            d = c;
            c = b;
            b = a;
            a = temp1.wrapping_add(temp2);
        }
        for (word, add) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *word = word.wrapping_add(add);
        }
    }
    let mut out = [0u8; 64];
    for (chunk, word) in out.chunks_exact_mut(8).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[test]
fn an_event_of_another_group_is_rejected_and_is_no_fork() {
    // Proves: an event signed by a member for another consensus instance (another
    // `Config::group`, as an old generation of a section is) is WrongGroup and never enters
    // the graph, and two first events of one member in two groups are not fork evidence.
    let mut fixture = Fixture::new(&Config::default());
    let before = snapshot(fixture.receiver());
    let elsewhere = resign(
        fixture.next_event(1, Vec::new()),
        &fixture.keys[1],
        |event| event.header.group = [7; 32],
    );
    let hash = elsewhere.header.hash();
    fixture.assert_rejected(elsewhere, EventError::WrongGroup(hash));
    assert_eq!(snapshot(fixture.receiver()), before, "state unchanged");

    let genesis_here = SignedEvent::create(&fixture.keys[1], 0, None, None, START_MS, Vec::new()).0;
    let genesis_there = resign(genesis_here.clone(), &fixture.keys[1], |event| {
        event.header.group = [7; 32];
    });
    let evidence = chorus_consensus::ForkEvidence {
        first: genesis_here.signed_header(),
        second: genesis_there.signed_header(),
    };
    assert!(
        evidence.verify().is_err(),
        "events in two groups are not a fork"
    );
}
