//! Who may use the HTTP API: API tokens from the node's configuration, each with scopes per
//! database (read, write) and possibly admin. A request without a valid token gets 401,
//! one whose token lacks the scope 403 (`http/auth.rs` maps routes to permissions).
//! `auth = "open"` lets anyone who reaches the port read and write (local experiments only);
//! a node with neither tokens nor `auth = "open"` refuses to start, so no node is open by
//! accident. The admin API also takes the node's `admin_token`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Shortest token secret accepted, in characters.
pub const TOKEN_SECRET_CHARS_MIN: usize = 16;
/// Longest token name, in characters.
pub const TOKEN_NAME_CHARS_MAX: usize = 64;

/// One API token as the configuration file writes it (`[[tokens]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and errors (never the secret).
    pub name: String,
    /// The bearer token clients send (`Authorization: Bearer <secret>`), at least
    /// `TOKEN_SECRET_CHARS_MIN` characters.
    pub secret: String,
    /// Databases it may read (`"*"`: all).
    #[serde(default)]
    pub read: Vec<String>,
    /// Databases it may write to (`"*"`: all); writing does not imply reading.
    #[serde(default)]
    pub write: Vec<String>,
    /// Whether it may use the admin API.
    #[serde(default)]
    pub admin: bool,
}

/// What a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Nothing (health, status, metrics).
    Open,
    /// Reading this database.
    Read(String),
    /// Reading every database (`$all`, event types, projections, the database listing).
    ReadAll,
    /// Writing to this database.
    Write(String),
    /// The admin API.
    Admin,
}

/// Databases a token reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Databases {
    All,
    These(BTreeSet<String>),
}

impl Databases {
    fn of(names: &[String]) -> Self {
        if names.iter().any(|name| name == "*") {
            Self::All
        } else {
            Self::These(names.iter().cloned().collect())
        }
    }

    fn reaches(&self, database: &str) -> bool {
        match self {
            Self::All => true,
            Self::These(names) => names.contains(database),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    name: String,
    secret: String,
    read: Databases,
    write: Databases,
    admin: bool,
}

/// Why a request may not go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one this node does not know: 401.
    Unauthenticated(String),
    /// A known token without the scope: 403.
    Forbidden(String),
}

/// The node's access rules.
#[derive(Clone, Debug)]
pub struct Access {
    open: bool,
    tokens: Vec<Token>,
    admin_token: Option<String>,
}

impl Access {
    /// The rules of a configuration (`auth`, `tokens`, `admin_token`), or what is wrong with
    /// them.
    pub fn new(
        auth: Option<&str>,
        tokens: &[TokenConfig],
        admin_token: Option<&str>,
    ) -> Result<Self, String> {
        let open = match (auth, tokens.is_empty()) {
            (Some("open"), true) => true,
            (Some("open"), false) => {
                return Err("auth = \"open\" with tokens: choose one".to_owned());
            }
            (Some("tokens") | None, false) => false,
            (Some("tokens") | None, true) => {
                return Err(
                    "no API tokens: add a [[tokens]] entry (name, secret, read, write), \
                     or set auth = \"open\" to let anyone who reaches the HTTP port read and \
                     write"
                        .to_owned(),
                );
            }
            (Some(other), _) => return Err(format!("{other:?}; use \"tokens\" or \"open\"")),
        };
        let mut checked = Vec::with_capacity(tokens.len());
        for (index, token) in tokens.iter().enumerate() {
            let at = |problem: &str| format!("tokens[{index}]: {problem}");
            if token.name.is_empty() || token.name.chars().count() > TOKEN_NAME_CHARS_MAX {
                return Err(at(&format!(
                    "the name must be 1 to {TOKEN_NAME_CHARS_MAX} characters"
                )));
            }
            if token.secret.chars().count() < TOKEN_SECRET_CHARS_MIN {
                return Err(at(&format!(
                    "the secret must be at least {TOKEN_SECRET_CHARS_MIN} characters"
                )));
            }
            if checked
                .iter()
                .any(|other: &Token| other.secret == token.secret)
            {
                return Err(at("the same secret as another token"));
            }
            for name in token.read.iter().chain(&token.write) {
                if name != "*" {
                    chorus_aggregate::DatabaseName::new(name.clone())
                        .map_err(|problem| at(&format!("database {name:?}: {problem}")))?;
                }
            }
            checked.push(Token {
                name: token.name.clone(),
                secret: token.secret.clone(),
                read: Databases::of(&token.read),
                write: Databases::of(&token.write),
                admin: token.admin,
            });
        }
        Ok(Self {
            open,
            tokens: checked,
            admin_token: admin_token.map(str::to_owned),
        })
    }

