-- `reuse_from` (docs/catalog.md): an op version that declares its outputs equal to those of
-- earlier versions reuses their materializations. Resolved at submit against the registry
-- (`ops.description->>'reuse_from'`) and kept with the run: the other versions of the
-- asset's op whose materializations count as its own.
ALTER TABLE run_assets ADD COLUMN reuse_versions text[] NOT NULL DEFAULT '{}';
