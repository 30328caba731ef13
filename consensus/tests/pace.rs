//! The gossip pace (`consensus/pace.rs`): an idle group slows its timer syncs to
//! `idle_gossip_interval_ms`; a vote syncs at once and wakes the others, so agreement does
//! not wait for the idle timer; a member whose rounds stall stops syncing back to back.
//! And pushes (`consensus/push.rs`): one member at a time, at most one per interval, only
//! with work and at light load.
//!
//! A small network on virtual time: messages arrive in the next millisecond, at most
//! `DELIVERIES_PER_MS` per millisecond (so a member that syncs without end still lets the
//! test finish, and shows up in the counts).

use std::collections::{BTreeSet, VecDeque};

use chorus_consensus::harness::Cluster;
use chorus_consensus::{Config, Consensus, Observation, PeerId, SyncRequest, SyncResponse};
use rand::SeedableRng;
use rand::rngs::StdRng;

const DELIVERIES_PER_MS: usize = 50;

enum Body {
    Request(SyncRequest),
    Response(SyncResponse),
}

struct Net {
    members: Vec<Consensus>,
    ids: Vec<PeerId>,
    /// Members that neither send nor receive.
    down: BTreeSet<usize>,
    queue: VecDeque<(usize, usize, Body)>,
    now_ms: u64,
    rng: StdRng,
    /// Sync requests each member sent.
    requests_sent: Vec<u64>,
    /// Pushes each member sent: (virtual ms, receiver).
    pushes_sent: Vec<Vec<(u64, usize)>>,
    /// Blocks each member output.
    blocks: Vec<u64>,
}

impl Net {
    fn new(count: usize, config: &Config) -> Self {
        let Cluster { nodes, ids, .. } = Cluster::new(count, config, 41, 0).expect("members");
        let mut net = Self {
            members: nodes,
            ids,
            down: BTreeSet::new(),
            queue: VecDeque::new(),
            now_ms: 0,
            rng: StdRng::seed_from_u64(7),
            requests_sent: vec![0; count],
            pushes_sent: vec![Vec::new(); count],
            blocks: vec![0; count],
        };
        for member in 0..count {
            net.drain(member);
        }
        net
    }

    fn index_of(&self, id: &PeerId) -> usize {
        self.ids
            .iter()
            .position(|other| other == id)
            .expect("a member")
    }

    /// Outputs of `member`: own events durable at once, requests to the queue, seconds for
    /// every observation it sees, blocks counted.
    fn drain(&mut self, member: usize) {
        let consensus = &mut self.members[member];
        while let Some(event) = consensus.poll_unpersisted() {
            consensus.handle_persisted(event.header.index);
        }
        while let Some((hash, _)) = consensus.poll_observation() {
            let _ = consensus.vote_for_hash(hash);
        }
        while consensus.poll_block().is_some() {
            self.blocks[member] += 1;
        }
        let mut sends = Vec::new();
        while let Some(transmit) = consensus.poll_transmit() {
            sends.push(transmit);
        }
        let mut pushes = Vec::new();
        while let Some(push) = consensus.poll_push() {
            pushes.push(push);
        }
        for transmit in sends {
            let to = self.index_of(&transmit.to);
            self.requests_sent[member] += 1;
            self.queue
                .push_back((member, to, Body::Request(transmit.request)));
        }
        for push in pushes {
            let to = self.index_of(&push.to);
            self.pushes_sent[member].push((self.now_ms, to));
            self.queue
                .push_back((member, to, Body::Response(push.response)));
        }
    }

    /// Runs `ms` virtual milliseconds: deliveries, then every member ticks.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now_ms += 1;
            for _ in 0..DELIVERIES_PER_MS.min(self.queue.len()) {
                let Some((from, to, body)) = self.queue.pop_front() else {
                    break;
                };
                if self.down.contains(&from) || self.down.contains(&to) {
                    continue;
                }
                self.deliver(from, to, body);
            }
            for member in 0..self.members.len() {
                if self.down.contains(&member) {
                    continue;
                }
                self.members[member].tick(self.now_ms, &mut self.rng);
                self.drain(member);
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, body: Body) {
        let from_id = self.ids[from];
        match body {
            Body::Request(request) => {
                if let Ok(response) = self.members[to].handle_sync_request(&from_id, &request) {
                    self.queue.push_back((to, from, Body::Response(response)));
                }
            }
            Body::Response(response) => {
                let now_ms = self.now_ms;
                let _ = self.members[to].handle_sync_response(now_ms, &from_id, response);
            }
        }
        self.drain(to);
    }

