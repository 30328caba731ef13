//! The simulated world behind `Sim`: its event queue, the nodes' consensus instances, the
//! network between them, faults, and the checkers fed from every block.

use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use chorus_consensus::codec::{decode_message, encode_message};
use chorus_consensus::harness::member_key;
use chorus_consensus::{
    Block, Config, Consensus, Observation, ObservationHash, PeerId, SyncRequest, SyncResponse,
};
use ed25519_dalek::SigningKey;
use rand::Rng;

use crate::byzantine::{Behaviour, Lie, garbage, lie, phantom_hash};
use crate::checker::{Checker, ViolationKind};
use crate::network::{Fate, Network};

use super::{Item, MessageKind, Proposal, Scheduled, Setup, SimNode, SimStats, Streams, World};

impl World {
    pub(super) fn start(seed: u64, setup: &Setup) -> Self {
        assert!(setup.nodes >= 1, "a group needs a node");
        if let Err(error) = setup.network.validate() {
            panic!("invalid network configuration: {error}");
        }
        let mut rng = Streams::new(seed);
        let keys: Vec<SigningKey> = (0..setup.nodes)
            .map(|node| member_key(seed, node))
            .collect();
        let ids: Vec<PeerId> = keys
            .iter()
            .map(|key| PeerId(key.verifying_key().to_bytes()))
            .collect();
        let config = Config {
            log_records: true,
            ..setup.consensus.clone()
        };
        let network = Network::new(setup.network.clone(), setup.nodes, &mut rng.network);
        let mut members = ids.clone();
        members.sort_unstable();
        let mut world = Self {
            now_ms: 0,
            queue: BinaryHeap::new(),
            next_order: 0,
            nodes: Vec::new(),
            ids: ids.clone(),
            network,
            checker: Checker::new(members, config.block_mode),
            trace: blake3::Hasher::new(),
            trace_lines: setup.trace_lines.then(Vec::new),
            stats: SimStats::default(),
            proposals: BTreeMap::new(),
            latencies_ms: Vec::new(),
            quiet_after_ms: None,
            load_on: setup.proposals_per_node_per_sec > 0,
            config: config.clone(),
            proposal_interval_ms: (1_000 / setup.proposals_per_node_per_sec.max(1)).max(1),
            proposals_per_tick: (setup.proposals_per_node_per_sec / 1_000).max(1),
            payload_bytes: setup.payload_bytes,
            log_sync_interval_ms: setup.log_sync_interval_ms.max(1),
            rng,
        };
        for (node, key) in keys.into_iter().enumerate() {
            world.start_member(node, key, setup, &ids);
        }
        world.setup_note(setup);
        world
    }

    /// Starts member `node` (honest unless `setup` names it Byzantine) and schedules its
    /// first tick, log sync and proposal at random phases, so the members do not move in
    /// lockstep.
    fn start_member(&mut self, node: usize, key: SigningKey, setup: &Setup, ids: &[PeerId]) {
        let behaviour = setup
            .byzantine
            .get(&node)
            .copied()
            .unwrap_or(Behaviour::Honest);
        if behaviour != Behaviour::Honest {
            *self.stats.faults.entry(behaviour.name()).or_default() += 1;
        }
        let consensus = Consensus::new(self.config.clone(), key.clone(), ids, 0)
            .unwrap_or_else(|error| panic!("invalid setup: {error}"));
        self.nodes.push(SimNode::new(key, behaviour, consensus));
        self.drain(node);
        let phase = self
            .rng
            .gossip
            .gen_range(0..self.config.gossip_interval_ms.max(1));
        self.schedule(phase, Item::Tick(node));
        let sync_phase = self.rng.gossip.gen_range(0..self.log_sync_interval_ms);
        self.schedule(sync_phase, Item::LogSync(node));
        if behaviour == Behaviour::Honest && setup.proposals_per_node_per_sec > 0 {
            let interval = self.proposal_interval_ms;
            let phase = self.rng.gossip.gen_range(0..interval);
            self.schedule(phase, Item::Propose(node));
        }
    }

