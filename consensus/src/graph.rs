//! The gossip graph: storage of events, ancestry queries ("sees", "strongly sees"), fork
//! detection, rounds and witnesses, and pruning.
//!
//! Events live in slots numbered in insertion order, which is a topological order (parents are
//! always inserted first). Per event we keep, for every creator, the highest ancestor by that
//! creator (a vector clock, by slot and by index) and whether the event's ancestors contain a
//! fork by that creator. With those, "x sees y" and "x strongly sees y" are O(1) and O(n)
//! instead of graph walks (consensus-notes.md, "Making it fast").

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::config::is_supermajority;
use crate::error::EventError;
use crate::event::{SignedEvent, SignedHeader};
use crate::evidence::ForkEvidence;
use crate::ids::{EventHash, HashMapPrehashed};
use crate::merkle::Tree;

/// Position of an event in insertion order; never reused.
pub(crate) type Slot = u64;

/// Marks "no ancestor by this creator" in a vector clock.
pub(crate) const NO_SLOT: Slot = Slot::MAX;

/// One event in the graph with everything derived from its ancestry.
pub(crate) struct EventNode {
    pub event: Arc<SignedEvent>,
    pub hash: EventHash,
    pub creator: usize,
    pub index: u64,
    pub self_parent: Option<Slot>,
    pub other_parent: Option<Slot>,
    /// Lamport height: 0 for a first event, else 1 + the larger parent height. Strictly
    /// increases along every ancestry path, which keeps the consensus order topological.
    pub height: u64,
    /// Per creator: slot of the highest-index ancestor by that creator (or `NO_SLOT`).
    pub last_slot: Box<[Slot]>,
    /// Per creator: index + 1 of that ancestor (0 when there is none).
    pub last_index_plus_one: Box<[u64]>,
    /// Per creator: true when the ancestors contain a fork by that creator. `None` when no
    /// fork at all is among the ancestors (the common case, so no allocation).
    pub fork_seen: Option<Box<[bool]>>,
    pub round: u64,
    pub is_witness: bool,
    /// Fame of a witness once decided (for the dot dump).
    pub famous: Option<bool>,
    /// Merkle tree over the votes' observation hashes; dropped once the votes are tallied.
    pub votes_tree: Option<Tree>,
    /// Set once the event has its place in the consensus order.
    pub round_received: Option<u64>,
    /// Pruned but kept one more window for what later events derive from it (`Graph`,
    /// "retired"): still served, but not counted, not a carrier, never a self-parent.
    pub retired: bool,
}

impl EventNode {
    fn fork_seen(&self, creator: usize) -> bool {
        self.fork_seen.as_ref().is_some_and(|forks| forks[creator])
    }

    /// The consensus timestamp input: the creator's clock at creation.
    pub fn created_at_ms(&self) -> u64 {
        self.event.header.created_at_ms
    }
}

/// Whether `Graph::insert` refuses an event it cannot derive exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Derivation {
    /// Exact or refused (peer input, our own events).
    Exact,
    /// A replay-log record: inserted as when it was written, which a log of an older version
    /// may have done on parents of rounds now forgotten (its round is then computed without
    /// those rounds' witnesses, as that version did).
    AsLogged,
}

/// The result of inserting an event.
pub(crate) struct Inserted {
    pub slot: Slot,
    /// Set when this event and an earlier one by the same creator share an index.
    pub fork: Option<ForkEvidence>,
    /// Set when its other-parent was retired here.
    pub on_retired_parent: bool,
}

