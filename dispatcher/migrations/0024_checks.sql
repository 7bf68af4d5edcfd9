-- Checks (`store::catalog`, docs/catalog.md): what an op reports of a cell it computed
-- (`check_result` events), kept per cell and check across runs; the plan declares which
-- checks exist and which are blocking (`run_assets.checks`).

-- `[{"name": …, "blocking": …}]`, in file order.
ALTER TABLE run_assets ADD COLUMN checks jsonb NOT NULL DEFAULT '[]';

-- The newest result of each check of each cell. A duplicate of an event (same time)
-- changes nothing, so it enqueues no second webhook.
CREATE TABLE catalog_checks (
    asset     text        NOT NULL,
    partition text        NOT NULL,
    point     text        NOT NULL,
    name      text        NOT NULL,
    passed    boolean     NOT NULL,
    -- Declared `blocking: true` by the plan of the run that reported it.
    blocking  boolean     NOT NULL,
    detail    text,
    run_id    uuid        NOT NULL,
    step_id   integer     NOT NULL,
    attempt   integer     NOT NULL,
    at        timestamptz NOT NULL,
    PRIMARY KEY (asset, partition, point, name)
);
CREATE INDEX catalog_checks_failed ON catalog_checks (asset, partition, point) WHERE NOT passed;

-- Subscriptions may ask for `check.failed` too (`webhooks::EVENTS`).
ALTER TABLE webhooks DROP CONSTRAINT webhooks_events_check;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_events_check CHECK (
    cardinality(events) > 0
    AND events <@ ARRAY['run.succeeded', 'run.failed', 'run.canceled', 'check.failed']::text[]
);

-- `check.failed`: one delivery per subscription that asks for it, each time a check result
-- that failed is recorded.
CREATE FUNCTION enqueue_check_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body     text;
    enqueued integer;
BEGIN
    body := json_build_object(
        'type', 'check.failed',
        'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', json_build_object(
            'asset', NEW.asset,
            'partition', nullif(NEW.partition, ''),
            'point', CASE WHEN NEW.point = '' THEN NULL ELSE NEW.point::json END,
            'check', NEW.name,
            'blocking', NEW.blocking,
            'detail', NEW.detail,
            'run_id', NEW.run_id,
            'step_id', NEW.step_id,
            'attempt', NEW.attempt,
            'at', to_char(NEW.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'links', json_build_object('run', '/v1/runs/' || NEW.run_id::text)
        )
    )::text;
    INSERT INTO webhook_deliveries (id, run_id, webhook, source, event, url, secret, body)
    SELECT gen_random_uuid(), NEW.run_id, w.id, 'subscription', 'check.failed', w.url, w.secret, body
    FROM webhooks w
    WHERE 'check.failed' = ANY (w.events) AND EXISTS (SELECT 1 FROM runs r WHERE r.id = NEW.run_id);
    GET DIAGNOSTICS enqueued = ROW_COUNT;
    IF enqueued > 0 THEN
        PERFORM pg_notify('opflow_webhooks', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER catalog_checks_enqueue_webhooks
    AFTER INSERT OR UPDATE ON catalog_checks
    FOR EACH ROW
    WHEN (NOT NEW.passed)
    EXECUTE FUNCTION enqueue_check_webhooks();
