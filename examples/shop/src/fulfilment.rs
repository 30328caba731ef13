//! The fulfilment saga, across `Order` and `Stock` streams (which may live in different
//! sections):
//!
//! 1. `Order Placed {sku, quantity}` → `Reserve {order, quantity}` on `Stock@<sku>`.
//! 2. `Stock Reserved {order}` → `Confirm` on `Order@<order>`.
//!
//! Compensation: a refused reservation (out of stock) cancels the order; a refused
//! confirmation (the customer cancelled while the stock was being reserved) releases the
//! reservation.
//!
//! Deadline: placing an order also schedules its cancellation `CONFIRM_DEADLINE_MS` after
//! the placing's agreed time (`CommandRequest::not_before`). The section executes it then,
//! from its agreed time: an order confirmed by then refuses it (and the saga lets that be);
//! one still waiting (its stock's section unreachable, say) is cancelled, and a reservation
//! that arrives later is released by the compensation above. The saga keeps no state of its own: each event carries what the next step
//! needs, so it resumes anywhere after a crash, and every command id derives from the event
//! that caused it, so a replay changes nothing.

use chorus_aggregate::domain::decode_event;
use chorus_aggregate::{
    Aggregate, CommandRequest, Filter, ProcessManager, RecordedEvent, StreamKey,
};
use serde::Serialize;

use crate::order::{Order, OrderCommand, OrderEvent};
use crate::stock::{Stock, StockCommand, StockEvent};

/// The saga's name: it keys its checkpoint and derives its command ids. Never rename it in a
/// running shop.
pub const FULFILMENT: &str = "fulfilment";

/// How long an order may wait for its stock before the saga cancels it (ms of agreed time).
pub const CONFIRM_DEADLINE_MS: u64 = 60_000;

/// Command indexes per event: a command id is used once, so each must differ.
const NEXT_STEP: usize = 0;
const COMPENSATION: usize = 1;
const DEADLINE: usize = 2;

/// The fulfilment saga.
#[derive(Debug, Default)]
pub struct Fulfilment;

impl Fulfilment {
    /// The command `event` sets off: `step` says which (`NEXT_STEP`, `COMPENSATION` or
    /// `DEADLINE`).
    fn send(
        event: &RecordedEvent,
        step: usize,
        stream: Result<StreamKey, String>,
        command: &impl Serialize,
    ) -> Vec<CommandRequest> {
        // Ids in these events were checked when the order was placed; one that names no
        // stream here is a forged or corrupt event, and the saga leaves it.
        let Ok(stream) = stream else {
            return Vec::new();
        };
        CommandRequest::caused_by(FULFILMENT, event, step, stream, command)
            .map(|request| vec![request])
            .unwrap_or_default()
    }
}

impl ProcessManager for Fulfilment {
    fn name(&self) -> &str {
        FULFILMENT
    }

    fn filter(&self) -> Filter {
        Filter::All
    }

    fn handle(&mut self, event: &RecordedEvent) -> Vec<CommandRequest> {
        let (kind, version, payload) = (
            event.event_type.as_str(),
            event.event_version,
            &event.payload,
        );
        match event.stream.category().as_str() {
            Order::CATEGORY => match decode_event::<OrderEvent>(kind, version, payload) {
                Ok(OrderEvent::Placed { sku, quantity }) => {
                    let reserve = StockCommand::Reserve {
                        order: event.stream.id().to_owned(),
                        quantity,
                    };
                    let cancel = OrderCommand::Cancel {
                        reason: format!("not confirmed within {} s", CONFIRM_DEADLINE_MS / 1_000),
                    };
                    let deadline = event.timestamp_ms + CONFIRM_DEADLINE_MS;
                    let mut commands =
                        Self::send(event, NEXT_STEP, crate::stock_key(&sku), &reserve);
                    commands.extend(
                        Self::send(event, DEADLINE, Ok(event.stream.clone()), &cancel)
                            .into_iter()
                            .map(|request| request.not_before(deadline)),
                    );
                    commands
                }
                _ => Vec::new(),
            },
            Stock::CATEGORY => match decode_event::<StockEvent>(kind, version, payload) {
                Ok(StockEvent::Reserved { order, .. }) => Self::send(
                    event,
                    NEXT_STEP,
                    crate::order_key(&order),
                    &OrderCommand::Confirm,
                ),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn on_rejected(
        &mut self,
        event: &RecordedEvent,
        request: &CommandRequest,
        reason: &str,
    ) -> Vec<CommandRequest> {
        let refused_reserve = serde_json::from_value::<StockCommand>(request.command.clone());
        let refused_confirm = serde_json::from_value::<OrderCommand>(request.command.clone());
        match (
            request.stream.category().as_str(),
            refused_reserve,
            refused_confirm,
        ) {
            (Stock::CATEGORY, Ok(StockCommand::Reserve { order, .. }), _) => {
                let cancel = OrderCommand::Cancel {
                    reason: format!("no stock: {reason}"),
                };
                Self::send(event, COMPENSATION, crate::order_key(&order), &cancel)
            }
            (Order::CATEGORY, _, Ok(OrderCommand::Confirm)) => {
                let release = StockCommand::Release {
                    order: request.stream.id().to_owned(),
                };
                Self::send(event, COMPENSATION, Ok(event.stream.clone()), &release)
            }
            _ => Vec::new(),
        }
    }
}
