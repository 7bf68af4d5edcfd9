//! API tokens: created once (the secret is shown then, and only its SHA-256 hash is kept),
//! listed, revoked, and checked on every request that needs one. See `api::auth`.

use chrono::{DateTime, Utc};
use rand::{RngExt, distr::Alphanumeric};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Store, StoreError};

/// What a token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scope {
    /// Read runs, their steps and outputs, and the op registry.
    Read,
    /// Also submit and cancel runs.
    Submit,
    /// Everything.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Scope::Read),
            "submit" => Some(Scope::Submit),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// A token as `opflow tokens list` shows it: never its secret.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub name: String,
    pub scope: Scope,
    /// The team its runs belong to (`None`: the runs belong to the token's name).
    pub team: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A checked token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
    pub team: Option<String>,
}

impl Caller {
    /// Who the runs this caller submits belong to: its team, or its name without one.
    pub fn owner(&self) -> &str {
        self.team.as_deref().unwrap_or(&self.name)
    }
}

const PREFIX: &str = "opf_";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 40;

/// `len` random letters and digits from the thread-local CSPRNG (ChaCha, seeded by the OS).
fn random(len: usize) -> String {
    rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits `opf_<id>_<secret>`.
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == ID_LEN && !secret.is_empty()).then_some((id, secret))
}

/// API tokens (`store.tokens()`).
#[derive(Clone, Copy)]
pub struct Tokens<'a> {
    pub(super) pool: &'a sqlx::PgPool,
}

impl Store {
    /// API tokens.
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens { pool: &self.pool }
    }
}

impl Tokens<'_> {
    /// Creates a token named `name`, whose runs belong to `team` (or to `name` without
    /// one); returns it, the only time it is ever shown. `None` if the name is taken.
    pub async fn create(
        &self,
        name: &str,
        scope: Scope,
        team: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let (id, secret) = (random(ID_LEN).to_ascii_lowercase(), random(SECRET_LEN));
        let inserted = sqlx::query(
            "INSERT INTO api_tokens (name, id, secret_hash, scope, team) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(&id)
        .bind(hash(&secret))
        .bind(scope.as_str())
        .bind(team)
        .execute(self.pool)
        .await?;
        Ok((inserted.rows_affected() == 1).then(|| format!("{PREFIX}{id}_{secret}")))
    }

    pub async fn list(&self) -> Result<Vec<TokenRow>, StoreError> {
        type Row =
            (String, String, Option<String>, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT name, scope, team, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY name",
        )
        .fetch_all(self.pool)
        .await?;
        rows.into_iter()
            .map(|(name, scope, team, created_at, last_used_at, revoked_at)| {
                let scope = Scope::parse(&scope).ok_or_else(|| StoreError::Corrupt(name.clone(), scope))?;
                Ok(TokenRow { name, scope, team, created_at, last_used_at, revoked_at })
            })
            .collect()
    }

    /// Revokes the token named `name`; false if there is none (or it was revoked before).
    pub async fn revoke(&self, name: &str) -> Result<bool, StoreError> {
        let revoked =
            sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL")
                .bind(name)
                .execute(self.pool)
                .await?;
        Ok(revoked.rows_affected() == 1)
    }

    /// Who `token` belongs to, if it is a live token. The secret's hash is compared in
    /// constant time; a malformed, unknown or revoked token is `None` alike.
    pub async fn check(&self, token: &str) -> Result<Option<Caller>, StoreError> {
        let Some((id, secret)) = split(token) else { return Ok(None) };
        type Row = (String, Vec<u8>, String, Option<String>, bool, bool);
        let row: Option<Row> = sqlx::query_as(
            "SELECT name, secret_hash, scope, team, revoked_at IS NOT NULL,
                    last_used_at IS NULL OR last_used_at < now() - interval '1 minute'
             FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool)
        .await?;
        let Some((name, stored, scope, team, revoked, stale)) = row else { return Ok(None) };
        if !bool::from(stored.as_slice().ct_eq(&hash(secret))) || revoked {
            return Ok(None);
        }
        let Some(scope) = Scope::parse(&scope) else { return Ok(None) };
        if stale {
            // At most one write a minute per token, however busy it is.
            sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
                .bind(id)
                .execute(self.pool)
                .await?;
        }
        Ok(Some(Caller { name, scope, team }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_ordered() {
        assert!(Scope::Read < Scope::Submit && Scope::Submit < Scope::Admin);
    }
}
