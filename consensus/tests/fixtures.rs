//! Graph-level fixtures: small hand-drawn gossip graphs written as text, fed into a real
//! `Consensus`, with the expected rounds, witness flags, fame and round received checked
//! through `Consensus::event_info` (consensus-notes.md, "What the tests should pin down").
//!
//! # Fixture text
//!
//! One event per line, `name creator index self_parent other_parent`, `-` for no parent, `#`
//! starts a comment. Members are `A`, `B`, `C`, `D` (n = 4, so a supermajority is 3).
//!
//! Member A is the observer: the `Consensus` under test is A's. A's genesis is the event
//! `Consensus::new` created (write it `a0 A 0 - -`). Events by B, C and D are crafted with
//! their keys and delivered to A in fixture order through `handle_sync_response`. A later event
//! by A (`a1 A 1 a0 c1`) is made by A itself: the events crafted since A's previous event are
//! delivered in one sync response from the other-parent's creator, after queueing a vote for A
//! (A only creates events when it has something to agree on), and A's new event must then have
//! exactly the parents the line names (the other-parent is the sender's latest event). A
//! fixture whose A has events beyond its genesis must end with an A line, since A keeps creating
//! events while its votes are unordered. So: 4 members, no fifth silent observer; fixtures
//! without later A events are driven by B, C and D alone.
//!
//! An event's creation time is its line number, so times increase along every chain.
//!
//! # Expected table
//!
//! One line per fixture event, in fixture order: `name rN [W] [famous|not-famous] [rrN]
//! [fork:X]`: round created, witness, decided fame (only once the witness's round is decided),
//! round received, and the creators with a fork among the event's ancestors (`sees_fork_by`).
//!
//! Rounds are numbered from 0 as in `src/` (a first event has round 0; consensus-notes.md and
//! Baird 2016 number the first round 1: every round number here is one less, which changes no
//! decision, since votes depend on round differences only).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use chorus_consensus::harness::member_key;
use chorus_consensus::{
    Config, Consensus, EventHash, ForkEvidence, Observation, PeerId, SignedEvent, SyncReport,
    SyncResponse,
};
use ed25519_dalek::SigningKey;

const SEED: u64 = 0xF1C5;
const MEMBER_NAMES: [char; 4] = ['A', 'B', 'C', 'D'];
const OBSERVER: usize = 0;

/// One parsed fixture line.
struct Line {
    number: usize,
    name: String,
    creator: usize,
    index: u64,
    self_parent: Option<String>,
    other_parent: Option<String>,
}

fn parse(fixture: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    for (offset, raw) in fixture.lines().enumerate() {
        let number = offset + 1;
        let text = raw.split('#').next().unwrap_or_default().trim();
        if text.is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [name, creator, index, self_parent, other_parent] = fields[..] else {
            panic!(
                "fixture line {number}: expected `name creator index self_parent other_parent`, \
                 got {text:?}"
            );
        };
        let creator = match creator {
            "A" => 0,
            "B" => 1,
            "C" => 2,
            "D" => 3,
            other => panic!("fixture line {number}: unknown creator {other:?} (A, B, C or D)"),
        };
        let index = index
            .parse()
            .unwrap_or_else(|_| panic!("fixture line {number}: bad index {index:?}"));
        let parent = |token: &str| (token != "-").then(|| token.to_string());
        lines.push(Line {
            number,
            name: name.to_string(),
            creator,
            index,
            self_parent: parent(self_parent),
            other_parent: parent(other_parent),
        });
    }
    lines
}

/// A's `Consensus` after the whole fixture, with what is needed to look events up.
struct Run {
    consensus: Consensus,
    ids: Vec<PeerId>,
    lines: Vec<Line>,
    hashes: HashMap<String, EventHash>,
    evidence: Vec<ForkEvidence>,
}

impl Run {
    fn hash(&self, name: &str) -> EventHash {
        match self.hashes.get(name) {
            Some(hash) => *hash,
            None => panic!("no fixture event named {name:?}"),
        }
    }

    fn drain(&mut self) {
        while let Some(event) = self.consensus.poll_unpersisted() {
            self.consensus.handle_persisted(event.header.index);
        }
        while let Some(evidence) = self.consensus.poll_evidence() {
            self.evidence.push(evidence);
        }
    }

    /// Delivers `batch` in one sync response from `sender`; every event must go in.
    fn deliver(
        &mut self,
        now_ms: u64,
        sender: usize,
        batch: Vec<Arc<SignedEvent>>,
        what: &str,
    ) -> SyncReport {
        let count = batch.len();
        let report = self
            .consensus
            .handle_sync_response(now_ms, &self.ids[sender], SyncResponse { events: batch })
            .unwrap_or_else(|error| panic!("{what}: sync response refused: {error}"));
        assert!(
            report.rejected.is_empty() && report.duplicates == 0 && report.inserted == count,
            "{what}: every fixture event must be inserted: {count} sent, {report:?}"
        );
        self.drain();
        report
    }

