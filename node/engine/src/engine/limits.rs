//! The engine's limits and timeouts, with the relations between them checked at compile
//! time. Times are in milliseconds of the caller's clock. Elsewhere: `HANDOVERS_MAX`
//! (`membership.rs`), `WAVE_BYTES_MAX` (`apply.rs`), and the timeouts a node may configure
//! (`EngineConfig`).

use chorus_aggregate::limits::{COMMAND_BYTES_MAX, EVENT_PAYLOAD_BYTES_MAX};
use chorus_consensus::{MEMBERS_MAX, SYNC_BYTES_MAX};

// ---- the command path ----

/// Commands waiting for an answer at one node (its own clients' and forwarded ones).
pub const COMMANDS_IN_FLIGHT_MAX: usize = 10_000;
/// Times a node decides and proposes one command again after it lost a race (Supermajority
/// mode). Each block on a contended stream lets one proposal win; with k members proposing on
/// one stream at once, a proposal waits for up to k - 1 others in the fair case, and the
/// agreed order is not guaranteed fair, hence the margin.
pub const STALE_RETRIES_MAX: u32 = 64;
/// How often a member passes on again its evidence against a member that forked, while that
/// member is still in the section.
pub const EVIDENCE_REPEAT_MS: u64 = 1_000;
/// A member tells one peer whose sync requests name another domain which domain its section
/// runs at most once per this long (`domain_check`).
pub const DOMAIN_NOTICE_INTERVAL_MS: u64 = 1_000;
/// How often a node asks again a member that had recorded nothing yet for a command this node
/// forwarded (to confirm its proposer's answer): the member applies it within a block or two.
pub const CONFIRM_RETRY_MS: u64 = 20;
/// How long a member asked to confirm a forwarded command's outcome may go without telling
/// one before the next member is asked too (it may be down or cut off).
pub const CONFIRM_PATIENCE_MS: u64 = 500;
/// Proposals of others kept for seconding once this node's store catches up.
pub const DEFERRED_SECONDS_MAX: usize = 10_000;
/// How far ahead of our store a proposal may be decided for us to keep it for a later second.
pub const DEFER_AHEAD_MAX: u64 = 16;

// ---- messages ----

/// Largest engine message other than consensus sync messages (forwards and answers).
pub const MESSAGE_BYTES_MAX: usize = 2 << 20;
/// Outputs queued before the caller drains them.
pub const OUTBOX_MAX: usize = 100_000;
/// Most members a `Behind` hint may name: as many as a section may have.
pub const BEHIND_MEMBERS_MAX: usize = MEMBERS_MAX;

// ---- who may speak ----

/// A stranger's join request is handled at most this often per stranger (an honest joiner
/// asks every `JOIN_RETRY_MS`).
pub const JOIN_REQUEST_INTERVAL_MIN_MS: u64 = JOIN_RETRY_MS / 2;
/// Strangers whose last join request is remembered for that throttle (the oldest is
/// forgotten first).
pub const STRANGERS_TRACKED_MAX: usize = 1_024;
/// Answers to strangers (join refusals, refused forwards) sent per second, all strangers
/// together: keys cost nothing, so a per-stranger throttle alone bounds nothing.
pub const JOIN_REFUSALS_PER_SEC: u64 = 64;
/// Bytes of sync responses per second one member's requests may cost us, on average (a
/// response may exceed what is left: the debt is paid before the next one). Honest gossip
/// at the measured peak needs a few MiB per second per member (BENCHMARKS.md); a member
/// that floods requests gets no more than this.
pub const SYNC_BYTES_PER_MEMBER_PER_SEC: u64 = 16 << 20;

// ---- process managers ----

/// A process manager's command that failed (no answer from another section, overload) is sent
/// again after this long.
pub const MANAGER_RETRY_MS: u64 = 1_000;
/// Scheduled commands a process manager may have waiting (`managers`): one with this many
/// takes no new event until some are answered, so a manager scheduling without bound cannot
/// grow the engine's memory. Timers live in memory (a restart schedules them again from the
/// checkpoint), so this bounds the rate of scheduling times the delay: 65,536 timers of 60 s
/// let about 1,000 scheduling events a second through.
pub const TIMERS_PER_MANAGER_MAX: usize = 65_536;
/// A process manager's checkpoint is saved at least every this many events.
pub const MANAGER_CHECKPOINT_EVERY: u32 = 64;
/// Rounds of a manager's step per call (each takes up to `MANAGER_READ_PAGE` events), so
/// one call stays short.
pub const MANAGER_EVENTS_PER_RUN: usize = 256;
/// Events a process manager may have in flight (handled, commands not all answered): how
/// many saga instances move at once. Bounds its memory and a scan per step.
pub const MANAGER_EVENTS_IN_FLIGHT: usize = 256;
/// Events a process manager reads from the store at once.
pub const MANAGER_READ_PAGE: usize = 64;

// ---- joining, refresh and readiness ----

