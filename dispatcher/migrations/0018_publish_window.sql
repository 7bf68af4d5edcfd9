-- How many ready messages the publisher keeps at most in an op version's queue (`opflow ops
-- scale --window`); NULL for the default, `2 × max_replicas × target_value`, at least 8,
-- widened to what the op's workers take in 50 ms. The steps beyond it wait in the outbox,
-- where they cost the broker nothing and can be sent in a fair order (`service::window`).
ALTER TABLE ops ADD COLUMN publish_window integer CHECK (publish_window > 0);
