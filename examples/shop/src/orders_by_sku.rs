//! Orders by article, as streams: a projection whose output is the `OrdersBySku@<sku>`
//! streams, one `Ordered {order, quantity}` event per order placed. Clients read and
//! subscribe to them like any stream (`shop client read OrdersBySku@apple`); only the
//! projection writes them, and the section agrees on what it writes, so every node serves
//! the same streams.

use chorus_aggregate::domain::decode_event;
use chorus_aggregate::{Aggregate, Emitted, Filter, RecordedEvent, StreamProjection};
use serde_json::json;

use crate::order::{Order, OrderEvent};

/// The projection's name: it keys its checkpoint and derives the ids of what it writes.
pub const ORDERS_BY_SKU: &str = "orders-by-sku";

/// The orders-by-article projection.
#[derive(Debug, Default)]
pub struct OrdersBySku;

impl StreamProjection for OrdersBySku {
    const CATEGORY: &'static str = "OrdersBySku";

    fn name(&self) -> &str {
        ORDERS_BY_SKU
    }

    fn filter(&self) -> Filter {
        Filter::All
    }

    fn emit(&self, event: &RecordedEvent) -> Vec<Emitted> {
        if event.stream.category().as_str() != Order::CATEGORY {
            return Vec::new();
        }
        match decode_event::<OrderEvent>(
            event.event_type.as_str(),
            event.event_version,
            &event.payload,
        ) {
            Ok(OrderEvent::Placed { sku, quantity }) => vec![Emitted {
                stream_id: sku,
                event_type: "Ordered".to_owned(),
                data: json!({"order": event.stream.id(), "quantity": quantity}),
            }],
            _ => Vec::new(),
        }
    }
}
