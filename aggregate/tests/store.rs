//! The event store's contract: appends, expected versions, idempotency, atomicity, reads in
//! every direction and index, listings, metadata, soft delete, corrections and limits.

use chorus_aggregate::limits::{BATCH_EVENTS_MAX, EVENT_PAYLOAD_BYTES_MAX};
use chorus_aggregate::{
    AppendBatch, CategoryName, CommandId, Commit, DatabaseName, Direction, EventId, EventStore,
    ExpectedVersion, Filter, NewEvent, StoreError, StreamKey, StreamMetadata, StreamWrite,
    TypeName,
};

fn store() -> (tempfile::TempDir, EventStore) {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = EventStore::open(directory.path().join("events.redb")).expect("open store");
    (directory, store)
}

fn key(text: &str) -> StreamKey {
    StreamKey::parse(text).expect("valid stream key")
}

fn event(tag: &str, index: usize) -> NewEvent {
    NewEvent {
        event_id: EventId::derive(&[tag.as_bytes(), &index.to_le_bytes()]),
        event_type: TypeName::new("Noted").expect("valid type"),
        event_version: 1,
        payload: format!("{tag}-{index}").into_bytes(),
        supersedes: None,
    }
}

fn events(tag: &str, count: usize) -> Vec<NewEvent> {
    (0..count).map(|index| event(tag, index)).collect()
}

fn batch(tag: &str, stream: &str, expected: ExpectedVersion, count: usize) -> AppendBatch {
    AppendBatch::single(
        CommandId::derive(&[tag.as_bytes()]),
        key(stream),
        expected,
        events(tag, count),
        1_000,
    )
}

fn payloads(events: &[chorus_aggregate::RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|event| String::from_utf8(event.payload.clone()).expect("utf-8 payload"))
        .collect()
}

#[test]
fn appends_number_streams_densely_and_positions_globally() {
    let (_directory, store) = store();
    let first = store
        .append(&batch("a", "Notebook@1", ExpectedVersion::NoStream, 3))
        .expect("append");
    assert_eq!((first.first_position, first.last_position), (1, 3));
    assert_eq!(first.streams[0].version, 3);
    let second = store
        .append(&batch("b", "Notebook@2", ExpectedVersion::Any, 2))
        .expect("append");
    assert_eq!((second.first_position, second.last_position), (4, 5));
    let third = store
        .append(&batch("c", "Notebook@1", ExpectedVersion::Exact(3), 1))
        .expect("append");
    assert_eq!(third.streams[0].version, 4);

    let slice = store
        .read_stream(&key("Notebook@1"), 1, Direction::Forward, 100)
        .expect("read");
    assert_eq!(slice.version, 4);
    assert_eq!(
        slice.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        slice.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3, 6]
    );
    assert_eq!(payloads(&slice.events), ["a-0", "a-1", "a-2", "c-0"]);
    let recorded = &slice.events[0];
    assert_eq!(recorded.stream, key("Notebook@1"));
    assert_eq!(recorded.command_id, Some(CommandId::derive(&[b"a"])));
    assert_eq!(recorded.causation_id, CommandId::derive(&[b"a"]).into());
    assert_eq!(recorded.timestamp_ms, 1_000);
    assert_eq!(store.head_position().expect("head"), 6);
}

#[test]
fn a_wrong_expected_version_writes_nothing() {
    let (_directory, store) = store();
    store
        .append(&batch("a", "Notebook@1", ExpectedVersion::NoStream, 2))
        .expect("append");
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(3),
    ] {
        let error = store
            .append(&batch("b", "Notebook@1", expected, 1))
            .expect_err("conflict");
        assert!(
            matches!(error, StoreError::WrongExpectedVersion { actual: 2, .. }),
            "{error}"
        );
    }
    assert_eq!(store.head_position().expect("head"), 2);
}

