-- Scaling settings per op version, named as KEDA's RabbitMQ scaler names them (QueueLength
-- mode), so the local autoscaler of `opflow up` and the Helm chart's ScaledObjects read the
-- same numbers; and worker recycling. `replicas` and `desired` are what the autoscaler last
-- saw and decided, for `opflow ops list`.
ALTER TABLE ops
    ADD COLUMN min_replicas      integer NOT NULL DEFAULT 0 CHECK (min_replicas >= 0),
    ADD COLUMN max_replicas      integer NOT NULL DEFAULT 4 CHECK (max_replicas >= 1),
    ADD COLUMN target_value      integer NOT NULL DEFAULT 1 CHECK (target_value >= 1),
    ADD COLUMN activation_value  integer NOT NULL DEFAULT 0 CHECK (activation_value >= 0),
    ADD COLUMN polling_secs      integer NOT NULL DEFAULT 5 CHECK (polling_secs >= 1),
    ADD COLUMN cooldown_secs     integer NOT NULL DEFAULT 300 CHECK (cooldown_secs >= 0),
    ADD COLUMN max_steps         integer CHECK (max_steps >= 1),
    ADD COLUMN max_rss_mb        integer CHECK (max_rss_mb >= 1),
    ADD COLUMN replicas          integer,
    ADD COLUMN desired           integer,
    ADD COLUMN scaled_at         timestamptz,
    ADD CONSTRAINT ops_min_le_max CHECK (min_replicas <= max_replicas);

-- Steps waiting on upstream work, by run and asset: what the demand forecast reads.
CREATE INDEX steps_waiting ON steps (run_id, asset) WHERE status = 'waiting';