/// The graph of one group.
///
/// Pruning has two steps. Events of rounds below the prune horizon are *retired*: no longer
/// held as events (not counted, refused if sent again), but kept in their slots, with the
/// witness lists of their rounds, for one more window, and still served to peers that lack
/// them. Retired events are *forgotten* one window later.
///
/// Why keep them: members prune at different times. A member that comes back from behind
/// builds on the last event it holds of a peer, which others pruned; a member that has not
/// pruned it yet inserts the event and builds on it, and every later event of that member
/// names it as an ancestor. Refusing such an event split the section for good
/// (RELIABILITY.md, "A late event on a pruned parent"). With the retired events at hand,
/// such an event is derived exactly as where its parent is still held. They are served for
/// the same reason: a late event can be retired by the member that inserted it right away
/// (its round is already below the horizon), while another member that lacks it but holds
/// its parents must get it to insert that member's later events. The rule is *exact
/// or refused*: an event is refused only when deriving it needs what we forgot (a forgotten
/// parent, or parents all of rounds whose witnesses we forgot), never derived from partial
/// ancestry.
pub(crate) struct Graph {
    member_count: usize,
    /// Slot `base + i` lives at `nodes[i]`; pruned slots are `None`.
    nodes: VecDeque<Option<EventNode>>,
    base: Slot,
    by_hash: HashMapPrehashed<EventHash, Slot>,
    /// Retired events by hash: an other-parent may be one of them.
    retired: HashMapPrehashed<EventHash, Slot>,
    /// Round -> retired events of that round (to forget them).
    retired_by_round: BTreeMap<u64, Vec<Slot>>,
    /// Per creator: index -> slot of the first event seen at that index (retired events
    /// included, so they are served; forgotten ones removed).
    chains: Vec<BTreeMap<u64, Slot>>,
    /// Extra events at an index already taken (forks), per (creator, index).
    fork_slots: BTreeMap<(usize, u64), Vec<Slot>>,
    /// Per creator: true once the graph holds a fork by it.
    forked: Vec<bool>,
    /// Per creator: the highest index of a pruned event (`None` before any pruning). Events at
    /// or below it are refused: a replay of pruned history would otherwise be inserted and
    /// ordered a second time, and a new event there can only be a fork.
    pruned_floor: Vec<Option<u64>>,
    /// Per creator: the lowest index at which the graph holds two events. Every event by that
    /// creator below it is on the one trunk all branches share.
    first_fork_index: Vec<u64>,
    /// Per creator: slot of the highest-index event held (any branch).
    heads: Vec<Option<Slot>>,
    /// Round -> witnesses of that round, in insertion order.
    witnesses: BTreeMap<u64, Vec<Slot>>,
    /// Round -> all events of that round (for pruning).
    events_by_round: BTreeMap<u64, Vec<Slot>>,
    /// Rounds below this were pruned: their events are retired or forgotten.
    pub pruned_below_round: u64,
    /// Rounds below this were forgotten (their witnesses are gone).
    forgotten_below_round: u64,
    max_round: u64,
}

impl Graph {
    pub fn new(member_count: usize) -> Self {
        Self {
            member_count,
            nodes: VecDeque::new(),
            base: 0,
            by_hash: HashMapPrehashed::default(),
            retired: HashMapPrehashed::default(),
            retired_by_round: BTreeMap::new(),
            chains: vec![BTreeMap::new(); member_count],
            fork_slots: BTreeMap::new(),
            forked: vec![false; member_count],
            first_fork_index: vec![u64::MAX; member_count],
            pruned_floor: vec![None; member_count],
            heads: vec![None; member_count],
            witnesses: BTreeMap::new(),
            events_by_round: BTreeMap::new(),
            pruned_below_round: 0,
            forgotten_below_round: 0,
            max_round: 0,
        }
    }

    pub fn member_count(&self) -> usize {
        self.member_count
    }

    /// The event at `slot`, retired ones included.
    pub fn node(&self, slot: Slot) -> Option<&EventNode> {
        let offset = slot.checked_sub(self.base)?;
        self.nodes.get(usize::try_from(offset).ok()?)?.as_ref()
    }

    /// Whether `slot` holds an event that is not retired.
    pub fn is_held(&self, slot: Slot) -> bool {
        self.node(slot).is_some_and(|node| !node.retired)
    }