    /// The table the fixture's expectations are written in.
    fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let hash = self.hash(&line.name);
            let Some(info) = self.consensus.event_info(&hash) else {
                panic!("{}: not in the observer's graph", line.name);
            };
            assert_eq!(
                info.creator, self.ids[line.creator],
                "{}: creator",
                line.name
            );
            assert_eq!(info.index, line.index, "{}: index", line.name);
            write!(out, "{} r{}", line.name, info.round).expect("writing to a String");
            if info.is_witness {
                out.push_str(" W");
            }
            match info.famous {
                Some(true) => out.push_str(" famous"),
                Some(false) => out.push_str(" not-famous"),
                None => {}
            }
            if let Some(round) = info.round_received {
                write!(out, " rr{round}").expect("writing to a String");
            }
            if !info.sees_fork_by.is_empty() {
                let names: Vec<String> = info
                    .sees_fork_by
                    .iter()
                    .map(|id| self.member_name(id).to_string())
                    .collect();
                write!(out, " fork:{}", names.join(",")).expect("writing to a String");
            }
            out.push('\n');
        }
        out
    }

    fn member_name(&self, id: &PeerId) -> char {
        match self.ids.iter().position(|member| member == id) {
            Some(index) => MEMBER_NAMES[index],
            None => panic!("{id} is not a fixture member"),
        }
    }
}

/// Builds A's `Consensus` and feeds it the fixture.
fn run(fixture: &str) -> Run {
    let keys: Vec<SigningKey> = (0..MEMBER_NAMES.len())
        .map(|index| member_key(SEED, index))
        .collect();
    let ids: Vec<PeerId> = keys
        .iter()
        .map(|key| PeerId(key.verifying_key().to_bytes()))
        .collect();
    let consensus =
        Consensus::new(Config::default(), keys[OBSERVER].clone(), &ids, 0).expect("observer setup");
    let mut run = Run {
        consensus,
        ids,
        lines: Vec::new(),
        hashes: HashMap::new(),
        evidence: Vec::new(),
    };
    run.drain();
    let lines = parse(fixture);
    let mut batch: Vec<Arc<SignedEvent>> = Vec::new();
    let mut batch_sender = None;
    let mut observer_index = None;
    for line in &lines {
        let at = format!("fixture line {} ({})", line.number, line.name);
        assert!(
            !run.hashes.contains_key(&line.name),
            "{at}: duplicate event name"
        );
        let parent = |name: &Option<String>| {
            name.as_ref().map(|name| match run.hashes.get(name) {
                Some(hash) => *hash,
                None => panic!("{at}: parent {name:?} is not an earlier fixture event"),
            })
        };
        let (self_parent, other_parent) = (parent(&line.self_parent), parent(&line.other_parent));
        let now_ms = line.number as u64;
        if line.creator != OBSERVER {
            let (event, body) = SignedEvent::create(
                &member_key(SEED, line.creator),
                line.index,
                self_parent,
                other_parent,
                now_ms,
                Vec::new(),
            );
            run.hashes.insert(line.name.clone(), body.hash);
            batch.push(Arc::new(event));
            batch_sender = Some(line.creator);
            continue;
        }
        let expected_index = observer_index.map_or(0, |index: u64| index + 1);
        assert_eq!(
            line.index, expected_index,
            "{at}: A's events must be its own chain, in order"
        );
        observer_index = Some(line.index);
        let own = if line.index == 0 {
            assert!(
                self_parent.is_none() && other_parent.is_none(),
                "{at}: A's genesis has no parents"
            );
            run.consensus.own_event(0).expect("A's genesis")
        } else {
            let Some(other) = &line.other_parent else {
                panic!("{at}: A's later events need an other-parent");
            };
            let sender = lines
                .iter()
                .find(|earlier| &earlier.name == other)
                .map(|earlier| earlier.creator)
                .unwrap_or_else(|| panic!("{at}: unknown other-parent {other:?}"));
            // A creates an event only with something to agree on: give it a vote.
            let vote = Observation::Payload(format!("vote in {}", line.name).into_bytes().into());
            run.consensus.vote_for(vote).expect("vote queued");
            let events = std::mem::take(&mut batch);
            let report = run.deliver(now_ms, sender, events, &at);
            assert!(report.created_event, "{at}: A did not create an event");
            batch_sender = None;
            let Some(own) = run.consensus.own_event(line.index) else {
                panic!("{at}: A did not create an event at index {}", line.index);
            };
            let header = &own.header;
            assert_eq!(
                (header.self_parent, header.other_parent),
                (self_parent, other_parent),
                "{at}: A's event took other parents than the fixture says (A's other-parent is \
                 the latest event of the other-parent's creator)"
            );
            own
        };
        run.hashes.insert(line.name.clone(), own.header.hash());
    }
    if let Some(sender) = batch_sender {
        let now_ms = lines.last().map_or(0, |line| line.number as u64 + 1);
        let events = std::mem::take(&mut batch);
        let report = run.deliver(now_ms, sender, events, "events after the last A line");
        assert!(
            !report.created_event,
            "A created an event the fixture does not name: end a fixture whose A has \
             votes (later A events, or a fork to accuse) with an A line"
        );
    }
    run.lines = lines;
    run
}

