//! Given / when / then: the shop's aggregates one command at a time, then the saga and the
//! projection over a real event store, as every member of a section runs them.

use chorus_aggregate::testkit::AggregateTest;
use chorus_aggregate::{
    AggregateRegistry, CommandEnvelope, CommandId, EventRouter, EventStore, ProjectionRunner,
    Repository, StreamKey,
};
use chorus_aggregate::{Emitter, StreamProjection};
use chorus_shop::fulfilment::{self, Fulfilment};
use chorus_shop::order::{Order, OrderCommand, OrderError, OrderEvent, OrderStatus};
use chorus_shop::orders_by_sku::OrdersBySku;
use chorus_shop::stock::{Stock, StockCommand, StockError, StockEvent};
use chorus_shop::stock_levels::{Levels, StockLevels};

#[test]
fn stock_is_reserved_only_when_it_is_there() {
    AggregateTest::<Stock>::given([StockEvent::Restocked { quantity: 3 }])
        .when(StockCommand::Reserve {
            order: "o1".into(),
            quantity: 2,
        })
        .then([StockEvent::Reserved {
            order: "o1".into(),
            quantity: 2,
        }])
        .and_state(|stock| assert_eq!(stock.available, 1));
    AggregateTest::<Stock>::given([StockEvent::Restocked { quantity: 3 }])
        .when(StockCommand::Reserve {
            order: "o1".into(),
            quantity: 4,
        })
        .then_error(StockError::OutOfStock {
            available: 3,
            wanted: 4,
        });
    AggregateTest::<Stock>::given_no_events()
        .when(StockCommand::Restock { quantity: 0 })
        .then_error(StockError::ZeroQuantity);
}

#[test]
fn a_release_gives_back_exactly_what_the_order_held() {
    AggregateTest::<Stock>::given([
        StockEvent::Restocked { quantity: 5 },
        StockEvent::Reserved {
            order: "o1".into(),
            quantity: 2,
        },
    ])
    .when(StockCommand::Release { order: "o1".into() })
    .then([StockEvent::Released {
        order: "o1".into(),
        quantity: 2,
    }])
    .and_state(|stock| {
        assert_eq!(stock.available, 5);
        assert!(stock.reserved.is_empty());
    });
    AggregateTest::<Stock>::given([StockEvent::Restocked { quantity: 5 }])
        .when(StockCommand::Release { order: "o9".into() })
        .then_error(StockError::NotReserved("o9".into()));
}

#[test]
fn an_order_is_placed_once_and_settled_once() {
    let placed = OrderEvent::Placed {
        sku: "apple".into(),
        quantity: 2,
    };
    AggregateTest::<Order>::given([placed.clone()])
        .when(OrderCommand::Place {
            sku: "pear".into(),
            quantity: 1,
        })
        .then_error(OrderError::AlreadyPlaced);
    AggregateTest::<Order>::given([placed.clone()])
        .when(OrderCommand::Confirm)
        .then([OrderEvent::Confirmed])
        .and_state(|order| assert_eq!(order.status, OrderStatus::Confirmed));
    AggregateTest::<Order>::given([placed, OrderEvent::Confirmed])
        .when(OrderCommand::Cancel {
            reason: "changed my mind".into(),
        })
        .then_error(OrderError::NotWaiting);
    AggregateTest::<Order>::given_no_events()
        .when(OrderCommand::Place {
            sku: "not a valid id@".into(),
            quantity: 1,
        })
        .then_error_matching(|error| matches!(error, OrderError::Invalid(_)));
}

fn store() -> (tempfile::TempDir, EventStore) {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = EventStore::open(directory.path().join("shop.redb")).expect("open store");
    (directory, store)
}

fn key(text: &str) -> StreamKey {
    StreamKey::parse(text).expect("valid stream key")
}

fn customer<C>(tag: &str, stream: &str, command: C) -> CommandEnvelope<C> {
    CommandEnvelope::new(CommandId::derive(&[tag.as_bytes()]), key(stream), command).at(1_000)
}

#[test]
fn orders_by_article_are_written_as_streams_once_and_clients_cannot_write_them() {
    let (_directory, store) = store();
    place(&store, "a1", "apple", 2);
    place(&store, "p1", "pear", 1);
    place(&store, "a2", "apple", 1);
    let registry = || shop().emitted_category(OrdersBySku::CATEGORY);
    let route = |from| {
        let mut router = EventRouter::new(registry());
        router.add_from(Box::new(Emitter(OrdersBySku)), from);
        router.run_until_quiet(&store).expect("routed")
    };
    route(1);
    let ordered = |sku: &str| -> Vec<serde_json::Value> {
        store
            .read_stream(
                &key(&format!("OrdersBySku@{sku}")),
                1,
                chorus_aggregate::Direction::Forward,
                10,
            )
            .expect("read")
            .events
            .iter()
            .map(|event| serde_json::from_slice(&event.payload).expect("json"))
            .collect()
    };
    assert_eq!(
        ordered("apple"),
        [
            serde_json::json!({"order": "a1", "quantity": 2}),
            serde_json::json!({"order": "a2", "quantity": 1})
        ]
    );
    assert_eq!(ordered("pear").len(), 1);
    // A replay from the first event emits under the same ids: nothing new.
    let head = store.head_position().expect("head");
    route(1);
    assert_eq!(store.head_position().expect("head"), head);
    // What is not an emitted event is refused.
    let forged = chorus_aggregate::CommandRequest::new(
        CommandId::derive(&[b"forged"]),
        key("OrdersBySku@apple"),
        serde_json::json!({"event_type": "Ordered", "data": {}, "extra": 1}),
    );
    assert!(registry().execute(&store, &forged).is_err());
    assert!(registry().is_emitted_category("OrdersBySku"));
    assert!(!registry().is_emitted_category("Order"));
}

