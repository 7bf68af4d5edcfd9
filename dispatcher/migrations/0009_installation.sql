-- This installation's identity. The leading dispatcher claims its RabbitMQ vhost with it
-- (a marker message in `opflow.installation`), so a second installation configured on the
-- same vhost is refused at start with a clear error, instead of the two consuming each
-- other's events.
CREATE TABLE installation (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    one        boolean     NOT NULL DEFAULT true UNIQUE CHECK (one)
);
INSERT INTO installation DEFAULT VALUES;
