//! The node's reads, served on the engine thread from its store and map: what a read is
//! (`Read`), what it finds (`ReadAnswer`), and how the store answers it. A stream another
//! section holds is answered `Elsewhere`; another node's read is served only to a node in the
//! network map.

use chorus_aggregate::{
    CategoryName, DatabaseName, Direction, EventStore, Filter, RecordedEvent, StoreError,
    StreamInfo, StreamKey,
};
use chorus_consensus::PeerId;
use chorus_engine::Engine;
use chorus_routing::{Prefix, XorName};

/// A read of the node's store (what the node applied: its section's streams).
#[derive(Clone, Debug)]
pub enum Read {
    /// One stream from a sequence number, forward or backward.
    Stream {
        /// The stream.
        stream: StreamKey,
        /// First sequence number (for a backward read, the highest; `u64::MAX`: the end).
        from: u64,
        /// At most this many events.
        count: usize,
        /// Newest first.
        backward: bool,
    },
    /// Events in the store's order (`$all`, a category, an event type), forward from a
    /// global position.
    Log {
        /// Which events.
        filter: Filter,
        /// First global position.
        from: u64,
        /// At most this many events.
        count: usize,
    },
    /// Like `Log`, but only events of streams this node's section is responsible for (after
    /// a split the store still holds the other half's earlier events). A page may hold fewer
    /// than `count` events before its end.
    SectionLog {
        /// Which events.
        filter: Filter,
        /// First global position.
        from: u64,
        /// At most this many events.
        count: usize,
    },
    /// The network map as this node knows it.
    Map,
    /// The databases that hold streams.
    Databases,
    /// The categories of a database.
    Categories(DatabaseName),
    /// The streams of a category, in name order after `after`.
    Streams {
        /// The database.
        database: DatabaseName,
        /// The category.
        category: CategoryName,
        /// List after this stream id.
        after: Option<String>,
        /// At most this many.
        count: usize,
    },
}

/// What a read found.
#[derive(Clone, Debug)]
pub enum ReadAnswer {
    /// Events; `next` is where the following page starts (a sequence number for a stream,
    /// a global position for the log), `None` at the end.
    Events {
        /// The events.
        events: Vec<RecordedEvent>,
        /// Where to read on.
        next: Option<u64>,
    },
    /// Names (databases or categories).
    Names(Vec<String>),
    /// Streams with their versions.
    Streams(Vec<StreamInfo>),
    /// The network map: this node's section's prefix, and each section's prefix and members.
    Map {
        /// This node's section.
        own: chorus_routing::Prefix,
        /// Every section, in prefix order.
        sections: Vec<(chorus_routing::Prefix, Vec<PeerId>)>,
    },
    /// The stream belongs to another section than this node's: ask one of its members.
    Elsewhere {
        /// That section's prefix.
        prefix: String,
        /// Its members.
        members: Vec<PeerId>,
    },
}

/// A read: sent elsewhere, or served from the node's state.
pub fn answer_read(engine: &Engine, read: Read) -> Result<ReadAnswer, String> {
    match elsewhere(engine, &read) {
        Some(elsewhere) => Ok(elsewhere),
        None => read_store(engine, read).map_err(|error| error.to_string()),
    }
}

/// Another node's read: served only to a node in the network map, as the engine lets only
/// such nodes speak.
pub fn answer_peer_read(engine: &Engine, from: PeerId, read: Read) -> Result<ReadAnswer, String> {
    if engine.is_known(&from) {
        answer_read(engine, read)
    } else {
        Err("a read from a node outside the network map".into())
    }
}

/// A stream read for a stream another section is responsible for (by this node's map): its
/// store would answer with nothing, which is wrong, so the reader is sent to that section.
fn elsewhere(engine: &Engine, read: &Read) -> Option<ReadAnswer> {
    let Read::Stream { stream, .. } = read else {
        return None;
    };
    let qualified = stream.qualified();
    if engine
        .section()
        .prefix
        .matches(&chorus_routing::XorName::from_stream_key(&qualified))
    {
        return None;
    }
    let section = engine.map().section_for_stream(&qualified);
    Some(ReadAnswer::Elsewhere {
        prefix: section.prefix().to_string(),
        members: section.member_keys().into_iter().map(PeerId).collect(),
    })
}

/// A page of the log with only the events of streams section `own` is responsible for.
fn section_log(
    store: &EventStore,
    own: Prefix,
    filter: &Filter,
    from: u64,
    count: usize,
) -> Result<ReadAnswer, StoreError> {
    let slice = store.read(filter, from, Direction::Forward, count)?;
    let mut events = slice.events;
    events.retain(|event| own.matches(&XorName::from_stream_key(&event.stream.qualified())));
    Ok(ReadAnswer::Events {
        events,
        next: slice.next,
    })
}

/// Serves a read from the node's store and map.
fn read_store(engine: &Engine, read: Read) -> Result<ReadAnswer, StoreError> {
    let (store, own) = (engine.store(), engine.section().prefix);
    Ok(match read {
        Read::Stream {
            stream,
            from,
            count,
            backward,
        } => stream_page(store, &stream, from, count, backward)?,
        Read::Log {
            filter,
            from,
            count,
        } => {
            let slice = store.read(&filter, from, Direction::Forward, count)?;
            ReadAnswer::Events {
                events: slice.events,
                next: slice.next,
            }
        }
        Read::SectionLog {
            filter,
            from,
            count,
        } => section_log(store, own, &filter, from, count)?,
        Read::Map => map_answer(engine),
        Read::Databases => ReadAnswer::Names(
            store
                .list_databases()?
                .iter()
                .map(|name| name.as_str().to_owned())
                .collect(),
        ),
        Read::Categories(database) => ReadAnswer::Names(
            store
                .list_categories(&database)?
                .iter()
                .map(|name| name.as_str().to_owned())
                .collect(),
        ),
        Read::Streams {
            database,
            category,
            after,
            count,
        } => ReadAnswer::Streams(store.list_streams(
            &database,
            &category,
            after.as_deref(),
            count,
        )?),
    })
}

/// A page of one stream, with where the next starts (`None` when the page is not full).
fn stream_page(
    store: &EventStore,
    stream: &StreamKey,
    from: u64,
    count: usize,
    backward: bool,
) -> Result<ReadAnswer, StoreError> {
    let direction = if backward {
        Direction::Backward
    } else {
        Direction::Forward
    };
    let slice = store.read_stream(stream, from, direction, count)?;
    let next = slice
        .events
        .last()
        .filter(|_| slice.events.len() == count)
        .and_then(|event| {
            if backward {
                event.sequence.checked_sub(1).filter(|next| *next >= 1)
            } else {
                Some(event.sequence + 1)
            }
        });
    Ok(ReadAnswer::Events {
        events: slice.events,
        next,
    })
}

/// The engine's network map: its own prefix, and each section's members.
fn map_answer(engine: &Engine) -> ReadAnswer {
    ReadAnswer::Map {
        own: engine.section().prefix,
        sections: engine
            .map()
            .sections()
            .map(|section| {
                let members = section.member_keys().into_iter().map(PeerId).collect();
                (section.prefix(), members)
            })
            .collect(),
    }
}
