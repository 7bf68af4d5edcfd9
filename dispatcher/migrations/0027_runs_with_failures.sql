-- The latest runs with a failed step, for the ops page's recent failures: found without
-- passing the runs that had none.
CREATE INDEX runs_with_failures ON runs (created_at DESC) WHERE steps_failed > 0;
