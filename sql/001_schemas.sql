-- The schemas proposed by the seed notes (§IX.4): one per domain.
CREATE SCHEMA IF NOT EXISTS auth;        -- users, settings, sessions, relations
CREATE SCHEMA IF NOT EXISTS content;     -- posts, comments, likes, media
CREATE SCHEMA IF NOT EXISTS messaging;   -- conversations, members, messages
CREATE SCHEMA IF NOT EXISTS moderation;  -- reports, admin actions, audit logs
CREATE SCHEMA IF NOT EXISTS logic;       -- functions, triggers, the projection outbox
CREATE SCHEMA IF NOT EXISTS views;       -- read-only views

-- Keeps updated_at honest whatever code path writes the row.
CREATE OR REPLACE FUNCTION logic.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
