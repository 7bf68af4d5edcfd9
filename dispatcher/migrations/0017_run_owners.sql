-- Who a run belongs to, and how much of its owner's share it asks for: the ground of fair
-- sharing between teams. `owner` is the team of the token that submitted it (`opflow
-- tokens create --team`), the token's name when it has no team, or what a caller of an
-- API without tokens said (`local` when it said nothing). `priority` (1-10) weighs a
-- run's share among its owner's runs.
ALTER TABLE runs ADD COLUMN owner text NOT NULL DEFAULT 'local';
ALTER TABLE runs ADD COLUMN priority smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 10);
ALTER TABLE api_tokens ADD COLUMN team text;
