//! A Rust client for a Chorus cluster, for any tokio application.
//!
//! ```no_run
//! # async fn example() -> Result<(), chorus_client::ClientError> {
//! use futures::StreamExt;
//!
//! let client = chorus_client::Client::new(&["http://127.0.0.1:8080", "http://127.0.0.1:8081"])?;
//! // Sent under one command id, again after 503/504/connection errors: applied at most once.
//! let receipt = client
//!     .submit("Stock@apple", &serde_json::json!({"Restock": {"quantity": 3}}))
//!     .await?;
//! let events = client.read_stream("Stock@apple", 1, 100).await?;
//! // Every event once, in order, across reconnects and nodes.
//! let mut subscription = client.subscribe_stream("Stock@apple", 1);
//! while let Some(event) = subscription.next().await {
//!     println!("{:?}", event?);
//! }
//! # let _ = (receipt, events);
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod event;
pub mod raw;
mod subscription;

pub use client::{Client, Page, Retry};
pub use error::ClientError;
pub use event::{Command, Event, ExpectedVersion, Receipt, new_command_id};
pub use subscription::{IDLE_LIMIT, LogTarget, Subscription, Target};
