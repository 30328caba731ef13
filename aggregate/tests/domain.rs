//! The layer above the store: aggregates through the test kit and the repository, snapshots,
//! upcasting of stored events, corrections seen by aggregates, subscriptions, projections and
//! the transfer saga.

use std::time::Duration;

use chorus_aggregate::domain::encode_event;
use chorus_aggregate::testkit::AggregateTest;
use chorus_aggregate::{
    Aggregate, AggregateRegistry, AppendBatch, CommandEnvelope, CommandError, CommandId,
    CommandRequest, EventId, EventRouter, EventStore, ExpectedVersion, Filter, NewEvent,
    Projection, ProjectionRunner, RecordedEvent, Repository, SnapshotRecord, StreamKey,
    Subscription, TypeName,
};
use chorus_demo::bank_account::{
    BankAccount, BankAccountCommand, BankAccountError, BankAccountEvent,
};
use chorus_demo::notebook::{Note, Notebook, NotebookCommand, NotebookEvent};
use chorus_demo::transfer::{Transfer, TransferCommand, TransferSaga, TransferStatus};

fn store() -> (tempfile::TempDir, EventStore) {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = EventStore::open(directory.path().join("events.redb")).expect("open store");
    (directory, store)
}

fn key(text: &str) -> StreamKey {
    StreamKey::parse(text).expect("valid stream key")
}

fn command<C>(tag: &str, stream: &str, command: C) -> CommandEnvelope<C> {
    CommandEnvelope::new(CommandId::derive(&[tag.as_bytes()]), key(stream), command).at(1_000)
}

fn deposit(amount: u64) -> BankAccountCommand {
    BankAccountCommand::Deposit {
        amount,
        transfer: None,
    }
}

fn open(owner: &str) -> BankAccountCommand {
    BankAccountCommand::OpenAccount {
        owner: owner.to_owned(),
    }
}

#[test]
fn the_test_kit_checks_events_errors_and_state() {
    AggregateTest::<Notebook>::given_no_events()
        .at(42)
        .when(NotebookCommand::InitiateNotebook {
            title: "Ideas".into(),
        })
        .then([NotebookEvent::NotebookInitiated {
            title: "Ideas".into(),
            at_ms: 42,
        }])
        .and_state(|notebook| assert_eq!(notebook.title.as_deref(), Some("Ideas")));
    AggregateTest::<Notebook>::given_no_events()
        .when(NotebookCommand::AddNote {
            text: "x".into(),
            author: "ada".into(),
        })
        .then_error(chorus_demo::notebook::NotebookError::NotInitiated);
    AggregateTest::<BankAccount>::given([
        BankAccountEvent::AccountOpened {
            owner: "ada".into(),
        },
        BankAccountEvent::Deposited {
            amount: 10,
            balance: 10,
            transfer: None,
        },
    ])
    .when(BankAccountCommand::Withdraw {
        amount: 11,
        transfer: None,
    })
    .then_error(BankAccountError::InsufficientFunds {
        balance: 10,
        amount: 11,
    })
    .and_state(|account| assert_eq!(account.balance, 10));
    AggregateTest::<Transfer>::given_no_events()
        .when(TransferCommand::StartTransfer {
            from: "a".into(),
            to: "a".into(),
            amount: 5,
        })
        .then_error_matching(|error| error.to_string().contains("two different accounts"));
}

#[test]
fn the_test_kit_fails_on_other_events() {
    let outcome = std::panic::catch_unwind(|| {
        AggregateTest::<BankAccount>::given([BankAccountEvent::AccountOpened {
            owner: "ada".into(),
        }])
        .when(deposit(5))
        .then([BankAccountEvent::Deposited {
            amount: 5,
            balance: 6,
            transfer: None,
        }]);
    });
    let panic = outcome.expect_err("a wrong expectation must fail the test");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("the command produced other events"),
        "{message}"
    );
}

