-- The event outbox (docs/reliability.md): every realtime event a transaction emits is written here in that
-- transaction, published after the commit (by its writer, else by the relay of any instance) and deleted
-- once published. `id` is the event's identity (a UUIDv7, or the id of the row the event announces).

CREATE TABLE IF NOT EXISTS logic.event_outbox (
    id          UUID PRIMARY KEY,
    recipients  UUID[] NOT NULL,
    body        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- No index on created_at: rows live well under a second, and the relay's scan in id (UUIDv7, time) order
-- stops at its batch; one index less to write per event.
