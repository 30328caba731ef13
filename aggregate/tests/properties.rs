//! Property: any sequence of appends (single, multi-stream, grouped, repeated, conflicting) and
//! reads keeps every stream's sequence numbers dense, the global order dense and consistent
//! with every stream's order, and the store equal to a simple in-memory model of it.

use std::collections::BTreeMap;

use chorus_aggregate::{
    AppendBatch, CategoryName, CommandId, DatabaseName, Direction, EventId, EventStore,
    ExpectedVersion, Filter, NewEvent, RecordedEvent, StreamKey, StreamWrite, TypeName,
};
use proptest::prelude::*;

const STREAMS: [&str; 4] = ["Notebook@a", "Notebook@b", "BankAccount@a", "shop/Order@1"];

#[derive(Clone, Debug)]
enum Expectation {
    Any,
    Right,
    Wrong,
    NoStream,
}

#[derive(Clone, Debug)]
enum Operation {
    /// One batch writing these (stream, event count, expectation) triples.
    Append(Vec<(usize, usize, Expectation)>),
    /// A group commit of several single-stream batches.
    Group(Vec<(usize, usize, Expectation)>),
    /// The batch appended `n` operations ago, again.
    Repeat(usize),
    /// Paged reads compared with the model.
    Read { page: usize },
}

fn expectation() -> impl Strategy<Value = Expectation> {
    prop_oneof![
        Just(Expectation::Any),
        Just(Expectation::Right),
        Just(Expectation::Wrong),
        Just(Expectation::NoStream),
    ]
}

fn write() -> impl Strategy<Value = (usize, usize, Expectation)> {
    (0..STREAMS.len(), 0usize..4, expectation())
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        4 => proptest::collection::vec(write(), 1..3).prop_map(Operation::Append),
        2 => proptest::collection::vec(write(), 1..4).prop_map(Operation::Group),
        1 => (0usize..5).prop_map(Operation::Repeat),
        1 => (1usize..6).prop_map(|page| Operation::Read { page }),
    ]
}

/// What the store should hold: the global log of (stream, payload), in order.
#[derive(Default)]
struct Model {
    log: Vec<(usize, Vec<u8>)>,
    commands: BTreeMap<CommandId, bool>,
}

impl Model {
    fn version(&self, stream: usize) -> u64 {
        self.log.iter().filter(|(s, _)| *s == stream).count() as u64
    }

    /// Applies a batch the way the store must: all writes or none; a known command id is a
    /// no-op.
    fn apply(&mut self, batch: &AppendBatch, indexes: &[usize]) -> bool {
        if let Some(id) = batch.command_id {
            if self.commands.contains_key(&id) {
                return true;
            }
        }
        let fits = batch
            .writes
            .iter()
            .zip(indexes)
            .all(|(write, &stream)| write.expected.admits(self.version(stream)));
        if !fits {
            return false;
        }
        for (write, &stream) in batch.writes.iter().zip(indexes) {
            for event in &write.events {
                self.log.push((stream, event.payload.clone()));
            }
        }
        if let Some(id) = batch.command_id {
            self.commands.insert(id, true);
        }
        true
    }
}

fn make_batch(
    model: &Model,
    serial: &mut u64,
    writes: &[(usize, usize, Expectation)],
) -> (AppendBatch, Vec<usize>) {
    *serial += 1;
    let mut seen = Vec::new();
    let mut stream_writes = Vec::new();
    for (stream, count, expectation) in writes {
        if seen.contains(stream) {
            continue; // the store refuses a stream twice per batch; tested elsewhere
        }
        seen.push(*stream);
        let version = model.version(*stream);
        let expected = match expectation {
            Expectation::Any => ExpectedVersion::Any,
            Expectation::Right => ExpectedVersion::Exact(version),
            Expectation::Wrong => ExpectedVersion::Exact(version + 1),
            Expectation::NoStream => ExpectedVersion::NoStream,
        };
        let events = (0..*count)
            .map(|index| NewEvent {
                event_id: EventId::derive(&[
                    &serial.to_le_bytes(),
                    &stream.to_le_bytes(),
                    &index.to_le_bytes(),
                ]),
                event_type: TypeName::new(if index % 2 == 0 { "Even" } else { "Odd" })
                    .expect("type"),
                event_version: 1,
                payload: format!("{serial}/{stream}/{index}").into_bytes(),
                supersedes: None,
            })
            .collect();
        stream_writes.push(StreamWrite {
            stream: StreamKey::parse(STREAMS[*stream]).expect("key"),
            expected,
            events,
        });
    }
    let batch = AppendBatch {
        command_id: Some(CommandId::derive(&[&serial.to_le_bytes()])),
        causation_id: CommandId::derive(&[b"cause"]).into(),
        correlation_id: CommandId::derive(&[b"correlation"]).into(),
        timestamp_ms: *serial,
        metadata: None,
        writes: stream_writes,
    };
    (batch, seen)
}