    fn vote(&mut self, member: usize, payload: &[u8]) {
        self.members[member]
            .vote_for(Observation::Payload(payload.to_vec().into()))
            .expect("vote");
        self.drain(member);
    }
}

fn config() -> Config {
    Config {
        gossip_interval_ms: 5,
        idle_gossip_interval_ms: 1_000,
        ..Config::default()
    }
}

// Proves: with nothing to agree on, a member's timer syncs slow down to about one per
// `idle_gossip_interval_ms` (not one per `gossip_interval_ms`); a vote then syncs at once,
// and the group agrees on it long before an idle interval has passed.
#[test]
fn an_idle_group_slows_down_and_a_vote_wakes_it() {
    let mut net = Net::new(4, &config());
    net.run(5_000);
    let before = net.requests_sent.clone();
    net.run(5_000);
    let idle: Vec<u64> = net
        .requests_sent
        .iter()
        .zip(&before)
        .map(|(after, before)| after - before)
        .collect();
    // Five idle seconds: about five syncs each (a thousand at the fast interval).
    assert!(idle.iter().all(|&sent| sent <= 8), "{idle:?}");

    net.vote(0, b"wake up");
    assert!(
        !net.queue.is_empty(),
        "a vote syncs at once, without waiting for a tick"
    );
    let voted_at = net.now_ms;
    while net.blocks.contains(&0) {
        net.run(1);
        assert!(
            net.now_ms < voted_at + 500,
            "no block on every member half an idle interval after the vote: {:?}",
            net.blocks
        );
    }
}

// Proves: a member whose events cannot advance the rounds (only two of four members answer,
// so nothing can be ordered) stops syncing back to back after a few events, and goes on at
// the timer's pace: its graph grows by the interval, not by the speed of the network.
#[test]
fn a_member_stops_syncing_back_to_back_when_rounds_stall() {
    let mut net = Net::new(4, &config());
    net.down.insert(2);
    net.down.insert(3);
    net.run(100);
    let before = net.requests_sent[0] + net.requests_sent[1];
    net.vote(0, b"cannot be agreed by two of four");
    net.run(1_000);
    let sent = net.requests_sent[0] + net.requests_sent[1] - before;
    // One second at the 5 ms timer is 200 syncs each; back to back, up to
    // `DELIVERIES_PER_MS` per millisecond.
    assert!(sent <= 2 * 200 + 40, "{sent} syncs in one second");
    assert_eq!(net.blocks[0], 0, "two of four agreed on something");
}

// The adversary: one faulty member (of four) sends request after request whose clock claims
// events nobody holds. Proves: each honest member it asks has at most one sync awaiting it at
// a time (the pull it prompts is bounded by our own pace, not by its request rate), and
// sends no more once that one is answered with nothing new and the lie goes on.
#[test]
fn a_member_claiming_events_it_lacks_prompts_one_awaited_pull_at_a_time() {
    let mut net = Net::new(4, &config());
    net.run(3_000);
    let liar = net.ids[3];
    let mut lie = net.members[3].sync_request();
    for known in &mut lie.known {
        *known += 1_000;
    }
    let mut pulls = 0;
    for _ in 0..100 {
        let _ = net.members[0].handle_sync_request(&liar, &lie);
        while let Some(transmit) = net.members[0].poll_transmit() {
            if transmit.to == liar {
                pulls += 1;
            }
        }
    }
    assert_eq!(pulls, 1, "a hundred lying requests, {pulls} pulls");
}

// Proves: the round-trip counters count each awaited sync on work once, with the time from
// its request to its answer: in this network a round trip takes at least a millisecond, and
// an answer later than an interval is no longer awaited, so the mean lies between the two.
#[test]
fn work_sync_round_trips_are_counted_between_one_ms_and_an_interval() {
    let config = config();
    let mut net = Net::new(4, &config);
    for index in 0..20u8 {
        net.vote(usize::from(index % 4), &[index]);
        net.run(20);
    }
    net.run(500);
    for (member, consensus) in net.members.iter().enumerate() {
        let stats = consensus.stats();
        assert!(stats.work_syncs_answered > 0, "member {member}: {stats:?}");
        assert!(
            stats.work_sync_ms_total >= stats.work_syncs_answered,
            "member {member}: {stats:?}"
        );
        assert!(
            stats.work_sync_ms_total <= stats.work_syncs_answered * config.gossip_interval_ms,
            "member {member}: {stats:?}"
        );
    }
}

