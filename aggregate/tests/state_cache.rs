//! The aggregate state cache (`state_cache.rs`): a registry that keeps the states its
//! decisions built decides exactly as a fresh one that loads every stream from the store,
//! whatever happened to the streams in between (appends, refusals, corrections, soft
//! deletes, metadata, batches appended the engine's way and announced with
//! `AggregateRegistry::appended`), and a registry shared by two stores keeps their states
//! apart.

use chorus_aggregate::domain::encode_event;
use chorus_aggregate::{
    AggregateRegistry, AppendBatch, CommandId, CommandRequest, EventId, EventStore,
    ExpectedVersion, NewEvent, StreamKey,
};
use chorus_demo::bank_account::{BankAccount, BankAccountCommand, BankAccountEvent};
use proptest::prelude::*;
use serde_json::{Value, json};

const STREAMS: [&str; 2] = ["BankAccount@ada", "BankAccount@bob"];

fn registry() -> AggregateRegistry {
    AggregateRegistry::new().register::<BankAccount>()
}

fn request(tag: &str, stream: &str, command: Value) -> CommandRequest {
    let mut request = CommandRequest::new(
        CommandId::derive(&[tag.as_bytes()]),
        StreamKey::parse(stream).expect("key"),
        command,
    );
    request.timestamp_ms = 1_000;
    request
}

fn bank(command: BankAccountCommand) -> Value {
    serde_json::to_value(command).expect("encodes")
}

/// What happens to a stream between two decisions.
#[derive(Clone, Debug)]
enum Step {
    Open(usize),
    Deposit(usize, u64),
    Withdraw(usize, u64),
    /// A correction of the event at this sequence (if the stream has it): a new epoch.
    Correct(usize, u64),
    SoftDelete(usize),
    Retain(usize, u64),
    /// A deposit the engine's way: decided, appended, then announced (`appended`, twice),
    /// which moves the cached state over it once.
    Agreed(usize, u64),
    /// A batch announced to a registry whose state for the stream is behind it: a deposit
    /// executed elsewhere, then another decided elsewhere, appended and announced. (Bank
    /// events carry the balance after them, so this one cannot tell a state moved over the
    /// wrong events; the unit test beside `StateCache::advance` does.)
    AnnouncedBehind(usize, u64),
}

fn step() -> impl Strategy<Value = Step> {
    let stream = 0..STREAMS.len();
    prop_oneof![
        2 => stream.clone().prop_map(Step::Open),
        6 => (stream.clone(), 1..50u64).prop_map(|(s, n)| Step::Deposit(s, n)),
        3 => (stream.clone(), 1..80u64).prop_map(|(s, n)| Step::Withdraw(s, n)),
        2 => (stream.clone(), 1..6u64).prop_map(|(s, n)| Step::Correct(s, n)),
        1 => stream.clone().prop_map(Step::SoftDelete),
        1 => (stream.clone(), 1..4u64).prop_map(|(s, n)| Step::Retain(s, n)),
        6 => (stream.clone(), 1..50u64).prop_map(|(s, n)| Step::Agreed(s, n)),
        2 => (stream, 1..50u64).prop_map(|(s, n)| Step::AnnouncedBehind(s, n)),
    ]
}

/// Plays a step on the store through `registry` (its outcome does not matter: a refusal is
/// a step too).
fn play(registry: &AggregateRegistry, store: &EventStore, index: usize, step: &Step) {
    let tag = format!("step-{index}");
    let command = match step {
        Step::Open(stream) => Some((
            *stream,
            bank(BankAccountCommand::OpenAccount { owner: "o".into() }),
        )),
        Step::Deposit(stream, amount) => Some((
            *stream,
            bank(BankAccountCommand::Deposit {
                amount: *amount,
                transfer: None,
            }),
        )),
        Step::Withdraw(stream, amount) => Some((
            *stream,
            bank(BankAccountCommand::Withdraw {
                amount: *amount,
                transfer: None,
            }),
        )),
        Step::SoftDelete(stream) => Some((*stream, json!({"$delete": {}}))),
        Step::Retain(stream, count) => Some((*stream, json!({"$metadata": {"max_count": count}}))),
        Step::Correct(stream, sequence) => {
            correct(store, STREAMS[*stream], *sequence, &tag);
            None
        }
        Step::Agreed(stream, amount) => {
            let deposit = bank(BankAccountCommand::Deposit {
                amount: *amount,
                transfer: None,
            });
            let request = request(&tag, STREAMS[*stream], deposit);
            if let Ok(decision) = registry.decide(store, &request) {
                if store.append(&decision.batch).is_ok() {
                    registry.appended(store, &request, &decision.batch);
                    // Announced again (a member applying the same blocks once more): the
                    // cached state has left the batch's version, and stays as it is.
                    registry.appended(store, &request, &decision.batch);
                }
            }
            None
        }
        Step::AnnouncedBehind(stream, amount) => {
            let deposit = |amount| {
                bank(BankAccountCommand::Deposit {
                    amount,
                    transfer: None,
                })
            };
            let elsewhere = AggregateRegistry::new().register::<BankAccount>();
            let first = request(&tag, STREAMS[*stream], deposit(*amount));
            let _ = elsewhere.execute(store, &first);
            let request = request(
                &format!("{tag}-next"),
                STREAMS[*stream],
                deposit(amount + 1),
            );
            if let Ok(decision) = elsewhere.decide(store, &request) {
                if store.append(&decision.batch).is_ok() {
                    registry.appended(store, &request, &decision.batch);
                }
            }
            None
        }
    };
    if let Some((stream, command)) = command {
        let _ = registry.execute(store, &request(&tag, STREAMS[stream], command));
    }
}

