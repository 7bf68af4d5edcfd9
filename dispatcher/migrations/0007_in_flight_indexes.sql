-- What lost-step recovery (`recovery.rs`) reads every few seconds, without scanning the
-- steps of every run: the queued steps of a run (oldest first), its running steps (and
-- when each last showed life), its retrying ones.
CREATE INDEX steps_queued ON steps (run_id, queued_at) WHERE status = 'queued';
CREATE INDEX steps_running ON steps (run_id) WHERE status = 'running';
CREATE INDEX steps_retrying ON steps (run_id) WHERE status = 'retrying';
