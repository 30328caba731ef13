//! Limits and tunables. Every queue, batch, message and cache has a named limit here.

use serde::{Deserialize, Serialize};

/// Largest encoded gossip event accepted from a peer, in bytes.
pub const EVENT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest encoded sync message (request or response) accepted from a peer, in bytes.
pub const SYNC_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest encoded observation payload, in bytes.
pub const OBSERVATION_BYTES_MAX: usize = 1024 * 1024;
/// Most votes one gossip event may carry.
pub const VOTES_PER_EVENT_MAX: usize = 65_536;
/// Most event hashes a sync request may ask for by name (parents that a peer's events named
/// but that index-based sync could not deliver, which happens when a creator forked).
pub const WANTED_PER_SYNC_MAX: usize = 64;
/// Most members a group may have; sections split long before this.
pub const MEMBERS_MAX: usize = 1024;

const _: () = assert!(OBSERVATION_BYTES_MAX < EVENT_BYTES_MAX);
const _: () = assert!(EVENT_BYTES_MAX < SYNC_BYTES_MAX);

/// How blocks are formed from the votes tallied in consensus order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockMode {
    /// A block when strictly more than 2/3 of members voted for the same observation; the
    /// block carries those votes as its proof.
    Supermajority,
    /// The first vote for an observation makes its block.
    Single,
}

/// Tunables of one consensus instance. `Config::default()` suits a group of 4 to 64 members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Block formation rule.
    pub block_mode: BlockMode,
    /// Most events a sync response carries; a lagging peer catches up over several syncs.
    pub events_per_sync_max: usize,
    /// Most votes the node puts into one of its own gossip events; the rest wait for the next.
    pub votes_per_event_max: usize,
    /// Most own votes waiting for an event; `vote_for` refuses more (back-pressure).
    pub votes_pending_max: usize,
    /// Interval between the sync requests `tick` emits while anything moves, in
    /// milliseconds (work syncs at once besides: see `Consensus::tick`).
    pub gossip_interval_ms: u64,
    /// The longest interval between `tick`'s sync requests when nothing moves (they slow
    /// down, doubling, from `gossip_interval_ms`); the first new vote brings the pace back.
    #[serde(default = "idle_gossip_interval_ms_default")]
    pub idle_gossip_interval_ms: u64,
    /// Events of rounds older than `decided round - prune_window_rounds` are dropped from
    /// memory. Larger windows tolerate members that lag further behind.
    pub prune_window_rounds: u64,
    /// Events are pruned only by rounds decided at least this long ago (in milliseconds of
    /// consensus time, the agreed timestamps of ordered events: every member prunes alike at
    /// the same point of the order, and a replay exactly as the live run did), so the window
    /// is a span of time too: rounds take a few
    /// milliseconds under load, and a member away for less than this (a restart, a stall, a
    /// late start in a new instance) still catches up by gossip. 0: by rounds alone. Memory
    /// grows with it: the events of this span stay held.
    #[serde(default = "prune_min_age_ms_default")]
    pub prune_min_age_ms: u64,
    /// The prune age while some member has no event in the order of this instance yet (the
    /// larger of the two counts): a member whose instance starts late, after a slow state
    /// transfer or with a whole section restarting on a loaded machine, still gets in by
    /// gossip. A member absent from the start (crashed, Byzantine and silent) costs this
    /// span of events held, once per instance. 0: `prune_min_age_ms` always.
    #[serde(default = "prune_min_age_absent_ms_default")]
    pub prune_min_age_absent_ms: u64,
    /// How long an observation stays remembered (pending or decided), in rounds: votes for an
    /// observation decided within this window are never turned into a second block, and
    /// pending observations that gather no supermajority within it are forgotten.
    pub observation_window_rounds: u64,
    /// Every `coin_round_period`-th voting round of a fame election is a coin round (>= 3).
    pub coin_round_period: u64,
    /// Most observations one member's full votes may have pending (voted, no block yet) at
    /// once; further full votes by that member open nothing until some resolve. Bounds what a
    /// Byzantine member can make every other member remember.
    pub pending_observations_per_member_max: usize,
    /// Most undrained items kept in each output queue (blocks excepted: blocks are never
    /// dropped, the caller must drain them).
    pub output_queue_max: usize,
    /// When set, every change to the graph is also output as a [`crate::LogRecord`]
    /// (`Consensus::poll_log_record`), for a durable log that `Consensus::restore` replays
    /// after a crash. Off by default: it keeps a reference to every event until drained.
    pub log_records: bool,
    /// Push our new events to one member in turn when they become durable while a command
    /// or two is in flight, at most once per `gossip_interval_ms`, skipping members not
    /// heard from lately (`consensus/push.rs`). Off: news spreads by pulls alone (half a
    /// round trip later per hop).
    #[serde(default = "push_new_events_default")]
    pub push_new_events: bool,
    /// The consensus instance this member takes part in, signed into every event header
    /// (`EventHeader::group`): events, block proofs and fork evidence of one instance are
    /// never valid in another, even between the same members with the same keys (the engine
    /// runs a new instance per section generation; an old first event replayed into a new
    /// instance would otherwise look like a fork by its honest creator).
    pub group: [u8; 32],
}

