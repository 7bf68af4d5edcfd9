-- Schedules: plans that run themselves. Each tick is decided once: submitted (its run's
-- idempotency key is the schedule and the tick's nominal time, so a tick submitted again
-- after a crash finds the same run), buffered behind a running run, or skipped with why.
CREATE TYPE schedule_overlap AS ENUM ('skip', 'buffer_one', 'buffer_all', 'cancel_other', 'allow_all');

CREATE TABLE schedules (
    name              text             PRIMARY KEY,
    plan_name         text             NOT NULL,
    plan_file         text             NOT NULL,
    plan_source       text             NOT NULL,
    cron              text             NOT NULL,
    tz                text             NOT NULL DEFAULT 'UTC',
    overlap           schedule_overlap NOT NULL DEFAULT 'skip',
    catch_up_secs     bigint           NOT NULL CHECK (catch_up_secs >= 0),
    -- Run only the tick's own daily partition (as the schedule's time zone dates it).
    partition_of_tick boolean          NOT NULL DEFAULT false,
    -- Whose the runs are, and their priority.
    owner             text             NOT NULL,
    priority          smallint         CHECK (priority BETWEEN 1 AND 10),
    paused            boolean          NOT NULL DEFAULT false,
    -- The earliest nominal tick not decided yet; NULL when the cron never matches again.
    next_tick_at      timestamptz,
    created_at        timestamptz      NOT NULL DEFAULT now()
);

CREATE INDEX schedules_due ON schedules (next_tick_at) WHERE NOT paused;

CREATE TABLE schedule_ticks (
    schedule    text        NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    nominal_at  timestamptz NOT NULL,
    -- A skipped range of ticks (missed beyond the catch-up window) ends here.
    last_at     timestamptz,
    outcome     text        NOT NULL CHECK (outcome IN ('submitted', 'buffered', 'skipped')),
    run_id      uuid,
    reason      text,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, nominal_at)
);

CREATE INDEX schedule_ticks_buffered ON schedule_ticks (schedule, nominal_at) WHERE outcome = 'buffered';

-- The schedule a run was submitted by, to find its runs still going (overlap).
ALTER TABLE runs ADD COLUMN schedule text;
CREATE INDEX runs_active_by_schedule ON runs (schedule) WHERE schedule IS NOT NULL AND status IN ('queued', 'running');
