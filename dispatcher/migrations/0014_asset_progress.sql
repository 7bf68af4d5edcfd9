-- Per-asset step counts, kept as steps change, so that following a run costs a page, not
-- a scan of its steps: `GET /v1/runs/{id}/assets` (paged, busiest first), a run's summary,
-- and the demand of each op's queue read these rows. Before, the asset list of a
-- 10,000-asset chain took 49–69 s (every asset's `leaf` looked through every asset's deps)
-- and a summary counted every step of its run.
--
-- The counts are kept by statement-level triggers on `steps`, whatever statement changes
-- a status (submit, the applier, retries, recovery, cancel): one boundary for every
-- member of the class, one aggregated update per statement, never per row.
CREATE TABLE asset_progress (
    run_id     uuid    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    asset      integer NOT NULL,
    -- `name@version` of the op that runs its steps.
    op         text    NOT NULL,
    -- Assets of the run that read it; 0 for a leaf (its outputs are the run's results).
    downstream integer NOT NULL,
    steps      integer NOT NULL,
    waiting    integer NOT NULL DEFAULT 0 CHECK (waiting >= 0),
    queued     integer NOT NULL DEFAULT 0 CHECK (queued >= 0),
    running    integer NOT NULL DEFAULT 0 CHECK (running >= 0),
    retrying   integer NOT NULL DEFAULT 0 CHECK (retrying >= 0),
    succeeded  integer NOT NULL DEFAULT 0 CHECK (succeeded >= 0),
    failed     integer NOT NULL DEFAULT 0 CHECK (failed >= 0),
    skipped    integer NOT NULL DEFAULT 0 CHECK (skipped >= 0),
    canceled   integer NOT NULL DEFAULT 0 CHECK (canceled >= 0),
    PRIMARY KEY (run_id, asset)
);

-- Assets with steps queued, running or retrying, and with steps waiting, by op: what a
-- queue's depth and demand read, never the assets of finished runs.
CREATE INDEX asset_progress_busy_by_op ON asset_progress (op) WHERE queued + running + retrying > 0;
CREATE INDEX asset_progress_waiting_by_op ON asset_progress (op) WHERE waiting > 0;
-- A run's assets in each state (`GET /v1/runs/{id}/assets?state=`), and its leaves: a page
-- of them is read from its own index, however many assets are in the other states. The
-- expressions are the ones `store::following` writes, so the planner matches them.
CREATE INDEX asset_progress_running ON asset_progress (run_id, asset)
    WHERE queued + running + retrying > 0;
CREATE INDEX asset_progress_waiting ON asset_progress (run_id, asset)
    WHERE queued + running + retrying = 0 AND waiting > 0;
CREATE INDEX asset_progress_done ON asset_progress (run_id, asset)
    WHERE waiting + queued + running + retrying = 0;
CREATE INDEX asset_progress_leaves ON asset_progress (run_id, asset) WHERE downstream = 0;

-- An asset of a run by name (`?asset=` of steps and outputs): one lookup, then its steps
-- are the id range it was compiled to.
CREATE INDEX run_assets_by_name ON run_assets (run_id, name);

-- Steps of a run by status, in id order: `GET /v1/runs/{id}/steps?status=failed` and a
-- summary's first failures read a page of them, however many steps have other statuses.
CREATE INDEX steps_by_status ON steps (run_id, status, id);

-- Runs of one status, newest first: `GET /v1/runs?status=running` among 10,000 finished.
CREATE INDEX runs_by_status ON runs (status, created_at DESC, id DESC);

-- Existing runs: their counts from their steps, once.
WITH downstream AS (
    SELECT b.run_id, (d->>'upstream')::int AS asset, count(DISTINCT b.idx) AS n
    FROM run_assets b, jsonb_array_elements(b.deps) d
    GROUP BY 1, 2
), counts AS (
    SELECT run_id, asset,
           count(*) FILTER (WHERE status = 'waiting')   AS waiting,
           count(*) FILTER (WHERE status = 'queued')    AS queued,
           count(*) FILTER (WHERE status = 'running')   AS running,
           count(*) FILTER (WHERE status = 'retrying')  AS retrying,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'failed')    AS failed,
           count(*) FILTER (WHERE status = 'skipped')   AS skipped,
           count(*) FILTER (WHERE status = 'canceled')  AS canceled
    FROM steps GROUP BY run_id, asset
)
INSERT INTO asset_progress (run_id, asset, op, downstream, steps, waiting, queued, running, retrying,
                            succeeded, failed, skipped, canceled)
