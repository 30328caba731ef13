//! Virtual voting on the fame of witnesses (Baird 2016, section 3, "divideRounds" and
//! "decideFame"). No messages are exchanged: every member computes the same votes from the
//! same graph.

use std::collections::{BTreeMap, HashMap};

use crate::config::is_supermajority;
use crate::graph::{Graph, Slot};

/// Fame elections for every round not yet decided, and the rounds decided so far.
pub(crate) struct Fame {
    coin_round_period: u64,
    /// Candidate witness -> (voting witness -> vote). Dropped once the candidate is decided.
    votes: HashMap<Slot, HashMap<Slot, bool>>,
    /// Witness -> decided fame, for rounds not yet handed over to ordering.
    decided: HashMap<Slot, bool>,
    /// Voting witness -> the previous round's witnesses it strongly sees (fixed at insertion,
    /// since all of a witness's ancestors are already in the graph).
    strongly_seen: HashMap<Slot, Vec<Slot>>,
    /// Lowest round whose fame is not decided yet; rounds below are closed, and witnesses that
    /// arrive late for them are never famous (Baird 2016, lemma 5.17 and theorem 5.18).
    pub next_round: u64,
}

/// A round whose witnesses all have decided fame.
pub(crate) struct DecidedRound {
    pub round: u64,
    /// Famous witnesses, keeping at most one per creator (a creator with two famous
    /// witnesses, a forker, contributes none), in slot order.
    pub unique_famous: Vec<Slot>,
    /// Every witness of the round with its decided fame.
    pub fame: Vec<(Slot, bool)>,
}

impl Fame {
    pub fn new(coin_round_period: u64) -> Self {
        Self {
            coin_round_period,
            votes: HashMap::new(),
            decided: HashMap::new(),
            strongly_seen: HashMap::new(),
            next_round: 0,
        }
    }

    /// Runs the elections after new witnesses were inserted; returns newly decided rounds in
    /// increasing order.
    pub fn update(&mut self, graph: &Graph) -> Vec<DecidedRound> {
        let max_round = graph.max_round();
        for round in self.next_round..=max_round {
            for &candidate in graph.witnesses(round) {
                if !self.decided.contains_key(&candidate) {
                    self.try_decide(graph, candidate, round, max_round);
                }
            }
        }
        let mut newly_decided = Vec::new();
        while self.next_round < max_round {
            let witnesses = graph.witnesses(self.next_round);
            if witnesses.is_empty() || !witnesses.iter().all(|slot| self.decided.contains_key(slot))
            {
                break;
            }
            newly_decided.push(self.close_round(graph, self.next_round));
            self.next_round += 1;
        }
        newly_decided
    }

    fn close_round(&mut self, graph: &Graph, round: u64) -> DecidedRound {
        let witnesses = graph.witnesses(round);
        let mut famous_by_creator: BTreeMap<usize, Vec<Slot>> = BTreeMap::new();
        let mut fame = Vec::with_capacity(witnesses.len());
        for &slot in witnesses {
            let famous = self.decided.remove(&slot) == Some(true);
            fame.push((slot, famous));
            if famous {
                famous_by_creator
                    .entry(graph.get(slot).creator)
                    .or_default()
                    .push(slot);
            }
        }
        let mut unique_famous: Vec<Slot> = famous_by_creator
            .into_values()
            .filter(|slots| slots.len() == 1)
            .map(|slots| slots[0])
            .collect();
        unique_famous.sort_unstable();
        // Voters of this round are no longer needed for later elections once the next round
        // is decided too; drop their cached sets a round late.
        if let Some(previous) = round.checked_sub(1) {
            for slot in graph.witnesses(previous) {
                self.strongly_seen.remove(slot);
            }
        }
        DecidedRound {
            round,
            unique_famous,
            fame,
        }
    }

    /// Computes the votes of every later witness on `candidate`, in round order, until one of
    /// them decides its fame.
    fn try_decide(&mut self, graph: &Graph, candidate: Slot, round: u64, max_round: u64) {
        let member_count = graph.member_count();
        let candidate_node = graph.get(candidate);
        for voting_round in round + 1..=max_round {
            let distance = voting_round - round;
            for &voter in graph.witnesses(voting_round) {
                if self
                    .votes
                    .get(&candidate)
                    .is_some_and(|votes| votes.contains_key(&voter))
                {
                    continue;
                }
                let voter_node = graph.get(voter);
                let vote = if distance == 1 {
                    graph.sees(voter_node, candidate_node)
                } else {
                    let seen =
                        strongly_seen_by(&mut self.strongly_seen, graph, voter, voting_round - 1);
                    let votes = self.votes.get(&candidate);
                    let yes = seen
                        .iter()
                        .filter(|slot| {
                            votes
                                .and_then(|votes| votes.get(slot))
                                .copied()
                                .unwrap_or(false)
                        })
                        .count();
                    let no = seen.len() - yes;
                    let majority = yes >= no;
                    let tally = if majority { yes } else { no };
                    let decisive = is_supermajority(tally, member_count);
                    if distance % self.coin_round_period != 0 {
                        if decisive {
                            self.decided.insert(candidate, majority);
                            self.votes.remove(&candidate);
                            return;
                        }
                        majority
                    } else if decisive {
                        majority
                    } else {
                        coin_bit(voter_node.event.signature.to_bytes())
                    }
                };
                self.votes.entry(candidate).or_default().insert(voter, vote);
            }
        }
    }

    /// Number of fame votes held (for memory statistics).
    pub fn votes_held(&self) -> usize {
        self.votes.values().map(HashMap::len).sum()
    }
}

/// The pseudo-random bit of a coin round: the middle bit of the voter's signature, which
/// nobody can predict before the voter signs (Baird 2016, section 3, "coin round").
fn coin_bit(signature: [u8; 64]) -> bool {
    signature[32] & 1 == 1
}

/// The witnesses of `round` that `voter` strongly sees, computed once per voter (its ancestors
/// are all in the graph when it is inserted, so the answer never changes).
fn strongly_seen_by<'a>(
    cache: &'a mut HashMap<Slot, Vec<Slot>>,
    graph: &Graph,
    voter: Slot,
    round: u64,
) -> &'a [Slot] {
    cache.entry(voter).or_insert_with(|| {
        let voter_node = graph.get(voter);
        graph
            .witnesses(round)
            .iter()
            .copied()
            .filter(|&slot| {
                graph
                    .node(slot)
                    .is_some_and(|witness| graph.strongly_sees(voter_node, witness))
            })
            .collect()
    })
}
