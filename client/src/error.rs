//! What can go wrong, sorted by what the caller can do about it.

use serde_json::Value;

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The aggregate refused the command (409): it will refuse it again.
    #[error("refused: {reason}")]
    Refused {
        /// The aggregate's reason.
        reason: String,
    },
    /// The request was wrong (400, 404, 413, 415, 422, ...): sending it again cannot help.
    #[error("invalid request ({status}): {reason}")]
    Invalid {
        /// The HTTP status.
        status: u16,
        /// The node's error message.
        reason: String,
    },
    /// No node could carry it after every retry (503, 504, connection errors): the command may
    /// or may not have been applied; sending it again with the same command id is safe.
    #[error("unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// How many times it was sent.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The node answered something this client does not understand.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The client was given something it cannot use (an address, a command that does not
    /// encode).
    #[error("{0}")]
    Usage(String),
}

/// The node's error message in a JSON answer, or the whole answer.
pub(crate) fn reason(body: &Value) -> String {
    body["error"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_owned)
}
