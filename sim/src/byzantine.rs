//! Byzantine behaviours. A Byzantine node runs the honest consensus core and lies on the
//! wire: it rewrites what it sends (forks, equivocations, broken signatures, garbage), sends
//! nothing, or votes for observations nobody carried. Honest nodes must stay safe and live
//! with up to f = (n - 1) / 3 of them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chorus_consensus::{Observation, ObservationHash, SignedEvent, SyncResponse, Vote};
use ed25519_dalek::{Signature, SigningKey};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// How a node behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Behaviour {
    /// Follows the protocol.
    Honest,
    /// Now and then signs a second event at the index of its latest one (same parents, same
    /// votes, another timestamp) and sends it instead of the original: a fork of its chain.
    Fork,
    /// Answers every sync with a new version of its latest event, each with a different
    /// vote: one index, conflicting votes, a different one for every answer and so for every
    /// peer (equivocation).
    Equivocate,
    /// Relays events with corrupted signatures, its own and others'.
    BadSignatures,
    /// Answers every sync with nothing: it learns but never shares.
    Withhold,
    /// Answers, and sometimes asks, with random bytes.
    Garbage,
    /// Votes by hash for observations that no event carries (that it never saw).
    PhantomVotes,
}

impl Behaviour {
    /// Every Byzantine behaviour.
    pub const BYZANTINE: [Behaviour; 6] = [
        Behaviour::Fork,
        Behaviour::Equivocate,
        Behaviour::BadSignatures,
        Behaviour::Withhold,
        Behaviour::Garbage,
        Behaviour::PhantomVotes,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Honest => "honest",
            Behaviour::Fork => "fork",
            Behaviour::Equivocate => "equivocate",
            Behaviour::BadSignatures => "bad-signatures",
            Behaviour::Withhold => "withhold",
            Behaviour::Garbage => "garbage",
            Behaviour::PhantomVotes => "phantom-votes",
        }
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Behaviour {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [Behaviour::Honest]
            .into_iter()
            .chain(Behaviour::BYZANTINE)
            .find(|behaviour| behaviour.name() == name)
            .ok_or_else(|| format!("unknown behaviour {name:?}"))
    }
}

/// What a Byzantine node sends instead of an honest response.
pub enum Lie {
    /// A (possibly rewritten) response to encode.
    Response(SyncResponse),
    /// Raw bytes that decode to nothing valid.
    Bytes(Vec<u8>),
    /// Nothing at all.
    Nothing,
}

/// Rewrites an honest response as `behaviour` dictates. `latest` is the node's latest own
/// event, `requester` the index of the node asking, `nonce` a counter that makes each lie
/// distinct, `events_max` the most events a response may carry (a longer one would be
/// refused whole, turning the lie into mere withholding).
#[allow(clippy::too_many_arguments)]
pub fn lie(
    behaviour: Behaviour,
    mut response: SyncResponse,
    events_max: usize,
    key: &SigningKey,
    latest: Option<&Arc<SignedEvent>>,
    requester: usize,
    nonce: u64,
    rng: &mut ChaCha8Rng,
) -> Lie {
    match behaviour {
        Behaviour::Honest | Behaviour::PhantomVotes => Lie::Response(response),
        Behaviour::Withhold => Lie::Nothing,
        Behaviour::Garbage => Lie::Bytes(garbage(rng)),
        Behaviour::BadSignatures => {
            for event in &mut response.events {
                if rng.gen_bool(0.5) {
                    *event = Arc::new(corrupt_signature(event));
                }
            }
            Lie::Response(response)
        }
        Behaviour::Fork | Behaviour::Equivocate => {
            let Some(latest) = latest.filter(|event| event.header.index > 0) else {
                return Lie::Response(response);
            };
            if behaviour == Behaviour::Fork && !rng.gen_bool(0.3) {
                return Lie::Response(response);
            }
            let votes = if behaviour == Behaviour::Equivocate {
                let text = format!("equivocation {nonce} to node {requester}");
                vec![Vote::Full(Observation::payload(text.into_bytes()))]
            } else {
                latest.votes.clone()
            };
            let (twin, _) = SignedEvent::create(
                key,
                latest.header.index,
                latest.header.self_parent,
                latest.header.other_parent,
                latest.header.created_at_ms + 1 + nonce % 1_000,
                votes,
            );
            let latest_hash = latest.header.hash();
            response
                .events
                .retain(|event| event.header.hash() != latest_hash);
            if response.events.len() >= events_max {
                response.events.pop();
            }
            response.events.push(Arc::new(twin));
            Lie::Response(response)
        }
    }
}

/// Random bytes, sometimes behind a valid version byte so the decoder gets further.
pub fn garbage(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let length = rng.gen_range(0..2_048);
    let mut bytes: Vec<u8> = (0..length).map(|_| rng.r#gen()).collect();
    if rng.gen_bool(0.5) {
        if let Some(first) = bytes.first_mut() {
            *first = chorus_consensus::codec::WIRE_VERSION;
        }
    }
    bytes
}

/// A random observation hash that no event carries.
pub fn phantom_hash(rng: &mut ChaCha8Rng) -> ObservationHash {
    ObservationHash(rng.r#gen())
}

fn corrupt_signature(event: &SignedEvent) -> SignedEvent {
    let mut bytes = event.signature.to_bytes();
    bytes[7] ^= 0x40;
    SignedEvent {
        header: event.header.clone(),
        votes: event.votes.clone(),
        signature: Signature::from_bytes(&bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for behaviour in [Behaviour::Honest].into_iter().chain(Behaviour::BYZANTINE) {
            assert_eq!(behaviour.name().parse::<Behaviour>(), Ok(behaviour));
        }
        assert!("sneaky".parse::<Behaviour>().is_err());
    }
}
