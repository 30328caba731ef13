//! The libp2p adapter: TCP, noise and yamux; one request-response protocol that carries engine
//! messages (each message a request, answered by an empty acknowledgement); identify. It
//! feeds the engine what arrives and sends what the engine emits, nothing more.
//!
//! A peer's libp2p identity is its consensus ed25519 key, so the noise handshake
//! authenticates the member a message comes from: the engine is told the sender's consensus
//! id, recovered from the authenticated libp2p `PeerId`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_consensus::{MEMBERS_MAX, PeerId, SYNC_BYTES_MAX};
use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, SwarmBuilder, connection_limits, identify, identity, noise,
    tcp, yamux,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The engine protocol, with the version of the engine's wire format ([`chorus_engine::Message`]):
/// nodes of different versions do not talk at all rather than misread each other. 2: the
/// `Behind` hint carries the sender's round and head, `CommandOutcome::IdTaken`, and a
/// transfer request's cursor is `position` (it was `from`). 3: `JoinRefused`, `ForkEvidence`.
/// 4: `Confirm`, and a welcome's `numbering`. 5: the domain fingerprint in join and sync
/// requests, `DomainDiffers`, events' metadata in transfer chunks.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/chorus/engine/5");
/// Largest frame: the largest engine message (a sync response) and its framing.
pub const FRAME_BYTES_MAX: usize = SYNC_BYTES_MAX + 1024;
/// Engine messages sent to one peer and not acknowledged yet, at most: beyond, a message
/// for it is dropped (gossip and timeouts repair it) and counted. A peer that stalls (a
/// paused process) would otherwise collect a stream per message until yamux refuses more.
const UNACKNOWLEDGED_PER_PEER_MAX: usize = 256;
/// Concurrent engine-protocol streams per connection (each message is one), both ways.
const STREAMS_PER_CONNECTION_MAX: usize = 2 * UNACKNOWLEDGED_PER_PEER_MAX;
/// Yamux streams per connection. Yamux ends a connection whose peer opens one more than
/// this, so it stays above what the protocols open together (the engine's both ways, the
/// reads', identify's), with room for streams still closing.
const YAMUX_STREAMS_MAX: usize = 1_024;
const _: () = assert!(
    STREAMS_PER_CONNECTION_MAX + crate::peer_reads::READS_SERVED_MAX + 64 <= YAMUX_STREAMS_MAX
);
/// Connections one peer may hold with us at once (one each way is all a node needs).
const CONNECTIONS_PER_PEER_MAX: u32 = 2;
/// Incoming connections at once, all peers together: the members of the largest section
/// and as many nodes of other sections that talk to us; strangers beyond it are turned away
/// at the handshake.
const CONNECTIONS_INCOMING_MAX: u32 = 2 * MEMBERS_MAX as u32;
const _: () = assert!(2 * MEMBERS_MAX <= u32::MAX as usize);
/// Incoming connections still in their handshake at once.
const CONNECTIONS_PENDING_INCOMING_MAX: u32 = 64;

/// Most keys the address book holds (identify answers beyond it are not recorded: strangers
/// must not grow it without bound).
pub const ADDRESS_BOOK_MAX: usize = 4 * MEMBERS_MAX;

/// The libp2p addresses this node knows, by consensus id: its configuration's peers, and
/// what each connected peer's identify says it listens on (a node that joined later is
/// reached so). Shared with the HTTP API, whose `/status` map shows them: a node that joins
/// learns the network from there (`chorus node --join`).
#[derive(Clone, Default)]
pub struct AddressBook(Arc<Mutex<BTreeMap<PeerId, Multiaddr>>>);

impl AddressBook {
    /// A book with `entries`.
    pub fn new(entries: &[(PeerId, Multiaddr)]) -> Self {
        Self(Arc::new(Mutex::new(entries.iter().cloned().collect())))
    }

    /// The address of `peer`, if known.
    pub fn get(&self, peer: &PeerId) -> Option<Multiaddr> {
        self.0.lock().ok()?.get(peer).cloned()
    }

    /// Records `address` for `peer` (an existing key is updated; a new one only below
    /// `ADDRESS_BOOK_MAX`).
    pub fn insert(&self, peer: PeerId, address: Multiaddr) {
        if let Ok(mut book) = self.0.lock() {
            if book.len() < ADDRESS_BOOK_MAX || book.contains_key(&peer) {
                book.insert(peer, address);
            }
        }
    }
}

