-- A schedule's backfill: its ticks over a past range, submitted a few at a time beside the
-- schedule's own ticks and other backfills. Only a cursor is kept (the next tick to
-- submit), so a year of hourly ticks costs a row, not 8,760.
CREATE TABLE schedule_backfills (
    id            uuid        PRIMARY KEY,
    schedule      text        NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    from_at       timestamptz NOT NULL,
    to_at         timestamptz NOT NULL,
    -- The next tick to submit; NULL once every tick of the range is.
    next_at       timestamptz,
    -- Its runs queued or running at once, at most.
    max_in_flight integer     NOT NULL CHECK (max_in_flight BETWEEN 1 AND 1000),
    submitted     integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    done_at       timestamptz
);

CREATE INDEX schedule_backfills_open ON schedule_backfills (created_at) WHERE next_at IS NOT NULL;

-- The backfill a run was submitted by, to count its runs in flight.
ALTER TABLE runs ADD COLUMN backfill uuid;
CREATE INDEX runs_active_by_backfill ON runs (backfill) WHERE backfill IS NOT NULL AND status IN ('queued', 'running');