#[test]
fn commands_execute_once_and_respect_expected_versions() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store);
    let opened = accounts
        .execute(&command("open", "BankAccount@ada", open("ada")))
        .expect("open");
    assert_eq!(opened.streams[0].version, 1);
    let first = command("d1", "BankAccount@ada", deposit(30)).expecting(ExpectedVersion::Exact(1));
    assert!(!accounts.execute(&first).expect("deposit").duplicate);
    // The same command id again: nothing new, the first outcome.
    let again = accounts.execute(&first).expect("repeat");
    assert!(again.duplicate);
    assert_eq!(again.streams[0].version, 2);
    assert_eq!(
        accounts
            .load(&key("BankAccount@ada"))
            .expect("load")
            .state
            .balance,
        30
    );
    // A pinned version that moved on is refused, not retried.
    let stale = command("d2", "BankAccount@ada", deposit(1)).expecting(ExpectedVersion::Exact(1));
    assert!(matches!(
        accounts.execute(&stale),
        Err(CommandError::WrongExpectedVersion { actual: 2, .. })
    ));
    // A business rule refuses, and nothing is written.
    let overdraft = command(
        "w1",
        "BankAccount@ada",
        BankAccountCommand::Withdraw {
            amount: 31,
            transfer: None,
        },
    );
    assert!(matches!(
        accounts.execute(&overdraft),
        Err(CommandError::Domain(BankAccountError::InsufficientFunds {
            balance: 30,
            amount: 31
        }))
    ));
    assert_eq!(store.head_position().expect("head"), 2);
    // A command for another category is refused.
    assert!(matches!(
        accounts.execute(&command("n", "Notebook@1", deposit(1))),
        Err(CommandError::BadCommand(_))
    ));
    // Event ids derive from the command id, and envelopes carry causation and correlation.
    let slice = store
        .read_stream(
            &key("BankAccount@ada"),
            2,
            chorus_aggregate::Direction::Forward,
            1,
        )
        .expect("read");
    let event = &slice.events[0];
    assert_eq!(event.event_id, EventId::for_command(first.command_id, 0));
    assert_eq!(event.correlation_id, first.command_id.into());
    assert_eq!(event.timestamp_ms, 1_000);
}

#[test]
fn snapshots_shorten_loads_and_are_ignored_when_they_do_not_fit() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store).with_snapshots_every(Some(10));
    let stream = key("BankAccount@ada");
    accounts
        .execute(&command("open", "BankAccount@ada", open("ada")))
        .expect("open");
    for index in 0..24 {
        accounts
            .execute(&command(
                &format!("d{index}"),
                "BankAccount@ada",
                deposit(1),
            ))
            .expect("deposit");
    }
    let loaded = accounts.load(&stream).expect("load");
    assert_eq!((loaded.version, loaded.state.balance), (25, 24));
    assert_eq!(loaded.snapshot_version, Some(20));
    assert_eq!(loaded.events_applied, 5);
    let without = Repository::<BankAccount>::new(&store)
        .with_snapshots_every(None)
        .load(&stream)
        .expect("load");
    assert_eq!(without.state, loaded.state);
    assert_eq!(
        (without.snapshot_version, without.events_applied),
        (None, 25)
    );

    // A snapshot of another schema version is not trusted.
    let forged = SnapshotRecord {
        schema_version: BankAccount::SCHEMA_VERSION + 1,
        version: 25,
        epoch: 0,
        state: serde_json::to_vec(&BankAccount {
            owner: Some("mallory".into()),
            balance: 1_000_000,
        })
        .expect("encode"),
    };
    store.write_snapshot(&stream, &forged).expect("write");
    let loaded = accounts.load(&stream).expect("load");
    assert_eq!((loaded.snapshot_version, loaded.state.balance), (None, 24));
    // Nor one that does not decode.
    let garbage = SnapshotRecord {
        schema_version: BankAccount::SCHEMA_VERSION,
        version: 25,
        epoch: 0,
        state: b"{not json".to_vec(),
    };
    store.write_snapshot(&stream, &garbage).expect("write");
    assert_eq!(accounts.load(&stream).expect("load").state.balance, 24);
}

