//! `Notebook@<id>`: a titled list of notes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use chorus_aggregate::{Aggregate, CommandContext, DomainEvent, Upcaster};

/// Longest note text, in bytes.
pub const NOTE_BYTES_MAX: usize = 4096;
/// Most notes in one notebook.
pub const NOTES_MAX: usize = 100_000;

/// A notebook's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notebook {
    /// Title, once initiated.
    pub title: Option<String>,
    /// The notes, oldest first.
    pub notes: Vec<Note>,
    /// Agreed time of initiation.
    pub initiated_at_ms: u64,
}

/// One note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The text.
    pub text: String,
    /// Who wrote it.
    pub author: String,
}

/// Notebook commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotebookCommand {
    /// Creates the notebook.
    InitiateNotebook {
        /// Its title.
        title: String,
    },
    /// Adds a note.
    AddNote {
        /// The text.
        text: String,
        /// Who writes it.
        author: String,
    },
}

/// Notebook events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotebookEvent {
    /// The notebook exists.
    NotebookInitiated {
        /// Its title.
        title: String,
        /// Agreed time.
        at_ms: u64,
    },
    /// A note was added. Version 1 had no author; its upcaster names it "anonymous".
    NoteAdded {
        /// The text.
        text: String,
        /// Who wrote it.
        author: String,
    },
}

impl DomainEvent for NotebookEvent {
    const UPCASTERS: &'static [Upcaster] = &[Upcaster {
        event_type: "NoteAdded",
        from_version: 1,
        upcast: add_anonymous_author,
    }];
}

fn add_anonymous_author(mut body: Value) -> Result<Value, String> {
    let fields = body
        .as_object_mut()
        .ok_or("NoteAdded v1 payload is not an object")?;
    fields
        .entry("author")
        .or_insert_with(|| Value::from("anonymous"));
    Ok(body)
}

/// Why a notebook refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotebookError {
    /// Initiated twice.
    #[error("the notebook is already initiated")]
    AlreadyInitiated,
    /// A note before initiation.
    #[error("the notebook is not initiated yet")]
    NotInitiated,
    /// An empty title or note.
    #[error("the {0} is empty")]
    Empty(&'static str),
    /// A note over [`NOTE_BYTES_MAX`].
    #[error("the note is {0} bytes; at most {NOTE_BYTES_MAX} are allowed")]
    NoteTooLong(usize),
    /// More than [`NOTES_MAX`] notes.
    #[error("the notebook is full ({NOTES_MAX} notes)")]
    Full,
}

impl Aggregate for Notebook {
    const CATEGORY: &'static str = "Notebook";
    const SCHEMA_VERSION: u32 = 1;
    type Command = NotebookCommand;
    type Event = NotebookEvent;
    type Error = NotebookError;

    fn handle(
        &self,
        command: &NotebookCommand,
        context: &CommandContext,
    ) -> Result<Vec<NotebookEvent>, NotebookError> {
        match command {
            NotebookCommand::InitiateNotebook { title } => {
                if self.title.is_some() {
                    return Err(NotebookError::AlreadyInitiated);
                }
                if title.trim().is_empty() {
                    return Err(NotebookError::Empty("title"));
                }
                Ok(vec![NotebookEvent::NotebookInitiated {
                    title: title.clone(),
                    at_ms: context.timestamp_ms,
                }])
            }
            NotebookCommand::AddNote { text, author } => {
                if self.title.is_none() {
                    return Err(NotebookError::NotInitiated);
                }
                if text.is_empty() {
                    return Err(NotebookError::Empty("note"));
                }
                if text.len() > NOTE_BYTES_MAX {
                    return Err(NotebookError::NoteTooLong(text.len()));
                }
                if self.notes.len() >= NOTES_MAX {
                    return Err(NotebookError::Full);
                }
                Ok(vec![NotebookEvent::NoteAdded {
                    text: text.clone(),
                    author: author.clone(),
                }])
            }
        }
    }

    fn apply(mut self, event: &NotebookEvent) -> Self {
        match event {
            NotebookEvent::NotebookInitiated { title, at_ms } => {
                self.title = Some(title.clone());
                self.initiated_at_ms = *at_ms;
            }
            NotebookEvent::NoteAdded { text, author } => self.notes.push(Note {
                text: text.clone(),
                author: author.clone(),
            }),
        }
        self
    }
}