#[test]
fn a_batch_over_several_streams_is_all_or_nothing() {
    let (_directory, store) = store();
    store
        .append(&batch("a", "BankAccount@bob", ExpectedVersion::NoStream, 1))
        .expect("append");
    let mut both = AppendBatch::single(
        CommandId::derive(&[b"transfer"]),
        key("BankAccount@alice"),
        ExpectedVersion::NoStream,
        events("alice", 2),
        5,
    );
    both.writes.push(StreamWrite {
        stream: key("BankAccount@bob"),
        expected: ExpectedVersion::Exact(7), // wrong: bob is at 1
        events: events("bob", 1),
    });
    assert!(store.append(&both).is_err());
    assert_eq!(store.head_position().expect("head"), 1);
    assert!(
        store
            .stream_info(&key("BankAccount@alice"))
            .expect("info")
            .is_none()
    );
    assert!(
        store
            .command_record(CommandId::derive(&[b"transfer"]))
            .expect("outcome")
            .is_none()
    );

    both.writes[1].expected = ExpectedVersion::Exact(1);
    let outcome = store.append(&both).expect("append");
    assert_eq!(
        outcome
            .streams
            .iter()
            .map(|s| s.version)
            .collect::<Vec<_>>(),
        [2, 2]
    );
    assert_eq!((outcome.first_position, outcome.last_position), (2, 4));
}

#[test]
fn repeated_commands_and_repeated_events_are_idempotent() {
    let (_directory, store) = store();
    let original = batch("a", "Notebook@1", ExpectedVersion::NoStream, 2);
    let first = store.append(&original).expect("append");
    assert!(!first.duplicate);

    // Same command id: the first outcome comes back even though NoStream no longer holds.
    let again = store.append(&original).expect("repeat");
    assert!(again.duplicate);
    assert_eq!(again.streams, first.streams);
    assert_eq!(again.last_position, first.last_position);

    // Same events without a command id: recognised by their event ids.
    let mut by_events = original.clone();
    by_events.command_id = None;
    let repeat = store.append(&by_events).expect("repeat by event ids");
    assert!(repeat.duplicate);
    assert_eq!(repeat.streams[0].version, 2);
    assert_eq!((repeat.first_position, repeat.last_position), (1, 2));

    // Some of those ids mixed with new ones is a conflict.
    let mut mixed = by_events.clone();
    mixed.writes[0].events.push(event("new", 0));
    assert!(matches!(
        store.append(&mixed),
        Err(StoreError::EventIdConflict { .. })
    ));
    // The same ids on another stream are a conflict too.
    let mut elsewhere = by_events;
    elsewhere.writes[0].stream = key("Notebook@2");
    assert!(matches!(
        store.append(&elsewhere),
        Err(StoreError::EventIdConflict { .. })
    ));
    // And one id twice in a batch.
    let twice = AppendBatch::single(
        CommandId::derive(&[b"twice"]),
        key("Notebook@3"),
        ExpectedVersion::Any,
        vec![event("t", 0), event("t", 0)],
        1,
    );
    assert!(matches!(
        store.append(&twice),
        Err(StoreError::EventIdConflict { .. })
    ));
    assert_eq!(store.head_position().expect("head"), 2);
}

#[test]
fn group_commit_keeps_each_batch_independent() {
    let (_directory, store) = store();
    let batches = [
        batch("a", "Notebook@1", ExpectedVersion::NoStream, 2),
        batch("b", "Notebook@1", ExpectedVersion::NoStream, 1), // loses: a wrote first
        batch("c", "Notebook@1", ExpectedVersion::Exact(2), 1), // sees a's events
        batch("a", "Notebook@1", ExpectedVersion::NoStream, 2), // repeat of a
    ];
    let outcomes = store.append_group(&batches).expect("group");
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes[0].as_ref().is_ok_and(|o| !o.duplicate));
    assert!(matches!(
        outcomes[1],
        Err(StoreError::WrongExpectedVersion { actual: 2, .. })
    ));
    assert!(
        outcomes[2]
            .as_ref()
            .is_ok_and(|o| o.streams[0].version == 3)
    );
    assert!(outcomes[3].as_ref().is_ok_and(|o| o.duplicate));
    let slice = store
        .read_stream(&key("Notebook@1"), 1, Direction::Forward, 10)
        .expect("read");
    assert_eq!(payloads(&slice.events), ["a-0", "a-1", "c-0"]);
}