fn read_all_paged(store: &EventStore, filter: &Filter, page: usize) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let slice = store
            .read(filter, from, Direction::Forward, page)
            .expect("read");
        events.extend(slice.events);
        match slice.next {
            Some(next) => from = next,
            None => return events,
        }
    }
}

fn check(store: &EventStore, model: &Model, page: usize) -> Result<(), TestCaseError> {
    let all = read_all_paged(store, &Filter::All, page);
    prop_assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        (1..=model.log.len() as u64).collect::<Vec<_>>(),
        "positions are dense"
    );
    prop_assert_eq!(
        all.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
        model.log.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>()
    );
    let backward = store
        .read(
            &Filter::All,
            u64::MAX,
            Direction::Backward,
            model.log.len().max(1),
        )
        .expect("read");
    prop_assert_eq!(
        backward
            .events
            .iter()
            .rev()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        all.iter().map(|e| e.position).collect::<Vec<_>>()
    );
    for (index, text) in STREAMS.iter().enumerate() {
        let stream = StreamKey::parse(text).expect("key");
        let mut from = 1;
        let mut events = Vec::new();
        loop {
            let slice = store
                .read_stream(&stream, from, Direction::Forward, page)
                .expect("read");
            prop_assert_eq!(slice.version, model.version(index));
            events.extend(slice.events);
            match slice.next {
                Some(next) => from = next,
                None => break,
            }
        }
        prop_assert_eq!(
            events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (1..=model.version(index)).collect::<Vec<_>>(),
            "sequence numbers of {} are dense",
            text
        );
        // The global order agrees with the stream's order, and both see the same events.
        let in_all: Vec<_> = all.iter().filter(|e| e.stream == stream).cloned().collect();
        prop_assert_eq!(&in_all, &events);
        let by_position = read_all_paged(store, &Filter::Stream(stream.clone()), page);
        prop_assert_eq!(&by_position, &events);
    }
    let notebooks = Filter::Category(
        DatabaseName::default_database(),
        CategoryName::new("Notebook").expect("category"),
    );
    let category = read_all_paged(store, &notebooks, page);
    let expected: Vec<_> = all
        .iter()
        .filter(|e| {
            e.stream.category().as_str() == "Notebook" && e.stream.database().as_str() == "default"
        })
        .cloned()
        .collect();
    prop_assert_eq!(category, expected);
    let odd = read_all_paged(
        store,
        &Filter::EventType(TypeName::new("Odd").expect("type")),
        page,
    );
    prop_assert!(odd.iter().all(|e| e.event_type.as_str() == "Odd"));
    prop_assert_eq!(
        odd.len(),
        all.iter()
            .filter(|e| e.event_type.as_str() == "Odd")
            .count()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_store_matches_its_model(operations in proptest::collection::vec(operation(), 1..40)) {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = EventStore::open(directory.path().join("events.redb")).expect("open");
        let mut model = Model::default();
        let mut serial = 0;
        let mut history: Vec<(AppendBatch, Vec<usize>)> = Vec::new();
        for operation in operations {
            match operation {
                Operation::Append(writes) => {
                    let (batch, indexes) = make_batch(&model, &mut serial, &writes);
                    let expected_ok = model.apply(&batch, &indexes);
                    let result = store.append(&batch);
                    prop_assert_eq!(result.is_ok(), expected_ok, "{:?}", result);
                    history.push((batch, indexes));
                }
                Operation::Group(writes) => {
                    let mut batches = Vec::new();
                    let mut expected = Vec::new();
                    for write in writes {
                        let (batch, indexes) = make_batch(&model, &mut serial, &[write]);
                        // Each batch of a group sees the ones before it.
                        expected.push(model.apply(&batch, &indexes));
                        history.push((batch.clone(), indexes));
                        batches.push(batch);
                    }
                    let outcomes = store.append_group(&batches).expect("group");
                    prop_assert_eq!(
                        outcomes.iter().map(|o| o.is_ok()).collect::<Vec<_>>(),
                        expected
                    );
                }
                Operation::Repeat(back) => {
                    if let Some((batch, indexes)) = history.len().checked_sub(back + 1).map(|i| history[i].clone()) {
                        let known = model.commands.contains_key(&batch.command_id.expect("id"));
                        let expected_ok = model.apply(&batch, &indexes);
                        let result = store.append(&batch);
                        prop_assert_eq!(result.is_ok(), expected_ok, "{:?}", result);
                        if let Ok(outcome) = result {
                            prop_assert_eq!(outcome.duplicate, known);
                        }
                    }
                }
                Operation::Read { page } => check(&store, &model, page)?,
            }
        }
        check(&store, &model, 3)?;
        prop_assert_eq!(store.head_position().expect("head"), model.log.len() as u64);
    }
}
