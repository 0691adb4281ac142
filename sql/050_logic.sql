-- The projection outbox (DESIGN §2): written in the same transaction as the change, drained by a worker
-- that upserts/deletes the Mongo and Redis copies idempotently, so a failure after commit is repaired.

CREATE TABLE IF NOT EXISTS logic.outbox (
    id          BIGSERIAL PRIMARY KEY,
    collection  TEXT NOT NULL,            -- tiered collection name, e.g. 'posts'
    entity_id   UUID NOT NULL,
    op          TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts    INT NOT NULL DEFAULT 0,
    last_error  TEXT,
    next_try_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_outbox_next_try ON logic.outbox (next_try_at, id);
