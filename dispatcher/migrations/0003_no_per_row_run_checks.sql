-- The rows a run owns in bulk (steps, outbox, events) no longer carry a foreign key to
-- `runs`. A foreign key is checked by a trigger per inserted row: storing a 50,000-step
-- plan spent 370 ms of its 515 ms steps insert, and 180 ms of its outbox insert, in those
-- checks (docs/benchmarks.md, w5), and every applied event paid one too.
--
-- What the keys guaranteed still holds, by construction: steps and their first outbox
-- rows are written in the transaction that inserts their run; later outbox rows are
-- derived from steps; events are written only for runs the same transaction found. No
-- code deletes runs; whoever does (retention) deletes a run's steps, outbox rows and
-- events with it. `run_assets` keeps its key: one row per asset costs nothing.
ALTER TABLE steps DROP CONSTRAINT steps_run_id_fkey;
ALTER TABLE outbox DROP CONSTRAINT outbox_run_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_run_id_fkey;