/// Runs the fixture and compares the whole table with `expected` (comments and blank lines
/// ignored, whitespace normalised).
#[track_caller]
fn check(fixture: &str, expected: &str) -> Run {
    let run = run(fixture);
    let actual = run.render();
    let normalise = |text: &str| -> Vec<String> {
        text.lines()
            .map(|line| line.split('#').next().unwrap_or_default())
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|line| !line.is_empty())
            .collect()
    };
    let (expected, actual) = (normalise(expected), normalise(&actual));
    if expected != actual {
        let mut diff = String::new();
        for i in 0..expected.len().max(actual.len()) {
            let (e, a) = (expected.get(i), actual.get(i));
            if e == a {
                writeln!(diff, "  {}", e.map_or("", String::as_str)).expect("writing to a String");
            } else {
                writeln!(diff, "- {}", e.map_or("", String::as_str)).expect("writing to a String");
                writeln!(diff, "+ {}", a.map_or("", String::as_str)).expect("writing to a String");
            }
        }
        panic!(
            "fixture table differs (- expected, + actual):\n{diff}\nactual table:\n{}",
            actual.join("\n")
        );
    }
    run
}

/// divideRounds (Baird 2016, section "Consensus algorithm", procedure divideRounds): the
/// first round-1 witnesses. B, C and D gossip in a cycle, each syncing from the previous one;
/// A only makes its genesis, which b1 picks up.
///
/// An event strongly sees y when events by 3 creators are on paths from y to it.
/// - b1, c1, d1 have parent round 0 and strongly see too few genesis events: c1 strongly sees
///   only a0 (A: a0, B: b1, C: c1); d1 only a0 and b0 (b0 via B: b1, C: c1, D: d1; c0 has
///   only C and D, no B event of d1's ancestry has c0). Round 0, not witnesses.
/// - b2 = (b1, d1) strongly sees a0 (A, B, C, D), b0 (B, C: c1, D: d1) and c0 (C, D: d1,
///   B: b2), but not d0 (D, B: b2; neither c0 nor c1 has d0): 3 creators, round 1, witness.
/// - c2 and d2: the larger parent round is 1, and fewer than 3 round-1 witnesses exist when
///   they are created (b2; b2 and c2), so they stay in round 1; their self-parents are in
///   round 0, so they are witnesses.
#[test]
fn divide_rounds_minimal() {
    check(
        "
        a0 A 0 - -
        b0 B 0 - -
        c0 C 0 - -
        d0 D 0 - -
        b1 B 1 b0 a0
        c1 C 1 c0 b1
        d1 D 1 d0 c1
        b2 B 2 b1 d1
        c2 C 2 c1 b2
        d2 D 2 d1 c2
        ",
        "
        a0 r0 W
        b0 r0 W
        c0 r0 W
        d0 r0 W
        b1 r0
        c1 r0
        d1 r0
        b2 r1 W
        c2 r1 W
        d2 r1 W
        ",
    );
}