    /// Whether a request bearing `bearer` (the `Authorization` header's token, if any) may
    /// do what `needed` says.
    pub fn check(&self, bearer: Option<&str>, needed: &Permission) -> Result<(), Denied> {
        if *needed == Permission::Open {
            return Ok(());
        }
        if *needed == Permission::Admin {
            if self.admin_token.is_none() && !self.tokens.iter().any(|token| token.admin) {
                return Err(Denied::Forbidden(
                    "the admin API is off: set admin_token (or a token with admin = true) in \
                     this node's configuration"
                        .to_owned(),
                ));
            }
            if let (Some(given), Some(admin)) = (bearer, &self.admin_token) {
                if bool::from(given.as_bytes().ct_eq(admin.as_bytes())) {
                    return Ok(());
                }
            }
        } else if self.open {
            return Ok(());
        }
        let token = bearer.and_then(|given| self.token(given)).ok_or_else(|| {
            Denied::Unauthenticated(
                "this node needs `Authorization: Bearer <token>` with one of the API tokens \
                 in its configuration"
                    .to_owned(),
            )
        })?;
        let allowed = match needed {
            Permission::Open => true,
            Permission::Read(database) => token.read.reaches(database),
            Permission::ReadAll => token.read == Databases::All,
            Permission::Write(database) => token.write.reaches(database),
            Permission::Admin => token.admin,
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied::Forbidden(format!(
                "token {:?} may not {}",
                token.name,
                match needed {
                    Permission::Read(database) => format!("read database {database:?}"),
                    Permission::ReadAll => "read every database".to_owned(),
                    Permission::Write(database) => format!("write to database {database:?}"),
                    Permission::Admin | Permission::Open => "use the admin API".to_owned(),
                }
            )))
        }
    }

    /// The token with this secret, compared in constant time with every token.
    fn token(&self, given: &str) -> Option<&Token> {
        let mut found = None;
        for token in &self.tokens {
            if bool::from(given.as_bytes().ct_eq(token.secret.as_bytes())) {
                found = Some(token);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, read: &[&str], write: &[&str], admin: bool) -> TokenConfig {
        TokenConfig {
            name: name.to_owned(),
            secret: format!("{name}-secret-0123456789"),
            read: read.iter().map(|name| (*name).to_owned()).collect(),
            write: write.iter().map(|name| (*name).to_owned()).collect(),
            admin,
        }
    }

    #[test]
    fn scopes_decide_per_database_and_strangers_are_unauthenticated() {
        let access = Access::new(
            None,
            &[
                token("reader", &["default"], &[], false),
                token("writer", &["*"], &["shop"], false),
                token("operator", &[], &[], true),
            ],
            Some("the-admin-token-0123"),
        )
        .expect("valid");
        let read = |database: &str| Permission::Read(database.to_owned());
        let write = |database: &str| Permission::Write(database.to_owned());
        let reader = Some("reader-secret-0123456789");
        let writer = Some("writer-secret-0123456789");
        let operator = Some("operator-secret-0123456789");
        assert_eq!(access.check(None, &Permission::Open), Ok(()));
        assert_eq!(access.check(reader, &read("default")), Ok(()));
        assert!(matches!(
            access.check(reader, &read("shop")),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            access.check(reader, &write("default")),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            access.check(reader, &Permission::ReadAll),
            Err(Denied::Forbidden(_))
        ));
        assert_eq!(access.check(writer, &Permission::ReadAll), Ok(()));
        assert_eq!(access.check(writer, &write("shop")), Ok(()));
        assert!(matches!(
            access.check(writer, &write("default")),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            access.check(writer, &Permission::Admin),
            Err(Denied::Forbidden(_))
        ));
        assert_eq!(access.check(operator, &Permission::Admin), Ok(()));
        assert_eq!(
            access.check(Some("the-admin-token-0123"), &Permission::Admin),
            Ok(())
        );
        for stranger in [None, Some("made-up-secret-0123456789"), Some("")] {
            assert!(matches!(
                access.check(stranger, &read("default")),
                Err(Denied::Unauthenticated(_))
            ));
        }
        // The admin token is for the admin API only.
        assert!(matches!(
            access.check(Some("the-admin-token-0123"), &read("default")),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn an_open_node_needs_no_token_except_for_admin_and_a_closed_one_needs_tokens() {
        let open = Access::new(Some("open"), &[], None).expect("valid");
        assert_eq!(
            open.check(None, &Permission::Write("default".into())),
            Ok(())
        );
        assert!(
            matches!(open.check(None, &Permission::Admin), Err(Denied::Forbidden(reason)) if reason.contains("off"))
        );
        let problems = [
            Access::new(None, &[], None).expect_err("no tokens"),
            Access::new(Some("open"), &[token("a", &[], &[], false)], None).expect_err("both"),
            Access::new(Some("maybe"), &[], None).expect_err("unknown"),
            Access::new(
                None,
                &[TokenConfig {
                    secret: "short".into(),
                    ..token("a", &[], &[], false)
                }],
                None,
            )
            .expect_err("short"),
            Access::new(None, &[token("a", &["Bad!"], &[], false)], None).expect_err("database"),
            Access::new(
                None,
                &[token("a", &[], &[], false), token("a", &[], &[], false)],
                None,
            )
            .expect_err("same secret"),
        ];
        for (problem, needle) in problems.iter().zip([
            "[[tokens]]",
            "choose one",
            "open",
            "at least",
            "database",
            "same secret",
        ]) {
            assert!(problem.contains(needle), "{problem}");
        }
    }
}
