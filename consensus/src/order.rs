//! The consensus order: round received, consensus timestamp, tie-break (Baird 2016, section 3,
//! "findOrder").

use crate::fame::DecidedRound;
use crate::graph::{Graph, Slot};

/// Events not received by `STALE_ROUNDS` rounds after their own round are stale: never
/// ordered, on every member. This bound is what lets members prune old rounds without ever
/// disagreeing on the order (ARCHITECTURE.md, "Pruning"). It is part of the protocol: every
/// member must use the same value.
pub const STALE_ROUNDS: u64 = 8;

/// An event placed in the consensus order.
pub(crate) struct OrderedEvent {
    pub slot: Slot,
    pub round_received: u64,
    pub timestamp_ms: u64,
}

/// Events waiting for a round that receives them.
pub(crate) struct Order {
    /// Unordered, non-stale events in slot order.
    pending: Vec<Slot>,
}

impl Order {
    pub fn new() -> Self {
        Self {
            pending: Vec::new(),
        }
    }

    pub fn add_pending(&mut self, slot: Slot) {
        self.pending.push(slot);
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Orders the events received in `decided`, and removes events that became stale.
    /// Returns the newly ordered events and the slots declared stale.
    pub fn receive(
        &mut self,
        graph: &Graph,
        decided: &DecidedRound,
    ) -> (Vec<OrderedEvent>, Vec<Slot>) {
        let round = decided.round;
        let famous: Vec<_> = decided
            .unique_famous
            .iter()
            .map(|&slot| graph.get(slot))
            .collect();
        let mut received = Vec::new();
        let mut stale = Vec::new();
        self.pending.retain(|&slot| {
            let Some(event) = graph.node(slot) else {
                return false;
            };
            // Stale first: an event more than STALE_ROUNDS below the round being decided is
            // never received, whatever the witnesses say. This keeps every read of the order
            // within the rounds no member has pruned.
            if event.round + STALE_ROUNDS < round {
                stale.push(slot);
                return false;
            }
            let is_received =
                !famous.is_empty() && famous.iter().all(|witness| graph.sees(witness, event));
            if is_received {
                received.push(slot);
                return false;
            }
            true
        });
        let whitening = famous.iter().fold([0u8; 32], |mut acc, witness| {
            xor_into(&mut acc, &witness.hash.0);
            acc
        });
        let mut keyed: Vec<(u64, u64, [u8; 32], Slot)> = received
            .into_iter()
            .map(|slot| {
                let event = graph.get(slot);
                let timestamp_ms = consensus_timestamp(graph, &famous, slot);
                let mut tie_break = event.hash.0;
                xor_into(&mut tie_break, &whitening);
                (timestamp_ms, event.height, tie_break, slot)
            })
            .collect();
        // Height is strictly larger for descendants and the timestamp never smaller, so the
        // order is topological; the whitened hash breaks the remaining ties in a way no
        // creator can steer (it depends on the famous witnesses' hashes).
        keyed.sort_unstable();
        let ordered = keyed
            .into_iter()
            .map(|(timestamp_ms, _, _, slot)| OrderedEvent {
                slot,
                round_received: round,
                timestamp_ms,
            })
            .collect();
        (ordered, stale)
    }
}

/// The median, over the round's unique famous witnesses, of the creation time of each
/// witness's earliest self-ancestor that sees the event (Baird 2016, section 3). Every such
/// self-ancestor is at most `STALE_ROUNDS` rounds old, so never pruned.
fn consensus_timestamp(graph: &Graph, famous: &[&crate::graph::EventNode], slot: Slot) -> u64 {
    let event = graph.get(slot);
    let mut times: Vec<u64> = famous
        .iter()
        .map(|witness| {
            let mut earliest = *witness;
            while let Some(parent) = earliest.self_parent.and_then(|parent| graph.node(parent)) {
                if !graph.sees(parent, event) {
                    break;
                }
                earliest = parent;
            }
            earliest.created_at_ms()
        })
        .collect();
    times.sort_unstable();
    // The lower median: with an even count it is the smaller middle value, which is still
    // bracketed by honest times when fewer than a third are faulty.
    times
        .get(times.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(event.created_at_ms())
}

fn xor_into(acc: &mut [u8; 32], other: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}
