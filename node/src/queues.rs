//! The bounded queues between the node's tasks, and what each does when full. Every queue
//! has a limit: a client gets a 503 at once when the engine's input queue is full; peer
//! messages take at most half of that queue and `PEER_QUEUE_BYTES_MAX` of its bytes (so no
//! peer, however fast, can keep clients out), and beyond it wait in their sender's own
//! backlog, fed to the engine one message per peer in turn (so one flooding peer cannot
//! starve the others); a message over a backlog's limit (`PEER_BACKLOG_MAX` messages,
//! `PEER_BACKLOG_BYTES_MAX` bytes) is dropped (gossip and timeouts repair it); a message for
//! a peer is dropped when the transport's queue is full. Every drop is counted in
//! `/metrics`. How many peers may have a backlog is bounded by who may connect (libp2p's
//! connection limits), so what waits is bounded in bytes too.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use chorus_consensus::PeerId;

use crate::runtime::Input;

/// Inputs (client requests, peer messages) waiting for the engine thread.
pub const ENGINE_INPUTS_MAX: usize = 16_384;
/// Messages from one peer waiting for room in the engine's input queue.
pub const PEER_BACKLOG_MAX: usize = 1_024;
/// Bytes of the messages in one peer's backlog: beyond it a message is dropped, except that
/// an empty backlog takes any one message (a sync response may be up to `SYNC_BYTES_MAX`).
/// So a peer, a stranger included, holds at most one largest message and this much besides.
pub const PEER_BACKLOG_BYTES_MAX: usize = 16 << 20;
/// Bytes of peer messages in the engine's input queue: beyond it peer messages wait in
/// their backlogs, except that any one message enters when no peer message is queued.
pub const PEER_QUEUE_BYTES_MAX: usize = 256 << 20;
/// Messages the engine produced that wait for the transport to send them.
pub const OUTBOUND_MAX: usize = 65_536;

// A peer's backlog is a small share of the engine's queue.
const _: () = assert!(PEER_BACKLOG_MAX * 8 <= ENGINE_INPUTS_MAX);

/// What the queues dropped since the node started.
#[derive(Debug, Default)]
pub struct Drops {
    /// Client requests answered 503 because the engine's input queue was full.
    pub client_requests: AtomicU64,
    /// Peer messages dropped because their sender's backlog was full.
    pub peer_messages: AtomicU64,
    /// Messages for peers dropped because the transport's queue was full.
    pub outbound_messages: AtomicU64,
    /// Messages for a peer dropped because `UNACKNOWLEDGED_PER_PEER_MAX` sent to it were
    /// not acknowledged yet (it stalls).
    pub unacknowledged_messages: AtomicU64,
}

impl Drops {
    /// Counts one drop.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why an input did not reach the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its queue is full: try again later.
    Busy,
    /// The engine thread has stopped.
    Stopped,
}

/// The sending side of the engine's input queue, with the drop counters.
#[derive(Clone, Debug)]
pub struct EngineInputs {
    sender: SyncSender<Input>,
    /// Peer messages in the queue now, and their bytes (the engine's side counts them down).
    peer_messages: Arc<AtomicUsize>,
    peer_bytes: Arc<AtomicUsize>,
    /// Most peer messages in the queue at once: half of it.
    peer_share: usize,
    /// Most bytes of peer messages in the queue at once.
    peer_bytes_share: usize,
    /// What the node's queues dropped.
    pub drops: Arc<Drops>,
}

/// The engine thread's side of its input queue.
#[derive(Debug)]
pub struct EngineReceiver {
    receiver: Receiver<Input>,
    peer_messages: Arc<AtomicUsize>,
    peer_bytes: Arc<AtomicUsize>,
}

impl EngineInputs {
    /// A bounded input queue of `capacity` and its receiving end (for the engine thread).
    pub fn new(capacity: usize) -> (Self, EngineReceiver) {
        Self::with_byte_share(capacity, PEER_QUEUE_BYTES_MAX)
    }

