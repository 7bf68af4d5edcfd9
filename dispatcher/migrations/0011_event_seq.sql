-- Every recorded event of a run gets a per-run sequence number, so a client following a
-- run (`GET /v1/runs/{id}/events`, Server-Sent Events with `id:` = seq) can reconnect
-- with `Last-Event-ID` and get every later event exactly once and in order.
--
-- `runs.event_seq` is the last number handed out. The applier bumps it in the transaction
-- that inserts the events; the bump locks the run's row, so two transactions adding events
-- to one run commit in the order of their numbers and a reader never sees seq n+1 before n.
ALTER TABLE runs ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN seq bigint;

UPDATE events e SET seq = numbered.seq
FROM (
    SELECT id, row_number() OVER (PARTITION BY run_id ORDER BY received_at, at, id) AS seq
    FROM events
) numbered
WHERE e.id = numbered.id;

UPDATE runs r SET event_seq = last.seq
FROM (SELECT run_id, max(seq) AS seq FROM events GROUP BY run_id) last
WHERE r.id = last.run_id;

ALTER TABLE events ALTER COLUMN seq SET NOT NULL;
CREATE UNIQUE INDEX events_by_seq ON events (run_id, seq);

-- `GET /v1/runs` lists runs newest first, paged by (created_at, id).
CREATE INDEX runs_by_created ON runs (created_at DESC, id DESC);
