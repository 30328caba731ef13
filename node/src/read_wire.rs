//! What the read protocol (`/chorus/read/2`, `crate::peer_reads`) carries: a node's read and
//! a member's page, as JSON.
//!
//! Kept free of the rest of the node (only serde and serde_json) so the fuzz target
//! `node_wire` includes this file as it is, without building the node's network stack
//! under sanitizers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest read request (a stream key and a few numbers).
pub const READ_REQUEST_BYTES_MAX: usize = 4 * 1024;

/// What one node asks another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PeerRead {
    /// One stream from sequence `from`, forward or backward.
    Stream {
        /// `Category@id`, as in the HTTP path.
        stream: String,
        /// First sequence number (the highest, for a backward read).
        from: u64,
        /// Most events.
        count: usize,
        /// Newest first.
        #[serde(default)]
        backward: bool,
    },
    /// The asked member's section's log (`$all` without a category), forward from a
    /// position of that member's store.
    Log {
        /// The category's database (with `category`).
        database: Option<String>,
        /// Only this category.
        category: Option<String>,
        /// Only events of this type (not with a category).
        #[serde(default)]
        event_type: Option<String>,
        /// First position.
        from: u64,
        /// Most events.
        count: usize,
    },
}

impl PeerRead {
    /// A read from a peer's bytes (at most `READ_REQUEST_BYTES_MAX`), or why not.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > READ_REQUEST_BYTES_MAX {
            return Err(format!(
                "a read of {} bytes; at most {READ_REQUEST_BYTES_MAX}",
                bytes.len()
            ));
        }
        serde_json::from_slice(bytes).map_err(|error| error.to_string())
    }

    /// The read's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|error| error.to_string())
    }
}

/// A member's answer: a page of events as the HTTP API shows them, or why not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerPage {
    /// The events and where the next page starts (`None`: the end, for now).
    Events {
        /// Each event's JSON (`http::event_json`).
        events: Vec<Value>,
        /// The next page's first sequence or position.
        next: Option<u64>,
    },
    /// Refused or failed, and why.
    Refused(String),
}

impl PeerPage {
    /// A page from a peer's bytes, or why not.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|error| error.to_string())
    }

    /// The page's bytes (a page that does not encode is sent as a refusal saying so).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"refused":"unencodable"}"#.to_vec())
    }
}
