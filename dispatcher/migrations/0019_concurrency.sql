-- Concurrency caps (`plan::concurrency`, `service::window`).
--
-- An asset's rules, as the plan declared them: [{"key": template, "max": n, "strategy": s}].
ALTER TABLE run_assets ADD COLUMN concurrency jsonb NOT NULL DEFAULT '[]';

-- The most steps of an op version in flight at once, over every run (`opflow ops scale
-- --max-in-flight`); NULL for no cap.
ALTER TABLE ops ADD COLUMN max_in_flight integer CHECK (max_in_flight > 0);

-- The slots held: one row per key of a published step attempt that has a concurrency cap,
-- written in the transaction that takes its outbox row (so it exists once its message
-- does), removed once a result of that attempt came back from the worker that ran it. A
-- new leader starts from these, less those whose result is already recorded in `events`.
CREATE TABLE key_slots (
    run_id  uuid    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id integer NOT NULL,
    attempt integer NOT NULL,
    key     text    NOT NULL,
    -- Publish order, for `cancel_in_progress` (the oldest goes first).
    seq     bigint  GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (run_id, step_id, key)
);
CREATE INDEX key_slots_by_key ON key_slots (key);

-- Why steps wait for a key, as the leading publisher last said (it rewrites the table each
-- second while anything waits or waited): per run and key, the steps waiting, the slots
-- held and the cap. Only read, by `opflow status`, `watch` and the API. No reference to
-- `runs`: a deleted run's rows go at the next rewrite.
CREATE TABLE key_waits (
    run_id    uuid    NOT NULL,
    key       text    NOT NULL,
    waiting   integer NOT NULL,
    in_flight integer NOT NULL,
    max       integer NOT NULL,
    PRIMARY KEY (run_id, key)
);