    pub fn node_mut(&mut self, slot: Slot) -> Option<&mut EventNode> {
        let offset = slot.checked_sub(self.base)?;
        self.nodes.get_mut(usize::try_from(offset).ok()?)?.as_mut()
    }

    /// Node at a slot the caller knows is live (our own bookkeeping, not peer input).
    pub fn get(&self, slot: Slot) -> &EventNode {
        match self.node(slot) {
            Some(node) => node,
            None => panic!("slot {slot} is not live: graph bookkeeping is broken"),
        }
    }

    pub fn slot_of(&self, hash: &EventHash) -> Option<Slot> {
        self.by_hash.get(hash).copied()
    }

    /// The slot of an event held or retired: one we serve, and may take as an other-parent.
    pub fn held_or_retired_slot(&self, hash: &EventHash) -> Option<Slot> {
        self.slot_of(hash)
            .or_else(|| self.retired.get(hash).copied())
    }

    pub fn contains(&self, hash: &EventHash) -> bool {
        self.by_hash.contains_key(hash)
    }

    pub fn event_count(&self) -> usize {
        self.by_hash.len()
    }

    /// Events retired and not forgotten yet.
    pub fn retired_count(&self) -> usize {
        self.retired.len()
    }

    pub fn is_forked(&self, creator: usize) -> bool {
        self.forked[creator]
    }

    /// The lowest index at which `creator` forked (`u64::MAX` if it never did): below it,
    /// every member holds the same chain.
    pub fn first_fork_index(&self, creator: usize) -> u64 {
        self.first_fork_index[creator]
    }

    pub fn head(&self, creator: usize) -> Option<Slot> {
        self.heads[creator]
    }

    pub fn max_round(&self) -> u64 {
        self.max_round
    }

