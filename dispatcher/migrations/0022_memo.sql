-- Memoized steps (`store::catalog`, docs/catalog.md): a step whose memo key matches an
-- earlier successful materialization is satisfied from it instead of run.
--
-- The memo key is SHA-256 over the op name and version, the step's effective-config hash
-- and, for each materialization it reads, the cell and the output digest, in cell order;
-- it is computed by the statements in `store::catalog` alone (the same SQL both when a
-- materialization is recorded and when ready steps are looked up), so the two can never
-- disagree. NULL when a read materialization is missing: no key, no reuse.
ALTER TABLE materializations ADD COLUMN memo_key bytea;
-- A reused step's materialization points at the one that computed what it reused (never
-- at another reuse).
ALTER TABLE materializations ADD COLUMN reused_from bigint;
-- The output a reuse hands on is read from the step of a run that still holds it (an
-- original or an earlier reuse): the catalog keeps no second copy of every output, so reuse
-- reaches back as far as runs are retained, and each reuse keeps the output alive longer.
CREATE INDEX materializations_by_memo_key ON materializations (memo_key, id) WHERE memo_key IS NOT NULL;

-- `reuse: never` in the plan, or `opflow run --no-reuse` (every asset of the run): the
-- asset's steps always run.
ALTER TABLE run_assets ADD COLUMN reuse boolean NOT NULL DEFAULT true;
-- Steps satisfied from an earlier materialization (also counted in steps_succeeded).
ALTER TABLE runs ADD COLUMN steps_reused integer NOT NULL DEFAULT 0;
