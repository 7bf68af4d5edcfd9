-- Webhooks (Standard Webhooks): subscriptions, a run's own notify URL, and the outbox of
-- deliveries with every attempt made.
--
-- The one place a webhook is enqueued is the trigger below: runs end in several code paths
-- (applying events, recovery of stuck runs, cancel), and a trigger on the status column
-- enqueues in the very transaction that ends the run, whichever path it is. A run that
-- ends therefore has its deliveries, or it did not end.
--
-- Everything a delivery sends is fixed when it is enqueued (URL, secret, body bytes, and
-- its `webhook-id`, derived from `id`), so every retry signs and sends the same message.
-- Deliveries and attempts go with their run (ON DELETE CASCADE), so retention removes them.

CREATE TABLE webhooks (
    id         uuid        PRIMARY KEY,
    url        text        NOT NULL,
    events     text[]      NOT NULL CHECK (
        cardinality(events) > 0
        AND events <@ ARRAY['run.succeeded', 'run.failed', 'run.canceled']::text[]
    ),
    -- `whsec_<base64 key>`: the receiver needs it as it is to verify, so it is kept as it is.
    secret     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A run's own notify URL (`notify` in `POST /v1/runs`), stored with the run.
CREATE TABLE run_notify (
    run_id uuid PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    url    text NOT NULL,
    secret text NOT NULL
);

CREATE TYPE webhook_delivery_status AS ENUM ('pending', 'delivered', 'failed');

CREATE TABLE webhook_deliveries (
    id               uuid        PRIMARY KEY,
    -- Newest first in listings, and the cursor of their pages.
    seq              bigserial   NOT NULL UNIQUE,
    run_id           uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    -- The subscription it is for; NULL for a run's own notify, or once the subscription
    -- was removed.
    webhook          uuid        REFERENCES webhooks (id) ON DELETE SET NULL,
    source           text        NOT NULL CHECK (source IN ('subscription', 'notify')),
    event            text        NOT NULL,
    url              text        NOT NULL,
    secret           text        NOT NULL,
    -- The exact bytes sent (and signed) on every attempt: text, not jsonb, which would
    -- reorder keys.
    body             text        NOT NULL,
    status           webhook_delivery_status NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Retries go on until `retry_from` + the `webhooks_retry_for` setting; a redelivery
    -- starts the window again.
    retry_from       timestamptz NOT NULL DEFAULT now(),
    -- When it is due; a claimed delivery is pushed ahead by a lease, so a dispatcher that
    -- dies mid-attempt leaves it due again (at least once).
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    last_http_status integer,
    last_error       text
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_run ON webhook_deliveries (run_id);
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (seq) WHERE status = 'failed';

CREATE TABLE webhook_attempts (
    delivery_id uuid        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms integer     NOT NULL,
    http_status integer,
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Enqueues the deliveries of a run that just ended: one per matching subscription and one
-- for its own notify URL, each with the run's summary as body. Wakes the delivery task.
CREATE FUNCTION enqueue_run_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    run_event text := 'run.' || NEW.status::text;
    run_path  text := '/v1/runs/' || NEW.id::text;
    body      text;
    enqueued  integer;
    notified  integer;
BEGIN
    body := json_build_object(
        'type', run_event,
        'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', json_build_object(
            'run_id', NEW.id,
            'plan', NEW.plan_name,
            'status', NEW.status::text,
            'steps', json_build_object(
                'total', NEW.steps_total,
                'succeeded', NEW.steps_succeeded,
                'failed', NEW.steps_failed,
                'skipped', NEW.steps_skipped,
                'canceled', NEW.steps_canceled
            ),
            'created_at', to_char(NEW.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'started_at', to_char(NEW.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'finished_at', to_char(NEW.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'links', json_build_object('run', run_path, 'outputs', run_path || '/outputs')
        )
    )::text;
    INSERT INTO webhook_deliveries (id, run_id, webhook, source, event, url, secret, body)
    SELECT gen_random_uuid(), NEW.id, w.id, 'subscription', run_event, w.url, w.secret, body
    FROM webhooks w WHERE run_event = ANY (w.events);
    GET DIAGNOSTICS enqueued = ROW_COUNT;
    INSERT INTO webhook_deliveries (id, run_id, webhook, source, event, url, secret, body)
    SELECT gen_random_uuid(), NEW.id, NULL, 'notify', run_event, n.url, n.secret, body
    FROM run_notify n WHERE n.run_id = NEW.id;
    GET DIAGNOSTICS notified = ROW_COUNT;
    IF enqueued + notified > 0 THEN
        PERFORM pg_notify('opflow_webhooks', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER runs_enqueue_webhooks
    AFTER UPDATE OF status ON runs
    FOR EACH ROW
    WHEN (NEW.status::text IN ('succeeded', 'failed', 'canceled')
          AND OLD.status::text NOT IN ('succeeded', 'failed', 'canceled'))
    EXECUTE FUNCTION enqueue_run_webhooks();
