//! Reads between nodes: how a node serves a stream, a category or `$all` that another section
//! holds. The HTTP handler asks a member of the responsible section over libp2p
//! (`/chorus/read/2`, beside the engine protocol), and that member answers from its store
//! what it applied: a page of events as the HTTP API shows them.
//!
//! Who may ask: a node in the asked member's network map (a stranger is refused, named).
//! What is asked: one stream, or the log (`$all` or a category) restricted to the asked
//! member's own section (after a split both halves still hold the parent's events; each
//! answers for its own prefix only, so a gathered read counts no event twice). The asked
//! member never forwards in turn: a read names the section it is for, and a member of
//! another section refuses it.
//!
//! Trust: the answer comes from one member, as any read over HTTP comes from the one node
//! asked; it may lag its section. Proven reads (signed by more than two thirds) are not built.

use std::collections::HashMap;
use std::time::Duration;

use chorus_aggregate::{Filter, StreamKey};
use chorus_consensus::PeerId;
use futures::future::BoxFuture;
use libp2p::StreamProtocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use tokio::sync::{mpsc, oneshot};

use crate::http::{category_filter, event_json, page_count, type_filter};
use crate::queues::EngineInputs;
pub use crate::read_wire::{PeerPage, PeerRead, READ_REQUEST_BYTES_MAX};
use crate::runtime::{Input, Read, ReadAnswer};

/// The read protocol; its version changes with the request's or the answer's shape.
pub const READ_PROTOCOL: StreamProtocol = StreamProtocol::new("/chorus/read/2");
/// How long a node waits for a member's answer before it asks the next.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads other nodes asked of this one that wait for its engine at once; beyond, a read is
/// answered busy at once (a member cannot fill the engine's queue with reads).
pub const READS_SERVED_MAX: usize = 64;
/// Reads this node asks of others at once; beyond, an HTTP read is answered busy.
pub const READS_ASKED_MAX: usize = 256;

impl PeerRead {
    /// The engine thread's read for it, or why it is not one (checked as the HTTP API checks
    /// the same parameters).
    pub fn to_read(&self) -> Result<Read, String> {
        match self {
            Self::Stream {
                stream,
                from,
                count,
                backward,
            } => Ok(Read::Stream {
                stream: StreamKey::parse(stream).map_err(|problem| problem.to_string())?,
                from: (*from).max(1),
                count: page_count(Some(*count))?,
                backward: *backward,
            }),
            Self::Log {
                database,
                category,
                event_type,
                from,
                count,
            } => {
                let filter = match (database, category, event_type) {
                    (None, None, None) => Filter::All,
                    (database, Some(category), None) => {
                        category_filter(category.clone(), database.clone())?
                    }
                    (None, None, Some(event_type)) => type_filter(event_type)?,
                    (Some(_), None, _) => return Err("a database without a category".into()),
                    (_, Some(_), Some(_)) => {
                        return Err("a category and an event type together".into());
                    }
                };
                Ok(Read::SectionLog {
                    filter,
                    from: (*from).max(1),
                    count: page_count(Some(*count))?,
                })
            }
        }
    }
}

/// The asking side, shared by the HTTP handlers: sends a read to a peer through the
/// transport and waits for its page.
#[derive(Clone, Debug)]
pub struct PeerReads(mpsc::Sender<Asked>);

/// A read on its way to the transport.
pub type Asked = (PeerId, PeerRead, oneshot::Sender<PeerPage>);

impl PeerReads {
    /// A handle and the transport's receiving end.
    pub fn new() -> (Self, mpsc::Receiver<Asked>) {
        let (sender, receiver) = mpsc::channel(READS_ASKED_MAX);
        (Self(sender), receiver)
    }

    /// Asks `peer`; its page, or why there is none (busy, no answer in `READ_TIMEOUT`, the
    /// transport stopped, the peer refused).
    pub async fn ask(&self, peer: PeerId, read: PeerRead) -> Result<PeerPage, String> {
        let (reply, answer) = oneshot::channel();
        self.0
            .try_send((peer, read, reply))
            .map_err(|_| "too many reads to other nodes at once".to_owned())?;
        match tokio::time::timeout(READ_TIMEOUT, answer).await {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(_)) => Err("the transport stopped".into()),
            Err(_) => Err(format!("no answer within {READ_TIMEOUT:?}")),
        }
    }
}

impl Default for PeerReads {
    /// A handle with no transport behind it (tests): every read fails.
    fn default() -> Self {
        Self(mpsc::channel(1).0)
    }
}

/// The transport's side: reads it sent and waits for, and reads it serves.
pub struct ReadPeers {
    asked: HashMap<OutboundRequestId, oneshot::Sender<PeerPage>>,
    served: futures::stream::FuturesUnordered<BoxFuture<'static, Served>>,
}

/// A served read's channel and its encoded answer.
pub type Served = (ResponseChannel<Vec<u8>>, Vec<u8>);

impl ReadPeers {
    /// Nothing in flight.
    pub fn new() -> Self {
        Self {
            asked: HashMap::new(),
            served: futures::stream::FuturesUnordered::new(),
        }
    }

    /// Sends `read` to `peer` (its libp2p id).
    pub fn send(
        &mut self,
        behaviour: &mut request_response::Behaviour<crate::transport::FrameCodec>,
        peer: &libp2p::PeerId,
        read: &PeerRead,
        reply: oneshot::Sender<PeerPage>,
    ) {
        match read.encode() {
            Ok(bytes) => {
                let id = behaviour.send_request(peer, bytes);
                self.asked.insert(id, reply);
            }
            Err(error) => {
                let _ = reply.send(PeerPage::Refused(error.to_string()));
            }
        }
    }