/// Why the transport cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The key is not a valid ed25519 key for libp2p.
    #[error("node key: {0}")]
    Key(String),
    /// libp2p setup failed.
    #[error("libp2p: {0}")]
    Setup(String),
    /// The listen address is not usable.
    #[error("cannot listen on {address}: {error}")]
    Listen {
        /// The address.
        address: Multiaddr,
        /// Why.
        error: String,
    },
}

/// Raw 32-byte ed25519 secret to a libp2p keypair (the same key the engine signs with).
pub fn keypair(secret: [u8; 32]) -> Result<identity::Keypair, TransportError> {
    identity::Keypair::ed25519_from_bytes(secret)
        .map_err(|error| TransportError::Key(error.to_string()))
}

/// Our consensus id to the libp2p `PeerId` of the same key.
pub fn libp2p_id(peer: &PeerId) -> Result<libp2p::PeerId, TransportError> {
    let key = identity::ed25519::PublicKey::try_from_bytes(&peer.0)
        .map_err(|error| TransportError::Key(error.to_string()))?;
    Ok(identity::PublicKey::from(key).to_peer_id())
}

/// The consensus id behind a libp2p `PeerId` (ed25519 ids inline their key); `None` for
/// another key type.
pub fn consensus_id(peer: &libp2p::PeerId) -> Option<PeerId> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    let key = identity::PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    Some(PeerId(key.try_into_ed25519().ok()?.to_bytes()))
}

/// Messages as frames (`crate::frames`); each direction with its largest frame (refused
/// before anything is allocated for it).
#[derive(Clone)]
pub struct FrameCodec {
    request_bytes_max: usize,
    response_bytes_max: usize,
}

impl FrameCodec {
    /// The engine protocol's: a message either way, answered by an empty acknowledgement.
    pub const ENGINE: Self = Self {
        request_bytes_max: FRAME_BYTES_MAX,
        response_bytes_max: FRAME_BYTES_MAX,
    };
    /// The read protocol's: a small request, a page of events back.
    pub const READS: Self = Self {
        request_bytes_max: crate::peer_reads::READ_REQUEST_BYTES_MAX,
        response_bytes_max: FRAME_BYTES_MAX,
    };
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        crate::frames::read_frame(io, self.request_bytes_max).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        crate::frames::read_frame(io, self.response_bytes_max).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        crate::frames::write_frame(io, &request, FRAME_BYTES_MAX).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        crate::frames::write_frame(io, &response, FRAME_BYTES_MAX).await
    }
}

/// The node's libp2p behaviour.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    limits: connection_limits::Behaviour,
    engine: request_response::Behaviour<FrameCodec>,
    reads: request_response::Behaviour<FrameCodec>,
    identify: identify::Behaviour,
}

/// Starts the swarm: listens on `listen`, knows `peers` (consensus id and address), and
/// returns it with the address it listens on (`run` then drives it).
pub async fn start(
    secret: [u8; 32],
    listen: Multiaddr,
    peers: &[(PeerId, Multiaddr)],
) -> Result<(Swarm<Behaviour>, Multiaddr), TransportError> {
    let setup = |error: &dyn std::fmt::Display| TransportError::Setup(error.to_string());
    let mut swarm = SwarmBuilder::with_existing_identity(keypair(secret)?)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux_config,
        )
        .map_err(|error| setup(&error))?
        .with_behaviour(|key| Behaviour {
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX))
                    .with_max_established_incoming(Some(CONNECTIONS_INCOMING_MAX))
                    .with_max_pending_incoming(Some(CONNECTIONS_PENDING_INCOMING_MAX)),
            ),
            engine: request_response::Behaviour::with_codec(
                FrameCodec::ENGINE,
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(30))
                    .with_max_concurrent_streams(STREAMS_PER_CONNECTION_MAX),
            ),
            reads: request_response::Behaviour::with_codec(
                FrameCodec::READS,
                [(crate::peer_reads::READ_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(crate::peer_reads::READ_TIMEOUT)
                    .with_max_concurrent_streams(crate::peer_reads::READS_SERVED_MAX),
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                "/chorus/1.0.0".into(),
                key.public(),
            )),
        })
        .map_err(|error| setup(&error))?
        // Gossip keeps connections busy; an idle one must not be closed under a member.
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(3_600)))
        .build();
    swarm
        .listen_on(listen.clone())
        .map_err(|error| TransportError::Listen {
            address: listen.clone(),
            error: error.to_string(),
        })?;
    for (peer, address) in peers {
        swarm.add_peer_address(libp2p_id(peer)?, address.clone());
    }
    // The first event is the bound address (the port may have been 0).
    let address = loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => break address,
            SwarmEvent::ListenerError { error, .. } => {
                return Err(TransportError::Listen {
                    address: listen,
                    error: error.to_string(),
                });
            }
            _ => {}
        }
    };
    Ok((swarm, address))
}

fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(YAMUX_STREAMS_MAX);
    config
}

/// Runs a started swarm until `outbound` closes: messages from `outbound` go to their
/// peers, messages from peers go to the engine thread's input queue, through a backlog per
/// peer when it is full ([`crate::queues::PeerInbound`]). Reads asked through `reads` go to
/// their peers, and peers' reads to the engine thread ([`crate::peer_reads`]).
pub async fn run(
    mut swarm: Swarm<Behaviour>,
    addresses: AddressBook,
    mut outbound: mpsc::Receiver<(PeerId, Vec<u8>)>,
    mut reads: mpsc::Receiver<crate::peer_reads::Asked>,
    engine: crate::queues::EngineInputs,
) {
    let mut read_peers = crate::peer_reads::ReadPeers::new();
    let mut unacknowledged = Unacknowledged::default();
    let mut inbound = crate::queues::PeerInbound::new(engine.clone());
    // While peer messages wait for room in the engine's queue, it is looked at this often.
    let mut pump = tokio::time::interval(Duration::from_millis(1));
    pump.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            message = outbound.recv() => {
                let Some((peer, bytes)) = message else {
                    return;
                };
                match dialable(&mut swarm, &addresses, &peer) {
                    Ok(libp2p_peer) if unacknowledged.has_room(&libp2p_peer) => {
                        let id = swarm.behaviour_mut().engine.send_request(&libp2p_peer, bytes);
                        unacknowledged.sent(id, libp2p_peer);
                    }
                    Ok(_) => crate::queues::Drops::count(&engine.drops.unacknowledged_messages),
                    Err(error) => debug!(%error, "message for a peer with a bad key dropped"),
                }
            }
            Some((peer, read, reply)) = reads.recv() => match dialable(&mut swarm, &addresses, &peer) {
                Ok(libp2p_peer) => {
                    read_peers.send(&mut swarm.behaviour_mut().reads, &libp2p_peer, &read, reply);
                }
                Err(error) => {
                    let _ = reply.send(crate::peer_reads::PeerPage::Refused(error.to_string()));
                }
            },
            (channel, page) = read_peers.next_served() => {
                let _ = swarm.behaviour_mut().reads.send_response(channel, page);
            }
            _ = pump.tick(), if inbound.has_backlog() => {
                if inbound.pump().is_err() {
                    return;
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Engine(event)) => {
                    let stopped = engine_event(&mut swarm, &mut inbound, &mut unacknowledged, event)
                        .is_err();
                    if stopped {
                        return;
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Reads(event)) => {
                    read_event(&mut swarm, &mut read_peers, &engine, event);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                    peer_id,
                    info,
                    ..
                })) => remember_address(&addresses, &peer_id, &info),
                SwarmEvent::ConnectionEstablished { peer_id, .. } => debug!(peer = %peer_id, "connected"),
                SwarmEvent::NewListenAddr { address, .. } => info!(%address, "listening"),
                _ => {}
            },
        }
    }
}

/// What a peer's identify says it listens on (its first address that is not unspecified),
/// for the address book.
fn remember_address(addresses: &AddressBook, peer_id: &libp2p::PeerId, info: &identify::Info) {
    let listening = info.listen_addrs.iter().find(|address| {
        !address
            .iter()
            .any(|part| matches!(part, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified()))
    });
    if let (Some(peer), Some(address)) = (consensus_id(peer_id), listening) {
        addresses.insert(peer, address.clone());
    }
}

/// `peer`'s libp2p id, with its address put back in the swarm's cache (a failed dial drops
/// it there).
fn dialable(
    swarm: &mut Swarm<Behaviour>,
    addresses: &AddressBook,
    peer: &PeerId,
) -> Result<libp2p::PeerId, TransportError> {
    let libp2p_peer = libp2p_id(peer)?;
    if let Some(address) = addresses.get(peer) {
        swarm.add_peer_address(libp2p_peer, address);
    }
    Ok(libp2p_peer)
}

