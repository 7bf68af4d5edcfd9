-- Which events changed a step (its start, its result, a retry or a final failure), as
-- opposed to duplicates and late events that the guards in `store::apply` ignored. Lets a
-- reader (and the chaos suite) check that each step has exactly one applied result.
ALTER TABLE events ADD COLUMN applied boolean NOT NULL DEFAULT false;
