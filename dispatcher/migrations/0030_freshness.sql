-- Freshness: how old an asset's cells may grow (`plan::freshness`), the breaches of it
-- (each announced once, as a `freshness.failed` webhook), and schedules that run a plan
-- when its cells go stale or what it reads is materialized anew.

-- The policy of the asset's latest definition, and up to when its cells' breaches were
-- recorded: a pass records the cells gone stale since (`Freshness::record_breaches`).
ALTER TABLE catalog_assets ADD COLUMN freshness jsonb;
ALTER TABLE catalog_assets ADD COLUMN freshness_checked_until timestamptz;
ALTER TABLE run_assets ADD COLUMN freshness jsonb;

-- When the cell's data was made: its current materialization's time, or for a reuse the
-- time of what it reused. What its freshness is judged by. A failure keeps it (the good
-- materialization stays current).
ALTER TABLE catalog_cells ADD COLUMN materialized_at timestamptz;
UPDATE catalog_cells c SET materialized_at = coalesce(o.at, m.at)
FROM materializations m LEFT JOIN materializations o ON o.id = m.reused_from
WHERE m.id = c.materialization;
CREATE INDEX catalog_cells_by_age ON catalog_cells (asset, materialized_at) WHERE materialized_at IS NOT NULL;

-- Each cell's materialization that went stale, once: the key makes a second pass (or a
-- second leader) record nothing new, and so send no second webhook.
CREATE TABLE freshness_breaches (
    asset           text        NOT NULL,
    partition       text        NOT NULL,
    point           text        NOT NULL,
    materialization bigint      NOT NULL,
    -- The run that made it, and its owner: whose asset went stale.
    run_id          uuid        NOT NULL,
    owner           text        NOT NULL,
    materialized_at timestamptz NOT NULL,
    policy          text        NOT NULL,
    -- When it became stale: the policy's threshold passed it.
    stale_since     timestamptz NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (asset, partition, point, materialization)
);

ALTER TABLE webhooks DROP CONSTRAINT webhooks_events_check;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_events_check CHECK (
    cardinality(events) > 0
    AND events <@ ARRAY['run.succeeded', 'run.failed', 'run.canceled', 'check.failed', 'freshness.failed']::text[]
);

-- `freshness.failed`: one delivery per subscription that asks for it, per breach.
CREATE FUNCTION enqueue_freshness_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body     text;
    enqueued integer;
BEGIN
    body := json_build_object(
        'type', 'freshness.failed',
        'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', json_build_object(
            'asset', NEW.asset,
            'partition', nullif(NEW.partition, ''),
            'point', CASE WHEN NEW.point = '' THEN NULL ELSE NEW.point::json END,
            'owner', NEW.owner,
            'policy', NEW.policy,
            'materialized_at', to_char(NEW.materialized_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'stale_since', to_char(NEW.stale_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'run_id', NEW.run_id,
            'links', json_build_object(
                'asset', '/v1/assets/' || NEW.asset,
                'run', '/v1/runs/' || NEW.run_id::text)
        )
    )::text;
    INSERT INTO webhook_deliveries (id, run_id, webhook, source, event, url, secret, body)
    SELECT gen_random_uuid(), NEW.run_id, w.id, 'subscription', 'freshness.failed', w.url, w.secret, body
    FROM webhooks w
    WHERE 'freshness.failed' = ANY (w.events) AND EXISTS (SELECT 1 FROM runs r WHERE r.id = NEW.run_id);
    GET DIAGNOSTICS enqueued = ROW_COUNT;
    IF enqueued > 0 THEN
        PERFORM pg_notify('opflow_webhooks', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER freshness_breaches_enqueue_webhooks
    AFTER INSERT ON freshness_breaches
    FOR EACH ROW
    EXECUTE FUNCTION enqueue_freshness_webhooks();

-- Schedules that are not a cron: `stale` runs the plan's stale cells when it has some,
-- `upstream` runs it when an asset it reads is materialized by another run; both at most
-- once per `debounce`. `missing`: each run takes from the catalog every cell it holds as
-- it should be (fresh), as `opflow run --missing` does.
ALTER TABLE schedules ALTER COLUMN cron DROP NOT NULL;
ALTER TABLE schedules ADD COLUMN trigger text NOT NULL DEFAULT 'cron' CHECK (trigger IN ('cron', 'stale', 'upstream'));
ALTER TABLE schedules ADD COLUMN missing boolean NOT NULL DEFAULT false;
ALTER TABLE schedules ADD COLUMN debounce_secs bigint NOT NULL DEFAULT 30 CHECK (debounce_secs >= 0);
-- `upstream`: the newest materialization it has answered; `stale`: its runs so far. Both
-- name its next run's idempotency key (`schedules::trigger_key`).
ALTER TABLE schedules ADD COLUMN seen_materialization bigint NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD CONSTRAINT schedules_cron_or_trigger CHECK ((trigger = 'cron') = (cron IS NOT NULL));

-- What an `upstream` schedule looks for: an asset's materializations after one it saw.
CREATE INDEX materializations_by_asset ON materializations (asset, id);
