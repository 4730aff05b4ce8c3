//! Identifier newtypes. Each has one `parse` constructor that enforces length and character set,
//! so an identifier that reached the store or the broker is known to be safe as a key, a routing
//! key fragment and a URL path segment.

use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters (got {len})")]
    TooLong { max: usize, len: usize },
    #[error("may only contain {allowed} (found {found:?})")]
    BadChar { allowed: &'static str, found: char },
}

fn check(value: &str, max: usize, allowed: &'static str, ok: fn(char) -> bool) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    let len = value.chars().count();
    if len > max {
        return Err(IdError::TooLong { max, len });
    }
    match value.chars().find(|c| !ok(*c)) {
        Some(found) => Err(IdError::BadChar { allowed, found }),
        None => Ok(()),
    }
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

fn topic_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
}

const ID_CHARS: &str = "letters, digits, '-', '_', '.', ':'";
const TOPIC_CHARS: &str = "lower-case letters, digits, '_', '-'";

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $allowed:expr, $ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Accepts `value` if it is non-empty, at most `max` characters, and in the allowed set.
            pub fn parse(value: &str, max: usize) -> Result<Self, IdError> {
                check(value, max, $allowed, $ok)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A task's id: Camunda's external task id, or any id the submitting worker chose.
    TaskId, ID_CHARS, id_char
);
id_type!(
    /// The id of the worker that submitted (and, at Camunda, locked) the task.
    WorkerId, ID_CHARS, id_char
);
id_type!(
    /// A topic name; it becomes part of a routing key and a queue name, hence the narrow set.
    TopicName, TOPIC_CHARS, topic_char
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camunda_uuid_is_a_valid_task_id() {
        assert!(TaskId::parse("8f14e45f-ceea-11ee-a2b4-0242ac120002", 128).is_ok());
    }

    #[test]
    fn ids_reject_empty_long_and_odd_characters() {
        assert_eq!(TaskId::parse("", 10), Err(IdError::Empty));
        assert_eq!(TaskId::parse("abcdefghijk", 10), Err(IdError::TooLong { max: 10, len: 11 }));
        assert!(matches!(TaskId::parse("a b", 10), Err(IdError::BadChar { found: ' ', .. })));
        assert!(matches!(TaskId::parse("a$b", 10), Err(IdError::BadChar { found: '$', .. })));
    }

    #[test]
    fn topics_are_lower_case_words() {
        assert!(TopicName::parse("say_hello", 64).is_ok());
        assert!(TopicName::parse("Say_Hello", 64).is_err());
        assert!(TopicName::parse("a.b", 64).is_err());
    }
}