    /// As `new`, with `peer_bytes_share` bytes for peer messages.
    fn with_byte_share(capacity: usize, peer_bytes_share: usize) -> (Self, EngineReceiver) {
        let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
        let peer_messages = Arc::new(AtomicUsize::new(0));
        let peer_bytes = Arc::new(AtomicUsize::new(0));
        let inputs = Self {
            sender,
            peer_messages: Arc::clone(&peer_messages),
            peer_bytes: Arc::clone(&peer_bytes),
            peer_share: capacity / 2,
            peer_bytes_share,
            drops: Arc::new(Drops::default()),
        };
        (
            inputs,
            EngineReceiver {
                receiver,
                peer_messages,
                peer_bytes,
            },
        )
    }

    /// A client's request: queued without waiting, or refused (a full queue is counted).
    pub fn offer_request(&self, input: Input) -> Result<(), Refused> {
        self.sender.try_send(input).map_err(|error| match error {
            TrySendError::Full(_) => {
                Drops::count(&self.drops.client_requests);
                Refused::Busy
            }
            TrySendError::Disconnected(_) => Refused::Stopped,
        })
    }

    /// A peer's message: queued without waiting while peer messages hold less than their
    /// share of the queue, in number and in bytes; else its bytes come back.
    fn offer_message(&self, from: PeerId, bytes: Vec<u8>) -> Result<(), (Refused, Vec<u8>)> {
        let queued = self.peer_messages.load(Ordering::Acquire);
        let queued_bytes = self.peer_bytes.load(Ordering::Acquire);
        if queued >= self.peer_share
            || (queued > 0 && queued_bytes + bytes.len() > self.peer_bytes_share)
        {
            return Err((Refused::Busy, bytes));
        }
        // Counted before it is queued, so the engine never counts down below zero.
        let length = bytes.len();
        self.peer_messages.fetch_add(1, Ordering::AcqRel);
        self.peer_bytes.fetch_add(length, Ordering::AcqRel);
        let refused = match self.sender.try_send(Input::Message(from, bytes)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(input)) => (Refused::Busy, input),
            Err(TrySendError::Disconnected(input)) => (Refused::Stopped, input),
        };
        self.peer_messages.fetch_sub(1, Ordering::AcqRel);
        self.peer_bytes.fetch_sub(length, Ordering::AcqRel);
        match refused {
            (refused, Input::Message(_, bytes)) => Err((refused, bytes)),
            _ => unreachable!("the input sent was a message"),
        }
    }
}

impl EngineReceiver {
    /// The next input, waiting for it; `None` once every sender is gone (for tests: the
    /// engine thread waits with `recv_timeout`, to tick).
    #[cfg(test)]
    pub fn recv(&self) -> Option<Input> {
        self.receiver.recv().ok().map(|input| self.taken(input))
    }

    /// The next input, waiting at most `timeout`; `Ok(None)` when none came. Err once every
    /// sender is gone.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Input>, Refused> {
        match self.receiver.recv_timeout(timeout) {
            Ok(input) => Ok(Some(self.taken(input))),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Refused::Stopped),
        }
    }

    /// The next input if one waits.
    pub fn try_recv(&self) -> Option<Input> {
        self.receiver.try_recv().ok().map(|input| self.taken(input))
    }

    fn taken(&self, input: Input) -> Input {
        if let Input::Message(_, bytes) = &input {
            self.peer_messages.fetch_sub(1, Ordering::AcqRel);
            self.peer_bytes.fetch_sub(bytes.len(), Ordering::AcqRel);
        }
        input
    }
}

/// The engine thread's side of the transport's queue: messages for peers.
#[derive(Debug)]
pub struct Outbound {
    sender: tokio::sync::mpsc::Sender<(PeerId, Vec<u8>)>,
    drops: Arc<Drops>,
}

impl Outbound {
    /// A bounded queue of `capacity` and its receiving end (for the transport).
    pub fn new(
        capacity: usize,
        drops: Arc<Drops>,
    ) -> (Self, tokio::sync::mpsc::Receiver<(PeerId, Vec<u8>)>) {
        let (sender, receiver) = tokio::sync::mpsc::channel(capacity);
        (Self { sender, drops }, receiver)
    }