#[test]
fn old_event_versions_are_upcast_when_loaded() {
    let (_directory, store) = store();
    let notebook = key("Notebook@1");
    let initiated = encode_event(&NotebookEvent::NotebookInitiated {
        title: "Old".into(),
        at_ms: 5,
    })
    .expect("encode");
    let new_event = |index: usize, event_type: &str, event_version: u16, payload: &[u8]| NewEvent {
        event_id: EventId::derive(&[b"old", &index.to_le_bytes()]),
        event_type: TypeName::new(event_type).expect("type"),
        event_version,
        payload: payload.to_vec(),
        supersedes: None,
    };
    let batch = AppendBatch::single(
        CommandId::derive(&[b"legacy"]),
        notebook.clone(),
        ExpectedVersion::NoStream,
        vec![
            new_event(0, "NotebookInitiated", 1, &initiated.payload),
            // Written by an older version of the code, before notes had authors.
            new_event(1, "NoteAdded", 1, br#"{"text":"from the past"}"#),
        ],
        5,
    );
    store.append(&batch).expect("append");
    let loaded = Repository::<Notebook>::new(&store)
        .load(&notebook)
        .expect("load");
    assert_eq!(
        loaded.state.notes,
        [Note {
            text: "from the past".into(),
            author: "anonymous".into()
        }]
    );

    // An event from a newer schema is an error naming the stream and event, not a panic.
    let future = AppendBatch::single(
        CommandId::derive(&[b"future"]),
        notebook.clone(),
        ExpectedVersion::Any,
        vec![new_event(
            2,
            "NoteAdded",
            9,
            br#"{"text":"x","author":"y"}"#,
        )],
        6,
    );
    store.append(&future).expect("append");
    let error = Repository::<Notebook>::new(&store)
        .load(&notebook)
        .expect_err("refused");
    assert!(
        matches!(&error, CommandError::Decode { sequence: 3, .. }),
        "{error}"
    );
}

#[test]
fn corrections_change_what_aggregates_see() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store).with_snapshots_every(Some(2));
    let stream = key("BankAccount@ada");
    accounts
        .execute(&command("open", "BankAccount@ada", open("ada")))
        .expect("open");
    accounts
        .execute(&command("d1", "BankAccount@ada", deposit(100)))
        .expect("deposit");
    accounts
        .execute(&command("d2", "BankAccount@ada", deposit(5)))
        .expect("deposit");
    assert_eq!(accounts.load(&stream).expect("load").state.balance, 105);
    // The 100 was a typo for 10: a correction supersedes event 2 with the right deposit, and
    // restates the balance of the deposit after it.
    let fix = |index: usize, supersedes: u64, event: BankAccountEvent| {
        let encoded = encode_event(&event).expect("encode");
        NewEvent {
            event_id: EventId::derive(&[b"fix", &index.to_le_bytes()]),
            event_type: encoded.event_type,
            event_version: encoded.event_version,
            payload: encoded.payload,
            supersedes: Some(supersedes),
        }
    };
    let correction = AppendBatch::single(
        CommandId::derive(&[b"correction"]),
        stream.clone(),
        ExpectedVersion::Exact(3),
        vec![
            fix(
                0,
                2,
                BankAccountEvent::Deposited {
                    amount: 10,
                    balance: 10,
                    transfer: None,
                },
            ),
            fix(
                1,
                3,
                BankAccountEvent::Deposited {
                    amount: 5,
                    balance: 15,
                    transfer: None,
                },
            ),
        ],
        2_000,
    );
    store.append(&correction).expect("correct");
    let loaded = accounts.load(&stream).expect("load");
    assert_eq!((loaded.version, loaded.state.balance), (5, 15));
    // The snapshot taken before the correction was dropped, not trusted.
    assert_eq!(loaded.snapshot_version, None);
}