    /// A peer's answer to a read we sent (or its failure, as `Refused`).
    pub fn answered(&mut self, id: OutboundRequestId, bytes: Result<Vec<u8>, String>) {
        if let Some(reply) = self.asked.remove(&id) {
            let page = bytes.and_then(|bytes| {
                PeerPage::decode(&bytes).map_err(|error| format!("a bad answer: {error}"))
            });
            let _ = reply.send(page.unwrap_or_else(PeerPage::Refused));
        }
    }

    /// A read `from` asked of us: to the engine thread (which checks who asks), answered when
    /// it replies. Refused at once when it does not parse or too many wait.
    pub fn serve(
        &mut self,
        engine: &EngineInputs,
        from: PeerId,
        request: &[u8],
        channel: ResponseChannel<Vec<u8>>,
    ) -> Option<Served> {
        let refuse = |channel, reason: String| Some((channel, PeerPage::Refused(reason).encode()));
        if self.served.len() >= READS_SERVED_MAX {
            return refuse(channel, "busy: too many reads from other nodes".into());
        }
        let read = match PeerRead::decode(request).and_then(|read| read.to_read()) {
            Ok(read) => read,
            Err(problem) => return refuse(channel, format!("a bad read: {problem}")),
        };
        let (reply, answer) = oneshot::channel();
        if engine
            .offer_request(Input::PeerRead(from, read, reply))
            .is_err()
        {
            return refuse(channel, "busy: the engine's queue is full".into());
        }
        self.served.push(Box::pin(async move {
            let page = match answer.await {
                Ok(Ok(ReadAnswer::Events { events, next })) => PeerPage::Events {
                    events: events.iter().map(event_json).collect(),
                    next,
                },
                Ok(Ok(ReadAnswer::Elsewhere { prefix, .. })) => PeerPage::Refused(format!(
                    "this node's section does not hold it: {prefix:?} does"
                )),
                Ok(Ok(other)) => PeerPage::Refused(format!("unexpected answer {other:?}")),
                Ok(Err(problem)) => PeerPage::Refused(problem),
                Err(_) => PeerPage::Refused("the node is stopping".into()),
            };
            (channel, page.encode())
        }));
        None
    }

    /// The next served read whose answer is ready (pending forever when none waits).
    pub async fn next_served(&mut self) -> Served {
        use futures::StreamExt;
        match self.served.next().await {
            Some(served) => served,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::READ_COUNT_MAX;

    #[test]
    fn reads_round_trip_and_bad_ones_are_refused_with_the_reason() {
        let read = PeerRead::Log {
            database: None,
            category: Some("BankAccount".into()),
            event_type: None,
            from: 0,
            count: 10,
        };
        let bytes = read.encode().expect("encodes");
        let back = PeerRead::decode(&bytes).expect("decodes");
        assert_eq!(back, read);
        assert!(matches!(
            back.to_read(),
            Ok(Read::SectionLog {
                from: 1,
                count: 10,
                ..
            })
        ));
        let too_many = PeerRead::Stream {
            stream: "Notebook@a".into(),
            from: 1,
            count: READ_COUNT_MAX + 1,
            backward: false,
        };
        assert!(too_many.to_read().expect_err("too many").contains("count"));
        let bad_stream = PeerRead::Stream {
            stream: "no-at-sign".into(),
            from: 1,
            count: 1,
            backward: true,
        };
        assert!(bad_stream.to_read().is_err());
        let orphan = PeerRead::Log {
            database: Some("default".into()),
            category: None,
            event_type: None,
            from: 1,
            count: 1,
        };
        assert!(
            orphan
                .to_read()
                .expect_err("no category")
                .contains("database")
        );
        // By event type, and backward: carried and turned into the store's read.
        let typed = PeerRead::Log {
            database: None,
            category: None,
            event_type: Some("Deposited".into()),
            from: 3,
            count: 5,
        };
        assert!(matches!(
            typed.to_read(),
            Ok(Read::SectionLog { filter: Filter::EventType(name), from: 3, .. }) if name.as_str() == "Deposited"
        ));
        let both = PeerRead::Log {
            database: None,
            category: Some("BankAccount".into()),
            event_type: Some("Deposited".into()),
            from: 1,
            count: 1,
        };
        assert!(both.to_read().expect_err("both").contains("together"));
        let backward = PeerRead::Stream {
            stream: "Notebook@a".into(),
            from: u64::MAX,
            count: 5,
            backward: true,
        };
        let back = PeerRead::decode(&backward.encode().expect("encodes")).expect("decodes");
        assert!(matches!(
            back.to_read(),
            Ok(Read::Stream {
                backward: true,
                from: u64::MAX,
                ..
            })
        ));
        // A read without the newer fields (as `/chorus/read/1` sent it) is forward and untyped.
        let plain =
            PeerRead::decode(br#"{"kind":"stream","stream":"Notebook@a","from":1,"count":1}"#);
        assert!(matches!(
            plain,
            Ok(PeerRead::Stream {
                backward: false,
                ..
            })
        ));
        assert!(PeerRead::decode(br#"{"kind":"drop_tables"}"#).is_err());
        let long = format!(
            r#"{{"kind":"stream","stream":"{}","from":1,"count":1}}"#,
            "a".repeat(5000)
        );
        assert!(
            PeerRead::decode(long.as_bytes())
                .expect_err("too long")
                .contains("at most")
        );
    }
}
