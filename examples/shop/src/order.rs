//! `Order@<id>`: a customer's order of one article. Placed by the customer, confirmed by the
//! fulfilment saga once stock is reserved, or cancelled (by the customer, or by the saga when
//! there is no stock).

use chorus_aggregate::{Aggregate, CommandContext, DomainEvent};
use serde::{Deserialize, Serialize};

/// An order's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The article (its `Stock` id), once placed.
    pub sku: String,
    /// How many.
    pub quantity: u64,
    /// Where it stands.
    pub status: OrderStatus,
}

/// Where an order stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Not placed yet.
    #[default]
    New,
    /// Waiting for stock.
    Placed,
    /// Stock is reserved for it.
    Confirmed,
    /// It will not be delivered.
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// What can be asked of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderCommand {
    /// The customer orders `quantity` items of article `sku`.
    Place {
        /// The article.
        sku: String,
        /// How many.
        quantity: u64,
    },
    /// Stock is reserved (sent by the saga).
    Confirm,
    /// The order is off (by the customer, or by the saga when stock is short).
    Cancel {
        /// Why.
        reason: String,
    },
}

/// What happened to an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    /// It was placed.
    Placed {
        /// The article.
        sku: String,
        /// How many.
        quantity: u64,
    },
    /// Its stock is reserved.
    Confirmed,
    /// It was cancelled.
    Cancelled {
        /// Why.
        reason: String,
    },
}

impl DomainEvent for OrderEvent {}

/// Why an order refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// Placed twice.
    #[error("the order was already placed")]
    AlreadyPlaced,
    /// An empty order or an article id that cannot name a stream.
    #[error("invalid order: {0}")]
    Invalid(String),
    /// Confirmed or cancelled when not waiting.
    #[error("the order is not waiting for stock")]
    NotWaiting,
}

impl Aggregate for Order {
    const CATEGORY: &'static str = "Order";
    const SCHEMA_VERSION: u32 = 1;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(
        &self,
        command: &OrderCommand,
        _context: &CommandContext,
    ) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { .. } if self.status != OrderStatus::New => {
                Err(OrderError::AlreadyPlaced)
            }
            OrderCommand::Place { quantity: 0, .. } => {
                Err(OrderError::Invalid("the quantity must be positive".into()))
            }
            OrderCommand::Place { sku, quantity } => {
                crate::stock_key(sku).map_err(OrderError::Invalid)?;
                Ok(vec![OrderEvent::Placed {
                    sku: sku.clone(),
                    quantity: *quantity,
                }])
            }
            OrderCommand::Confirm | OrderCommand::Cancel { .. }
                if self.status != OrderStatus::Placed =>
            {
                Err(OrderError::NotWaiting)
            }
            OrderCommand::Confirm => Ok(vec![OrderEvent::Confirmed]),
            OrderCommand::Cancel { reason } => Ok(vec![OrderEvent::Cancelled {
                reason: reason.clone(),
            }]),
        }
    }

    fn apply(mut self, event: &OrderEvent) -> Self {
        match event {
            OrderEvent::Placed { sku, quantity } => {
                self.sku = sku.clone();
                self.quantity = *quantity;
                self.status = OrderStatus::Placed;
            }
            OrderEvent::Confirmed => self.status = OrderStatus::Confirmed,
            OrderEvent::Cancelled { reason } => {
                self.status = OrderStatus::Cancelled {
                    reason: reason.clone(),
                }
            }
        }
        self
    }
}