    pub(super) fn setup_note(&mut self, setup: &Setup) {
        let line = format!(
            "setup: {} nodes, byzantine {:?}, mode {:?}, network {:?}, load {}/s/node",
            setup.nodes,
            setup.byzantine,
            setup.consensus.block_mode,
            setup.network,
            setup.proposals_per_node_per_sec
        );
        self.note(line);
    }

    pub(super) fn note(&mut self, line: String) {
        self.trace.update(line.as_bytes());
        if let Some(lines) = &mut self.trace_lines {
            lines.push(format!("{:>8} ms  {line}", self.now_ms));
        }
    }

    pub(super) fn fault(&mut self, kind: &'static str, line: String) {
        *self.stats.faults.entry(kind).or_default() += 1;
        self.note(line);
    }

    pub(super) fn schedule(&mut self, at_ms: u64, item: Item) {
        let order = self.next_order;
        self.next_order += 1;
        self.queue.push(Scheduled { at_ms, order, item });
    }

    pub(super) fn run_until(&mut self, until_ms: u64) {
        while self.queue.peek().is_some_and(|next| next.at_ms <= until_ms) {
            let Some(next) = self.queue.pop() else { break };
            self.now_ms = next.at_ms;
            self.process(next.item);
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    pub(super) fn process(&mut self, item: Item) {
        match item {
            Item::Tick(node) => self.on_tick(node),
            Item::Propose(node) => self.on_propose(node),
            Item::LogSync(node) => self.on_log_sync(node),
            Item::Deliver {
                from,
                to,
                kind,
                bytes,
            } => self.on_deliver(from, to, kind, &bytes),
        }
    }

    pub(super) fn on_tick(&mut self, node: usize) {
        let interval = self.nodes[node]
            .consensus
            .as_ref()
            .map_or(20, |consensus| consensus.config().gossip_interval_ms.max(1));
        let next = self.now_ms + interval * self.nodes[node].slow_factor;
        self.schedule(next, Item::Tick(node));
        let now = self.now_ms;
        let behaviour = self.nodes[node].behaviour;
        let Some(consensus) = self.nodes[node].consensus.as_mut() else {
            return;
        };
        if behaviour == Behaviour::PhantomVotes && self.rng.byzantine.gen_bool(0.5) {
            consensus.vote_for_unseen(phantom_hash(&mut self.rng.byzantine));
        }
        consensus.tick(now, &mut self.rng.gossip);
        self.drain(node);
    }

    pub(super) fn on_propose(&mut self, node: usize) {
        if !self.load_on {
            return;
        }
        // A little jitter so slow proposal streams do not line up with gossip ticks (fast
        // ones propose every millisecond, where jitter would distort the rate).
        let jitter = if self.proposal_interval_ms >= 10 {
            self.rng.gossip.gen_range(0..=2)
        } else {
            0
        };
        self.schedule(
            self.now_ms + self.proposal_interval_ms + jitter,
            Item::Propose(node),
        );
        for _ in 0..self.proposals_per_tick {
            let counter = self.nodes[node].proposal_counter;
            self.nodes[node].proposal_counter += 1;
            let mut payload =
                format!("node {node} proposal {counter} at {} ms ", self.now_ms).into_bytes();
            payload.resize(self.payload_bytes.max(payload.len()), b'.');
            self.propose(node, Observation::payload(payload));
        }
    }

    /// Honest `node` votes for `observation`; remembered for the liveness check if accepted.
    pub(super) fn propose(
        &mut self,
        node: usize,
        observation: Observation,
    ) -> Option<ObservationHash> {
        if !self.nodes[node].is_honest() {
            return None;
        }
        let consensus = self.nodes[node].consensus.as_mut()?;
        let hash = consensus.vote_for(observation.clone()).ok()?;
        self.stats.proposals += 1;
        self.proposals.insert(
            hash,
            Proposal {
                node,
                observation,
                made_at_ms: self.now_ms,
            },
        );
        Some(hash)
    }

    /// Sends `bytes` from `from` to `to` through the network.
    pub(super) fn send(
        &mut self,
        from: usize,
        to: usize,
        kind: MessageKind,
        bytes: Vec<u8>,
        extra_ms: u64,
    ) {
        self.stats.messages_sent += 1;
        match self.network.route(from, to, &mut self.rng.network) {
            Fate::Dropped => self.stats.messages_dropped += 1,
            Fate::Partitioned => self.stats.messages_partitioned += 1,
            Fate::Delivered(delays) => {
                self.stats.messages_duplicated += delays.len() as u64 - 1;
                let bytes = Arc::new(bytes);
                for delay in delays {
                    self.schedule(
                        self.now_ms + delay + extra_ms,
                        Item::Deliver {
                            from,
                            to,
                            kind,
                            bytes: Arc::clone(&bytes),
                        },
                    );
                }
            }
        }
    }

    pub(super) fn on_deliver(&mut self, from: usize, to: usize, kind: MessageKind, bytes: &[u8]) {
        self.trace.update(&self.now_ms.to_le_bytes());
        self.trace.update(&[from as u8, to as u8, kind as u8]);
        self.trace.update(bytes);
        if self.nodes[to].consensus.is_none() {
            self.stats.messages_to_crashed += 1;
            return;
        }
        self.stats.messages_delivered += 1;
        match kind {
            MessageKind::Request => self.on_request(from, to, bytes),
            MessageKind::Response => self.on_response(from, to, bytes),
        }
    }

    pub(super) fn on_request(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let Ok(request) = decode_message::<SyncRequest>(bytes) else {
            self.stats.messages_undecodable += 1;
            return;
        };
        let from_id = self.ids[from];
        let node = &mut self.nodes[to];
        let Some(consensus) = node.consensus.as_mut() else {
            return;
        };
        let Ok(response) = consensus.handle_sync_request(&from_id, &request) else {
            self.stats.messages_undecodable += 1;
            return;
        };
        let reply = match node.behaviour {
            Behaviour::Honest => Lie::Response(response),
            behaviour => {
                node.lie_nonce += 1;
                lie(
                    behaviour,
                    response,
                    self.config.events_per_sync_max,
                    &node.key,
                    node.latest_own.as_ref(),
                    from,
                    node.lie_nonce,
                    &mut self.rng.byzantine,
                )
            }
        };
        let honest = node.is_honest();
        let bytes = match reply {
            Lie::Response(response) => match encode_message(&response) {
                Ok(bytes) => bytes,
                // An honest response always fits (the consensus cuts it to the limit): if
                // not, that is a bug worth a panic, which the sweep reports with the seed.
                Err(error) if honest => panic!("node {to} cannot encode its response: {error}"),
                // A lie grown past the limit is not sent.
                Err(_) => return,
            },
            Lie::Bytes(bytes) => bytes,
            Lie::Nothing => return,
        };
        let extra = (self.nodes[to].slow_factor - 1) * 10;
        self.send(to, from, MessageKind::Response, bytes, extra);
        // The request may have shown that the peer holds what we lack: we pull at once.
        self.drain(to);
    }

    pub(super) fn on_response(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let Ok(response) = decode_message::<SyncResponse>(bytes) else {
            self.stats.messages_undecodable += 1;
            return;
        };
        let now = self.now_ms;
        let from_id = self.ids[from];
        let honest = self.nodes[to].is_honest();
        let Some(consensus) = self.nodes[to].consensus.as_mut() else {
            return;
        };
        match consensus.handle_sync_response(now, &from_id, response) {
            Ok(report) if honest => self.stats.events_rejected += report.rejected.len() as u64,
            Ok(_) => {}
            Err(_) => self.stats.messages_undecodable += 1,
        }
        self.drain(to);
    }

    /// Drains `node`'s outputs: log records (synced before an own event is acknowledged),
    /// requests and pushes to send, blocks (checked), evidence, and observations to second.
    pub(super) fn drain(&mut self, node: usize) {
        let mut requests = Vec::new();
        let mut pushes = Vec::new();
        let mut blocks = Vec::new();
        let mut seconds = Vec::new();
        let mut evidence_found = Vec::new();
        {
            let sim_node = &mut self.nodes[node];
            let Some(consensus) = sim_node.consensus.as_mut() else {
                return;
            };
            while let Some(record) = consensus.poll_log_record() {
                sim_node.unsynced_log.push(record);
            }
            while let Some(event) = consensus.poll_unpersisted() {
                // Acknowledged at the next group commit (`on_log_sync`).
                sim_node.unsynced_own.push(event);
            }
            while let Some(block) = consensus.poll_block() {
                blocks.push(block);
            }
            while let Some(evidence) = consensus.poll_evidence() {
                if sim_node.behaviour == Behaviour::Honest {
                    evidence_found.push(evidence.first.header.creator);
                }
            }
            while let Some((hash, _)) = consensus.poll_observation() {
                seconds.push(hash);
            }
            for hash in seconds {
                // Back-pressure only drops a second; the proposer's own vote stands.
                let _ = consensus.vote_for_hash(hash);
            }
            // After the seconds: a vote syncs at once.
            while let Some(transmit) = consensus.poll_transmit() {
                requests.push(transmit);
            }
            while let Some(push) = consensus.poll_push() {
                pushes.push(push);
            }
        }
        for block in blocks {
            self.on_block(node, &block);
        }
        for offender in evidence_found {
            self.on_evidence(node, offender);
        }
        for transmit in requests {
            let Some(to) = self.ids.iter().position(|id| *id == transmit.to) else {
                continue;
            };
            let bytes = if self.nodes[node].behaviour == Behaviour::Garbage
                && self.rng.byzantine.gen_bool(0.5)
            {
                garbage(&mut self.rng.byzantine)
            } else {
                match encode_message(&transmit.request) {
                    Ok(bytes) => bytes,
                    Err(error) => panic!("node {node} cannot encode its request: {error}"),
                }
            };
            self.send(node, to, MessageKind::Request, bytes, 0);
        }
        // A push travels as a sync response nobody asked for (`consensus/push.rs`). Byzantine
        // members' pushes are honest ones: their lies ride on their answers.
        for push in pushes {
            let Some(to) = self.ids.iter().position(|id| *id == push.to) else {
                continue;
            };
            match encode_message(&push.response) {
                Ok(bytes) => self.send(node, to, MessageKind::Response, bytes, 0),
                Err(error) => panic!("node {node} cannot encode its push: {error}"),
            }
        }
    }

    pub(super) fn on_block(&mut self, node: usize, block: &Block) {
        let sim_node = &mut self.nodes[node];
        if !sim_node.is_honest() {
            return;
        }
        let position = block.sequence as usize;
        let digest = block_digest(block);
        if position != sim_node.next_position {
            let detail = format!(
                "block numbered {position} where {} was due",
                sim_node.next_position
            );
            self.checker
                .report(ViolationKind::Sequence, node, self.now_ms, detail);
            return;
        }
        sim_node.next_position += 1;
        if let Some(known) = sim_node.block_digests.get(position) {
            // A restored node re-emits what it output before the crash: it must match.
            if *known != digest {
                let detail = format!(
                    "restored node re-emitted {} at {position}, unlike the block it had",
                    block.observation_hash
                );
                self.checker
                    .report(ViolationKind::Sequence, node, self.now_ms, detail);
            }
            return;
        }
        sim_node.blocks.push(block.observation_hash);
        sim_node.block_digests.push(digest);
        self.trace.update(&(node as u64).to_le_bytes());
        self.trace.update(&digest);
        if let Some(lines) = &mut self.trace_lines {
            lines.push(format!(
                "{:>8} ms  node {node} block {} {}",
                self.now_ms, block.sequence, block.observation_hash
            ));
        }
        let newly_agreed = self.checker.agreed().len() == position;
        self.checker
            .on_block(node, position, block, digest, self.now_ms);
        if newly_agreed {
            if let Some(proposal) = self.proposals.get(&block.observation_hash) {
                self.latencies_ms.push(self.now_ms - proposal.made_at_ms);
            }
        }
    }

    /// Honest `node` found that `offender` forked: a violation if the offender is honest.
    pub(super) fn on_evidence(&mut self, node: usize, offender: PeerId) {
        let Some(offender) = self.ids.iter().position(|id| *id == offender) else {
            return;
        };
        if !self.nodes[node].accused.insert(offender) {
            return;
        }
        self.stats.evidence += 1;
        if self.nodes[offender].is_honest() {
            let detail = format!("honest node {offender} forked its chain");
            self.checker
                .report(ViolationKind::HonestFork, node, self.now_ms, detail);
        }
    }

    /// Group commit: the node's unsynced log records become durable, and its events in them
    /// are acknowledged (from now on they may be sent).
    pub(super) fn on_log_sync(&mut self, node: usize) {
        self.schedule(self.now_ms + self.log_sync_interval_ms, Item::LogSync(node));
        let sim_node = &mut self.nodes[node];
        let Some(consensus) = sim_node.consensus.as_mut() else {
            return;
        };
        sim_node.durable_log.append(&mut sim_node.unsynced_log);
        if let Some(latest) = sim_node.unsynced_own.pop() {
            consensus.handle_persisted(latest.header.index);
            sim_node.latest_own = Some(latest);
            sim_node.unsynced_own.clear();
            // Blocks that waited for these events to be durable are out now.
            self.drain(node);
        }
    }

    pub(super) fn restart(&mut self, node: usize) {
        if self.nodes[node].consensus.is_some() {
            return;
        }
        *self.stats.faults.entry("restart").or_default() += 1;
        self.note(format!("restart node {node}"));
        let config = self.config.clone();
        let sim_node = &mut self.nodes[node];
        let log = sim_node.durable_log.clone();
        match Consensus::restore(config, sim_node.key.clone(), &self.ids, log, self.now_ms) {
            Ok(consensus) => {
                sim_node.consensus = Some(consensus);
                sim_node.next_position = 0;
            }
            Err(error) => {
                let detail = format!("restore failed: {error}");
                self.checker
                    .report(ViolationKind::Restore, node, self.now_ms, detail);
                return;
            }
        }
        self.drain(node);
        // The client retries what it proposed through this node and has not seen agreed.
        let retries: Vec<Observation> = self
            .proposals
            .iter()
            .filter(|(hash, proposal)| proposal.node == node && !self.checker.is_agreed(hash))
            .map(|(_, proposal)| proposal.observation.clone())
            .collect();
        if let Some(consensus) = self.nodes[node].consensus.as_mut() {
            for observation in retries {
                let _ = consensus.vote_for(observation);
            }
        }
    }

    /// Every honest proposal agreed, and every honest node holding all of them.
    pub(super) fn all_agreed(&self) -> bool {
        let mut needed = 0;
        for hash in self.proposals.keys() {
            match self.checker.position(hash) {
                Some(position) => needed = needed.max(position + 1),
                None => return false,
            }
        }
        self.nodes
            .iter()
            .filter(|node| node.is_honest())
            // What the node has output since its last restart, not what it held before.
            .all(|node| node.consensus.is_some() && node.next_position >= needed)
    }

    pub(super) fn liveness_detail(&self, bound_ms: u64) -> String {
        let missing: Vec<&Proposal> = self
            .proposals
            .iter()
            .filter(|(hash, _)| !self.checker.is_agreed(hash))
            .map(|(_, proposal)| proposal)
            .collect();
        let oldest = missing.iter().map(|proposal| proposal.made_at_ms).min();
        let lengths: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.is_honest())
            .map(|(index, node)| format!("node {index}: {}", node.next_position))
            .collect();
        format!(
            "{} of {} honest proposals not agreed {bound_ms} ms after the last fault healed \
             (oldest made at {oldest:?} ms); agreed {}; blocks per honest node: {}",
            missing.len(),
            self.proposals.len(),
            self.checker.agreed().len(),
            lengths.join(", ")
        )
    }

    pub(super) fn most_lagging_honest(&self) -> usize {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.is_honest())
            .min_by_key(|(_, node)| node.next_position)
            .map_or(0, |(index, _)| index)
    }
}

/// What every honest node must agree on about a block: its observation, position, round,
/// timestamp, and who voted in which event.
fn block_digest(block: &Block) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&block.sequence.to_le_bytes());
    hasher.update(&block.observation_hash.0);
    hasher.update(&block.round_received.to_le_bytes());
    hasher.update(&block.timestamp_ms.to_le_bytes());
    for vote in &block.proof {
        hasher.update(&vote.event.header.hash().0);
    }
    *hasher.finalize().as_bytes()
}