#[test]
fn deferred_commits_read_at_once_and_wait_for_the_next_durable_commit() {
    let (_directory, store) = store();
    assert!(!store.has_deferred_writes());
    store.make_durable().expect("nothing to make durable");
    let first = [batch("a", "Notebook@1", ExpectedVersion::NoStream, 2)];
    let outcomes = store
        .append_group_with(&first, Commit::Deferred)
        .expect("deferred group");
    assert!(outcomes[0].is_ok());
    assert!(store.has_deferred_writes());
    // Visible at once, to reads and to the next append's checks.
    let slice = store
        .read_stream(&key("Notebook@1"), 1, Direction::Forward, 10)
        .expect("read");
    assert_eq!(payloads(&slice.events), ["a-0", "a-1"]);
    store.make_durable().expect("make durable");
    assert!(!store.has_deferred_writes());

    // A refusal recorded deferred is the same record; a replay-log append (durable) makes it
    // durable, an empty one commits nothing and leaves it deferred.
    let refused = CommandId::derive(&[b"refused"]);
    store
        .record_refusal_with(refused, &key("Notebook@2"), "no", Commit::Deferred)
        .expect("refusal");
    assert!(store.has_deferred_writes());
    store.append_log_records(&[]).expect("empty log append");
    assert!(store.has_deferred_writes());
    store
        .append_log_records(&[(0, b"record".to_vec())])
        .expect("log append");
    assert!(!store.has_deferred_writes());
    assert!(matches!(
        store.command_record(refused).expect("command record"),
        Some(chorus_aggregate::CommandRecord::Refused { .. })
    ));
    // A durable group commit makes the earlier deferred ones durable with it.
    let second = [batch("b", "Notebook@1", ExpectedVersion::Exact(2), 1)];
    store
        .append_group_with(&second, Commit::Deferred)
        .expect("deferred group");
    let third = [batch("c", "Notebook@1", ExpectedVersion::Exact(3), 1)];
    store.append_group(&third).expect("durable group");
    assert!(!store.has_deferred_writes());
}

#[test]
fn transferred_state_keeps_its_source_numbering_and_positions_never_go_back() {
    let (_directory, store) = store();
    let batches = [
        batch("a", "Notebook@1", ExpectedVersion::NoStream, 2),
        batch("b", "Notebook@2", ExpectedVersion::NoStream, 1),
        batch("c", "Notebook@1", ExpectedVersion::Exact(2), 1),
    ];
    // The source held other streams at positions 3 to 6 and 8, and its head was 10.
    let outcomes = store
        .append_group_at(&batches, &[1, 7, 9], 10)
        .expect("group");
    let firsts: Vec<u64> = outcomes
        .iter()
        .map(|outcome| outcome.as_ref().expect("appended").first_position)
        .collect();
    assert_eq!(firsts, [1, 7, 9]);
    assert_eq!(store.head_position().expect("head"), 10);
    let all = store
        .read(&Filter::All, 1, Direction::Forward, 10)
        .expect("read");
    let positions: Vec<u64> = all.events.iter().map(|event| event.position).collect();
    assert_eq!(positions, [1, 2, 7, 9], "the gaps stay empty");
    // What follows is numbered from the source's head.
    let next = store
        .append(&batch("d", "Notebook@2", ExpectedVersion::Exact(1), 1))
        .expect("append");
    assert_eq!(next.first_position, 11);
    // A position already passed is not reused: the write goes at the next free one.
    let late = store
        .append_group_at(
            &[batch("e", "Notebook@3", ExpectedVersion::NoStream, 1)],
            &[5],
            0,
        )
        .expect("group");
    assert_eq!(late[0].as_ref().expect("appended").first_position, 12);
}