#[test]
fn subscriptions_catch_up_then_go_live_without_gap_or_duplicate() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store);
    accounts
        .execute(&command("open", "BankAccount@ada", open("ada")))
        .expect("open");
    for index in 0..5 {
        accounts
            .execute(&command(
                &format!("h{index}"),
                "BankAccount@ada",
                deposit(1),
            ))
            .expect("history");
    }
    let writes = 200u64;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for index in 0..writes {
                accounts
                    .execute(&command(
                        &format!("live{index}"),
                        "BankAccount@ada",
                        deposit(1),
                    ))
                    .expect("live");
            }
        });
        let mut subscription = Subscription::new(Filter::All, 1, 7);
        let mut positions = Vec::new();
        let total = 6 + writes;
        while (positions.len() as u64) < total {
            let batch = subscription
                .next_batch(&store, Duration::from_secs(10))
                .expect("subscription");
            assert!(
                !batch.is_empty() || !writer.is_finished(),
                "subscription stalled"
            );
            positions.extend(batch.iter().map(|event| event.position));
        }
        writer.join().expect("writer");
        assert_eq!(positions, (1..=total).collect::<Vec<_>>());
        assert_eq!(subscription.next_position(), total + 1);
    });
    // A category subscription from the middle sees only the rest, in order.
    let mut from_middle = Subscription::new(
        Filter::Category(
            chorus_aggregate::DatabaseName::default_database(),
            chorus_aggregate::CategoryName::new("BankAccount").expect("category"),
        ),
        100,
        1000,
    );
    let rest = from_middle.poll(&store).expect("poll");
    assert_eq!(rest.first().map(|event| event.position), Some(100));
    assert_eq!(rest.len() as u64, 206 - 99);
    assert!(from_middle.poll(&store).expect("poll").is_empty());
}

/// Counts deposits per account: a read model.
struct DepositTotals {
    version: u32,
}

impl Projection for DepositTotals {
    type State = std::collections::BTreeMap<String, u64>;

    fn name(&self) -> &str {
        "deposit-totals"
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn filter(&self) -> Filter {
        Filter::EventType(TypeName::new("Deposited").expect("type"))
    }

    fn apply(&self, state: &mut Self::State, event: &RecordedEvent) {
        let decoded = chorus_aggregate::domain::decode_event::<BankAccountEvent>(
            event.event_type.as_str(),
            event.event_version,
            &event.payload,
        );
        if let Ok(BankAccountEvent::Deposited { amount, .. }) = decoded {
            *state.entry(event.stream.id().to_owned()).or_default() += amount * self.version as u64;
        }
    }
}

#[test]
fn projections_resume_from_checkpoints_and_rebuild_on_a_new_version() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store);
    for owner in ["ada", "bob"] {
        accounts
            .execute(&command(
                owner,
                &format!("BankAccount@{owner}"),
                open(owner),
            ))
            .expect("open");
    }
    accounts
        .execute(&command("a1", "BankAccount@ada", deposit(3)))
        .expect("deposit");
    let mut runner = ProjectionRunner::start(&store, DepositTotals { version: 1 }).expect("start");
    assert_eq!(runner.catch_up(&store).expect("catch up"), 1);
    assert_eq!(runner.state().get("ada"), Some(&3));

    accounts
        .execute(&command("b1", "BankAccount@bob", deposit(4)))
        .expect("deposit");
    // A restarted runner resumes from the checkpoint: only the new event is folded.
    let mut resumed = ProjectionRunner::start(&store, DepositTotals { version: 1 }).expect("start");
    assert_eq!(resumed.catch_up(&store).expect("catch up"), 1);
    assert_eq!(resumed.state().values().sum::<u64>(), 7);
    // A new version discards the checkpoint and folds everything again, with the new meaning.
    let mut upgraded =
        ProjectionRunner::start(&store, DepositTotals { version: 2 }).expect("start");
    assert_eq!(upgraded.catch_up(&store).expect("catch up"), 2);
    assert_eq!(upgraded.state().values().sum::<u64>(), 14);
    assert_eq!(upgraded.rebuild(&store).expect("rebuild"), 2);
    assert_eq!(upgraded.state().values().sum::<u64>(), 14);
}

fn bank() -> AggregateRegistry {
    AggregateRegistry::new()
        .register::<BankAccount>()
        .register::<Transfer>()
        .register::<Notebook>()
}

fn start_transfer(store: &EventStore, id: &str, from: &str, to: &str, amount: u64) {
    Repository::<Transfer>::new(store)
        .execute(&command(
            id,
            &format!("Transfer@{id}"),
            TransferCommand::StartTransfer {
                from: from.into(),
                to: to.into(),
                amount,
            },
        ))
        .expect("start transfer");
}

