//! Standard Webhooks signatures, pure: a secret `whsec_<base64 key>`, and the
//! `webhook-signature` value `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. Kept
//! apart from sending so it can be checked against the specification's own test vector:
//! reproducing that is what says a receiver's existing library will accept what we send.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of key in a generated secret (what the reference implementations generate).
const GENERATED_KEY_BYTES: usize = 24;
/// The shortest and longest key accepted: shorter is guessable, the specification allows
/// up to 64 bytes.
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;

type HmacSha256 = hmac::Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "a webhook secret starts with `whsec_` followed by a base64 key; leave it out to have one generated"
    )]
    NoPrefix,
    #[error("the key after `whsec_` is not base64 ({0}); leave the secret out to have one generated")]
    NotBase64(String),
    #[error(
        "the key after `whsec_` is {0} bytes; use {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, or leave the secret out to have one generated"
    )]
    BadLength(usize),
}

/// A webhook signing secret, checked: its text (`whsec_…`, what the receiver is given) and
/// the key it stands for.
#[derive(Clone)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(whsec_***)")
    }
}

impl Secret {
    /// Parses `whsec_<base64 key>`; the HMAC key is the decoded part after the prefix.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(SecretError::NoPrefix)?;
        let key = STANDARD.decode(encoded).map_err(|e| SecretError::NotBase64(e.to_string()))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        Ok(Self { text: text.to_owned(), key })
    }

    /// A new random secret.
    pub fn generate() -> Self {
        let key: [u8; GENERATED_KEY_BYTES] = rand::rng().random();
        Self { text: format!("{SECRET_PREFIX}{}", STANDARD.encode(key)), key: key.to_vec() }
    }

    /// The secret as the receiver is given it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The `webhook-signature` header value for message `id` sent at `timestamp` (Unix
    /// seconds) with `body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-id` of a delivery: the same on every attempt of it, so receivers dedupe by it.
pub fn message_id(delivery: uuid::Uuid) -> String {
    format!("msg_{}", delivery.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference test vector (the reference libraries' sign test:
    /// secret, msg id, timestamp, payload and expected signature as published there).
    #[test]
    fn webhook_signature_matches_the_standard_webhooks_test_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn webhook_signature_changes_with_id_timestamp_and_body() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let base = secret.sign("msg_1", 1, b"{}");
        assert_ne!(base, secret.sign("msg_2", 1, b"{}"));
        assert_ne!(base, secret.sign("msg_1", 2, b"{}"));
        assert_ne!(base, secret.sign("msg_1", 1, b"{ }"));
    }

    #[test]
    fn webhook_secret_generated_parses_back_and_is_random() {
        let one = Secret::generate();
        let again = Secret::parse(one.expose()).unwrap();
        assert_eq!(one.sign("m", 1, b"x"), again.sign("m", 1, b"x"));
        assert_ne!(one.expose(), Secret::generate().expose());
        assert!(one.expose().starts_with("whsec_"));
    }

    #[test]
    fn webhook_secret_refuses_what_is_not_a_secret_and_says_why() {
        assert_eq!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(), SecretError::NoPrefix);
        assert!(matches!(Secret::parse("whsec_not base64!").unwrap_err(), SecretError::NotBase64(_)));
        assert_eq!(Secret::parse("whsec_c2hvcnQ=").unwrap_err(), SecretError::BadLength(5));
        assert!(format!("{:?}", Secret::generate()).contains("***"));
    }
}