    pub fn witnesses(&self, round: u64) -> &[Slot] {
        self.witnesses
            .get(&round)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Held (not retired) slots in insertion (topological) order.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.as_ref().is_some_and(|node| !node.retired))
            .map(|(offset, _)| self.base + offset as u64)
    }

    /// Events by `creator` with index >= `from_index`, plus every event of a forked creator
    /// from the first forked index on (a peer may hold only one branch).
    pub fn slots_of_creator_from(
        &self,
        creator: usize,
        from_index: u64,
        limit: usize,
    ) -> Vec<Slot> {
        // Only from the requester's index on, even for a forked creator: a branch below it
        // reaches the requester through `wanted`. Re-sending a forker's history from its
        // first fork would fill every response with duplicates once that history is long.
        let mut slots = Vec::new();
        for (&index, &slot) in self.chains[creator].range(from_index..) {
            if slots.len() >= limit {
                break;
            }
            slots.push(slot);
            if let Some(extra) = self.fork_slots.get(&(creator, index)) {
                slots.extend(extra.iter().copied());
            }
        }
        slots
    }

    /// Checks an event against the graph (parents, creator chain, time) and inserts it.
    /// The caller has already checked the body, signature and membership.
    pub fn insert(
        &mut self,
        event: Arc<SignedEvent>,
        hash: EventHash,
        creator: usize,
        votes_tree: Option<Tree>,
        derivation: Derivation,
    ) -> Result<Inserted, EventError> {
        debug_assert!(!self.contains(&hash));
        let header = &event.header;
        if let Some(floor) = self.pruned_floor[creator] {
            if header.index <= floor {
                return Err(EventError::Ancient {
                    event: hash,
                    index: header.index,
                    floor,
                });
            }
        }
        let self_parent = self.self_parent_slot(hash, header.self_parent.as_ref())?;
        let other_parent = self.other_parent_slot(hash, header.other_parent.as_ref())?;
        if derivation == Derivation::Exact {
            self.check_derivable(hash, [self_parent, other_parent])?;
        }
        let expected_index = match self_parent {
            None => 0,
            Some(parent) => {
                let parent = self.get(parent);
                if parent.creator != creator {
                    return Err(EventError::ForeignSelfParent(hash));
                }
                if header.created_at_ms < parent.created_at_ms() {
                    return Err(EventError::TimeRegressed(hash));
                }
                parent.index + 1
            }
        };
        if header.index != expected_index {
            return Err(EventError::WrongIndex {
                event: hash,
                index: header.index,
                expected: expected_index,
            });
        }
        if let Some(parent) = other_parent {
            if self.get(parent).creator == creator {
                return Err(EventError::MalformedParents(hash));
            }
        }

        // From here on the event is valid and goes in: no more errors.
        let index = header.index;
        let fork = self.record_in_chain(creator, index, hash, &event);
        let slot = self.base + self.nodes.len() as u64;
        let node = self.derive_node(
            event,
            hash,
            creator,
            self_parent,
            other_parent,
            votes_tree,
            slot,
        );
        let round = node.round;
        if node.is_witness {
            self.witnesses.entry(round).or_default().push(slot);
        }
        self.events_by_round.entry(round).or_default().push(slot);
        self.max_round = self.max_round.max(round);
        let head_index = self.heads[creator].map(|head| self.get(head).index);
        if head_index.is_none_or(|head_index| index > head_index) {
            self.heads[creator] = Some(slot);
        }
        self.nodes.push_back(Some(node));
        self.by_hash.insert(hash, slot);
        let on_retired_parent = other_parent.is_some_and(|slot| self.get(slot).retired);
        Ok(Inserted {
            slot,
            fork,
            on_retired_parent,
        })
    }

    /// The self-parent must be held: an honest creator builds on its latest event, which
    /// pruning keeps, so a retired self-parent means a fork or a replay.
    fn self_parent_slot(
        &self,
        event: EventHash,
        parent: Option<&EventHash>,
    ) -> Result<Option<Slot>, EventError> {
        let slot = self.other_parent_slot(event, parent)?;
        match (slot, parent) {
            (Some(slot), Some(&parent)) if self.get(slot).retired => {
                Err(EventError::StaleParent { event, parent })
            }
            _ => Ok(slot),
        }
    }

    /// The other-parent may be held or retired.
    fn other_parent_slot(
        &self,
        event: EventHash,
        parent: Option<&EventHash>,
    ) -> Result<Option<Slot>, EventError> {
        let Some(parent) = parent else {
            return Ok(None);
        };
        match self.held_or_retired_slot(parent) {
            Some(slot) => Ok(Some(slot)),
            None => Err(EventError::UnknownParent {
                event,
                parent: *parent,
            }),
        }
    }

    /// Exact or refused: an event whose parents are all of forgotten rounds would need those
    /// rounds' witnesses to tell its round (a creator's latest event is kept however old).
    fn check_derivable(
        &self,
        event: EventHash,
        parents: [Option<Slot>; 2],
    ) -> Result<(), EventError> {
        if self.can_derive_from(parents) {
            return Ok(());
        }
        let round = parents
            .into_iter()
            .flatten()
            .map(|slot| self.get(slot).round)
            .max()
            .unwrap_or_default();
        Err(EventError::BeyondHorizon {
            event,
            round,
            kept_from: self.forgotten_below_round,
        })
    }

    /// Whether an event on these (held or retired) parents can be derived here.
    pub fn can_derive_from(&self, parents: [Option<Slot>; 2]) -> bool {
        parents
            .into_iter()
            .flatten()
            .map(|slot| self.get(slot).round)
            .max()
            .is_none_or(|round| round >= self.forgotten_below_round)
    }

    /// Adds the event to its creator's chain; returns fork evidence if the index was taken.
    fn record_in_chain(
        &mut self,
        creator: usize,
        index: u64,
        hash: EventHash,
        event: &SignedEvent,
    ) -> Option<ForkEvidence> {
        let slot = self.base + self.nodes.len() as u64;
        match self.chains[creator].get(&index) {
            None => {
                self.chains[creator].insert(index, slot);
                None
            }
            Some(&first) => {
                self.forked[creator] = true;
                self.first_fork_index[creator] = self.first_fork_index[creator].min(index);
                self.fork_slots
                    .entry((creator, index))
                    .or_default()
                    .push(slot);
                let first = self.get(first);
                debug_assert_ne!(first.hash, hash);
                Some(ForkEvidence::new(
                    first.event.signed_header(),
                    SignedHeader {
                        header: event.header.clone(),
                        signature: event.signature,
                    },
                ))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn derive_node(
        &self,
        event: Arc<SignedEvent>,
        hash: EventHash,
        creator: usize,
        self_parent: Option<Slot>,
        other_parent: Option<Slot>,
        votes_tree: Option<Tree>,
        slot: Slot,
    ) -> EventNode {
        let n = self.member_count;
        let index = event.header.index;
        let mut last_slot = vec![NO_SLOT; n].into_boxed_slice();
        let mut last_index_plus_one = vec![0u64; n].into_boxed_slice();
        let mut fork_seen: Option<Box<[bool]>> = None;
        let mark_fork = |creator: usize, forks: &mut Option<Box<[bool]>>| {
            forks.get_or_insert_with(|| vec![false; n].into_boxed_slice())[creator] = true;
        };
        let sp = self_parent.map(|slot| self.get(slot));
        let op = other_parent.map(|slot| self.get(slot));
        for parent in [sp, op].into_iter().flatten() {
            if let Some(forks) = &parent.fork_seen {
                for (creator, &seen) in forks.iter().enumerate() {
                    if seen {
                        mark_fork(creator, &mut fork_seen);
                    }
                }
            }
        }
        for k in 0..n {
            let a = sp.map_or(NO_SLOT, |node| node.last_slot[k]);
            let b = op.map_or(NO_SLOT, |node| node.last_slot[k]);
            let (ia, ib) = (
                sp.map_or(0, |node| node.last_index_plus_one[k]),
                op.map_or(0, |node| node.last_index_plus_one[k]),
            );
            let (high, high_index, low, low_index) = if ia >= ib {
                (a, ia, b, ib)
            } else {
                (b, ib, a, ia)
            };
            last_slot[k] = high;
            last_index_plus_one[k] = high_index;
            if self.forked[k]
                && low != NO_SLOT
                && !self.is_self_ancestor(k, (high, high_index - 1), (low, low_index - 1))
            {
                mark_fork(k, &mut fork_seen);
            }
        }
        // The event itself is its creator's highest ancestor. Anything by the creator that
        // arrived through the other-parent must be on its own chain, or the creator forked.
        if self.forked[creator] {
            let theirs = op.map_or(NO_SLOT, |node| node.last_slot[creator]);
            let theirs_index = op.map_or(0, |node| node.last_index_plus_one[creator]);
            let on_own_chain = match (self_parent, sp) {
                (Some(parent), Some(sp)) => self.is_self_ancestor(
                    creator,
                    (parent, sp.index),
                    (theirs, theirs_index.wrapping_sub(1)),
                ),
                _ => false,
            };
            if theirs != NO_SLOT && !on_own_chain {
                mark_fork(creator, &mut fork_seen);
            }
        }
        last_slot[creator] = slot;
        last_index_plus_one[creator] = index + 1;

        let height = [sp, op]
            .into_iter()
            .flatten()
            .map(|node| node.height + 1)
            .max()
            .unwrap_or(0);
        let mut node = EventNode {
            event,
            hash,
            creator,
            index,
            self_parent,
            other_parent,
            height,
            last_slot,
            last_index_plus_one,
            fork_seen,
            round: 0,
            is_witness: false,
            famous: None,
            votes_tree,
            round_received: None,
            retired: false,
        };
        let parent_round = [sp, op].into_iter().flatten().map(|node| node.round).max();
        node.round = match parent_round {
            None => 0,
            Some(round) if self.strongly_sees_supermajority_of_round(&node, round) => round + 1,
            Some(round) => round,
        };
        node.is_witness = sp.is_none_or(|parent| parent.round < node.round);
        node
    }

    /// True when the event `ancestor` (slot, index) is the event `descendant` (slot, index) or
    /// one of its self-ancestors; both are by `creator`.
    ///
    /// Exact, pruning included: pruning never drops an event of a creator once the graph holds
    /// a fork by it, and every event pruned before that lies below the first fork index, on the
    /// trunk that all branches share. So a pruned event is decided by its index alone, and a
    /// walk only ever crosses live events.
    pub fn is_self_ancestor(
        &self,
        creator: usize,
        descendant: (Slot, u64),
        ancestor: (Slot, u64),
    ) -> bool {
        let ((high_slot, high_index), (low_slot, low_index)) = (descendant, ancestor);
        if high_index < low_index {
            return false;
        }
        if !self.forked[creator] || low_index < self.first_fork_index[creator] {
            return true;
        }
        if high_slot == low_slot {
            return true;
        }
        let (Some(mut current), Some(low)) = (self.node(high_slot), self.node(low_slot)) else {
            debug_assert!(false, "events at or above a fork index are never pruned");
            return false;
        };
        while current.index > low.index {
            let Some(parent) = current.self_parent.and_then(|slot| self.node(slot)) else {
                return false;
            };
            current = parent;
        }
        current.hash == low.hash
    }

    /// `y` is an ancestor of `x` (or `x` itself). Exact for forked creators too. `x` may be
    /// an event under construction (not inserted yet).
    pub fn is_ancestor(&self, x: &EventNode, y: &EventNode) -> bool {
        if x.hash == y.hash {
            return true;
        }
        let highest = x.last_index_plus_one[y.creator];
        if highest < y.index + 1 {
            return false;
        }
        if !self.forked[y.creator] {
            return true;
        }
        // With a fork in the graph, only a walk tells which branch x descends from. If x's
        // ancestors hold both branches, `sees` is false anyway; `is_ancestor` then errs on the
        // side of "no", which only `sees` relies on.
        let Some(y_slot) = self.slot_of(&y.hash) else {
            return false;
        };
        if x.creator == y.creator {
            // Start from the self-parent: x itself may not be in the graph yet.
            let Some(self_parent) = x.self_parent else {
                return false;
            };
            return self.is_self_ancestor(y.creator, (self_parent, x.index - 1), (y_slot, y.index));
        }
        self.is_self_ancestor(
            y.creator,
            (x.last_slot[y.creator], highest - 1),
            (y_slot, y.index),
        )
    }

    /// `x sees y`: y is an ancestor of x and x's ancestors hold no fork by y's creator
    /// (Baird 2016, section 2 "see").
    pub fn sees(&self, x: &EventNode, y: &EventNode) -> bool {
        !x.fork_seen(y.creator) && self.is_ancestor(x, y)
    }

    /// `x strongly sees y`: x sees y, and events by a supermajority of creators lie on paths
    /// from y to x (Baird 2016, section 2 "strongly see"). For each creator m the best
    /// intermediate is x's highest ancestor by m: if it does not have y as an ancestor, no
    /// lower event by m does.
    pub fn strongly_sees(&self, x: &EventNode, y: &EventNode) -> bool {
        if !self.sees(x, y) {
            return false;
        }
        let mut count = 0;
        for m in 0..self.member_count {
            if x.fork_seen(m) {
                continue;
            }
            let Some(intermediate) = self.node_for_clock(x, m) else {
                continue;
            };
            if self.is_ancestor(intermediate, y) {
                count += 1;
                if is_supermajority(count, self.member_count) {
                    return true;
                }
            }
        }
        false
    }

    /// x's highest ancestor by creator m (x itself for its own creator).
    fn node_for_clock<'a>(&'a self, x: &'a EventNode, m: usize) -> Option<&'a EventNode> {
        if m == x.creator {
            return Some(x);
        }
        match x.last_slot[m] {
            NO_SLOT => None,
            slot => self.node(slot),
        }
    }

    /// True when `x` strongly sees round-`round` witnesses by a supermajority of creators.
    fn strongly_sees_supermajority_of_round(&self, x: &EventNode, round: u64) -> bool {
        let mut creators = vec![false; self.member_count];
        let mut count = 0;
        for &witness in self.witnesses(round) {
            let Some(witness) = self.node(witness) else {
                continue;
            };
            if creators[witness.creator] || !self.strongly_sees(x, witness) {
                continue;
            }
            creators[witness.creator] = true;
            count += 1;
            if is_supermajority(count, self.member_count) {
                return true;
            }
        }
        false
    }

    /// Prunes every event of rounds below `round`, except each creator's head (a lagging
    /// member can always build on the last event of its own we hold) and the events of
    /// creators with a fork in the graph (until they are removed from the group): they are
    /// retired, and those retired below `forget_below_round` are forgotten. Returns the
    /// number of events retired.
    pub fn prune_below(&mut self, round: u64, forget_below_round: u64) -> usize {
        let retired = self.retire_below(round);
        self.forget_below(forget_below_round.min(round));
        self.pruned_below_round = self.pruned_below_round.max(round);
        retired
    }

    fn retire_below(&mut self, round: u64) -> usize {
        let mut retired = 0;
        let above = self.events_by_round.split_off(&round);
        let below = std::mem::replace(&mut self.events_by_round, above);
        for (old_round, slots) in below {
            let mut kept = Vec::new();
            for slot in slots {
                let Some(node) = self.node(slot) else {
                    continue;
                };
                // Heads stay so a lagging member can build on them; a forked creator's events
                // stay so fork checks stay exact (see `is_self_ancestor`).
                if self.heads[node.creator] == Some(slot) || self.forked[node.creator] {
                    kept.push(slot);
                    continue;
                }
                let (hash, creator, index) = (node.hash, node.creator, node.index);
                self.by_hash.remove(&hash);
                self.retired.insert(hash, slot);
                let floor = &mut self.pruned_floor[creator];
                *floor = Some(floor.map_or(index, |floor| floor.max(index)));
                if let Some(node) = self.node_mut(slot) {
                    node.retired = true;
                    node.votes_tree = None;
                }
                self.retired_by_round
                    .entry(old_round)
                    .or_default()
                    .push(slot);
                retired += 1;
            }
            if !kept.is_empty() {
                self.events_by_round.insert(old_round, kept);
            }
        }
        retired
    }

    /// Drops the retired events of rounds below `round`, and those rounds' witness lists.
    fn forget_below(&mut self, round: u64) {
        let above = self.retired_by_round.split_off(&round);
        let below = std::mem::replace(&mut self.retired_by_round, above);
        for slot in below.into_values().flatten() {
            let taken = slot
                .checked_sub(self.base)
                .and_then(|offset| self.nodes.get_mut(offset as usize))
                .and_then(Option::take);
            if let Some(node) = taken {
                self.retired.remove(&node.hash);
                let chain = &mut self.chains[node.creator];
                if chain.get(&node.index) == Some(&slot) {
                    chain.remove(&node.index);
                }
            }
        }
        self.witnesses = self.witnesses.split_off(&round);
        self.fork_slots.retain(|_, slots| {
            slots.retain(|slot| {
                self.nodes
                    .get(slot.wrapping_sub(self.base) as usize)
                    .is_some_and(Option::is_some)
            });
            !slots.is_empty()
        });
        while matches!(self.nodes.front(), Some(None)) {
            self.nodes.pop_front();
            self.base += 1;
        }
        self.forgotten_below_round = self.forgotten_below_round.max(round);
    }
}
