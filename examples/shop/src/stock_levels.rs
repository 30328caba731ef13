//! `StockLevels`: a read model of every article's stock, folded from `Stock` events.

use std::collections::BTreeMap;

use chorus_aggregate::domain::decode_event;
use chorus_aggregate::{Aggregate, CategoryName, DatabaseName, Filter, Projection, RecordedEvent};
use serde::{Deserialize, Serialize};

use crate::stock::{Stock, StockEvent};

/// One article's levels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Levels {
    /// On the shelf.
    pub available: u64,
    /// Set aside for orders.
    pub reserved: u64,
}

/// The projection.
#[derive(Clone, Copy, Debug, Default)]
pub struct StockLevels;

impl Projection for StockLevels {
    type State = BTreeMap<String, Levels>;

    fn name(&self) -> &str {
        "stock-levels"
    }

    fn version(&self) -> u32 {
        1
    }

    fn filter(&self) -> Filter {
        match CategoryName::new(Stock::CATEGORY) {
            Ok(category) => Filter::Category(DatabaseName::default_database(), category),
            // A valid constant; were it not, reading everything and skipping what is not
            // stock below is still right.
            Err(_) => Filter::All,
        }
    }

    fn apply(&self, state: &mut Self::State, event: &RecordedEvent) {
        if event.stream.category().as_str() != Stock::CATEGORY {
            return;
        }
        let Ok(decoded) = decode_event::<StockEvent>(
            event.event_type.as_str(),
            event.event_version,
            &event.payload,
        ) else {
            return;
        };
        let levels = state.entry(event.stream.id().to_owned()).or_default();
        match decoded {
            StockEvent::Restocked { quantity } => levels.available += quantity,
            StockEvent::Reserved { quantity, .. } => {
                // Saturating: the aggregate never lets these go negative, and a read model
                // must not panic on an event it did not expect.
                levels.available = levels.available.saturating_sub(quantity);
                levels.reserved += quantity;
            }
            StockEvent::Released { quantity, .. } => {
                levels.available += quantity;
                levels.reserved = levels.reserved.saturating_sub(quantity);
            }
        }
    }
}
