-- Cancel: a run and its unfinished steps can end `canceled`. Queued and waiting steps
-- never start; the dispatcher appends the cancel to the cancels stream (through the
-- outbox below, so a crash between the two loses nothing), which tells workers to drop
-- queued messages of the run and to stop its running steps.
ALTER TYPE run_status ADD VALUE 'canceled';
ALTER TYPE step_status ADD VALUE 'canceled';
ALTER TABLE runs ADD COLUMN steps_canceled integer NOT NULL DEFAULT 0;

-- Cancels to append to the cancels stream; removed once the broker confirmed them.
CREATE TABLE cancel_outbox (
    run_id       uuid        PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now()
);
