-- The outbox rows of a step, found by the step: the lost-step check counts the queued steps
-- of an op that are *not* in the outbox (published), and cancel drops a run's unpublished
-- rows. Without it, PostgreSQL joined each outbox row to a scan of its run's queued steps
-- when the tables were fresh (no statistics yet): a 100,000-step run's check ran for the
-- whole run, a core busy and vacuum held back (docs/benchmarks.md, w6).
CREATE INDEX outbox_by_step ON outbox (run_id, step_id);