/// decideFame and findOrder (Baird 2016, procedures decideFame and findOrder): B, C and D
/// gossip in a cycle; nobody ever syncs from A, so a0 has no descendant.
///
/// divideRounds:
/// - b1, c1, d1: round 0 (d1 strongly sees b0 and d0 only: c0 reaches d1 through C and D).
/// - b2 = (b1, d1) strongly sees b0 (B: b1, C: c1, D: d1), c0 (C: c1, D: d1, B: b2) and d0
///   (D: d1, B: b1, C: c1): round 1, witness. c2, d2: round 1 witnesses (fewer than 3 round-1
///   witnesses exist when each is created).
/// - b3 = (b2, d2) strongly sees b2 (B, C: c2, D: d2) and c2 (C, D: d2, B: b3) but not d2
///   (D, B; no C event of its ancestry has d2): round 1, not a witness.
/// - c3 = (c2, b3) strongly sees b2, c2 and d2 (d2 via D, B: b3, C: c3): round 2, witness.
///   d3, b4: round 2 witnesses (fewer than 3 round-2 witnesses exist before them).
/// - c4 = (c3, b4) strongly sees c3 (C, D: d3, B: b4) and d3 (D, B: b4, C: c4) but not b4
///   (B, C; d3 lacks b4): round 2, not a witness.
/// - d4 = (d3, c4) strongly sees c3, d3 and b4 (B, C: c4, D: d4): round 3, witness.
///
/// decideFame (no forks, so "sees" is "is an ancestor"):
/// - Round 0: the round-1 witnesses b2, c2, d2 see b0, c0 and d0 and vote yes; none sees a0
///   and they vote no. c3 (round 2, d = 2, a normal round) strongly sees b2, c2 and d2: 3 of 3
///   votes agree, a supermajority, so b0, c0, d0 are famous and a0 is not. Round 0 decided.
/// - Round 1: the round-2 witnesses c3, d3, b4 all see b2, c2 and d2 (vote yes); d4 (round 3)
///   strongly sees c3, d3 and b4: 3 yes, so b2, c2, d2 are famous. Round 1 decided. Round 2's
///   witnesses have only d4's votes: undecided.
///
/// findOrder:
/// - Round 0's unique famous witnesses b0, c0, d0 are first events: no event is an ancestor
///   of all three, so round 0 receives nothing.
/// - Round 1's unique famous witnesses are b2, c2, d2 (A has no round-1 witness). c2 and d2
///   descend from b2, so what all three have as ancestors is b2 and its ancestors: b0, c0, d0,
///   b1, c1, d1, b2, received in round 1. a0 is an ancestor of nothing: never received.
#[test]
fn decide_fame_and_round_received() {
    check(
        "
        a0 A 0 - -
        b0 B 0 - -
        c0 C 0 - -
        d0 D 0 - -
        b1 B 1 b0 d0
        c1 C 1 c0 b1
        d1 D 1 d0 c1
        b2 B 2 b1 d1
        c2 C 2 c1 b2
        d2 D 2 d1 c2
        b3 B 3 b2 d2
        c3 C 3 c2 b3
        d3 D 3 d2 c3
        b4 B 4 b3 d3
        c4 C 4 c3 b4
        d4 D 4 d3 c4
        ",
        "
        a0 r0 W not-famous
        b0 r0 W famous rr1
        c0 r0 W famous rr1
        d0 r0 W famous rr1
        b1 r0 rr1
        c1 r0 rr1
        d1 r0 rr1
        b2 r1 W famous rr1
        c2 r1 W famous
        d2 r1 W famous
        b3 r1
        c3 r2 W
        d3 r2 W
        b4 r2 W
        c4 r2
        d4 r3 W
        ",
    );
}

/// A fork (consensus-notes.md, "Terms"; Baird 2016, "see"): D signs two events at index 1,
/// d1 and dx, and both reach A. An event sees a fork by D when its ancestors hold both
/// branches; then it sees no event by D at all.
/// - b1 (only d1) and c1 (only dx) are inserted after both branches, yet hold one branch
///   each: no fork among their ancestors.
/// - b2 = (b1, c1) holds both: fork by D. So does A's a1 = (a0, b2), which A creates because
///   it now has an accusation of D to vote for.
/// - Rounds (divideRounds): all round 0. No event has 3 creators on paths from 3 genesis
///   events: b1 and c1 have two creators above b0 (B, D) and c0 (C, D); b2 cannot count D
///   once the fork is among its ancestors, leaving B and C above c0 and only B above b0; a1
///   adds A to both, which makes 3 for c0 only (and nothing by B, C or D has a0).
#[test]
fn fork_is_seen_only_with_both_branches() {
    let run = check(
        "
        a0 A 0 - -
        b0 B 0 - -
        c0 C 0 - -
        d0 D 0 - -
        d1 D 1 d0 b0
        dx D 1 d0 c0  # D forks: a second event at index 1
        b1 B 1 b0 d1
        c1 C 1 c0 dx
        b2 B 2 b1 c1
        a1 A 1 a0 b2
        ",
        "
        a0 r0 W
        b0 r0 W
        c0 r0 W
        d0 r0 W
        d1 r0
        dx r0
        b1 r0
        c1 r0
        b2 r0 fork:D
        a1 r0 fork:D
        ",
    );
    let offender = run.ids[3];
    assert_eq!(run.evidence.len(), 1, "one piece of fork evidence");
    let evidence = &run.evidence[0];
    assert_eq!(evidence.offender(), offender);
    assert_eq!(evidence.verify(), Ok(offender));
    let mut pair = [evidence.first.header.hash(), evidence.second.header.hash()];
    pair.sort();
    let mut branches = [run.hash("d1"), run.hash("dx")];
    branches.sort();
    assert_eq!(pair, branches, "the evidence is the two branches");
}

