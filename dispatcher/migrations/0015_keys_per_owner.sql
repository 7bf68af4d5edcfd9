-- An idempotency key belongs to whoever used it: the name of the API token that submitted
-- the run ('' for a caller without one, as `opflow up --run` or an open loopback API).
-- Keys were global: any submit token could take `nightly-2026-11-23` first and make the
-- real pipeline's submission a 409 for as long as the run was kept.
ALTER TABLE runs ADD COLUMN key_owner text NOT NULL DEFAULT '';
ALTER TABLE runs DROP CONSTRAINT runs_key_key;
CREATE UNIQUE INDEX runs_key_per_owner ON runs (key_owner, key);
