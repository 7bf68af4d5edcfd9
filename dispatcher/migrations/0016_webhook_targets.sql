-- Fair webhook delivery: each delivery knows its target (the URL's host and port, as the
-- API stored it: lower-case, no credentials), so the deliverer can hold at most a few
-- attempts per target in flight and take due deliveries round-robin across targets. One
-- submitter's thousands of deliveries to a dead address then wait behind each other, not
-- in front of everyone else's.
ALTER TABLE webhook_deliveries
    ADD COLUMN target text GENERATED ALWAYS AS
        (lower(substring(url FROM '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]+)'))) STORED;