/// Appends a deposit of 7 superseding the event at `sequence`, if the stream has it.
fn correct(store: &EventStore, stream: &str, sequence: u64, tag: &str) {
    let key = StreamKey::parse(stream).expect("key");
    let version = store
        .stream_info(&key)
        .expect("info")
        .map_or(0, |info| info.version);
    if sequence > version {
        return;
    }
    let encoded = encode_event(&BankAccountEvent::Deposited {
        amount: 7,
        balance: 7,
        transfer: None,
    })
    .expect("encodes");
    let fix = NewEvent {
        event_id: EventId::derive(&[tag.as_bytes()]),
        event_type: encoded.event_type,
        event_version: encoded.event_version,
        payload: encoded.payload,
        supersedes: Some(sequence),
    };
    let _ = store.append(&AppendBatch::single(
        CommandId::derive(&[tag.as_bytes()]),
        key,
        ExpectedVersion::Exact(version),
        vec![fix],
        2_000,
    ));
}

/// What each registry decides for a probe on every stream.
fn decisions(registry: &AggregateRegistry, store: &EventStore, probe: usize) -> Vec<String> {
    STREAMS
        .iter()
        .map(|stream| {
            let deposit = bank(BankAccountCommand::Deposit {
                amount: 1,
                transfer: None,
            });
            let probe = request(&format!("probe-{probe}"), stream, deposit);
            format!("{:?}", registry.decide(store, &probe))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_registry_with_cached_states_decides_as_a_fresh_one(
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = EventStore::open(directory.path().join("events.redb")).expect("open");
        let cached = registry();
        for (index, step) in steps.iter().enumerate() {
            play(&cached, &store, index, step);
            prop_assert_eq!(
                decisions(&cached, &store, index),
                decisions(&registry(), &store, index),
                "after step {} ({:?})", index, step
            );
        }
    }
}

#[test]
fn one_registry_over_two_stores_keeps_their_states_apart() {
    let directory = tempfile::tempdir().expect("tempdir");
    let first = EventStore::open(directory.path().join("first.redb")).expect("open");
    let second = EventStore::open(directory.path().join("second.redb")).expect("open");
    let shared = registry();
    // The same stream at the same version and epoch, with different balances.
    for (store, amount) in [(&first, 10), (&second, 30)] {
        play(&shared, store, 0, &Step::Open(0));
        play(&shared, store, 1, &Step::Deposit(0, amount));
    }
    for store in [&first, &second] {
        assert_eq!(
            decisions(&shared, store, 9),
            decisions(&registry(), store, 9)
        );
    }
    assert_ne!(
        decisions(&shared, &first, 9),
        decisions(&shared, &second, 9),
        "the balances differ, and so do the decided events"
    );
}

// Proves: a stream longer than one read page (`READ_COUNT_MAX`) is loaded whole, from
// nothing and from a cached state (a first version of the cache stopped after one page).
#[test]
fn a_stream_longer_than_a_read_page_is_loaded_whole() {
    use chorus_aggregate::limits::READ_COUNT_MAX;
    use chorus_aggregate::repository::Repository;

    let directory = tempfile::tempdir().expect("tempdir");
    let store = EventStore::open(directory.path().join("events.redb")).expect("open");
    let cached = registry();
    play(&cached, &store, 0, &Step::Open(0));
    let key = StreamKey::parse(STREAMS[0]).expect("key");
    let deposits = READ_COUNT_MAX as u64 + 50;
    let mut written = 0;
    while written < deposits {
        let events: Vec<NewEvent> = (written..deposits.min(written + 1_000))
            .map(|index| {
                let encoded = encode_event(&BankAccountEvent::Deposited {
                    amount: 1,
                    balance: index + 1,
                    transfer: None,
                })
                .expect("encodes");
                NewEvent {
                    event_id: EventId::derive(&[b"long", &index.to_le_bytes()]),
                    event_type: encoded.event_type,
                    event_version: encoded.event_version,
                    payload: encoded.payload,
                    supersedes: None,
                }
            })
            .collect();
        let count = events.len() as u64;
        store
            .append(&AppendBatch::single(
                CommandId::derive(&[b"long-batch", &written.to_le_bytes()]),
                key.clone(),
                ExpectedVersion::Exact(written + 1),
                events,
                3_000,
            ))
            .expect("append");
        written += count;
        // A decision between the batches leaves a cached state behind.
        let _ = decisions(&cached, &store, written as usize);
    }
    let loaded = Repository::<BankAccount>::new(&store)
        .with_snapshots_every(None)
        .load(&key)
        .expect("load");
    assert_eq!(loaded.state.balance, deposits);
    assert_eq!(loaded.version, deposits + 1);
    assert_eq!(
        decisions(&cached, &store, 0),
        decisions(&registry(), &store, 0)
    );
}
