-- The run store: the op registry, runs, their assets and steps, the transactional outbox
-- of steps to publish, and every event workers reported.
--
-- A run is many small rows, never one big value: a 200,000-step run is 200,000 narrow
-- `steps` rows of integers. A step's partition and sweep point are not stored per row;
-- they follow from its id and its asset's definition in `run_assets`.

CREATE TABLE ops (
    name           text        NOT NULL,
    version        text        NOT NULL,
    queue          text        NOT NULL,
    queue_type     text        NOT NULL CHECK (queue_type IN ('quorum', 'classic')),
    delivery_limit integer     NOT NULL,
    description    jsonb       NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TYPE run_status AS ENUM ('queued', 'running', 'succeeded', 'failed');

CREATE TABLE runs (
    id              uuid        PRIMARY KEY,
    -- Idempotency key: submitting the same key again returns this run.
    key             text        UNIQUE,
    plan_name       text        NOT NULL,
    plan_file       text        NOT NULL,
    plan_source     text        NOT NULL,
    status          run_status  NOT NULL DEFAULT 'queued',
    steps_total     integer     NOT NULL,
    steps_succeeded integer     NOT NULL DEFAULT 0,
    steps_failed    integer     NOT NULL DEFAULT 0,
    steps_skipped   integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);

-- One row per asset of a run: the compiled, resolved definition its steps are built from.
CREATE TABLE run_assets (
    run_id           uuid     NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    idx              integer  NOT NULL,
    name             text     NOT NULL,
    op_name          text     NOT NULL,
    op_version       text     NOT NULL,
    op_requirement   text     NOT NULL,
    config           jsonb    NOT NULL,
    -- {"kind": "none"} | {"kind": "static", "keys": [...]} | {"kind": "daily", "start": d, "end": d}
    partitions       jsonb    NOT NULL,
    -- The expanded partition keys; a step's partition is partition_keys[i / sweep size].
    partition_keys   text[]   NOT NULL,
    -- [{"name": "vol", "values": [...]}, ...] in file order
    sweep            jsonb    NOT NULL,
    -- [{"upstream": idx, "partition_mapped": bool}, ...]
    deps             jsonb    NOT NULL,
    retry_max        integer  NOT NULL,
    retry_backoff_ms bigint   NOT NULL,
    timeout_ms       bigint,
    first_step       integer  NOT NULL,
    step_count       integer  NOT NULL,
    line             integer  NOT NULL,
    PRIMARY KEY (run_id, idx)
);

CREATE TYPE step_status AS ENUM (
    'waiting',   -- upstream steps not done yet
    'queued',    -- ready; in the outbox or on the broker
    'running',   -- a worker reported it started
    'retrying',  -- failed retryably; waits for next_attempt_at
    'succeeded',
    'failed',
    'skipped'    -- an upstream step failed
);

CREATE TABLE steps (
    run_id           uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    id               integer     NOT NULL,
    asset            integer     NOT NULL,
    status           step_status NOT NULL,
    -- The current attempt, from 1. A retry increments it; events of other attempts are ignored.
    attempt          integer     NOT NULL DEFAULT 1,
    -- Upstream steps not yet succeeded. Never negative: a double-counted success would
    -- start a step before its upstream, so it fails the transaction instead.
    pending_upstream integer     NOT NULL CHECK (pending_upstream >= 0),
    progress         real,
    progress_message text,
    output           jsonb,
    error            text,
    worker           text,
    queued_at        timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    heartbeat_at     timestamptz,
    next_attempt_at  timestamptz,
    PRIMARY KEY (run_id, id)
);

CREATE INDEX steps_due_retries ON steps (next_attempt_at) WHERE status = 'retrying';

-- The transactional outbox: a step is marked queued and its row written here in the same
-- transaction; the publisher deletes the row in the transaction that publishes it.
CREATE TABLE outbox (
    seq     bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id  uuid    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id integer NOT NULL,
    attempt integer NOT NULL
);

CREATE TABLE events (
    id          uuid        PRIMARY KEY,
    run_id      uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id     integer     NOT NULL,
    attempt     integer     NOT NULL,
    kind        text        NOT NULL,
    body        jsonb       NOT NULL,
    worker      text        NOT NULL,
    at          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_by_step ON events (run_id, step_id);