fn balance(store: &EventStore, id: &str) -> u64 {
    Repository::<BankAccount>::new(store)
        .load(&key(&format!("BankAccount@{id}")))
        .expect("load")
        .state
        .balance
}

fn status(store: &EventStore, id: &str) -> TransferStatus {
    Repository::<Transfer>::new(store)
        .load(&key(&format!("Transfer@{id}")))
        .expect("load")
        .state
        .status
}

#[test]
fn the_transfer_saga_moves_money_and_compensates() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store);
    for owner in ["ada", "bob"] {
        accounts
            .execute(&command(
                owner,
                &format!("BankAccount@{owner}"),
                open(owner),
            ))
            .expect("open");
    }
    accounts
        .execute(&command("seed", "BankAccount@ada", deposit(100)))
        .expect("deposit");
    start_transfer(&store, "t1", "ada", "bob", 60); // succeeds
    start_transfer(&store, "t2", "ada", "bob", 60); // ada has only 40 left: refused
    start_transfer(&store, "t3", "ada", "nobody", 10); // the destination does not exist: refund

    let mut router = EventRouter::new(bank());
    router
        .add(&store, Box::new(TransferSaga))
        .expect("add saga");
    let report = router.run_until_quiet(&store).expect("route");
    assert_eq!(status(&store, "t1"), TransferStatus::Completed);
    assert!(
        matches!(status(&store, "t2"), TransferStatus::Failed { reason } if reason.contains("insufficient funds"))
    );
    assert!(
        matches!(status(&store, "t3"), TransferStatus::Failed { reason } if reason.contains("refunded"))
    );
    assert_eq!((balance(&store, "ada"), balance(&store, "bob")), (40, 60));
    // Rejections: t2's withdrawal, t3's deposit.
    assert_eq!(report.commands_rejected, 2);

    // Every command the saga sent is traceable to the request that started its transfer.
    let t1_started = store
        .read_stream(
            &key("Transfer@t1"),
            1,
            chorus_aggregate::Direction::Forward,
            1,
        )
        .expect("read")
        .events[0]
        .clone();
    let bob = store
        .read_stream(
            &key("BankAccount@bob"),
            2,
            chorus_aggregate::Direction::Forward,
            1,
        )
        .expect("read")
        .events[0]
        .clone();
    assert_eq!(bob.correlation_id, t1_started.correlation_id);

    // A second router from the saved checkpoint has nothing to do; one from scratch re-sends
    // the same command ids, which change nothing.
    let head = store.head_position().expect("head");
    let mut resumed = EventRouter::new(bank());
    resumed
        .add(&store, Box::new(TransferSaga))
        .expect("add saga");
    assert_eq!(
        resumed
            .run_until_quiet(&store)
            .expect("route")
            .events_delivered,
        0
    );
    let mut replayed = EventRouter::new(bank());
    replayed.add_from(Box::new(TransferSaga), 1);
    let replay = replayed.run_until_quiet(&store).expect("route");
    assert!(replay.events_delivered > 0);
    assert_eq!(store.head_position().expect("head"), head);
    assert_eq!((balance(&store, "ada"), balance(&store, "bob")), (40, 60));

    // A damaged checkpoint is an error, not a silent restart.
    store
        .save_checkpoint("process-manager:transfer-saga", &[])
        .expect("damage");
    assert!(
        EventRouter::new(bank())
            .add(&store, Box::new(TransferSaga))
            .is_err()
    );
}

#[test]
fn the_registry_refuses_unknown_categories_and_malformed_commands() {
    let (_directory, store) = store();
    let registry = bank();
    let request = |stream: &str, body: serde_json::Value| CommandRequest {
        command_id: CommandId::derive(&[stream.as_bytes()]),
        stream: key(stream),
        expected: ExpectedVersion::Any,
        causation_id: CommandId::derive(&[b"c"]).into(),
        correlation_id: CommandId::derive(&[b"c"]).into(),
        timestamp_ms: 0,
        domain_version: String::new(),
        metadata: None,
        not_before_ms: None,
        command: body,
    };
    let unknown = registry.execute(&store, &request("Order@1", serde_json::json!({})));
    assert!(matches!(
        unknown,
        Err(chorus_aggregate::DispatchError::UnknownCategory { .. })
    ));
    let malformed = registry.execute(
        &store,
        &request(
            "BankAccount@1",
            serde_json::json!({"Deposit": {"amount": "lots"}}),
        ),
    );
    assert!(
        matches!(&malformed, Err(chorus_aggregate::DispatchError::Invalid(reason)) if reason.contains("not a BankAccount command")),
        "{malformed:?}"
    );
    assert_eq!(store.head_position().expect("head"), 0);
}