/// findOrder with a fork: D signs two first events, d0 and dx, then goes silent; A, B and C
/// gossip in a cycle and learn both branches early (b2 on). consensus-notes.md, "Order": "Event
/// z is received in round r: the first decided round whose unique famous witnesses all have z
/// as an ancestor" (Baird 2016, findOrder: "x is an ancestor of every round r unique famous
/// witness"). Chorus deliberately departs from this (ARCHITECTURE.md, "Deviations"): round
/// received uses "sees", so a forker's events that no round received before its fork became
/// visible are never ordered (they go stale). The order stays a function of the famous
/// witnesses' ancestry, so every honest member computes the same one; only the forker's own
/// events are dropped.
///
/// divideRounds: an event with both of D's branches among its ancestors sees no event by D and
/// cannot use D as an intermediate, so from b2 on each strongly-sees needs A, B and C.
/// - b1, c1, a1, b2, c2: round 0 (c2 = (c1, b2) strongly sees a0 via A, B: b2, C: c2 and c0
///   via C, A: a1, B: b2, but b0 only via B and C: a1 lacks b0).
/// - a2 = (a1, c2) strongly sees a0 (A, B: b2, C: c2), b0 (B, C: c2, A: a2) and c0 (C, A: a1,
///   B: b2): round 1, witness. b3, c3: round-1 witnesses. a3 strongly sees a2 and b3 but not
///   c3 (b3 lacks c3): round 1.
/// - b4 = (b3, a3) strongly sees a2, b3, c3 (c3 via C, A: a3, B: b4): round 2, witness; c4,
///   a4: round-2 witnesses; b5: round 2 (c4 lacks a4); c5 = (c4, b5): round 3, witness; a5:
///   round-3 witness.
///
/// decideFame: round 0: a2, b3, c3 see a0, b0, c0 (yes) and see neither d0 nor dx (the fork
/// is among their ancestors: no). b4 strongly sees all three: a0, b0, c0 famous, d0 and dx
/// not. Round 1: b4, c4, a4 see a2, b3, c3; c5 strongly sees b4, c4, a4: all famous.
///
/// findOrder: round 0's unique famous witnesses a0, b0, c0 share no ancestor: nothing received.
/// Round 1's unique famous witnesses are a2, b3, c3; b3 and c3 descend from a2, so
/// a2 and its ancestors are received in round 1: a0, b0, c0, b1, c1, a1, b2, c2, a2.
/// d0 and dx are ancestors of a2 (through b1 and c1), but a2 does not see them (it holds
/// the fork), so under Chorus's rule they are not received; every later famous witness holds
/// the fork too, so they never will be (Baird's rule would receive them in round 1).
#[test]
fn fork_events_are_not_ordered_once_the_fork_is_seen() {
    check(
        "
        a0 A 0 - -
        b0 B 0 - -
        c0 C 0 - -
        d0 D 0 - -
        dx D 0 - -  # D forks: two first events
        b1 B 1 b0 d0
        c1 C 1 c0 dx
        a1 A 1 a0 c1
        b2 B 2 b1 a1
        c2 C 2 c1 b2
        a2 A 2 a1 c2
        b3 B 3 b2 a2
        c3 C 3 c2 b3
        a3 A 3 a2 c3
        b4 B 4 b3 a3
        c4 C 4 c3 b4
        a4 A 4 a3 c4
        b5 B 5 b4 a4
        c5 C 5 c4 b5
        a5 A 5 a4 c5
        ",
        "
        a0 r0 W famous rr1
        b0 r0 W famous rr1
        c0 r0 W famous rr1
        d0 r0 W not-famous
        dx r0 W not-famous
        b1 r0 rr1
        c1 r0 rr1
        a1 r0 rr1
        b2 r0 rr1 fork:D
        c2 r0 rr1 fork:D
        a2 r1 W famous rr1 fork:D
        b3 r1 W famous fork:D
        c3 r1 W famous fork:D
        a3 r1 fork:D
        b4 r2 W fork:D
        c4 r2 W fork:D
        a4 r2 W fork:D
        b5 r2 fork:D
        c5 r3 W fork:D
        a5 r3 W fork:D
        ",
    );
}