    /// Queues a message without waiting; a full queue drops it (counted). Err once the
    /// transport has stopped.
    pub fn send(&self, peer: PeerId, bytes: Vec<u8>) -> Result<(), Refused> {
        match self.sender.try_send((peer, bytes)) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                Drops::count(&self.drops.outbound_messages);
                Ok(())
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(Refused::Stopped),
        }
    }
}

/// Peer messages on their way to the engine: straight into its input queue while nobody
/// waits, else into the sender's own backlog (at most `PEER_BACKLOG_MAX`; beyond, dropped and
/// counted), from which the backlogs are fed one message per peer in turn as room appears.
#[derive(Debug)]
pub struct PeerInbound {
    engine: EngineInputs,
    backlogs: HashMap<PeerId, Backlog>,
    /// The peers with a backlog, each once, in the order of their turns.
    turns: VecDeque<PeerId>,
}

/// One peer's messages waiting, and their bytes.
#[derive(Debug, Default)]
struct Backlog {
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl PeerInbound {
    /// Feeds `engine`.
    pub fn new(engine: EngineInputs) -> Self {
        Self {
            engine,
            backlogs: HashMap::new(),
            turns: VecDeque::new(),
        }
    }

    /// Whether messages wait for room in the engine's queue.
    pub fn has_backlog(&self) -> bool {
        !self.turns.is_empty()
    }

    /// A message from `from`. Err once the engine has stopped.
    pub fn push(&mut self, from: PeerId, bytes: Vec<u8>) -> Result<(), Refused> {
        let bytes = if self.turns.is_empty() {
            match self.engine.offer_message(from, bytes) {
                Ok(()) => return Ok(()),
                Err((Refused::Stopped, _)) => return Err(Refused::Stopped),
                Err((Refused::Busy, bytes)) => bytes,
            }
        } else {
            bytes
        };
        let backlog = self.backlogs.entry(from).or_default();
        if backlog.messages.is_empty() {
            self.turns.push_back(from);
            backlog.bytes = 0;
        } else if backlog.messages.len() >= PEER_BACKLOG_MAX
            || backlog.bytes + bytes.len() > PEER_BACKLOG_BYTES_MAX
        {
            Drops::count(&self.engine.drops.peer_messages);
            return Ok(());
        }
        backlog.bytes += bytes.len();
        backlog.messages.push_back(bytes);
        Ok(())
    }

    /// Moves backlogged messages into the engine's queue, one per peer in turn, until there
    /// is no room or every backlog is empty. Err once the engine has stopped.
    pub fn pump(&mut self) -> Result<(), Refused> {
        while let Some(peer) = self.turns.pop_front() {
            let Some(backlog) = self.backlogs.get_mut(&peer) else {
                continue;
            };
            let Some(bytes) = backlog.messages.pop_front() else {
                continue;
            };
            backlog.bytes -= bytes.len();
            match self.engine.offer_message(peer, bytes) {
                Ok(()) if backlog.messages.is_empty() => {
                    self.backlogs.remove(&peer);
                }
                Ok(()) => self.turns.push_back(peer),
                Err((Refused::Stopped, _)) => return Err(Refused::Stopped),
                Err((Refused::Busy, bytes)) => {
                    // Still this peer's turn when room appears.
                    backlog.bytes += bytes.len();
                    backlog.messages.push_front(bytes);
                    self.turns.push_front(peer);
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's input (a status request; its answer is never read).
    fn client_input() -> Input {
        Input::Status(tokio::sync::oneshot::channel().0)
    }

    fn sender_of(input: Input) -> PeerId {
        match input {
            Input::Message(from, _) => from,
            _ => panic!("not a peer message"),
        }
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_counts_client_requests() {
        let (inputs, receiver) = EngineInputs::new(2);
        assert_eq!(inputs.offer_request(client_input()), Ok(()));
        assert_eq!(inputs.offer_request(client_input()), Ok(()));
        assert_eq!(inputs.offer_request(client_input()), Err(Refused::Busy));
        assert_eq!(Drops::read(&inputs.drops.client_requests), 1);
        assert!(matches!(receiver.try_recv(), Some(Input::Status(_))));
        assert_eq!(inputs.offer_request(client_input()), Ok(()));
        drop(receiver);
        assert_eq!(inputs.offer_request(client_input()), Err(Refused::Stopped));
        assert_eq!(Drops::read(&inputs.drops.client_requests), 1);
    }

    #[test]
    fn a_flooding_peer_takes_half_the_queue_and_clients_keep_the_rest() {
        let (inputs, receiver) = EngineInputs::new(8);
        let mut inbound = PeerInbound::new(inputs.clone());
        let flooder = PeerId([1; 32]);
        for index in 0..(4 + PEER_BACKLOG_MAX + 10) {
            inbound
                .push(flooder, vec![index as u8])
                .expect("engine running");
        }
        // Half the queue went to the peer, its backlog holds its limit, 10 were dropped.
        assert_eq!(Drops::read(&inputs.drops.peer_messages), 10);
        inbound.pump().expect("engine running");
        for _ in 0..4 {
            assert_eq!(inputs.offer_request(client_input()), Ok(()));
        }
        assert_eq!(inputs.offer_request(client_input()), Err(Refused::Busy));
        let senders: Vec<bool> = std::iter::from_fn(|| receiver.try_recv())
            .map(|input| matches!(input, Input::Message(..)))
            .collect();
        assert_eq!(
            senders,
            [true, true, true, true, false, false, false, false]
        );
        // Taking the peer's messages gave its share back: the backlog moves up.
        inbound.pump().expect("engine running");
        assert_eq!(sender_of(receiver.try_recv().expect("pumped")), flooder);
    }

    #[test]
    fn peers_are_held_to_bytes_as_well_as_messages() {
        // Room for 8 inputs, 4 of them peer messages, and 3 MiB of peer bytes.
        let (inputs, receiver) = EngineInputs::with_byte_share(8, 3 << 20);
        let mut inbound = PeerInbound::new(inputs.clone());
        let flooder = PeerId([1; 32]);
        let mebibyte = vec![0u8; 1 << 20];
        // One message larger than the share still enters an empty queue.
        inbound
            .push(flooder, vec![0u8; 5 << 20])
            .expect("engine running");
        assert_eq!(receiver.try_recv().map(sender_of), Some(flooder));
        for _ in 0..(3 + PEER_BACKLOG_BYTES_MAX / mebibyte.len() + 5) {
            inbound
                .push(flooder, mebibyte.clone())
                .expect("engine running");
        }
        // 3 MiB in the queue, the backlog full at its byte limit, 5 dropped.
        assert_eq!(Drops::read(&inputs.drops.peer_messages), 5);
        let queued = std::iter::from_fn(|| receiver.try_recv()).count();
        assert_eq!(queued, 3);
        // An empty backlog takes one message of any size.
        let other = PeerId([2; 32]);
        inbound
            .push(other, vec![0u8; PEER_BACKLOG_BYTES_MAX * 2])
            .expect("engine running");
        assert_eq!(Drops::read(&inputs.drops.peer_messages), 5);
    }

    #[test]
    fn backlogged_peers_take_turns_one_message_each() {
        // Room for one peer message at a time.
        let (inputs, receiver) = EngineInputs::new(2);
        let mut inbound = PeerInbound::new(inputs);
        let (a, b, c) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
        for peer in [a, a, a, a, a, b, b, c, c] {
            inbound.push(peer, vec![0]).expect("engine running");
        }
        let mut order = Vec::new();
        for _ in 0..9 {
            order.push(sender_of(receiver.try_recv().expect("a message waits")));
            inbound.pump().expect("engine running");
        }
        assert_eq!(order, [a, a, b, c, a, b, c, a, a]);
        assert!(!inbound.has_backlog());
    }

    #[test]
    fn a_full_outbound_queue_drops_and_counts() {
        let drops = Arc::new(Drops::default());
        let (outbound, mut receiver) = Outbound::new(1, Arc::clone(&drops));
        let peer = PeerId([3; 32]);
        assert_eq!(outbound.send(peer, vec![1]), Ok(()));
        assert_eq!(outbound.send(peer, vec![2]), Ok(()));
        assert_eq!(Drops::read(&drops.outbound_messages), 1);
        assert_eq!(receiver.try_recv().expect("queued").1, vec![1]);
        receiver.close();
        assert_eq!(outbound.send(peer, vec![3]), Err(Refused::Stopped));
    }
}