/// One event of the engine protocol: a peer's message goes to the engine (acknowledged
/// first, so the engine's work never runs into the request timeout). Err once the engine has
/// stopped.
fn engine_event(
    swarm: &mut Swarm<Behaviour>,
    inbound: &mut crate::queues::PeerInbound,
    unacknowledged: &mut Unacknowledged,
    event: request_response::Event<Vec<u8>, Vec<u8>>,
) -> Result<(), crate::queues::Refused> {
    match event {
        request_response::Event::Message {
            peer,
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        } => {
            let _ = swarm
                .behaviour_mut()
                .engine
                .send_response(channel, Vec::new());
            match consensus_id(&peer) {
                Some(from) => inbound.push(from, request)?,
                None => warn!(%peer, "a message from a peer without an ed25519 key"),
            }
        }
        request_response::Event::Message {
            message: request_response::Message::Response { request_id, .. },
            ..
        } => unacknowledged.acknowledged(request_id),
        request_response::Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            unacknowledged.acknowledged(request_id);
            debug!(%peer, %error, "message not delivered (gossip and timeouts repair it)");
        }
        request_response::Event::InboundFailure { peer, error, .. } => {
            debug!(%peer, %error, "inbound message failed");
        }
        request_response::Event::ResponseSent { .. } => {}
    }
    Ok(())
}

/// Engine messages sent and not acknowledged (answered or failed) yet, per peer (by request
/// id, generic for tests).
struct Unacknowledged<Id = request_response::OutboundRequestId> {
    per_peer: HashMap<libp2p::PeerId, usize>,
    requests: HashMap<Id, libp2p::PeerId>,
}

impl<Id> Default for Unacknowledged<Id> {
    fn default() -> Self {
        Self {
            per_peer: HashMap::new(),
            requests: HashMap::new(),
        }
    }
}

impl<Id: std::hash::Hash + Eq> Unacknowledged<Id> {
    fn has_room(&self, peer: &libp2p::PeerId) -> bool {
        self.per_peer.get(peer).copied().unwrap_or(0) < UNACKNOWLEDGED_PER_PEER_MAX
    }

    fn sent(&mut self, id: Id, peer: libp2p::PeerId) {
        *self.per_peer.entry(peer).or_default() += 1;
        self.requests.insert(id, peer);
    }

    fn acknowledged(&mut self, id: Id) {
        let Some(peer) = self.requests.remove(&id) else {
            return;
        };
        if let Some(count) = self.per_peer.get_mut(&peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

/// One event of the read protocol: a peer's read to serve, or an answer to ours.
fn read_event(
    swarm: &mut Swarm<Behaviour>,
    read_peers: &mut crate::peer_reads::ReadPeers,
    engine: &crate::queues::EngineInputs,
    event: request_response::Event<Vec<u8>, Vec<u8>>,
) {
    match event {
        request_response::Event::Message { peer, message, .. } => match message {
            request_response::Message::Request {
                request, channel, ..
            } => {
                let Some(from) = consensus_id(&peer) else {
                    return;
                };
                if let Some((channel, page)) = read_peers.serve(engine, from, &request, channel) {
                    let _ = swarm.behaviour_mut().reads.send_response(channel, page);
                }
            }
            request_response::Message::Response {
                request_id,
                response,
            } => read_peers.answered(request_id, Ok(response)),
        },
        request_response::Event::OutboundFailure {
            request_id, error, ..
        } => read_peers.answered(request_id, Err(error.to_string())),
        request_response::Event::InboundFailure { .. }
        | request_response::Event::ResponseSent { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_peer_gets_at_most_its_share_of_unacknowledged_messages() {
        let mut unacknowledged = Unacknowledged::<u64>::default();
        let (stalled, other) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        let mut id = 0;
        while unacknowledged.has_room(&stalled) {
            unacknowledged.sent(id, stalled);
            id += 1;
        }
        assert_eq!(id as usize, UNACKNOWLEDGED_PER_PEER_MAX);
        // Another peer is not held back by the stalled one.
        assert!(unacknowledged.has_room(&other));
        // An acknowledgement (or a failure) makes room for one; an unknown id changes nothing.
        unacknowledged.acknowledged(u64::MAX);
        assert!(!unacknowledged.has_room(&stalled));
        unacknowledged.acknowledged(3);
        unacknowledged.acknowledged(3);
        assert!(unacknowledged.has_room(&stalled));
        unacknowledged.sent(id, stalled);
        assert!(!unacknowledged.has_room(&stalled));
        for id in 0..=id {
            unacknowledged.acknowledged(id);
        }
        assert!(unacknowledged.per_peer.is_empty() && unacknowledged.requests.is_empty());
    }

    #[test]
    fn consensus_ids_and_libp2p_ids_name_the_same_key() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let ours = PeerId(key.verifying_key().to_bytes());
        let theirs = libp2p_id(&ours).expect("a valid key");
        assert_eq!(consensus_id(&theirs), Some(ours));
        let pair = keypair(key.to_bytes()).expect("a valid secret");
        assert_eq!(pair.public().to_peer_id(), theirs);
    }
}
