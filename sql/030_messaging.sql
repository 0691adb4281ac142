-- Conversations, members and messages. The seed's message_index holds the full message here (PostgreSQL is
-- the source of truth), Mongo `messages_recent` the last 30 days.
-- Fixes to the seed: trailing comma removed, last_message_time added (activity ordering), direct_key makes
-- "one direct conversation per pair" race-free, client_id makes sends idempotent.

CREATE TABLE IF NOT EXISTS messaging.conversations_meta (
    id                UUID PRIMARY KEY,
    type              SMALLINT NOT NULL DEFAULT 0 CHECK (type IN (0, 1, 2, 3)),  -- 0 direct, 1 group, 2 community, 3 announcement
    title             TEXT,
    direct_key        TEXT UNIQUE,   -- "<smaller user id>:<larger user id>" for direct conversations
    created_by        UUID REFERENCES auth.users (id) ON DELETE SET NULL,
    last_message_id   UUID UNIQUE,
    last_message_time TIMESTAMPTZ,
    last_message_text TEXT,
    state             SMALLINT NOT NULL DEFAULT 0,   -- 0 active, 1 archived, 2 deleted
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_conversations_last_message ON messaging.conversations_meta (last_message_id);
CREATE INDEX IF NOT EXISTS idx_conversations_last_time ON messaging.conversations_meta (last_message_time DESC);

CREATE TABLE IF NOT EXISTS messaging.conversation_members (
    id                   UUID PRIMARY KEY,
    conversation_id      UUID NOT NULL REFERENCES messaging.conversations_meta (id) ON DELETE CASCADE,
    user_id              UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    role                 SMALLINT NOT NULL DEFAULT 0 CHECK (role IN (0, 1, 2)),  -- 0 member, 1 admin, 2 creator
    joined_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    unread_count         INT NOT NULL DEFAULT 0 CHECK (unread_count >= 0),
    last_read_message_id UUID,
    UNIQUE (conversation_id, user_id)
);
CREATE INDEX IF NOT EXISTS idx_conversation_members_user ON messaging.conversation_members (user_id);

CREATE TABLE IF NOT EXISTS messaging.message_index (
    id              UUID PRIMARY KEY,
    conversation_id UUID NOT NULL REFERENCES messaging.conversations_meta (id) ON DELETE CASCADE,
    sender_id       UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    message_type    SMALLINT NOT NULL DEFAULT 0,  -- 0 text, 1 image, 2 post, 3 voice, 4 video
    state           SMALLINT NOT NULL DEFAULT 0,  -- 0 sent, 1 edited, 2 deleted
    content         TEXT,
    attachments     JSONB NOT NULL DEFAULT '{}'::jsonb,
    client_id       TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    edited_at       TIMESTAMPTZ,
    UNIQUE (sender_id, client_id)
);
CREATE INDEX IF NOT EXISTS idx_message_index_conv_created ON messaging.message_index (conversation_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_message_index_conv_id_desc ON messaging.message_index (conversation_id, id DESC);