SELECT a.run_id, a.idx, a.op_name || '@' || a.op_version, coalesce(d.n, 0), a.step_count,
       coalesce(c.waiting, 0), coalesce(c.queued, 0), coalesce(c.running, 0), coalesce(c.retrying, 0),
       coalesce(c.succeeded, 0), coalesce(c.failed, 0), coalesce(c.skipped, 0), coalesce(c.canceled, 0)
FROM run_assets a
LEFT JOIN downstream d ON d.run_id = a.run_id AND d.asset = a.idx
LEFT JOIN counts c ON c.run_id = a.run_id AND c.asset = a.idx;

-- New steps count in their asset's row (which submit inserts before its steps).
CREATE FUNCTION asset_progress_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE asset_progress p
    SET waiting = p.waiting + c.waiting, queued = p.queued + c.queued, running = p.running + c.running,
        retrying = p.retrying + c.retrying, succeeded = p.succeeded + c.succeeded,
        failed = p.failed + c.failed, skipped = p.skipped + c.skipped, canceled = p.canceled + c.canceled
    FROM (
        SELECT run_id, asset,
               count(*) FILTER (WHERE status = 'waiting')   AS waiting,
               count(*) FILTER (WHERE status = 'queued')    AS queued,
               count(*) FILTER (WHERE status = 'running')   AS running,
               count(*) FILTER (WHERE status = 'retrying')  AS retrying,
               count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE status = 'failed')    AS failed,
               count(*) FILTER (WHERE status = 'skipped')   AS skipped,
               count(*) FILTER (WHERE status = 'canceled')  AS canceled
        FROM inserted_steps GROUP BY run_id, asset
    ) c
    WHERE p.run_id = c.run_id AND p.asset = c.asset;
    RETURN NULL;
END
$$;

CREATE TRIGGER asset_progress_inserted AFTER INSERT ON steps
    REFERENCING NEW TABLE AS inserted_steps
    FOR EACH STATEMENT EXECUTE FUNCTION asset_progress_inserted();

-- A status change moves one step from one count to another. Statements that change no
-- status (progress, heartbeats) find nothing moved and write nothing. The deltas are
-- applied in key order, so two statements moving steps of the same assets lock their
-- rows in the same order.
CREATE FUNCTION asset_progress_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE asset_progress p
    SET waiting = p.waiting + c.waiting, queued = p.queued + c.queued, running = p.running + c.running,
        retrying = p.retrying + c.retrying, succeeded = p.succeeded + c.succeeded,
        failed = p.failed + c.failed, skipped = p.skipped + c.skipped, canceled = p.canceled + c.canceled
    FROM (
        SELECT n.run_id, n.asset,
               count(*) FILTER (WHERE n.status = 'waiting')   - count(*) FILTER (WHERE o.status = 'waiting')   AS waiting,
               count(*) FILTER (WHERE n.status = 'queued')    - count(*) FILTER (WHERE o.status = 'queued')    AS queued,
               count(*) FILTER (WHERE n.status = 'running')   - count(*) FILTER (WHERE o.status = 'running')   AS running,
               count(*) FILTER (WHERE n.status = 'retrying')  - count(*) FILTER (WHERE o.status = 'retrying')  AS retrying,
               count(*) FILTER (WHERE n.status = 'succeeded') - count(*) FILTER (WHERE o.status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE n.status = 'failed')    - count(*) FILTER (WHERE o.status = 'failed')    AS failed,
               count(*) FILTER (WHERE n.status = 'skipped')   - count(*) FILTER (WHERE o.status = 'skipped')   AS skipped,
               count(*) FILTER (WHERE n.status = 'canceled')  - count(*) FILTER (WHERE o.status = 'canceled')  AS canceled
        FROM old_steps o JOIN new_steps n ON n.run_id = o.run_id AND n.id = o.id
        WHERE o.status <> n.status
        GROUP BY n.run_id, n.asset
        ORDER BY n.run_id, n.asset
    ) c
    WHERE p.run_id = c.run_id AND p.asset = c.asset;
    RETURN NULL;
END
$$;

CREATE TRIGGER asset_progress_moved AFTER UPDATE ON steps
    REFERENCING OLD TABLE AS old_steps NEW TABLE AS new_steps
    FOR EACH STATEMENT EXECUTE FUNCTION asset_progress_moved();
