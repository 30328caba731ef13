//! What leaves the engine, and when: messages for peers and answers for clients.
//!
//! Consensus gossip (sync requests and responses) may leave at once: a request carries only
//! what we know, and a response only events of ours already acknowledged durable
//! (`handle_persisted`) and others' events, so neither depends on the replay-log records
//! still on their way to disk. Everything else (answers, forwards' confirmations, welcomes,
//! transfers) may reflect applied blocks, and leaves only once the blocks cannot be lost
//! (`Engine::poll_reply`).

use std::collections::VecDeque;

use chorus_consensus::PeerId;
use tracing::{debug, warn};

use super::Engine;
use super::limits::OUTBOX_MAX;
use super::wire::Message;
use crate::engine::{ClientTicket, CommandOutcome};

/// Messages waiting to leave, at most `OUTBOX_MAX` in all.
#[derive(Default)]
pub(super) struct Outbox {
    gossip: VecDeque<(PeerId, Vec<u8>)>,
    other: VecDeque<(PeerId, Vec<u8>)>,
}

impl Outbox {
    fn is_full(&self) -> bool {
        self.gossip.len() + self.other.len() >= OUTBOX_MAX
    }
}

impl Engine {
    /// The next consensus gossip message to send: (peer, bytes). It may leave before the
    /// replay-log records polled so far are durable (module doc), so a node sends it before
    /// its log append: the next sync on work does not wait for an fsync. `poll_send` returns
    /// these too, for a caller that does not tell them apart.
    pub fn poll_gossip(&mut self) -> Option<(PeerId, Vec<u8>)> {
        self.outbox.gossip.pop_front()
    }

    /// The next message to send: (peer, bytes). Nothing leaves ahead of the disk (see
    /// [`Engine::poll_reply`]).
    pub fn poll_send(&mut self) -> Option<(PeerId, Vec<u8>)> {
        if let Some(gossip) = self.poll_gossip() {
            return Some(gossip);
        }
        if self.outbox.other.is_empty() || !self.outputs_may_leave() {
            return None;
        }
        self.outbox.other.pop_front()
    }

    /// The next answer for a client. Nothing leaves ahead of the disk: agreed blocks are
    /// applied with deferred commits (no fsync of their own), and an answer or a message
    /// leaves only once they can no longer be lost. With a replay log
    /// (`Config::log_records`), the caller has made every record it polled durable before it
    /// polls outputs (the call order above); the applied blocks rest only on those records,
    /// and a restart applies them again from the log (`Engine::restore`), so they need no
    /// fsync before anything leaves. Without a log, the store is made durable here.
    pub fn poll_reply(&mut self) -> Option<(ClientTicket, CommandOutcome)> {
        if self.replies.is_empty() || !self.outputs_may_leave() {
            return None;
        }
        self.replies.pop_front()
    }

    /// Whether answers and messages other than gossip may leave: at once with a replay log,
    /// whose records the caller made durable first and from which a restart applies the
    /// blocks again; otherwise once the store's deferred writes (the blocks `apply`
    /// committed) are durable.
    fn outputs_may_leave(&self) -> bool {
        self.config.consensus.log_records || self.store_durable()
    }

    /// Makes the store's deferred writes durable; false (outputs wait, the next poll tries
    /// again) if the store fails to.
    fn store_durable(&self) -> bool {
        match self.store.make_durable() {
            Ok(()) => true,
            Err(error) => {
                warn!(%error, "making applied blocks durable failed; outputs wait");
                false
            }
        }
    }

    pub(super) fn send(&mut self, to: PeerId, message: &Message) {
        if self.outbox.is_full() {
            debug!(peer = %to, "outbox full; message dropped (gossip and timeouts repair it)");
            return;
        }
        let gossip = matches!(
            message,
            Message::SyncRequest { .. } | Message::SyncResponse { .. }
        );
        match message.encode() {
            Ok(bytes) if gossip => self.send_gossip_bytes(to, bytes),
            Ok(bytes) => self.outbox.other.push_back((to, bytes)),
            Err(error) => debug!(peer = %to, %error, "message not encoded"),
        }
    }

    /// Queues an encoded sync request or response (the outbox bound as in `send`).
    pub(super) fn send_gossip_bytes(&mut self, to: PeerId, bytes: Vec<u8>) {
        if self.outbox.is_full() {
            debug!(peer = %to, "outbox full; message dropped (gossip and timeouts repair it)");
            return;
        }
        self.outbox.gossip.push_back((to, bytes));
    }
}
