//! Versioned JSON: every message carries `"v"`, checked before the body is trusted, so a
//! message from a newer or older release fails with a clear error instead of a confusing
//! missing-field one.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The schema version this build speaks. Bump it on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Why bytes from the broker could not be decoded into a protocol message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not JSON with a numeric `v` field: {0}")]
    NotVersioned(serde_json::Error),
    #[error("message has schema version {found}; this build speaks version {supported}")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("malformed {what} (schema version {SCHEMA_VERSION}): {cause}")]
    Malformed { what: &'static str, cause: serde_json::Error },
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Decodes a versioned message of type `T`, checking the version first.
pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    let VersionOnly { v } = serde_json::from_slice(bytes).map_err(DecodeError::NotVersioned)?;
    if v != SCHEMA_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: v, supported: SCHEMA_VERSION });
    }
    serde_json::from_slice(bytes).map_err(|source| DecodeError::Malformed { what, cause: source })
}

/// Encodes a message. Serializing these plain data types cannot fail.
///
/// # Panics
///
/// Never for the types of this crate: they hold only strings, numbers, maps and
/// `serde_json::Value`s, whose serialization is infallible.
pub(crate) fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).expect("protocol types serialize infallibly")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Probe {
        v: u32,
        x: u8,
    }

    #[test]
    fn rejects_other_versions_before_looking_at_the_body() {
        let err = decode::<Probe>("probe", br#"{"v": 99, "unrelated": true}"#).unwrap_err();
        assert!(matches!(err, DecodeError::UnsupportedVersion { found: 99, supported: SCHEMA_VERSION }));
    }

    #[test]
    fn rejects_unversioned_and_malformed_bodies() {
        assert!(matches!(decode::<Probe>("probe", b"not json"), Err(DecodeError::NotVersioned(_))));
        assert!(matches!(decode::<Probe>("probe", br#"{"x": 1}"#), Err(DecodeError::NotVersioned(_))));
        let err = decode::<Probe>("probe", br#"{"v": 1, "x": "nope"}"#).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { what: "probe", .. }), "{err}");
    }

    #[test]
    fn round_trips() {
        let p = Probe { v: SCHEMA_VERSION, x: 7 };
        assert_eq!(decode::<Probe>("probe", &encode(&p)).unwrap(), p);
    }
}