#[test]
fn stale_snapshots_are_refused_when_written() {
    let (_directory, store) = store();
    let stream = key("BankAccount@ada");
    let accounts = Repository::<BankAccount>::new(&store).with_snapshots_every(None);
    accounts
        .execute(&command("open", "BankAccount@ada", open("ada")))
        .expect("open");
    accounts
        .execute(&command("d1", "BankAccount@ada", deposit(5)))
        .expect("deposit");
    let loaded = accounts.load(&stream).expect("load");
    let snapshot = |epoch, version| SnapshotRecord {
        schema_version: BankAccount::SCHEMA_VERSION,
        version,
        epoch,
        state: serde_json::to_vec(&loaded.state).expect("encode"),
    };
    store
        .write_snapshot(&stream, &snapshot(loaded.epoch, 2))
        .expect("fits");
    assert!(matches!(
        store.write_snapshot(&stream, &snapshot(loaded.epoch, 3)),
        Err(chorus_aggregate::StoreError::StaleSnapshot { .. })
    ));
    // A correction moves the epoch: a state built before it may include what it superseded,
    // so a writer that loaded before the correction cannot save it afterwards.
    let encoded = encode_event(&BankAccountEvent::Deposited {
        amount: 4,
        balance: 4,
        transfer: None,
    })
    .expect("encode");
    let fix = NewEvent {
        event_id: EventId::derive(&[b"fix"]),
        event_type: encoded.event_type,
        event_version: encoded.event_version,
        payload: encoded.payload,
        supersedes: Some(2),
    };
    store
        .append(&AppendBatch::single(
            CommandId::derive(&[b"fix"]),
            stream.clone(),
            ExpectedVersion::Exact(2),
            vec![fix],
            9,
        ))
        .expect("correct");
    assert!(matches!(
        store.write_snapshot(&stream, &snapshot(loaded.epoch, 2)),
        Err(chorus_aggregate::StoreError::StaleSnapshot { .. })
    ));
    assert!(
        store.read_snapshot(&stream).expect("read").is_none(),
        "the old snapshot was dropped"
    );
    assert_eq!(accounts.load(&stream).expect("load").state.balance, 4);
}

#[test]
fn a_refused_command_id_stays_refused() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store);
    accounts
        .execute(&command("open", "BankAccount@ada", open("ada")))
        .expect("open");
    let withdraw = command(
        "w",
        "BankAccount@ada",
        BankAccountCommand::Withdraw {
            amount: 10,
            transfer: None,
        },
    );
    assert!(matches!(
        accounts.execute(&withdraw),
        Err(CommandError::Domain(_))
    ));
    accounts
        .execute(&command("d", "BankAccount@ada", deposit(50)))
        .expect("deposit");
    // The balance would cover it now, but this command id was refused: it stays refused, so a
    // re-delivered command never decides differently the second time.
    let again = accounts.execute(&withdraw);
    assert!(
        matches!(&again, Err(CommandError::AlreadyRefused { reason, .. }) if reason.contains("insufficient funds")),
        "{again:?}"
    );
    assert_eq!(balance(&store, "ada"), 50);
}