fn pushing() -> Config {
    Config {
        push_new_events: true,
        ..config()
    }
}

fn pushes(net: &Net) -> usize {
    net.pushes_sent.iter().map(Vec::len).sum()
}

// Proves: with pushing on, a member pushes only while it has work, to one member at a time
// in turn, at most once per gossip interval; an idle group pushes nothing; and a vote is
// agreed by every member.
#[test]
fn pushes_go_one_member_at_a_time_at_most_once_per_interval_and_only_with_work() {
    let config = pushing();
    let mut net = Net::new(4, &config);
    net.run(2_000);
    let idle_before = pushes(&net);
    net.run(3_000);
    assert_eq!(pushes(&net), idle_before, "an idle group pushed");

    for round in 0..20u8 {
        net.vote(usize::from(round % 4), &[round]);
        net.run(50);
    }
    net.run(500);
    assert!(pushes(&net) > idle_before, "nobody pushed with work to do");
    for (member, sent) in net.pushes_sent.iter().enumerate() {
        for pair in sent.windows(2) {
            let ((earlier, first_to), (later, second_to)) = (pair[0], pair[1]);
            assert!(
                later >= earlier + config.gossip_interval_ms,
                "member {member} pushed at {earlier} and {later} ms"
            );
            assert_ne!(
                first_to, second_to,
                "member {member} pushed twice in a row to one"
            );
        }
        assert!(sent.iter().all(|&(_, to)| to != member));
    }
    assert!(
        net.blocks.iter().all(|&blocks| blocks == 20),
        "{:?}",
        net.blocks
    );
}

// Proves: a member we have not heard from for 20 gossip intervals (stopped, cut off) gets
// no pushes: they would queue for it and reach it stale (with pushes on, members of the kill
// -9 run came back from stalls more slowly), while the others still get theirs.
#[test]
fn a_silent_member_gets_no_pushes() {
    let config = pushing();
    let mut net = Net::new(4, &config);
    net.run(500);
    net.down.insert(3);
    net.run(20 * config.gossip_interval_ms + 1);
    let since = net.now_ms;
    for round in 0..20u8 {
        net.vote(usize::from(round % 3), &[round]);
        net.run(50);
    }
    let after: Vec<usize> = net
        .pushes_sent
        .iter()
        .flatten()
        .filter(|&&(at, _)| at > since)
        .map(|&(_, to)| to)
        .collect();
    assert!(!after.is_empty(), "nobody pushed with work to do");
    assert!(
        !after.contains(&3),
        "pushed to a member silent for {} ms: {after:?}",
        net.now_ms - since
    );
    assert!(
        net.blocks[..3].iter().all(|&blocks| blocks == 20),
        "{:?}",
        net.blocks
    );
}

// Proves: pushing is held back under load: with many commands in flight (far more events
// with votes waiting to be ordered than twice the members), no member pushes.
#[test]
fn no_pushes_under_load() {
    let mut net = Net::new(4, &pushing());
    net.run(500);
    let before = pushes(&net);
    for index in 0..200u16 {
        net.vote(usize::from(index % 4), &index.to_le_bytes());
    }
    for member in 0..4 {
        let stats = net.members[member].stats();
        assert!(stats.votes_pending > 0, "member {member}: {stats:?}");
    }
    net.run(3);
    let busy = pushes(&net) - before;
    net.run(2_000);
    assert!(
        net.blocks.iter().all(|&blocks| blocks == 200),
        "{:?}",
        net.blocks
    );
    assert!(busy <= 4, "{busy} pushes while 200 commands were in flight");
}

// Proves: off means pulls alone (no push is ever queued); agreement still comes.
#[test]
fn with_pushing_off_nothing_is_pushed() {
    let config = Config {
        push_new_events: false,
        ..config()
    };
    let mut net = Net::new(4, &config);
    for round in 0..10u8 {
        net.vote(usize::from(round % 4), &[round]);
        net.run(50);
    }
    net.run(500);
    assert_eq!(pushes(&net), 0);
    assert!(
        net.blocks.iter().all(|&blocks| blocks == 10),
        "{:?}",
        net.blocks
    );
}
