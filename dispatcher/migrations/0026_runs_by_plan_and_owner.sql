-- `GET /v1/runs?plan=` and `?owner=` (`opflow runs --plan/--owner`): a page of one plan's or
-- one owner's runs, newest first, read from an index rather than past every other run.
CREATE INDEX runs_by_plan ON runs (plan_name, created_at DESC, id DESC);
CREATE INDEX runs_by_owner ON runs (owner, created_at DESC, id DESC);
