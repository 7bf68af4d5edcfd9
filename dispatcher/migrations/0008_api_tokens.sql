-- API tokens. A token is `opf_<id>_<secret>`: the id finds the row, and only a SHA-256
-- hash of the secret is kept, compared in constant time. The secret is shown once, when
-- the token is created.
CREATE TABLE api_tokens (
    name         text        PRIMARY KEY,
    id           text        NOT NULL UNIQUE,
    secret_hash  bytea       NOT NULL,
    scope        text        NOT NULL CHECK (scope IN ('read', 'submit', 'admin')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