impl Default for Config {
    fn default() -> Self {
        Self {
            block_mode: BlockMode::Supermajority,
            events_per_sync_max: 2_000,
            votes_per_event_max: 1_024,
            votes_pending_max: 1_000_000,
            gossip_interval_ms: 5,
            idle_gossip_interval_ms: idle_gossip_interval_ms_default(),
            prune_window_rounds: 16,
            prune_min_age_ms: prune_min_age_ms_default(),
            prune_min_age_absent_ms: prune_min_age_absent_ms_default(),
            observation_window_rounds: 64,
            coin_round_period: 10,
            pending_observations_per_member_max: 200_000,
            output_queue_max: 100_000,
            log_records: false,
            push_new_events: push_new_events_default(),
            group: [0; 32],
        }
    }
}

/// On: pushing pays at light load (BENCHMARKS.md: p50 at one client 50 -> 44 ms, seventh
/// sitting), and since members not heard from get none and a late starter gets in without
/// a refresh, members came back from faults about as fast as without them in the kill -9
/// runs (RELIABILITY.md, "Pushes and a late start").
fn push_new_events_default() -> bool {
    true
}

/// Three seconds: a node restarted after a kill -9 is back in about one, and at the load
/// `chorus bench` drives, three seconds of events are a few megabytes.
fn prune_min_age_ms_default() -> u64 {
    3_000
}

/// Twenty seconds: a whole section of four restarted at once on two cores replays its logs
/// for several seconds, and a refreshed member fetches its state meanwhile.
fn prune_min_age_absent_ms_default() -> u64 {
    20_000
}

/// An idle group's members sync about once a second each: nearly free, and still enough to
/// notice a peer that came back.
fn idle_gossip_interval_ms_default() -> u64 {
    1_000
}

impl Config {
    /// Checks the relations between limits; a bad configuration is an error, not a panic.
    pub fn validate(&self) -> Result<(), String> {
        if self.events_per_sync_max == 0 {
            return Err("events_per_sync_max must be at least 1".into());
        }
        if self.votes_per_event_max == 0 || self.votes_per_event_max > VOTES_PER_EVENT_MAX {
            return Err(format!(
                "votes_per_event_max must be in 1..={VOTES_PER_EVENT_MAX}"
            ));
        }
        if self.votes_pending_max < self.votes_per_event_max {
            return Err("votes_pending_max must be at least votes_per_event_max".into());
        }
        if self.idle_gossip_interval_ms < self.gossip_interval_ms {
            return Err("idle_gossip_interval_ms must be at least gossip_interval_ms".into());
        }
        if self.coin_round_period < 3 {
            return Err("coin_round_period must be at least 3".into());
        }
        // Pending events are judged stale STALE_ROUNDS after their round; pruning must not
        // drop them before that judgement (ARCHITECTURE.md, "Pruning").
        let prune_window_min = crate::order::STALE_ROUNDS + 2;
        if self.prune_window_rounds < prune_window_min {
            return Err(format!(
                "prune_window_rounds must be at least {prune_window_min}"
            ));
        }
        if self.observation_window_rounds < self.prune_window_rounds {
            return Err("observation_window_rounds must be at least prune_window_rounds".into());
        }
        if self.pending_observations_per_member_max < self.votes_per_event_max {
            return Err(
                "pending_observations_per_member_max must be at least votes_per_event_max".into(),
            );
        }
        if self.output_queue_max == 0 {
            return Err("output_queue_max must be at least 1".into());
        }
        Ok(())
    }
}

/// "Strictly more than two thirds of `member_count`": the supermajority rule.
pub fn is_supermajority(count: usize, member_count: usize) -> bool {
    3 * count > 2 * member_count
}

/// The largest number of faulty members a group of `member_count` tolerates: (n - 1) / 3.
pub fn faulty_max(member_count: usize) -> usize {
    member_count.saturating_sub(1) / 3
}
