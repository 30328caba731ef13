//! The bounded queues between the node's tasks, and what each does when full. Nothing grows
//! without bound: a client gets a 503 at once when the engine's input queue is full; a peer's
//! message is dropped (gossip and timeouts repair it) when that peer's own backlog is full,
//! so one flooding peer cannot starve the others; a message for a peer is dropped when the
//! transport's queue is full. Every drop is counted in `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use std::collections::{BTreeMap, VecDeque};

use chorus_consensus::PeerId;

use crate::runtime::Input;

/// Inputs (client requests, peer messages, ticks) waiting for the engine thread.
pub const ENGINE_INPUTS_MAX: usize = 16_384;
/// Messages from one peer waiting for room in the engine's input queue.
pub const PEER_BACKLOG_MAX: usize = 1_024;
/// Messages the engine produced that wait for the transport to send them.
pub const OUTBOUND_MAX: usize = 65_536;

// A peer's backlog is a small share of the engine's queue, so a few busy peers still leave
// room for clients.
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
    /// What the node's queues dropped.
    pub drops: Arc<Drops>,
}

impl EngineInputs {
    /// A bounded input queue of `capacity` and its receiving end (for the engine thread).
    pub fn new(capacity: usize) -> (Self, Receiver<Input>) {
        let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
        let inputs = Self {
            sender,
            drops: Arc::new(Drops::default()),
        };
        (inputs, receiver)
    }

    /// Queues an input without waiting; the input comes back when it cannot be queued.
    #[expect(
        clippy::result_large_err,
        reason = "the input goes back to its sender, which keeps it; boxing it would allocate"
    )]
    pub fn offer(&self, input: Input) -> Result<(), (Refused, Input)> {
        self.sender.try_send(input).map_err(|error| match error {
            TrySendError::Full(input) => (Refused::Busy, input),
            TrySendError::Disconnected(input) => (Refused::Stopped, input),
        })
    }

    /// A client's request: queued, or refused (a full queue is counted).
    pub fn offer_request(&self, input: Input) -> Result<(), Refused> {
        self.offer(input).map_err(|(refused, _)| {
            if refused == Refused::Busy {
                Drops::count(&self.drops.client_requests);
            }
            refused
        })
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
    backlogs: BTreeMap<PeerId, VecDeque<Vec<u8>>>,
    /// The peer whose turn it is when room appears again.
    turn: Option<PeerId>,
}

impl PeerInbound {
    /// Feeds `engine`.
    pub fn new(engine: EngineInputs) -> Self {
        Self {
            engine,
            backlogs: BTreeMap::new(),
            turn: None,
        }
    }

    /// Whether messages wait for room in the engine's queue.
    pub fn has_backlog(&self) -> bool {
        !self.backlogs.is_empty()
    }

    /// A message from `from`. Err once the engine has stopped.
    pub fn push(&mut self, from: PeerId, bytes: Vec<u8>) -> Result<(), Refused> {
        let bytes = if self.backlogs.is_empty() {
            match self.engine.offer(Input::Message(from, bytes)) {
                Ok(()) => return Ok(()),
                Err((Refused::Stopped, _)) => return Err(Refused::Stopped),
                Err((Refused::Busy, input)) => match input {
                    Input::Message(_, bytes) => bytes,
                    _ => return Ok(()),
                },
            }
        } else {
            bytes
        };
        let backlog = self.backlogs.entry(from).or_default();
        if backlog.len() >= PEER_BACKLOG_MAX {
            Drops::count(&self.engine.drops.peer_messages);
        } else {
            backlog.push_back(bytes);
        }
        Ok(())
    }

    /// Moves backlogged messages into the engine's queue, one per peer in turn, until it is
    /// full or every backlog is empty. Err once the engine has stopped.
    pub fn pump(&mut self) -> Result<(), Refused> {
        while !self.backlogs.is_empty() {
            let start = self.turn.unwrap_or(PeerId([0; 32]));
            let order: Vec<PeerId> = self
                .backlogs
                .range(start..)
                .chain(self.backlogs.range(..start))
                .map(|(peer, _)| *peer)
                .collect();
            for peer in order {
                let Some(bytes) = self.backlogs.get_mut(&peer).and_then(VecDeque::pop_front) else {
                    continue;
                };
                match self.engine.offer(Input::Message(peer, bytes)) {
                    Ok(()) => {}
                    Err((Refused::Stopped, _)) => return Err(Refused::Stopped),
                    Err((Refused::Busy, input)) => {
                        if let (Input::Message(_, bytes), Some(backlog)) =
                            (input, self.backlogs.get_mut(&peer))
                        {
                            backlog.push_front(bytes);
                        }
                        self.turn = Some(peer);
                        self.backlogs.retain(|_, backlog| !backlog.is_empty());
                        return Ok(());
                    }
                }
            }
            self.backlogs.retain(|_, backlog| !backlog.is_empty());
            self.turn = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_at_once_and_counts_client_requests() {
        let (inputs, receiver) = EngineInputs::new(2);
        assert_eq!(inputs.offer_request(Input::Tick), Ok(()));
        assert_eq!(inputs.offer_request(Input::Tick), Ok(()));
        assert_eq!(inputs.offer_request(Input::Tick), Err(Refused::Busy));
        assert_eq!(Drops::read(&inputs.drops.client_requests), 1);
        assert!(matches!(receiver.recv(), Ok(Input::Tick)));
        assert_eq!(inputs.offer_request(Input::Tick), Ok(()));
        drop(receiver);
        assert_eq!(inputs.offer_request(Input::Tick), Err(Refused::Stopped));
        assert_eq!(Drops::read(&inputs.drops.client_requests), 1);
    }

    fn message_from(input: Input) -> (PeerId, Vec<u8>) {
        match input {
            Input::Message(from, bytes) => (from, bytes),
            _ => panic!("not a peer message"),
        }
    }

    #[test]
    fn a_flooding_peer_fills_only_its_own_backlog_and_the_others_take_turns() {
        let (inputs, receiver) = EngineInputs::new(4);
        let mut inbound = PeerInbound::new(inputs.clone());
        let (flooder, quiet) = (PeerId([1; 32]), PeerId([2; 32]));
        for index in 0..(4 + PEER_BACKLOG_MAX + 10) {
            inbound
                .push(flooder, vec![index as u8])
                .expect("engine running");
        }
        inbound.push(quiet, vec![200]).expect("engine running");
        // The engine queue took 4, the flooder's backlog holds its limit, 10 were dropped,
        // and the quiet peer's message waits in its own backlog.
        assert_eq!(Drops::read(&inputs.drops.peer_messages), 10);
        assert!(inbound.has_backlog());
        // Room for two: the flooder's next, then the quiet peer's (turns alternate).
        for _ in 0..4 {
            message_from(receiver.recv().expect("queued"));
        }
        inbound.pump().expect("engine running");
        let first = message_from(receiver.recv().expect("pumped"));
        let second = message_from(receiver.recv().expect("pumped"));
        assert_eq!([first.0, second.0], [flooder, quiet]);
        assert_eq!(second.1, vec![200]);
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