#[test]
fn replaying_the_saga_after_a_refund_creates_no_money() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store);
    accounts
        .execute(&command("a", "BankAccount@a", open("a")))
        .expect("open");
    accounts
        .execute(&command("seed", "BankAccount@a", deposit(100)))
        .expect("deposit");
    start_transfer(&store, "t", "a", "b", 100); // b is not open: refund
    let mut router = EventRouter::new(bank());
    router.add(&store, Box::new(TransferSaga)).expect("add");
    assert!(router.run_until_quiet(&store).expect("route").quiet);
    assert!(matches!(status(&store, "t"), TransferStatus::Failed { .. }));
    assert_eq!(balance(&store, "a"), 100);

    // b opens; then every event is delivered again (a lost checkpoint, or a replay).
    accounts
        .execute(&command("b", "BankAccount@b", open("b")))
        .expect("open");
    let mut replay = EventRouter::new(bank());
    replay.add_from(Box::new(TransferSaga), 1);
    replay.run_until_quiet(&store).expect("route");
    assert_eq!((balance(&store, "a"), balance(&store, "b")), (100, 0));
    assert!(matches!(status(&store, "t"), TransferStatus::Failed { .. }));
}

#[test]
fn subscribers_see_the_log_whatever_reads_hide() {
    let (_directory, store) = store();
    let stream = key("BankAccount@ada");
    let accounts = Repository::<BankAccount>::new(&store);
    accounts
        .execute(&command("open", "BankAccount@ada", open("ada")))
        .expect("open");
    let metadata = chorus_aggregate::StreamMetadata {
        max_count: Some(1),
        ..Default::default()
    };
    store
        .set_metadata(&stream, ExpectedVersion::Exact(1), &metadata)
        .expect("metadata");
    let mut early = Subscription::new(Filter::Stream(stream.clone()), 1, 100);
    let early_events = early.poll(&store).expect("poll").len();
    accounts
        .execute(&command("d1", "BankAccount@ada", deposit(1)))
        .expect("deposit");
    accounts
        .execute(&command("d2", "BankAccount@ada", deposit(1)))
        .expect("deposit");
    let early_total = early_events + early.poll(&store).expect("poll").len();
    let mut late = Subscription::new(Filter::Stream(stream.clone()), 1, 100);
    assert_eq!(late.poll(&store).expect("poll").len(), early_total);
    assert_eq!(early_total, 4);
    // A client read shows only the newest event.
    let read = store
        .read_stream(&stream, 1, chorus_aggregate::Direction::Forward, 100)
        .expect("read");
    assert_eq!(read.events.len(), 1);
    // Waiting with no deadline returns at once when there is something new.
    assert_eq!(store.wait_for_head_after(0, Duration::MAX), 4);
}

#[test]
fn a_rejection_the_router_compensates_stands_after_its_cause_is_gone() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store);
    accounts
        .execute(&command("a", "BankAccount@a", open("a")))
        .expect("open");
    accounts
        .execute(&command("seed", "BankAccount@a", deposit(100)))
        .expect("deposit");
    accounts
        .execute(&command("b", "BankAccount@b", open("b")))
        .expect("open");
    // An event of b that does not decode: deposits to b are invalid until it is corrected.
    let broken = NewEvent {
        event_id: EventId::derive(&[b"broken"]),
        event_type: TypeName::new("Deposited").expect("type"),
        event_version: 1,
        payload: br#"{"amount":"lots"}"#.to_vec(),
        supersedes: None,
    };
    let b = key("BankAccount@b");
    store
        .append(&AppendBatch::single(
            CommandId::derive(&[b"broken"]),
            b.clone(),
            ExpectedVersion::Exact(1),
            vec![broken],
            5,
        ))
        .expect("append");
    start_transfer(&store, "t", "a", "b", 100);
    let mut router = EventRouter::new(bank());
    router.add(&store, Box::new(TransferSaga)).expect("add");
    let report = router.run_until_quiet(&store).expect("route");
    assert!(report.stalled.is_empty(), "{:?}", report.stalled);
    assert!(matches!(status(&store, "t"), TransferStatus::Failed { .. }));
    assert_eq!(balance(&store, "a"), 100);

    // The operator corrects b's event; then everything is delivered again.
    let encoded = encode_event(&BankAccountEvent::Deposited {
        amount: 1,
        balance: 1,
        transfer: None,
    })
    .expect("encode");
    let fix = NewEvent {
        event_id: EventId::derive(&[b"fix"]),
        event_type: encoded.event_type,
        event_version: encoded.event_version,
        payload: encoded.payload,
        supersedes: Some(2),
    };
    store
        .append(&AppendBatch::single(
            CommandId::derive(&[b"fix"]),
            b.clone(),
            ExpectedVersion::Any,
            vec![fix],
            6,
        ))
        .expect("correct");
    let mut replay = EventRouter::new(bank());
    replay.add_from(Box::new(TransferSaga), 1);
    replay.run_until_quiet(&store).expect("route");
    // The deposit to b was compensated (refunded) once; it must not happen now as well.
    assert_eq!((balance(&store, "a"), balance(&store, "b")), (100, 1));
}