fn shop() -> AggregateRegistry {
    AggregateRegistry::new()
        .register::<Order>()
        .register::<Stock>()
}

fn place(store: &EventStore, order: &str, sku: &str, quantity: u64) {
    Repository::<Order>::new(store)
        .execute(&customer(
            order,
            &format!("Order@{order}"),
            OrderCommand::Place {
                sku: sku.into(),
                quantity,
            },
        ))
        .expect("placed");
}

fn status(store: &EventStore, order: &str) -> OrderStatus {
    Repository::<Order>::new(store)
        .load(&key(&format!("Order@{order}")))
        .expect("load")
        .state
        .status
}

#[test]
fn an_order_still_waiting_at_its_deadline_is_cancelled_and_a_settled_one_is_left() {
    let (_directory, store) = store();
    place(&store, "late", "pear", 1); // no pear stock stream yet: nothing answers
    place(&store, "done", "pear", 1);
    Repository::<Order>::new(&store)
        .execute(&customer(
            "done-confirm",
            "Order@done",
            OrderCommand::Confirm,
        ))
        .expect("confirmed");
    let mut saga = Fulfilment;
    let registry = shop();
    for order in ["late", "done"] {
        let placed = store
            .read_stream(
                &key(&format!("Order@{order}")),
                1,
                chorus_aggregate::Direction::Forward,
                1,
            )
            .expect("read")
            .events
            .remove(0);
        let commands = chorus_aggregate::ProcessManager::handle(&mut saga, &placed);
        let deadline = commands
            .into_iter()
            .find(|command| command.not_before_ms.is_some())
            .expect("a deadline");
        // Executed when due, as the section would: a waiting order is cancelled, a
        // confirmed one refuses.
        let outcome = registry.execute(&store, &deadline);
        assert_eq!(outcome.is_ok(), order == "late", "{order}: {outcome:?}");
    }
    assert!(matches!(
        status(&store, "late"),
        OrderStatus::Cancelled { reason } if reason.contains("not confirmed")
    ));
    assert_eq!(status(&store, "done"), OrderStatus::Confirmed);
}

#[test]
fn the_saga_confirms_what_is_in_stock_and_compensates_the_rest() {
    let (_directory, store) = store();
    Repository::<Stock>::new(&store)
        .execute(&customer(
            "restock",
            "Stock@apple",
            StockCommand::Restock { quantity: 3 },
        ))
        .expect("restocked");
    place(&store, "o1", "apple", 2); // in stock: confirmed
    place(&store, "o2", "apple", 2); // one left: cancelled
    place(&store, "o3", "apple", 1); // reserved, but the customer cancels first: released
    Repository::<Order>::new(&store)
        .execute(&customer(
            "o3-cancel",
            "Order@o3",
            OrderCommand::Cancel {
                reason: "changed my mind".into(),
            },
        ))
        .expect("cancelled");

    let mut router = EventRouter::new(shop());
    router
        .add(&store, Box::new(Fulfilment))
        .expect("saga added");
    let report = router.run_until_quiet(&store).expect("routed");

    assert_eq!(status(&store, "o1"), OrderStatus::Confirmed);
    assert!(
        matches!(status(&store, "o2"), OrderStatus::Cancelled { reason } if reason.contains("out of stock")),
        "{:?}",
        status(&store, "o2")
    );
    let apple = Repository::<Stock>::new(&store)
        .load(&key("Stock@apple"))
        .expect("load")
        .state;
    assert_eq!(apple.available, 1, "o3's item went back on the shelf");
    assert_eq!(apple.reserved.keys().collect::<Vec<_>>(), ["o1"]);
    // Rejected: o2's reservation, o3's confirmation.
    assert_eq!(report.commands_rejected, 2);
    // Each order's deadline is handed back, scheduled a minute after its placing (the
    // in-process router has no agreed time; in a cluster the section fires them).
    assert_eq!(report.scheduled.len(), 3);
    for deadline in &report.scheduled {
        let placed = store
            .read_stream(&deadline.stream, 1, chorus_aggregate::Direction::Forward, 1)
            .expect("read")
            .events[0]
            .timestamp_ms;
        assert_eq!(
            deadline.not_before_ms,
            Some(placed + fulfilment::CONFIRM_DEADLINE_MS)
        );
    }

    // A replay from the first event sends the same command ids: nothing changes.
    let head = store.head_position().expect("head");
    let mut replay = EventRouter::new(shop());
    replay.add_from(Box::new(Fulfilment), 1);
    replay.run_until_quiet(&store).expect("replayed");
    assert_eq!(store.head_position().expect("head"), head);

    // The projection agrees with the aggregate, and a rebuild gives the same levels.
    let mut levels = ProjectionRunner::start(&store, StockLevels).expect("projection");
    levels.catch_up(&store).expect("caught up");
    let expected = Levels {
        available: 1,
        reserved: 2,
    };
    assert_eq!(levels.state().get("apple"), Some(&expected));
    levels.rebuild(&store).expect("rebuilt");
    assert_eq!(levels.state().get("apple"), Some(&expected));
}
