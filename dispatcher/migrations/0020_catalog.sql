-- The asset catalog (`store::catalog`): what every successful step produced, across runs.
--
-- No table here references `runs`: the catalog outlives the runs that wrote it (retention
-- deletes runs, never what they materialized). A cell is one (asset, partition, sweep
-- point); `partition` is '' for an unpartitioned asset and `point` the canonical JSON of
-- the sweep point ('' without a sweep).

-- Each asset as the latest run that declared it defined it: the cells it asks for, and the
-- fingerprint of what computes them (op name, version and config), against which a cell's
-- materialization is stale.
CREATE TABLE catalog_assets (
    name        text        PRIMARY KEY,
    plan_name   text        NOT NULL,
    op_name     text        NOT NULL,
    op_version  text        NOT NULL,
    definition  bytea       NOT NULL,
    -- partitions × sweep points
    cells       bigint      NOT NULL,
    partitions  jsonb       NOT NULL,
    sweep       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per successful step that produced a cell.
CREATE TABLE materializations (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset         text        NOT NULL,
    partition     text        NOT NULL,
    point         text        NOT NULL,
    op_name       text        NOT NULL,
    op_version    text        NOT NULL,
    -- The asset's definition fingerprint when this was computed (see catalog_assets).
    definition    bytea       NOT NULL,
    -- SHA-256 of the canonical effective config: config, partition and sweep point.
    config_hash   bytea       NOT NULL,
    -- The materializations this one read (its step's upstream steps), by id.
    inputs        bigint[]    NOT NULL,
    run_id        uuid        NOT NULL,
    step_id       integer     NOT NULL,
    attempt       integer     NOT NULL,
    at            timestamptz NOT NULL,
    -- SHA-256 of the canonical output JSON.
    output_digest bytea       NOT NULL,
    -- What the step's `materialized` events said, in order.
    metadata      jsonb       NOT NULL
);
-- A cell's history, newest last.
CREATE INDEX materializations_of_cell ON materializations (asset, partition, point, id);
-- A step's materialization (its downstream steps read it); one per step of a run.
CREATE UNIQUE INDEX materializations_of_step ON materializations (run_id, step_id);
-- Who read a materialization (lineage downstream, and staleness when it is replaced).
CREATE INDEX materializations_readers ON materializations USING gin (inputs);

-- The latest state of every cell ever materialized or failed: one lookup per cell, and an
-- asset's summary is one range of the primary key.
CREATE TABLE catalog_cells (
    asset            text        NOT NULL,
    partition        text        NOT NULL,
    point            text        NOT NULL,
    -- How the cell's latest step ended.
    status           text        NOT NULL CHECK (status IN ('materialized', 'failed')),
    -- Its latest successful materialization, if any (a failed cell may still have one).
    materialization  bigint,
    -- That materialization's definition fingerprint.
    definition       bytea,
    -- A materialization it read was replaced by one with another output since.
    upstream_changed boolean     NOT NULL DEFAULT false,
    failed_run       uuid,
    failed_step      integer,
    error            text,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (asset, partition, point)
);
CREATE INDEX catalog_cells_by_materialization ON catalog_cells (materialization);
