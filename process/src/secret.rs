//! Secrets as a type: a connection URL that may hold a password prints redacted wherever
//! it goes (`Debug`, `Display`, a settings dump, an error message), and shows itself whole
//! only where it is used to connect, through [`SecretUrl::expose`].

use std::{fmt, str::FromStr};

use serde::Deserialize;

use crate::redact::redact_url;

/// A URL whose password never reaches a log line; see the module docs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL whole, password and all: only for handing to a client library that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its password, for messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_shows_itself_whole_only_when_exposed() {
        let url = SecretUrl::new("amqp://guest:s3cr3t@rabbit:5672/%2f");
        for shown in [format!("{url}"), format!("{url:?}"), format!("{:?}", Some(&url)), url.redacted()] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("amqp://guest:***@rabbit:5672/%2f"), "{shown}");
        }
        assert_eq!(url.expose(), "amqp://guest:s3cr3t@rabbit:5672/%2f");
    }
}
