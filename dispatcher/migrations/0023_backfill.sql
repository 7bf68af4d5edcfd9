-- Backfills (`plan::backfill`, docs/catalog.md): a run submitted with `--missing` or
-- `--failed` takes each cell of its plan from the catalog unless the cell is missing,
-- failed (or, with `--missing`, stale), or reads a cell that ran. NULL: the asset reuses
-- by memo key (or not at all: `reuse`).
ALTER TABLE run_assets ADD COLUMN backfill text CHECK (backfill IN ('missing', 'failed'));