#[test]
fn reads_page_forward_and_backward() {
    let (_directory, store) = store();
    store
        .append(&batch("a", "Notebook@1", ExpectedVersion::Any, 5))
        .expect("append");
    let stream = key("Notebook@1");
    let page = store
        .read_stream(&stream, 1, Direction::Forward, 2)
        .expect("read");
    assert_eq!(
        page.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(page.next, Some(3));
    let last = store
        .read_stream(&stream, 5, Direction::Forward, 2)
        .expect("read");
    assert_eq!(last.events.len(), 1);
    assert_eq!(last.next, None);
    let newest = store
        .read_stream(&stream, u64::MAX, Direction::Backward, 2)
        .expect("read");
    assert_eq!(
        newest.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [5, 4]
    );
    assert_eq!(newest.next, Some(3));
    let missing = store
        .read_stream(&key("Notebook@none"), 1, Direction::Forward, 10)
        .expect("read");
    assert!(missing.events.is_empty() && missing.version == 0);
    let all_back = store
        .read(&Filter::All, u64::MAX, Direction::Backward, 3)
        .expect("read");
    assert_eq!(
        all_back
            .events
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        [5, 4, 3]
    );
    // A count of 0 reads one event: an empty page would wrongly say "the end".
    let one = store
        .read_stream(&stream, 1, Direction::Forward, 0)
        .expect("read");
    assert_eq!((one.events.len(), one.next), (1, Some(2)));
}

#[test]
fn category_type_and_all_reads_follow_the_global_order() {
    let (_directory, store) = store();
    store
        .append(&batch("n1", "Notebook@1", ExpectedVersion::Any, 2))
        .expect("append");
    store
        .append(&batch("b1", "bank/BankAccount@1", ExpectedVersion::Any, 1))
        .expect("append");
    store
        .append(&batch("n2", "Notebook@2", ExpectedVersion::Any, 1))
        .expect("append");
    let mut typed = batch("t", "Notebook@1", ExpectedVersion::Any, 1);
    typed.writes[0].events[0].event_type = TypeName::new("Renamed").expect("type");
    store.append(&typed).expect("append");

    let all = store
        .read(&Filter::All, 1, Direction::Forward, 100)
        .expect("read");
    assert_eq!(
        all.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let notebooks = Filter::Category(
        DatabaseName::default_database(),
        CategoryName::new("Notebook").expect("category"),
    );
    let category = store
        .read(&notebooks, 1, Direction::Forward, 100)
        .expect("read");
    assert_eq!(payloads(&category.events), ["n1-0", "n1-1", "n2-0", "t-0"]);
    let from_three = store
        .read(&notebooks, 3, Direction::Forward, 2)
        .expect("read");
    assert_eq!(payloads(&from_three.events), ["n2-0", "t-0"]);
    let renamed = Filter::EventType(TypeName::new("Renamed").expect("type"));
    let by_type = store
        .read(&renamed, 1, Direction::Forward, 100)
        .expect("read");
    assert_eq!(payloads(&by_type.events), ["t-0"]);
    let by_stream = store
        .read(
            &Filter::Stream(key("Notebook@1")),
            2,
            Direction::Forward,
            100,
        )
        .expect("read");
    assert_eq!(
        by_stream
            .events
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        [2, 5]
    );
    let unknown = Filter::EventType(TypeName::new("Nothing").expect("type"));
    assert!(
        store
            .read(&unknown, 1, Direction::Forward, 10)
            .expect("read")
            .events
            .is_empty()
    );
}

#[test]
fn listings_show_databases_categories_and_live_streams() {
    let (_directory, store) = store();
    for stream in ["Notebook@b", "Notebook@a", "Order@1", "bank/BankAccount@x"] {
        store
            .append(&batch(stream, stream, ExpectedVersion::Any, 1))
            .expect("append");
    }
    let databases = store.list_databases().expect("list");
    assert_eq!(
        databases.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
        ["bank", "default"]
    );
    let categories = store
        .list_categories(&DatabaseName::default_database())
        .expect("list");
    assert_eq!(
        categories.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        ["Notebook", "Order"]
    );
    let notebook = CategoryName::new("Notebook").expect("category");
    let default = DatabaseName::default_database();
    let streams = store
        .list_streams(&default, &notebook, None, 10)
        .expect("list");
    assert_eq!(
        streams.iter().map(|s| s.stream.id()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let after_a = store
        .list_streams(&default, &notebook, Some("a"), 10)
        .expect("list");
    assert_eq!(
        after_a.iter().map(|s| s.stream.id()).collect::<Vec<_>>(),
        ["b"]
    );
    store
        .soft_delete(&key("Notebook@a"), ExpectedVersion::Exact(1))
        .expect("delete");
    let live = store
        .list_streams(&default, &notebook, None, 10)
        .expect("list");
    assert_eq!(
        live.iter().map(|s| s.stream.id()).collect::<Vec<_>>(),
        ["b"]
    );
    // System types are listed too: the soft delete was a `$deleted` event.
    assert_eq!(
        store.list_event_types().expect("types"),
        ["$deleted", "Noted"].map(|name| TypeName::new(name).expect("type"))
    );
}

#[test]
fn metadata_limits_what_reads_show() {
    let (_directory, store) = store();
    let stream = key("Notebook@1");
    for (index, timestamp) in [100, 200, 300, 400, 500].into_iter().enumerate() {
        let mut one = batch(&format!("e{index}"), "Notebook@1", ExpectedVersion::Any, 1);
        one.timestamp_ms = timestamp;
        store.append(&one).expect("append");
    }
    // The domain events a read shows (metadata changes are `$metadata` events in the stream).
    let visible = |store: &EventStore| -> Vec<u64> {
        store
            .read_stream(&stream, 1, Direction::Forward, 100)
            .expect("read")
            .events
            .iter()
            .filter(|e| !e.event_type.is_system())
            .map(|e| e.sequence)
            .collect()
    };
    let set = |expected: u64, metadata: StreamMetadata| {
        store
            .set_metadata(&stream, ExpectedVersion::Exact(expected), &metadata)
            .expect("metadata")
            .streams[0]
            .version
    };
    // max_count counts every event of the stream, the `$metadata` event (6) included.
    assert_eq!(
        set(
            5,
            StreamMetadata {
                max_count: Some(3),
                ..Default::default()
            }
        ),
        6
    );
    assert_eq!(visible(&store), [4, 5]);
    set(
        6,
        StreamMetadata {
            truncate_before: Some(3),
            ..Default::default()
        },
    );
    assert_eq!(visible(&store), [3, 4, 5]);
    // Measured against the newest agreed timestamp (500), not a clock.
    set(
        7,
        StreamMetadata {
            max_age_ms: Some(150),
            ..Default::default()
        },
    );
    assert_eq!(visible(&store), [4, 5]);
    // $all honours the stream's metadata too.
    let all = store
        .read(&Filter::All, 1, Direction::Forward, 100)
        .expect("read");
    assert_eq!(
        all.events
            .iter()
            .filter(|e| !e.event_type.is_system())
            .count(),
        2
    );
    // A metadata change is ordered like any append: a stale expected version is refused.
    assert!(matches!(
        store.set_metadata(
            &stream,
            ExpectedVersion::Exact(7),
            &StreamMetadata::default()
        ),
        Err(StoreError::WrongExpectedVersion { actual: 8, .. })
    ));
    set(8, StreamMetadata::default());
    assert_eq!(visible(&store), [1, 2, 3, 4, 5]);
    let fresh = store
        .set_metadata(
            &key("Notebook@new"),
            ExpectedVersion::NoStream,
            &StreamMetadata::default(),
        )
        .expect("metadata on a new stream");
    assert_eq!(fresh.streams[0].version, 1);
}

#[test]
fn system_events_are_checked_like_any_input() {
    let (_directory, store) = store();
    let stream = key("Notebook@1");
    store
        .append(&batch("a", "Notebook@1", ExpectedVersion::Any, 2))
        .expect("append");
    let system = |event_type: &str, payload: &[u8], supersedes: Option<u64>| {
        AppendBatch::single(
            CommandId::derive(&[event_type.as_bytes(), payload]),
            stream.clone(),
            ExpectedVersion::Any,
            vec![NewEvent {
                event_id: EventId::derive(&[event_type.as_bytes(), payload]),
                event_type: TypeName::new(event_type).expect("type"),
                event_version: 1,
                payload: payload.to_vec(),
                supersedes,
            }],
            1,
        )
    };
    for (event_type, payload, supersedes, reason) in [
        ("$compact", &b""[..], None, "reserved"),
        (
            "$metadata",
            b"{\"max_count\": \"many\"}",
            None,
            "not stream metadata",
        ),
        ("$deleted", b"x", None, "must be empty"),
        ("$deleted", b"", Some(1), "system events"),
    ] {
        let error = store
            .append(&system(event_type, payload, supersedes))
            .expect_err(event_type);
        assert!(error.to_string().contains(reason), "{event_type}: {error}");
    }
    // A `$metadata` event cannot be superseded either.
    let metadata = StreamMetadata {
        max_count: Some(10),
        ..Default::default()
    };
    store
        .set_metadata(&stream, ExpectedVersion::Exact(2), &metadata)
        .expect("metadata");
    let mut fix = event("fix", 0);
    fix.supersedes = Some(3);
    let error = store
        .append(&AppendBatch::single(
            CommandId::derive(&[b"fix"]),
            stream.clone(),
            ExpectedVersion::Any,
            vec![fix],
            1,
        ))
        .expect_err("superseding a system event");
    assert!(error.to_string().contains("system events"), "{error}");
    assert_eq!(store.head_position().expect("head"), 3);
}

#[test]
fn soft_delete_hides_history_and_appends_continue_the_numbering() {
    let (_directory, store) = store();
    let stream = key("Notebook@1");
    store
        .append(&batch("a", "Notebook@1", ExpectedVersion::Any, 3))
        .expect("append");
    assert!(matches!(
        store.soft_delete(&stream, ExpectedVersion::Exact(2)),
        Err(StoreError::WrongExpectedVersion { actual: 3, .. })
    ));
    let deleted = store
        .soft_delete(&stream, ExpectedVersion::Exact(3))
        .expect("delete");
    // The `$deleted` event takes sequence 4: a decision made before it no longer applies.
    assert_eq!(deleted.streams[0].version, 4);
    assert!(matches!(
        store.append(&batch("late", "Notebook@1", ExpectedVersion::Exact(3), 1)),
        Err(StoreError::WrongExpectedVersion { actual: 4, .. })
    ));
    assert!(
        store
            .read_stream(&stream, 1, Direction::Forward, 10)
            .expect("read")
            .events
            .is_empty()
    );
    assert!(
        store
            .stream_info(&stream)
            .expect("info")
            .is_some_and(|info| info.deleted)
    );
    store
        .append(&batch("b", "Notebook@1", ExpectedVersion::Exact(4), 1))
        .expect("append");
    let slice = store
        .read_stream(&stream, 1, Direction::Forward, 10)
        .expect("read");
    assert_eq!(
        slice.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [5]
    );
    // The change feed still has everything, in order.
    let log = store
        .read_log(&Filter::Stream(stream.clone()), 1, 10)
        .expect("log");
    assert_eq!(
        log.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(
        store
            .stream_info(&stream)
            .expect("info")
            .is_some_and(|info| !info.deleted)
    );
}

#[test]
fn corrections_supersede_without_rewriting_history() {
    let (_directory, store) = store();
    let stream = key("Notebook@1");
    store
        .append(&batch("a", "Notebook@1", ExpectedVersion::Any, 3))
        .expect("append");
    let mut fix = event("fix", 0);
    fix.supersedes = Some(2);
    let correction = AppendBatch::single(
        CommandId::derive(&[b"fix"]),
        stream.clone(),
        ExpectedVersion::Exact(3),
        vec![fix.clone()],
        2_000,
    );
    store.append(&correction).expect("correct");
    let slice = store
        .read_stream(&stream, 1, Direction::Forward, 10)
        .expect("read");
    assert_eq!(payloads(&slice.events), ["a-0", "a-2", "fix-0"]);
    assert_eq!(slice.events[2].supersedes, Some(2));
    assert_eq!(slice.version, 4);
    // The superseded event is still stored: the global log keeps its position.
    let all = store
        .read(&Filter::All, 1, Direction::Forward, 10)
        .expect("read");
    assert_eq!(
        all.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 3, 4]
    );

    for (target, expected_reason) in [
        (2, "superseded already"),
        (9, "no such event"),
        (0, "no such event"),
    ] {
        let mut again = event("again", target as usize);
        again.supersedes = Some(target);
        let error = store
            .append(&AppendBatch::single(
                CommandId::derive(&[b"again", &target.to_le_bytes()]),
                stream.clone(),
                ExpectedVersion::Any,
                vec![again],
                3_000,
            ))
            .expect_err("bad correction");
        assert!(error.to_string().contains(expected_reason), "{error}");
    }
    assert_eq!(store.head_position().expect("head"), 4);
}

#[test]
fn oversized_batches_are_refused_whole() {
    let (_directory, store) = store();
    let too_many = batch(
        "many",
        "Notebook@1",
        ExpectedVersion::Any,
        BATCH_EVENTS_MAX + 1,
    );
    assert!(matches!(
        store.append(&too_many),
        Err(StoreError::LimitExceeded { .. })
    ));
    let mut too_big = batch("big", "Notebook@1", ExpectedVersion::Any, 1);
    too_big.writes[0].events[0].payload = vec![0; EVENT_PAYLOAD_BYTES_MAX + 1];
    assert!(matches!(
        store.append(&too_big),
        Err(StoreError::LimitExceeded { .. })
    ));
    let mut twice = batch("twice", "Notebook@1", ExpectedVersion::Any, 1);
    twice.writes.push(twice.writes[0].clone());
    twice.writes[1].events = events("other", 1);
    assert!(matches!(
        store.append(&twice),
        Err(StoreError::StreamWrittenTwice { .. })
    ));
    assert_eq!(store.head_position().expect("head"), 0);
}

#[test]
fn everything_survives_reopening() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("events.redb");
    {
        let store = EventStore::open(&path).expect("open");
        store
            .append(&batch("a", "Notebook@1", ExpectedVersion::Any, 3))
            .expect("append");
        store
            .append(&batch("b", "Order@1", ExpectedVersion::Any, 1))
            .expect("append");
    }
    let store = EventStore::open(&path).expect("reopen");
    assert_eq!(store.head_position().expect("head"), 4);
    let slice = store
        .read_stream(&key("Notebook@1"), 1, Direction::Forward, 10)
        .expect("read");
    assert_eq!(payloads(&slice.events), ["a-0", "a-1", "a-2"]);
    let next = store
        .append(&batch("c", "Notebook@1", ExpectedVersion::Exact(3), 1))
        .expect("append");
    assert_eq!(next.last_position, 5);
    assert!(
        store
            .append(&batch("a", "Notebook@1", ExpectedVersion::Any, 3))
            .expect("repeat")
            .duplicate
    );
}

#[test]
fn a_file_that_is_not_a_store_is_an_error() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("garbage.redb");
    std::fs::write(&path, vec![0x5a; 10_000]).expect("write garbage");
    let error = EventStore::open(&path).err().expect("garbage refused");
    assert!(matches!(error, StoreError::Storage(_)), "{error}");
}

#[test]
fn openers_racing_to_create_a_store_never_replace_each_others_file() {
    for round in 0..20 {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join(format!("race-{round}.redb"));
        let appended = std::thread::scope(|scope| {
            let openers: Vec<_> = (0..2)
                .map(|opener| {
                    let path = &path;
                    scope.spawn(move || match EventStore::open(path) {
                        Ok(store) => {
                            let tag = format!("{round}-{opener}");
                            store
                                .append(&batch(&tag, "Notebook@1", ExpectedVersion::Any, 1))
                                .expect("append");
                            true
                        }
                        // The other opener holds the file: redb's lock, not a lost file.
                        Err(error) => {
                            let text = error.to_string();
                            assert!(!text.contains("No such file"), "{text}");
                            false
                        }
                    })
                })
                .collect();
            openers
                .into_iter()
                .map(|opener| opener.join().expect("opener"))
                .filter(|appended| *appended)
                .count()
        });
        let store = EventStore::open(&path).expect("reopen");
        assert!(appended >= 1);
        assert_eq!(
            store.head_position().expect("head"),
            appended as u64,
            "round {round}"
        );
        let leftovers = std::fs::read_dir(directory.path()).expect("list").count();
        assert_eq!(leftovers, 1, "only the store is left");
    }
}

#[test]
fn the_replay_log_keeps_order_and_generations_across_reopening_and_drops_old_generations() {
    let (_directory, store) = store();
    assert!(store.log_records().expect("reads").is_empty());
    store
        .append_log_records(&[(0, b"a".to_vec()), (0, b"b".to_vec())])
        .expect("appends");
    store
        .append_log_records(&[(1, b"c".to_vec()), (2, Vec::new())])
        .expect("appends");
    store.append_log_records(&[]).expect("an empty append");
    let path = store.path().to_path_buf();
    drop(store);
    let store = EventStore::open(&path).expect("reopens");
    let expected = vec![
        (0, b"a".to_vec()),
        (0, b"b".to_vec()),
        (1, b"c".to_vec()),
        (2, Vec::new()),
    ];
    assert_eq!(store.log_records().expect("reads"), expected);
    assert_eq!(store.drop_log_records_below(2).expect("drops"), 3);
    assert_eq!(store.log_records().expect("reads"), vec![(2, Vec::new())]);
    // Records appended after a drop still come after the kept ones.
    store
        .append_log_records(&[(2, b"d".to_vec())])
        .expect("appends");
    assert_eq!(
        store.log_records().expect("reads"),
        vec![(2, Vec::new()), (2, b"d".to_vec())]
    );
    // The log does not touch the events.
    assert_eq!(store.head_position().expect("head"), 0);
}
