//! Names of databases, categories, streams and types, parsed from untrusted text with clear
//! errors. A stream key reads `Category@id`, or `database/Category@id` outside the default
//! database.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::NameError;
use crate::limits::{
    CATEGORY_NAME_BYTES_MAX, DATABASE_NAME_BYTES_MAX, STREAM_ID_BYTES_MAX, TYPE_NAME_BYTES_MAX,
};

/// The database a stream key without a `database/` prefix belongs to.
pub const DEFAULT_DATABASE: &str = "default";

/// A database (namespace): lower-case ASCII letters, digits, `_` and `-`, at most
/// [`DATABASE_NAME_BYTES_MAX`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatabaseName(Arc<str>);

/// A category (the aggregate type of its streams): an ASCII letter, then letters, digits, `_`,
/// `-` or `.`, at most [`CATEGORY_NAME_BYTES_MAX`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CategoryName(Arc<str>);

/// A stream: database, category and id. Its text form is `Category@id` in the default database
/// and `database/Category@id` elsewhere. Names share their text (`Arc<str>`), so the clone
/// every read event carries costs three reference counts, not three allocations.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamKey {
    database: DatabaseName,
    category: CategoryName,
    id: Arc<str>,
}

/// The stable name of an event or command type: ASCII letters, digits, `_`, `-`, `.` and `:`,
/// at most [`TYPE_NAME_BYTES_MAX`] bytes. A leading `$` marks the store's system events; the
/// store accepts only the ones it knows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TypeName(Arc<str>);

impl DatabaseName {
    /// Checks a database name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_length("database name", &name, DATABASE_NAME_BYTES_MAX)?;
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(NameError::BadCharacter {
                what: "database name",
                character: bad,
                allowed: "a-z, 0-9, '_' and '-'",
            });
        }
        Ok(Self(name.into()))
    }

    /// The default database.
    pub fn default_database() -> Self {
        Self(DEFAULT_DATABASE.into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl CategoryName {
    /// Checks a category name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_length("category", &name, CATEGORY_NAME_BYTES_MAX)?;
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(NameError::BadStart {
                what: "category",
                name,
            });
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(NameError::BadCharacter {
                what: "category",
                character: bad,
                allowed: "A-Z, a-z, 0-9, '_', '-' and '.'",
            });
        }
        Ok(Self(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl StreamKey {
    /// A stream of `category` with `id` in the default database.
    pub fn new(category: &str, id: &str) -> Result<Self, NameError> {
        Self::in_database(DatabaseName::default_database(), category, id)
    }

    /// A stream of `category` with `id` in `database`.
    pub fn in_database(
        database: DatabaseName,
        category: &str,
        id: &str,
    ) -> Result<Self, NameError> {
        let category = CategoryName::new(category)?;
        check_length("stream id", id, STREAM_ID_BYTES_MAX)?;
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(NameError::BadCharacter {
                what: "stream id",
                character: bad,
                allowed: "A-Z, a-z, 0-9, '_', '-', '.' and ':'",
            });
        }
        Ok(Self {
            database,
            category,
            id: id.into(),
        })
    }

    /// Parses `Category@id` or `database/Category@id`.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        // A '/' names the database only before the '@'; after it, it is a (bad) id character.
        let at = text.find('@').unwrap_or(text.len());
        let (database, rest) = match text[..at].split_once('/') {
            Some((database, _)) => (DatabaseName::new(database)?, &text[database.len() + 1..]),
            None => (DatabaseName::default_database(), text),
        };
        let (category, id) = rest.split_once('@').ok_or_else(|| NameError::MissingAt {
            text: shorten(text),
        })?;
        Self::in_database(database, category, id)
    }

    /// The database the stream belongs to.
    pub fn database(&self) -> &DatabaseName {
        &self.database
    }

    /// The stream's category.
    pub fn category(&self) -> &CategoryName {
        &self.category
    }

    /// The stream's id within its category.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The text form that always names the database (`database/Category@id`): the key the
    /// store indexes by, and the text routing hashes.
    pub fn qualified(&self) -> String {
        format!("{}/{}@{}", self.database.0, self.category.0, self.id)
    }
}

impl TypeName {
    /// Checks a type name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_length("type name", &name, TYPE_NAME_BYTES_MAX)?;
        if let Some(bad) = name
            .strip_prefix('$')
            .unwrap_or(&name)
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(NameError::BadCharacter {
                what: "type name",
                character: bad,
                allowed: "A-Z, a-z, 0-9, '_', '-', '.' and ':'",
            });
        }
        Ok(Self(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this names a system event (`$…`).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// A system type name from a constant of this crate.
    pub(crate) fn system(name: &'static str) -> Self {
        debug_assert!(name.starts_with('$') && Self::new(name).is_ok());
        Self(name.into())
    }
}

fn check_length(what: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            what,
            bytes: name.len(),
            max,
        });
    }
    Ok(())
}