/// A joiner asks again after this long without a welcome.
pub const JOIN_RETRY_MS: u64 = 1_000;
/// A lag hint counts for readiness this long (hints repeat every `JOIN_RETRY_MS` while the
/// lag lasts).
pub const BEHIND_REPORT_MS: u64 = 3 * JOIN_RETRY_MS;
/// A lagging member that got no welcome this long after it began to ask stops asking.
pub const REFRESH_GIVE_UP_MS: u64 = 10_000;
/// A member is voted a refresh at most this often (each refresh is a generation switch with
/// a handover, which a faulty member could otherwise provoke at will).
pub const REFRESH_INTERVAL_MIN_MS: u64 = 10_000;
/// A membership vote is made again, while its cause lasts, at most this often: a vote not
/// agreed within the consensus's observation window (64 rounds, well under a second under
/// load) is forgotten. Below `JOIN_RETRY_MS`, so members that voted at a laggard's earlier
/// request vote again at its next one, together with those that vote first then.
pub const CHANGE_REVOTE_MS: u64 = JOIN_RETRY_MS / 2;
/// How long a member welcomed into the current generation counts as new (not behind) while
/// we hold none of its events: a lost welcome is sent again within `JOIN_RETRY_MS`, so a
/// member still silent after this is refreshed like any laggard.
pub const NEW_MEMBER_GRACE_MS: u64 = 10_000;

// ---- removal ----

/// The default of `EngineConfig::remove_silent_after_ms`: a member silent this long is voted
/// out. Long against a restart (seconds), short against a section that waits on a dead
/// member for good.
pub const REMOVE_SILENT_AFTER_MS: u64 = 60_000;

/// An idle member syncs at least this many times per `remove_silent_after_ms` (its idle
/// gossip interval is cut to fit): with a peer down, a few of its syncs go unanswered, and
/// it must still hear from someone within the span, or it would think itself cut off.
pub const IDLE_SYNCS_PER_SILENCE_SPAN: u64 = 16;
/// Rounds our graph must go on without a member's events before it counts as silent:
/// several decisions' worth (a block takes about a dozen rounds), so a section that is
/// merely slow or idle removes nobody.
pub const SILENT_ROUNDS_MIN: u64 = 32;

// ---- state transfer ----

/// A joiner asks another source after this long without a transfer chunk.
pub const TRANSFER_TIMEOUT_MS: u64 = 2_000;
/// Payload bytes per transfer chunk (one event more may go over it: an event's payload is at
/// most `EVENT_PAYLOAD_BYTES_MAX`, which fits a message with this much before it).
pub const TRANSFER_CHUNK_BYTES: usize = MESSAGE_BYTES_MAX / 4;
/// Eventless commands per transfer chunk.
pub const TRANSFER_CHUNK_COMMANDS: usize = 2_000;
/// Events per transfer chunk.
pub const TRANSFER_CHUNK_EVENTS: usize = 500;

// ---- other sections' updates ----

/// A section update is sent once more after this long.
pub const ANNOUNCE_REPEAT_MS: u64 = 1_000;
/// Section updates kept per sender until they count (a section may change a few times in a
/// row; a faulty sender's variants only push out its own older ones).
pub const UPDATES_PER_SENDER_MAX: usize = 8;

// A chunk at its byte budget plus one largest event still fits a message, with a quarter of
// a message (512 KiB) left for the envelopes of its events and commands.
const _: () = assert!(TRANSFER_CHUNK_BYTES + EVENT_PAYLOAD_BYTES_MAX <= MESSAGE_BYTES_MAX * 3 / 4);
// A forwarded command of the largest size a client may send fits a message, with half a
// message left for its envelope.
const _: () = assert!(COMMAND_BYTES_MAX <= MESSAGE_BYTES_MAX / 2);
// A lag hint naming every member of the largest section fits a message (a name in JSON is
// at most 32 numbers of up to 3 digits with separators: under 160 bytes).
const _: () = assert!(BEHIND_MEMBERS_MAX * 160 < MESSAGE_BYTES_MAX);
// A lost welcome is sent again (on the next join request) well within the grace period.
const _: () = assert!(NEW_MEMBER_GRACE_MS >= 2 * JOIN_RETRY_MS);
// A laggard asks several times before it gives up.
const _: () = assert!(REFRESH_GIVE_UP_MS >= 2 * JOIN_RETRY_MS);
// A joiner that asks every `JOIN_RETRY_MS` is never throttled.
const _: () = assert!(JOIN_REQUEST_INTERVAL_MIN_MS < JOIN_RETRY_MS);
// A member over its sync budget waits at most a few seconds after one largest response.
const _: () = assert!(SYNC_BYTES_MAX as u64 / SYNC_BYTES_PER_MEMBER_PER_SEC <= 8);
// A transfer source is given up on no sooner than a joiner would ask again for a welcome.
const _: () = assert!(TRANSFER_TIMEOUT_MS >= JOIN_RETRY_MS);
