-- `asset_progress_moved` (migration 0014) joined the statement's old and new step rows to
-- find the status changes. PL/pgSQL caches that join's plan, made for the few rows a
-- worker batch ends, and kept it as a nested loop: a statement that ends 4,096 steps at
-- once (as reusing steps from the asset catalog does) spent 1 s there, growing with
-- the square of its rows. A step keeps its run and asset, so the counts moved are the new
-- rows counted in minus the old rows counted out, per (run, asset): no join at all, and
-- linear. A statement that changes no status (progress, heartbeats) still writes nothing:
-- its groups net to zero and are left out.
CREATE OR REPLACE FUNCTION asset_progress_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE asset_progress p
    SET waiting = p.waiting + c.waiting, queued = p.queued + c.queued, running = p.running + c.running,
        retrying = p.retrying + c.retrying, succeeded = p.succeeded + c.succeeded,
        failed = p.failed + c.failed, skipped = p.skipped + c.skipped, canceled = p.canceled + c.canceled
    FROM (
        SELECT run_id, asset,
               sum(waiting)::int AS waiting, sum(queued)::int AS queued, sum(running)::int AS running,
               sum(retrying)::int AS retrying, sum(succeeded)::int AS succeeded, sum(failed)::int AS failed,
               sum(skipped)::int AS skipped, sum(canceled)::int AS canceled
        FROM (
            SELECT run_id, asset,
                   sign * (status = 'waiting')::int   AS waiting,
                   sign * (status = 'queued')::int    AS queued,
                   sign * (status = 'running')::int   AS running,
                   sign * (status = 'retrying')::int  AS retrying,
                   sign * (status = 'succeeded')::int AS succeeded,
                   sign * (status = 'failed')::int    AS failed,
                   sign * (status = 'skipped')::int   AS skipped,
                   sign * (status = 'canceled')::int  AS canceled
            FROM (SELECT run_id, asset, status, 1 AS sign FROM new_steps
                  UNION ALL
                  SELECT run_id, asset, status, -1 AS sign FROM old_steps) moved
        ) signed
        GROUP BY run_id, asset
        ORDER BY run_id, asset
    ) c
    WHERE p.run_id = c.run_id AND p.asset = c.asset
      AND (c.waiting, c.queued, c.running, c.retrying, c.succeeded, c.failed, c.skipped, c.canceled)
          <> (0, 0, 0, 0, 0, 0, 0, 0);
    RETURN NULL;
END
$$;
