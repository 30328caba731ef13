//! `Stock@<sku>`: how many of one article the shop holds, and which orders hold some of it.
//! Stock is never reserved beyond what is there: two orders racing for the last item are
//! ordered by the section, and the second is refused.

use std::collections::BTreeMap;

use chorus_aggregate::{Aggregate, CommandContext, DomainEvent};
use serde::{Deserialize, Serialize};

/// One article's stock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    /// Items on the shelf, not reserved.
    pub available: u64,
    /// Items reserved, by order id. A `BTreeMap`: every member must encode the state alike.
    pub reserved: BTreeMap<String, u64>,
}

/// What the shop can do with stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockCommand {
    /// Puts items on the shelf.
    Restock {
        /// How many.
        quantity: u64,
    },
    /// Sets items aside for an order (sent by the fulfilment saga).
    Reserve {
        /// The order id.
        order: String,
        /// How many.
        quantity: u64,
    },
    /// Puts an order's reserved items back on the shelf (the saga's compensation).
    Release {
        /// The order id.
        order: String,
    },
}

/// What happened to stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockEvent {
    /// Items arrived.
    Restocked {
        /// How many.
        quantity: u64,
    },
    /// Items were set aside for an order.
    Reserved {
        /// The order id.
        order: String,
        /// How many.
        quantity: u64,
    },
    /// An order's items went back on the shelf.
    Released {
        /// The order id.
        order: String,
        /// How many.
        quantity: u64,
    },
}

impl DomainEvent for StockEvent {}

/// Why stock refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    /// Nothing to do with nothing.
    #[error("the quantity must be positive")]
    ZeroQuantity,
    /// Fewer items than asked for.
    #[error("out of stock: {available} available, {wanted} wanted")]
    OutOfStock {
        /// On the shelf.
        available: u64,
        /// Asked for.
        wanted: u64,
    },
    /// The order already holds items of this article.
    #[error("order {0} already holds a reservation")]
    AlreadyReserved(String),
    /// The order holds none to release.
    #[error("order {0} holds no reservation")]
    NotReserved(String),
}

impl Aggregate for Stock {
    const CATEGORY: &'static str = "Stock";
    const SCHEMA_VERSION: u32 = 1;
    type Command = StockCommand;
    type Event = StockEvent;
    type Error = StockError;

    fn handle(
        &self,
        command: &StockCommand,
        _context: &CommandContext,
    ) -> Result<Vec<StockEvent>, StockError> {
        match command {
            StockCommand::Restock { quantity: 0 } | StockCommand::Reserve { quantity: 0, .. } => {
                Err(StockError::ZeroQuantity)
            }
            StockCommand::Restock { quantity } => Ok(vec![StockEvent::Restocked {
                quantity: *quantity,
            }]),
            StockCommand::Reserve { order, .. } if self.reserved.contains_key(order) => {
                Err(StockError::AlreadyReserved(order.clone()))
            }
            StockCommand::Reserve { quantity, .. } if *quantity > self.available => {
                Err(StockError::OutOfStock {
                    available: self.available,
                    wanted: *quantity,
                })
            }
            StockCommand::Reserve { order, quantity } => Ok(vec![StockEvent::Reserved {
                order: order.clone(),
                quantity: *quantity,
            }]),
            StockCommand::Release { order } => match self.reserved.get(order) {
                Some(quantity) => Ok(vec![StockEvent::Released {
                    order: order.clone(),
                    quantity: *quantity,
                }]),
                None => Err(StockError::NotReserved(order.clone())),
            },
        }
    }

    fn apply(mut self, event: &StockEvent) -> Self {
        match event {
            StockEvent::Restocked { quantity } => self.available += quantity,
            StockEvent::Reserved { order, quantity } => {
                self.available -= quantity;
                self.reserved.insert(order.clone(), *quantity);
            }
            StockEvent::Released { order, quantity } => {
                self.available += quantity;
                self.reserved.remove(order);
            }
        }
        self
    }
}