/// Emits, for every `AccountOpened`, a deposit pinned to a version the stream has passed.
struct StaleDepositor;

impl chorus_aggregate::ProcessManager for StaleDepositor {
    fn name(&self) -> &str {
        "stale-depositor"
    }

    fn filter(&self) -> Filter {
        Filter::EventType(TypeName::new("AccountOpened").expect("type"))
    }

    fn handle(&mut self, event: &RecordedEvent) -> Vec<CommandRequest> {
        let mut request =
            CommandRequest::caused_by(self.name(), event, 0, event.stream.clone(), &deposit(1))
                .expect("request");
        request.expected = ExpectedVersion::NoStream;
        vec![request]
    }
}

/// Counts the events it sees.
struct Counter(std::rc::Rc<std::cell::Cell<u64>>);

impl chorus_aggregate::ProcessManager for Counter {
    fn name(&self) -> &str {
        "counter"
    }

    fn filter(&self) -> Filter {
        Filter::All
    }

    fn handle(&mut self, _event: &RecordedEvent) -> Vec<CommandRequest> {
        self.0.set(self.0.get() + 1);
        Vec::new()
    }
}

#[test]
fn a_command_that_can_never_succeed_is_rejected_not_retried_forever() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store);
    accounts
        .execute(&command("a", "BankAccount@a", open("a")))
        .expect("open");
    let seen = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut router = EventRouter::new(bank());
    router.add(&store, Box::new(StaleDepositor)).expect("add");
    router
        .add(&store, Box::new(Counter(seen.clone())))
        .expect("add");
    let report = router.run_until_quiet(&store).expect("route");
    assert!(report.stalled.is_empty(), "{:?}", report.stalled);
    assert_eq!(report.commands_rejected, 1);
    assert!(report.quiet);
    assert_eq!(seen.get(), 1, "the manager after it still ran");
}

#[test]
fn a_refusal_never_overrides_an_append_of_the_same_command_id() {
    let (_directory, store) = store();
    let accounts = Repository::<BankAccount>::new(&store);
    let opened = command("a", "BankAccount@a", open("a"));
    accounts.execute(&opened).expect("open");
    let existing = store
        .record_refusal(opened.command_id, &opened.stream, "late refusal")
        .expect("record");
    assert!(matches!(
        existing,
        Some(chorus_aggregate::CommandRecord::Appended(_))
    ));
    assert!(accounts.execute(&opened).expect("repeat").duplicate);
}

#[test]
fn racing_system_events_are_ordered_not_merged() {
    let (_directory, store) = store();
    let stream = key("Notebook@1");
    let metadata = |count| chorus_aggregate::StreamMetadata {
        max_count: Some(count),
        ..Default::default()
    };
    store
        .set_metadata(&stream, ExpectedVersion::NoStream, &metadata(5))
        .expect("first");
    // A different change pinned to the same version loses, visibly.
    assert!(matches!(
        store.set_metadata(&stream, ExpectedVersion::NoStream, &metadata(6)),
        Err(chorus_aggregate::StoreError::WrongExpectedVersion { actual: 1, .. })
    ));
    // Changes that accept any version all land, in some order, however they race.
    std::thread::scope(|scope| {
        for round in 0..10u64 {
            let store = &store;
            let stream = &stream;
            scope.spawn(move || {
                store
                    .set_metadata(stream, ExpectedVersion::Any, &metadata(10 + round))
                    .expect("metadata")
            });
            scope.spawn(move || {
                store
                    .soft_delete(stream, ExpectedVersion::Any)
                    .expect("delete")
            });
        }
    });
    assert_eq!(
        store
            .stream_info(&stream)
            .expect("info")
            .expect("exists")
            .version,
        21
    );
}