/// Error messages quote untrusted text, but never more than a screenful of it.
fn shorten(text: &str) -> String {
    const QUOTE_CHARS_MAX: usize = 80;
    if text.chars().count() <= QUOTE_CHARS_MAX {
        text.to_owned()
    } else {
        let head: String = text.chars().take(QUOTE_CHARS_MAX).collect();
        format!("{head}…")
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if &*self.database.0 == DEFAULT_DATABASE {
            write!(f, "{}@{}", self.category.0, self.id)
        } else {
            write!(f, "{}/{}@{}", self.database.0, self.category.0, self.id)
        }
    }
}

macro_rules! text_conversions {
    ($type:ty, $parse:expr) => {
        impl FromStr for $type {
            type Err = NameError;
            fn from_str(text: &str) -> Result<Self, NameError> {
                $parse(text)
            }
        }
        impl TryFrom<String> for $type {
            type Error = NameError;
            fn try_from(text: String) -> Result<Self, NameError> {
                $parse(&text)
            }
        }
        impl From<$type> for String {
            fn from(value: $type) -> String {
                value.to_string()
            }
        }
    };
}

text_conversions!(StreamKey, StreamKey::parse);
text_conversions!(DatabaseName, DatabaseName::new);
text_conversions!(CategoryName, CategoryName::new);
text_conversions!(TypeName, TypeName::new);

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for CategoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_round_trip_through_text() {
        for text in [
            "Notebook@0f3c",
            "bank/BankAccount@alice",
            "Order@2026-11:23.x_y",
        ] {
            let key = StreamKey::parse(text).expect("valid key");
            assert_eq!(key.to_string(), text);
            assert_eq!(
                StreamKey::parse(&key.qualified()).expect("qualified parses"),
                key
            );
        }
        let key = StreamKey::parse("Notebook@1").expect("valid key");
        assert_eq!(key.database().as_str(), DEFAULT_DATABASE);
        assert_eq!(key.qualified(), "default/Notebook@1");
    }

    #[test]
    fn malformed_stream_keys_say_what_is_wrong() {
        let cases = [
            ("", "missing '@'"),
            ("Notebook", "missing '@'"),
            ("@1", "category is empty"),
            ("Notebook@", "stream id is empty"),
            ("1Notebook@1", "must start with a letter"),
            ("Note book@1", "' '"),
            ("Notebook@a b", "' '"),
            ("Notebook@a/b", "'/'"),
            ("a/b/Notebook@1", "'/'"),
            ("Bank/Account@1", "database name"),
            ("/Account@1", "database name is empty"),
        ];
        for (text, expected) in cases {
            let error = StreamKey::parse(text).expect_err(text).to_string();
            assert!(
                error.contains(expected),
                "{text:?}: {error:?} should mention {expected:?}"
            );
        }
        let long_id = "x".repeat(STREAM_ID_BYTES_MAX + 1);
        let error = StreamKey::new("Notebook", &long_id).expect_err("too long");
        assert!(matches!(error, NameError::TooLong { .. }));
    }

    #[test]
    fn names_deserialize_only_when_valid() {
        let key: StreamKey = serde_json::from_str("\"Notebook@7\"").expect("valid");
        assert_eq!(key.id(), "7");
        assert!(serde_json::from_str::<StreamKey>("\"Notebook\"").is_err());
        assert!(serde_json::from_str::<TypeName>("\"Note Added\"").is_err());
    }
}
