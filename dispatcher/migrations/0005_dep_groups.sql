-- Fan-in unlocking linear in the number of steps (see `plan::graph`). A step now waits on
-- one group per dependency: its upstream asset's steps of its partition, or all of them.
-- A group of more than one step counts down here; the success that empties it decrements
-- the waiting steps once each. Before, every upstream success decremented every waiting
-- step: a 5,000 × 5,000 fan-in wrote 25 million step row versions.
CREATE TABLE dep_groups (
    run_id    uuid    NOT NULL,
    upstream  integer NOT NULL,
    -- The upstream partition's index, or -1 for every step of the upstream asset.
    part      integer NOT NULL,
    -- Upstream steps of the group not yet succeeded. Never negative, as `pending_upstream`.
    remaining integer NOT NULL CHECK (remaining >= 0),
    PRIMARY KEY (run_id, upstream, part)
);

-- Runs stored before this migration count upstream steps, not groups, and go on doing so.
ALTER TABLE runs ADD COLUMN dep_groups boolean NOT NULL DEFAULT false;
