//! The tutorial application: a shop on Chorus. Every member of a section runs this code on
//! the same agreed commands, so no single machine decides whether an order gets stock.
//!
//! - [`order`]: `Order@<id>` (place, confirm, cancel);
//! - [`stock`]: `Stock@<sku>` (restock, reserve, release; never below zero);
//! - [`fulfilment`]: the saga that reserves stock for each order and confirms it, cancelling
//!   the order when stock is short and releasing stock when a confirmation comes too late;
//! - [`stock_levels`]: a projection of every article's levels, hosted by each node at
//!   `GET /projections/stock-levels`;
//! - [`orders_by_sku`]: a projection whose output is streams, `OrdersBySku@<sku>`.
//!
//! [`application`] gathers them for `chorus-node`; `src/main.rs` is the whole program.

pub mod fulfilment;
pub mod order;
pub mod orders_by_sku;
pub mod stock;
pub mod stock_levels;

use chorus_aggregate::StreamKey;
use chorus_node::Application;

/// The shop as a Chorus application.
pub fn application() -> Application {
    Application::new("shop")
        .version("1")
        .aggregate::<order::Order>()
        .aggregate::<stock::Stock>()
        .process_manager(|| fulfilment::Fulfilment)
        .projection(|| stock_levels::StockLevels)
        .stream_projection(|| orders_by_sku::OrdersBySku)
}

/// The stream of an article's stock.
pub fn stock_key(sku: &str) -> Result<StreamKey, String> {
    StreamKey::new("Stock", sku).map_err(|error| error.to_string())
}

/// The stream of an order.
pub fn order_key(id: &str) -> Result<StreamKey, String> {
    StreamKey::new("Order", id).map_err(|error| error.to_string())
}
